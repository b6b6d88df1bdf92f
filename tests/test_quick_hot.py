"""The quick phase's hot path: gets answered from a cache of replies (pm.agent.pmi_quick).

A get answered once is answered again without the engine, from the request's
exact bytes (a native frame's request id aside), while the rank's engine has
nothing buffered or waiting; a put empties the caches.  Each test checks the
replies against what the engine says, and that the cache, not the engine,
answered the repeats.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from quick_util import KVSNAME, Ranks

from pm.agent.pmi_engine import PmiEngine
from pm.proto import native, pmi2

pytestmark = pytest.mark.timeout(30)

K = KVSNAME.encode()


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Once set (``no_engine.append(b"")``), any request that reaches an engine fails."""
    armed: list[bytes] = []
    feed, answer = PmiEngine.feed, PmiEngine.answer

    def guard(name: str, real: object) -> object:
        def call(self: PmiEngine, data: bytes, *args: object, **kwargs: object) -> object:
            if armed:
                raise AssertionError(f"{name} reached the engine: {data!r}")
            return real(self, data, *args, **kwargs)  # type: ignore[operator]
        return call

    monkeypatch.setattr(PmiEngine, "feed", guard("feed", feed))
    monkeypatch.setattr(PmiEngine, "answer", guard("answer", answer))
    yield armed


def get1(key: bytes) -> bytes:
    return b"cmd=get kvsname=%s key=%s\n" % (K, key)


def init1(ranks: Ranks, rank: int) -> None:
    assert ranks.ask(rank, b"cmd=init pmi_version=1 pmi_subversion=1\n").startswith(
        b"cmd=response_to_init rc=0")


# ------------------------------------------------------------------ PMI-1
def test_pmi1_repeated_gets_come_from_the_cache_and_a_put_empties_it(
        no_engine: list[bytes]) -> None:
    ranks = Ranks(2, native=False)
    try:
        for rank in (0, 1):
            init1(ranks, rank)
            assert ranks.ask(rank, b"cmd=put kvsname=%s key=k%d value=v%d\n"
                             % (K, rank, rank)) == b"cmd=put_result rc=0\n"
        assert ranks.ask(0, get1(b"k1")) == b"cmd=get_result rc=0 value=v1\n"
        assert ranks.ask(1, get1(b"nokey")) == b"cmd=get_result rc=1 msg=key_not_found\n"
        assert ranks.hot(0) and ranks.hot(1)
        no_engine.append(b"")
        for rank in (0, 1):  # the same line from any rank of the job
            assert ranks.ask(rank, get1(b"k1")) == b"cmd=get_result rc=0 value=v1\n"
            assert ranks.ask(rank, get1(b"nokey")) == b"cmd=get_result rc=1 msg=key_not_found\n"
        no_engine.clear()
        # A put replaces a value (as Hydra does) and makes a missing key appear.
        assert ranks.ask(1, b"cmd=put kvsname=%s key=k1 value=w1\n" % K)
        assert ranks.ask(1, b"cmd=put kvsname=%s key=nokey value=x\n" % K)
        assert ranks.ask(0, get1(b"k1")) == b"cmd=get_result rc=0 value=w1\n"
        assert ranks.ask(0, get1(b"nokey")) == b"cmd=get_result rc=0 value=x\n"
    finally:
        ranks.close()


def test_pmi1_what_the_cache_does_not_hold_goes_to_the_engine() -> None:
    ranks = Ranks(2, native=False)
    try:
        init1(ranks, 0)
        init1(ranks, 1)
        assert ranks.ask(0, b"cmd=put kvsname=%s key=a value=1\n" % K)
        assert ranks.ask(0, b"cmd=put kvsname=%s key=b value=2\n" % K)
        for _ in range(2):
            # Two gets in one read: both answered, in order.
            assert ranks.ask(0, get1(b"a") + get1(b"b")) == (
                b"cmd=get_result rc=0 value=1\ncmd=get_result rc=0 value=2\n")
            # A get in two reads: answered when its line is whole, the rank hot again.
            assert ranks.ask(0, get1(b"a")[:20]) == b"" and not ranks.hot(0)
            assert ranks.ask(0, get1(b"a")[20:]) == b"cmd=get_result rc=0 value=1\n"
            assert ranks.hot(0)
            # A job attribute, and another job's kvsname (an error, every time).
            assert ranks.ask(0, get1(b"PMI_process_mapping")) == (
                b"cmd=get_result rc=0 value=(vector,(0,1,2))\n")
            assert ranks.ask(0, b"cmd=get kvsname=other key=a\n").startswith(
                b"cmd=get_result rc=1 ")
        # A rank in a barrier is not hot until every rank entered.
        assert ranks.ask(0, b"cmd=barrier_in\n") == b"" and not ranks.hot(0)
        assert ranks.ask(1, b"cmd=barrier_in\n") == b"cmd=barrier_out rc=0\n"
        assert ranks.read(0) == b"cmd=barrier_out rc=0\n"
        assert ranks.hot(0) and ranks.hot(1)
        assert ranks.pmi.engines[0]._nbad == 2  # the other kvsname, counted each time
    finally:
        ranks.close()


