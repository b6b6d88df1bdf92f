"""The node's key-value store: what the node's ranks put and what fences brought.

Keys are bytes.  PMI keys are job-global ASCII strings; the native client's
keys are scoped by the rank that put them (:func:`rank_key`), which is what
lets a get name its source rank and be fetched on demand from that rank's
node ("direct get").

When does a get for a key a local rank has not put give up?  The rule is
Hydra's fence-epoch rule, extended to gets made before any fence: a get
carries a *threshold*, the number of fences the asking rank has entered (at
least 1).  It waits while the source rank has entered fewer fences than that
and has not ended; once the source rank reaches the threshold (every put it
made before that fence is in), or finalizes or exits, the answer is "not
found" at once.  Counts only grow, so the answer does not depend on when a
fence happens to complete.  A get made before any fence therefore waits for
the put, the source's first fence, or its end; a get made after the asker's
k-th fence misses at once if the source is in or past its k-th fence.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    # Types only: pmrun's quick phase keeps a node KVS before asyncio is loaded.
    import asyncio
    from collections.abc import Callable, Iterable
    from typing import Any

__all__ = ["NodeKVS"]


class NodeKVS:
    """Values visible on this node, pending puts, and gets waiting for a rank.

    ``on_insert`` is told about every (key, value) that becomes visible node-wide
    through a fence or a fetch (the shared-memory writer may mirror them).
    A later put of a key replaces its value (as Hydra does).
    """

    def __init__(self, on_insert: Callable[[Iterable[tuple[bytes, bytes]]], None] | None = None):
        self.values: dict[bytes, bytes] = {}
        #: Per local rank, its puts since its last fence (the last value of a key wins).
        self._pending: dict[int, dict[bytes, bytes]] = {}
        #: rank -> key -> (threshold, get) waiting for that rank to put that key.
        self._waiters: dict[int, dict[bytes, list[tuple[int, asyncio.Future[bytes | None]]]]] = {}
        #: Per local rank, how many fences it has entered.
        self._entered: dict[int, int] = {}
        self._ended: set[int] = set()
        self.on_insert = on_insert
        self.bytes = 0

    # -- the node's own ranks ------------------------------------------------
    def put(self, rank: int, key: bytes, value: bytes) -> None:
        """A local rank's put: visible on this node now, travels with its next fence."""
        self._store(key, value)
        self._pending.setdefault(rank, {})[key] = value
        by_key = self._waiters.get(rank)
        if by_key is not None:
            for _threshold, fut in by_key.pop(key, ()):
                if not fut.done():
                    fut.set_result(value)
            if not by_key:
                del self._waiters[rank]

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` if this node has it, else None (never waits)."""
        return self.values.get(key)

    def take_pending(self, rank: int) -> list[Any]:
        """The rank enters a fence: its puts since its last fence, flat ``[key, rank, value, ...]``.

        Gets waiting for its keys with a threshold it now reaches miss.
        """
        entered = self._entered[rank] = self._entered.get(rank, 0) + 1
        self._wake_misses(rank, entered)
        flat: list[Any] = []
        for key, value in self._pending.pop(rank, {}).items():
            flat += (key, rank, value)
        return flat

    def settle(self, rank: int) -> None:
        """The rank finalized or exited: it will never put again."""
        self._ended.add(rank)
        self._wake_misses(rank)

    def threshold(self, asker: int) -> int:
        """The threshold of a get made now by local rank ``asker``."""
        return max(self._entered.get(asker, 0), 1)

    def settled(self, rank: int, threshold: int) -> bool:
        """Whether a get with ``threshold`` for a key ``rank`` has not put misses now."""
        return rank in self._ended or self._entered.get(rank, 0) >= threshold

    def wait_for(self, rank: int, key: bytes, threshold: int) -> asyncio.Future[bytes | None]:
        """Value of ``key`` once local ``rank`` puts it; None if it settles first."""
        import asyncio

        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        value = self.values.get(key)
        if value is not None:
            fut.set_result(value)
        elif self.settled(rank, threshold):
            fut.set_result(None)
        else:
            self._waiters.setdefault(rank, {}).setdefault(key, []).append((threshold, fut))
        return fut

    def waiting(self) -> int:
        """How many gets wait for a local rank's put."""
        return sum(len(w) for by_key in self._waiters.values() for w in by_key.values())

    # -- what other nodes put -----------------------------------------------
    def insert_many(self, flat: list[Any]) -> None:
        """Add a fence's result: flat ``[key, rank, value, ...]`` (a later value replaces)."""
        new: list[tuple[bytes, bytes]] = []
        values = self.values
        it = iter(flat)
        for key, _rank, value in zip(it, it, it, strict=True):
            if values.get(key) != value:
                self._store(key, value)
                new.append((key, value))
        if new and self.on_insert is not None:
            self.on_insert(new)

    def cache(self, key: bytes, value: bytes) -> None:
        """Keep a value fetched from another node."""
        if key not in self.values:
            self._store(key, value)
            if self.on_insert is not None:
                self.on_insert([(key, value)])

    def fail_waiters(self) -> None:
        """The job is ending: every waiting get misses."""
        for rank in list(self._waiters):
            self._wake_misses(rank)

    # -- internals -----------------------------------------------------------
    def _wake_misses(self, rank: int, entered: int | None = None) -> None:
        """Miss the gets waiting for ``rank``: all, or those with threshold <= ``entered``."""
        by_key = self._waiters.pop(rank, None)
        if not by_key:
            return
        stay: dict[bytes, list[tuple[int, asyncio.Future[bytes | None]]]] = {}
        for key, waits in by_key.items():
            for threshold, fut in waits:
                if entered is not None and threshold > entered:
                    stay.setdefault(key, []).append((threshold, fut))
                elif not fut.done():
                    fut.set_result(None)
        if stay:
            self._waiters[rank] = stay

    def _store(self, key: bytes, value: bytes) -> None:
        old = self.values.get(key)
        self.bytes += len(value) - (len(old) if old is not None else -len(key))
        self.values[key] = value
