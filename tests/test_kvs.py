"""The node KVS: when a direct get waits, when it misses at once."""

from __future__ import annotations

import pytest

from pm.agent.kvs import NodeKVS
from pm.proto import native
from pm.proto.native import rank_key

pytestmark = pytest.mark.timeout(10)


def test_rank_keys_are_scoped_and_apart_from_allgather_keys() -> None:
    assert rank_key(3, b"k") == b"\0" + b"3" + b"\0k" == native.rank_key(3, b"k")
    assert rank_key(1, b"2\0k") != rank_key(12, b"k")
    assert native.allgather_key(5, 2) == b"\0ag5\0" + b"2"
    assert not native.allgather_key(1, 1).startswith(b"\0" + b"1")


async def test_get_waits_for_the_put() -> None:
    kvs = NodeKVS()
    fut = kvs.wait_for(2, rank_key(2, b"k"), kvs.threshold(0))
    assert not fut.done() and kvs.waiting() == 1
    kvs.put(2, rank_key(2, b"other"), b"x")
    assert not fut.done()
    kvs.put(2, rank_key(2, b"k"), b"v\0=;\n")
    assert fut.done() and fut.result() == b"v\0=;\n"
    assert kvs.waiting() == 0


async def test_fence_or_finalize_without_the_put_misses() -> None:
    kvs = NodeKVS()
    a = kvs.wait_for(1, b"a", 1)
    b = kvs.wait_for(2, b"b", 1)
    kvs.put(1, b"x", b"1")
    assert kvs.take_pending(1) == [b"x", 1, b"1"]
    assert a.done() and a.result() is None
    assert not b.done()
    # Rank 1 has entered its first fence: a new get before any fence misses at once.
    late = kvs.wait_for(1, b"a", 1)
    assert late.done() and late.result() is None
    kvs.settle(2)  # finalized
    assert b.done() and b.result() is None
    assert kvs.wait_for(2, b"b", 5).result() is None


async def test_threshold_is_the_askers_fence_count() -> None:
    kvs = NodeKVS()
    assert kvs.threshold(0) == 1  # before any fence: wait for the source's first
    kvs.take_pending(0)
    kvs.take_pending(1)
    assert kvs.threshold(0) == 1
    # Both are in (or past) fence 1: a get at threshold 1 misses at once,
    # whether or not that fence has completed.
    assert kvs.wait_for(1, b"k", kvs.threshold(0)).result() is None
    kvs.take_pending(0)  # rank 0 enters fence 2 (an ifence) and asks rank 1
    fut = kvs.wait_for(1, b"k", kvs.threshold(0))
    assert kvs.threshold(0) == 2 and not fut.done()
    kvs.take_pending(1)  # rank 1 reaches fence 2 without having put it
    assert fut.result() is None


async def test_only_gets_at_a_reached_threshold_miss() -> None:
    kvs = NodeKVS()
    low = kvs.wait_for(3, b"k", 1)
    high = kvs.wait_for(3, b"k", 2)
    kvs.take_pending(3)
    assert low.result() is None and not high.done()
    assert kvs.waiting() == 1
    kvs.put(3, b"k", b"v")
    assert high.result() == b"v"


async def test_pending_puts_travel_once_with_the_last_value() -> None:
    kvs = NodeKVS()
    kvs.put(4, b"k", b"old")
    kvs.put(4, b"k", b"new")
    kvs.put(4, b"j", b"j")
    assert kvs.take_pending(4) == [b"k", 4, b"new", b"j", 4, b"j"]
    assert kvs.take_pending(4) == []
    assert kvs.get(b"k") == b"new"


async def test_fence_results_insert_and_replace() -> None:
    seen: list[tuple[bytes, bytes]] = []
    kvs = NodeKVS(on_insert=seen.extend)
    kvs.insert_many([b"a", 0, b"1", b"b", 1, b"2"])
    kvs.insert_many([b"a", 0, b"1", b"b", 1, b"3"])
    assert kvs.get(b"a") == b"1" and kvs.get(b"b") == b"3"
    assert seen == [(b"a", b"1"), (b"b", b"2"), (b"b", b"3")]
    assert kvs.bytes == len(b"a1") + len(b"b3")


async def test_fail_waiters_misses_everything() -> None:
    kvs = NodeKVS()
    futs = [kvs.wait_for(r, b"k", 1) for r in range(3)]
    kvs.fail_waiters()
    assert [f.result() for f in futs] == [None, None, None]
    assert kvs.waiting() == 0