def test_pmi1_the_end_of_a_hot_rank() -> None:
    ranks = Ranks(1, native=False)
    try:
        init1(ranks, 0)
        assert ranks.ask(0, b"cmd=finalize\n") == b"cmd=finalize_ack rc=0\n"
        assert ranks.hot(0)
        ranks.peers[0].close()
        fd = ranks.started.ranks[0].pmi.fileno()  # type: ignore[union-attr]
        # The poll loop is told while the socket is still open: epoll keeps a closed fd
        # as long as a process being spawned holds its file (until that one's exec).
        told: list[tuple[int, int]] = []
        ranks.pmi.on_close = lambda fd: told.append((fd, os.fstat(fd).st_ino))
        ino = os.fstat(fd).st_ino
        assert ranks.pmi.serve(ranks.started.ranks[0]) is None  # its end, clean
        assert ranks.started.ranks[0].pmi is None and fd not in ranks.pmi.hot
        assert told == [(fd, ino)]
    finally:
        ranks.close()


# ------------------------------------------------------------------ PMI-2
def test_pmi2_gets_come_from_the_cache_but_for_a_thread_id(no_engine: list[bytes]) -> None:
    ranks = Ranks(1, native=False)
    try:
        assert ranks.ask(0, b"cmd=init pmi_version=2 pmi_subversion=0\n")
        assert b"rc=0" in ranks.ask(0, pmi2.encode("fullinit", [("pmirank", "0")]))
        assert ranks.ask(0, pmi2.encode("kvs-put", [("key", "k"), ("value", "v;1")])) == (
            pmi2.encode("kvs-put-response", [("rc", "0")]))
        get = pmi2.encode("kvs-get", [("jobid", KVSNAME), ("srcid", "-1"), ("key", "k")])
        found = pmi2.encode("kvs-get-response", [("rc", "0"), ("found", "TRUE"),
                                                 ("value", "v;1")])
        assert ranks.ask(0, get) == found and ranks.hot(0)
        no_engine.append(b"")
        assert ranks.ask(0, get) == found
        no_engine.clear()
        for thrid in ("7", "8"):  # echoed in the reply: not from the cache
            got = ranks.ask(0, pmi2.encode("kvs-get", [("key", "k")], thrid=thrid))
            assert got == pmi2.encode("kvs-get-response",
                                      [("rc", "0"), ("found", "TRUE"), ("value", "v;1")],
                                      thrid=thrid)
        assert ranks.ask(0, pmi2.encode("kvs-put", [("key", "k"), ("value", "w")]))
        assert b"value=w;" in ranks.ask(0, get)
    finally:
        ranks.close()


# ------------------------------------------------------------------ native
def fr(*obj: object) -> bytes:
    return native.pack(list(obj))


def test_native_gets_come_from_the_cache_whatever_their_request_id(
        no_engine: list[bytes]) -> None:
    ranks = Ranks(2)
    try:
        for rank in (0, 1):
            assert ranks.send(rank, native.MAGIC + fr(1, "init"))
            ranks.read(rank)
            assert ranks.ask(rank, fr(2, "put", b"k", b"v%d" % rank)) == fr(2, True, None)
        assert ranks.ask(0, fr(3, "get", b"k", 1)) == fr(3, True, b"v1")
        assert ranks.ask(0, fr(4, "get", b"none", 0)) == fr(4, True, None)  # its own: a miss
        assert ranks.hot(0) and ranks.hot(1)
        # Ids of every size msgpack gives an integer, negative ones too: after the first
        # of a size, the cache answers any other of that size.
        for first, then in ((5, 127), (200, 250), (300, 60000), (70000, 1 << 31),
                            (1 << 40, 1 << 41), (-1, -30), (-100, -120), (-40000, -50000)):
            assert ranks.ask(0, fr(first, "get", b"k", 1)) == fr(first, True, b"v1")
            no_engine.append(b"")
            assert ranks.ask(1, fr(then, "get", b"k", 1)) == fr(then, True, b"v1"), then
            no_engine.clear()
        no_engine.append(b"")
        assert ranks.ask(0, fr(3, "get", b"k", 1)) == fr(3, True, b"v1")  # the same frame
        # Two frames in one read, a frame in two reads: the engine's.
        for data in (fr(5, "get", b"k", 1) + fr(6, "get", b"k", 1), fr(7, "get", b"k", 1)[:-1]):
            with pytest.raises(AssertionError, match="reached the engine"):
                ranks.send(1, data)
        no_engine.clear()
        ranks.read(1)
        assert ranks.ask(0, fr(8, "get", b"k", 1)[:-1]) == b"" and not ranks.hot(0)
        assert ranks.ask(0, fr(8, "get", b"k", 1)[-1:]) == fr(8, True, b"v1")
        assert ranks.hot(0)
        # A miss is not kept: the put that follows is seen.
        assert ranks.ask(0, fr(9, "get", b"none", 0)) == fr(9, True, None)
        assert ranks.ask(0, fr(10, "put", b"none", b"now")) == fr(10, True, None)
        assert ranks.ask(1, fr(11, "get", b"none", 0)) == fr(11, True, b"now")
        assert ranks.ask(1, fr(12, "put", b"k", b"w1")) == fr(12, True, None)
        assert ranks.ask(0, fr(13, "get", b"k", 1)) == fr(13, True, b"w1")
    finally:
        ranks.close()
