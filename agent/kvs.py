"""The node's key-value store: what the node's ranks put and what fences brought.

Keys are bytes.  PMI keys are job-global ASCII strings; the native client's
keys are scoped by the rank that put them (:func:`rank_key`), which is what
lets a get name its source rank and be fetched on demand from that rank's
node ("direct get").

When does a get for a key a local rank has not put give up?  While the rank
can still put it: a get waits.  Once the rank is inside a fence (its puts for
this phase are done), or has finalized or exited, it will not put it any more
before the asker could notice, so the answer is "not found" at once.  A rank
whose fence completed may put again, so a later get waits again.  Because a
rank may have several non-blocking fences in flight, "inside a fence" is a
count of fences entered and not yet completed, not a flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from pm.proto.native import rank_key

__all__ = ["NodeKVS", "rank_key"]


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
        #: rank -> key -> gets waiting for that rank to put that key.
        self._waiters: dict[int, dict[bytes, list[asyncio.Future[bytes | None]]]] = {}
        self._fencing: dict[int, int] = {}
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
            for fut in by_key.pop(key, ()):
                if not fut.done():
                    fut.set_result(value)
            if not by_key:
                del self._waiters[rank]

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` if this node has it, else None (never waits)."""
        return self.values.get(key)

    def take_pending(self, rank: int) -> list[Any]:
        """The rank enters a fence: its puts since its last fence, flat ``[key, rank, value, ...]``.

        Until that fence completes (:meth:`unsettle`), gets waiting for its
        keys miss at once.
        """
        self._fencing[rank] = self._fencing.get(rank, 0) + 1
        self._wake_misses(rank)
        flat: list[Any] = []
        for key, value in self._pending.pop(rank, {}).items():
            flat += (key, rank, value)
        return flat

    def settle(self, rank: int) -> None:
        """The rank finalized or exited: it will never put again."""
        self._ended.add(rank)
        self._wake_misses(rank)

    def unsettle(self, rank: int) -> None:
        """One fence of the rank completed: once none is in flight it may put again."""
        n = self._fencing.get(rank, 0) - 1
        if n > 0:
            self._fencing[rank] = n
        else:
            self._fencing.pop(rank, None)

    def settled(self, rank: int) -> bool:
        """Whether a get for a key ``rank`` has not put would miss now."""
        return rank in self._ended or rank in self._fencing

    def wait_for(self, rank: int, key: bytes) -> asyncio.Future[bytes | None]:
        """Value of ``key`` once local ``rank`` puts it; None if it settles first."""
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        value = self.values.get(key)
        if value is not None:
            fut.set_result(value)
        elif self.settled(rank):
            fut.set_result(None)
        else:
            self._waiters.setdefault(rank, {}).setdefault(key, []).append(fut)
        return fut

    def waiting(self) -> int:
        """How many gets wait for a local rank's put."""
        return sum(len(f) for by_key in self._waiters.values() for f in by_key.values())

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
    def _wake_misses(self, rank: int) -> None:
        for futs in self._waiters.pop(rank, {}).values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)

    def _store(self, key: bytes, value: bytes) -> None:
        old = self.values.get(key)
        self.bytes += len(value) - (len(old) if old is not None else -len(key))
        self.values[key] = value
