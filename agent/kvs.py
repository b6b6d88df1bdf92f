"""The node's key-value store: what the node's ranks put and what fences brought.

Keys are bytes.  PMI keys are job-global ASCII strings; the native client's
keys are scoped by the rank that put them (:func:`rank_key`), which is what
lets a get name its source rank and be fetched on demand from that rank's
node ("direct get").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any


def rank_key(rank: int, key: bytes) -> bytes:
    """The KVS key of a native put: NUL cannot occur in a PMI key, so no clash."""
    return b"\0%d\0%s" % (rank, key)


class NodeKVS:
    """Values visible on this node, pending puts, and gets waiting for a rank.

    ``on_insert`` is told about every (key, value) that becomes visible node-wide
    (the shared-memory writer mirrors them).
    """

    def __init__(self, on_insert: Callable[[Iterable[tuple[bytes, bytes]]], None] | None = None):
        self.values: dict[bytes, bytes] = {}
        self._pending: dict[int, list[Any]] = {}
        self._waiters: dict[tuple[int, bytes], list[asyncio.Future[bytes | None]]] = {}
        #: Local ranks that are inside a fence or finalized: their puts are done for now.
        self._settled: set[int] = set()
        self.on_insert = on_insert
        self.bytes = 0

    def put(self, rank: int, key: bytes, value: bytes) -> None:
        """A local rank's put: visible on this node now, travels with its next fence."""
        self._store(key, value)
        self._pending.setdefault(rank, []).extend((key, rank, value))
        waiters = self._waiters.pop((rank, key), None)
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(value)

    def get(self, key: bytes) -> bytes | None:
        return self.values.get(key)

    def take_pending(self, rank: int) -> list[Any]:
        """The rank's puts since its last fence, flat ``[key, rank, value, ...]``; it is now settled."""
        self.settle(rank)
        return self._pending.pop(rank, [])

    def settle(self, rank: int) -> None:
        """The rank reached a fence or finalized: gets waiting for its keys miss now."""
        self._settled.add(rank)
        for (r, key) in [k for k in self._waiters if k[0] == rank]:
            for fut in self._waiters.pop((r, key)):
                if not fut.done():
                    fut.set_result(None)

    def unsettle(self, rank: int) -> None:
        """The rank's fence completed: it may put again."""
        self._settled.discard(rank)

    def insert_many(self, flat: list[Any]) -> None:
        """Add a fence's result: flat ``[key, rank, value, ...]``."""
        new: list[tuple[bytes, bytes]] = []
        values = self.values
        it = iter(flat)
        for key, _rank, value in zip(it, it, it, strict=True):
            if key not in values:
                values[key] = value
                self.bytes += len(key) + len(value)
                new.append((key, value))
        if new and self.on_insert is not None:
            self.on_insert(new)

    def wait_for(self, rank: int, key: bytes) -> asyncio.Future[bytes | None]:
        """Value of ``key`` once local ``rank`` puts it; None if it settles first."""
        fut: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        value = self.values.get(key)
        if value is not None:
            fut.set_result(value)
        elif rank in self._settled:
            fut.set_result(None)
        else:
            self._waiters.setdefault((rank, key), []).append(fut)
        return fut

    def _store(self, key: bytes, value: bytes) -> None:
        old = self.values.get(key)
        if old is None:
            self.bytes += len(key) + len(value)
        self.values[key] = value

    def cache(self, key: bytes, value: bytes) -> None:
        """Keep a value fetched from another node."""
        if key not in self.values:
            self._store(key, value)
            if self.on_insert is not None:
                self.on_insert([(key, value)])

    def fail_waiters(self) -> None:
        for futs in self._waiters.values():
            for fut in futs:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
