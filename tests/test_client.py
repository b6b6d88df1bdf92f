"""pm.client end to end: Python ranks under pmrun, on one node and on a tree of nodes.

Every rank program reports what it got (``RESULT <json>``) and the test
checks the values against what the other ranks put.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from client_util import run_ranks

pytestmark = pytest.mark.timeout(90)

#: (id, pmrun options): one node; four virtual nodes in a binary tree (shared
#: memory KVS, the default); the same over the socket only.
LAYOUTS = [
    pytest.param([], id="1node"),
    pytest.param(["--local-nodes", "4", "--fanout", "2"], id="4nodes"),
    pytest.param(["--local-nodes", "4", "--fanout", "2", "--kvs", "socket"], id="4nodes-socket"),
]

MIB = 1 << 20
BIN_KEY = b"k\0=;\n\xff"


def big_value(rank: int) -> bytes:
    return hashlib.sha256(b"%d" % rank).digest() * (MIB // 32)


VERBS = r'''
from pm.client import PMIClient, connect
from pm.proto.errors import KeyNotFound

BIN_KEY = b"k\0=;\n\xff"
MIB = 1 << 20

def bin_value(r):
    return bytes(range(256)) + b"\0=;\n" + bytes([r])

def big_value(r):
    return hashlib.sha256(b"%d" % r).digest() * (MIB // 32)

async def main():
    async with connect() as pmi:
        assert isinstance(pmi, PMIClient)
        r, n = pmi.rank, pmi.size
        out = dict(rank=r, size=n, local_rank=pmi.local_rank, local_size=pmi.local_size,
                   appnum=pmi.appnum, env=[int(os.environ[v]) for v in
                   ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS")],
                   shm=pmi.info.get("shm") is not None)
        # Direct get: the next rank's key, put by it without any fence yet.
        await pmi.put("early", f"e{r}")
        out["early"] = (await pmi.get("early", rank=(r + 1) % n)).decode()
        # Overlap: the last rank's allgather cannot complete before its own put
        # below, because rank 0 joins the allgather only once it has that put
        # (before any fence, rank 0's get waits for it).
        order = []
        if r == 0 and n > 1:
            await pmi.get("side", rank=n - 1)
        fut = pmi.iallgather(f"addr-{r}")
        fut.add_done_callback(lambda f: order.append("allgather"))
        out["done_at_call"] = fut.done()
        await pmi.put("side", b"x")
        order.append("put")
        out["allgather"] = [v.decode() for v in await fut]
        out["order"] = order

        await pmi.put("str", f"s{r}")
        await pmi.put(BIN_KEY, bin_value(r))
        await pmi.put(b"big", big_value(r))
        await pmi.fence()
        out["str"] = [(await pmi.get("str", rank=i)).decode() for i in range(n)]
        out["own"] = (await pmi.get("str")).decode()
        out["bin"] = [await pmi.get(BIN_KEY, rank=i) == bin_value(i) for i in range(n)]
        out["big"] = [hashlib.sha256(await pmi.get(b"big", rank=i)).hexdigest()
                      for i in range(n)]
        # Not found once the next rank is inside a fence without having put it
        # (after a completed fence a get waits: the rank may still put).
        entered = pmi.ifence()
        try:
            await pmi.get("never", rank=(r + 1) % n)
            out["missing"] = "found"
        except KeyNotFound as exc:
            out["missing"] = str(exc)
        await entered

        # Two allgathers in flight, then an ifence, a ring and a barrier.
        done = []
        f1 = pmi.iallgather(b"one-%d" % r)
        f2 = pmi.iallgather(b"two-%d" % r)
        f1.add_done_callback(lambda f: done.append(1))
        f2.add_done_callback(lambda f: done.append(2))
        second, first = await asyncio.gather(f2, f1)
        out["two"] = [[v.decode() for v in first], [v.decode() for v in second]]
        out["two_order"] = done
        ff = pmi.ifence()
        assert not ff.done()
        await ff
        left, right = await pmi.ring(b"ring-%d" % r)
        out["ring"] = [left.decode(), right.decode()]
        await pmi.barrier()
        out["bigag"] = [hashlib.sha256(v).hexdigest()
                        for v in await pmi.allgather(big_value(r))]
    report(**out)

asyncio.run(main())
'''


@pytest.mark.parametrize("opts", LAYOUTS)
def test_every_verb(pmrun: Any, tmp_path: Path, opts: list[str]) -> None:
    n = 6
    got, _ = run_ranks(pmrun, tmp_path, "verbs.py", VERBS, n, *opts)
    nodes = 4 if opts else 1
    per = -(-n // nodes)
    big = [hashlib.sha256(big_value(i)).hexdigest() for i in range(n)]
    for r, res in got.items():
        local = [i for i in range(n) if i // per == r // per]
        assert res["size"] == n and res["appnum"] == 0
        assert [res["local_rank"], res["local_size"]] == [local.index(r), len(local)]
        assert res["env"] == [r, n, res["local_rank"], res["local_size"]]
        assert res["shm"] is ("socket" not in opts)
        assert res["early"] == f"e{(r + 1) % n}"
        assert res["str"] == [f"s{i}" for i in range(n)]
        assert res["own"] == f"s{r}"
        assert res["bin"] == [True] * n
        assert res["big"] == big
        assert res["missing"] == f"key 'never' was not put by rank {(r + 1) % n}"
        assert res["done_at_call"] is False
        assert res["allgather"] == [f"addr-{i}" for i in range(n)]
        assert res["two"] == [[f"one-{i}" for i in range(n)], [f"two-{i}" for i in range(n)]]
        assert res["two_order"] == [1, 2]
        assert res["ring"] == [f"ring-{(r - 1) % n}", f"ring-{(r + 1) % n}"]
        assert res["bigag"] == big
    # The last rank's put round trip completed while its allgather was in flight.
    assert got[n - 1]["order"] == ["put", "allgather"]


DIRECT = r'''
from pm.client import connect
from pm.proto.errors import KeyNotFound

async def miss(coro):
    try:
        return (await coro).decode()
    except KeyNotFound:
        return "KeyNotFound"

async def main():
    async with connect() as pmi:
        r, n = pmi.rank, pmi.size
        last = n - 1
        out = {"rank": r}
        if r == 0:
            # Both gets reach the last rank's node before it has put or fenced.
            late = asyncio.ensure_future(pmi.get("late", rank=last))
            never = asyncio.ensure_future(miss(pmi.get("never", rank=last)))
            await asyncio.sleep(0)  # let both tasks write their requests
        await pmi.barrier()
        if r == last:
            await pmi.put("late", b"after the barrier")
        if r == 0:
            out["late"] = (await late).decode()
            # Answered when the last rank enters the fence below without having
            # put it: rank 0 is not in the fence yet (waiting longer would hang).
            out["never"] = await never
            out["own_missing"] = await miss(pmi.get("not-put-by-me"))
        await pmi.fence()
        if r == 0:
            # The fence completed: a new get waits again, until the last rank finalizes.
            out["at_finalize"] = await miss(pmi.get("never-either", rank=last))
    print("RESULT " + json.dumps(out), flush=True)

asyncio.run(main())
'''


@pytest.mark.parametrize("opts", LAYOUTS[:2])
def test_direct_get_waits_for_the_put_and_misses_at_fence_or_finalize(
        pmrun: Any, tmp_path: Path, opts: list[str]) -> None:
    got, _ = run_ranks(pmrun, tmp_path, "direct.py", DIRECT, 5, *opts)
    assert got[0]["late"] == "after the barrier"
    assert got[0]["never"] == "KeyNotFound"
    assert got[0]["own_missing"] == "KeyNotFound"
    assert got[0]["at_finalize"] == "KeyNotFound"


RING = r'''
from pm.client import connect

async def main():
    async with connect() as pmi:
        left, right = await pmi.ring("v%d" % pmi.rank)
        again = await pmi.ring(b"w%d" % pmi.rank)
    report(rank=pmi.rank, ring=[left.decode(), right.decode()],
           again=[v.decode() for v in again])

asyncio.run(main())
'''


@pytest.mark.parametrize(("n", "opts"), [
    pytest.param(1, [], id="1rank"),
    pytest.param(2, ["--local-nodes", "2"], id="2ranks-2nodes"),
    pytest.param(7, ["--local-nodes", "4", "--fanout", "2"], id="7ranks-block"),
    pytest.param(7, ["--local-nodes", "4", "--fanout", "2", "-ppn", "1"], id="7ranks-cyclic"),
])
def test_ring(pmrun: Any, tmp_path: Path, n: int, opts: list[str]) -> None:
    got, _ = run_ranks(pmrun, tmp_path, "ring.py", RING, n, *opts)
    for r, res in got.items():
        assert res["ring"] == [f"v{(r - 1) % n}", f"v{(r + 1) % n}"]
        assert res["again"] == [f"w{(r - 1) % n}", f"w{(r + 1) % n}"]


SYNC = r'''
from pm.client.sync import SyncPMIClient, connect
from pm.client import RequestFailed
from pm.proto.errors import KeyNotFound

BIN_KEY = b"k\0=;\n\xff"

with connect() as pmi:
    assert isinstance(pmi, SyncPMIClient)
    r, n = pmi.rank, pmi.size
    out = dict(rank=r, size=n, local=[pmi.local_rank, pmi.local_size], appnum=pmi.appnum)
    pmi.put("early", b"e%d" % r)
    out["early"] = pmi.get("early", rank=(r + 1) % n).decode()
    pmi.put(BIN_KEY, b"\0=;\n%d" % r)
    pmi.put("big", bytes([r]) * (1 << 20))
    req = pmi.ifence()
    req.wait()
    out["bin"] = [pmi.get(BIN_KEY, rank=i) == b"\0=;\n%d" % i for i in range(n)]
    out["big"] = [pmi.get("big", rank=i) == bytes([i]) * (1 << 20) for i in range(n)]
    entered = pmi.ifence()
    try:
        pmi.get("never", rank=(r + 1) % n)
    except KeyNotFound as exc:
        out["missing"] = str(exc)
    entered.wait()
    a = pmi.iallgather("a%d" % r)
    b = pmi.iallgather("b%d" % r)
    out["done_at_call"] = a.done()
    out["ag"] = [[v.decode() for v in b.wait()], [v.decode() for v in a.wait()]]
    out["ring"] = [v.decode() for v in pmi.ring("r%d" % r)]
    pmi.barrier()
    try:
        with pmi.reserve(1 << 20):
            out["reserve"] = "admitted"
    except RequestFailed as exc:
        out["reserve"] = str(exc)
report(**out)
'''


@pytest.mark.parametrize("opts", [*LAYOUTS, pytest.param(["--kvs", "socket"], id="1node-socket")])
def test_sync_facade(pmrun: Any, tmp_path: Path, opts: list[str]) -> None:
    n = 4
    got, _ = run_ranks(pmrun, tmp_path, "sync.py", SYNC, n, *opts)
    for r, res in got.items():
        assert res["size"] == n and res["appnum"] == 0
        assert res["early"] == f"e{(r + 1) % n}"
        assert res["bin"] == [True] * n and res["big"] == [True] * n
        assert res["missing"] == f"key 'never' was not put by rank {(r + 1) % n}"
        assert res["ag"] == [[f"b{i}" for i in range(n)], [f"a{i}" for i in range(n)]]
        assert res["ring"] == [f"r{(r - 1) % n}", f"r{(r + 1) % n}"]
        assert res["reserve"] == "admitted"
    # The first rank to call iallgather cannot see it done: the others are not in yet
    # (the last one may: its request completes the collective at once).
    assert not all(res["done_at_call"] for res in got.values())


ERRORS = r'''
from pm.client import RequestFailed, connect

async def refused(coro):
    try:
        await coro
    except RequestFailed as exc:
        return str(exc)
    return "accepted"

async def main():
    async with connect() as pmi:
        r, n = pmi.rank, pmi.size
        out = {"rank": r}
        if r == 1:
            out["type"] = await refused(pmi.put("k", 123))
            out["long_key"] = await refused(pmi.put(b"x" * 2000, b"v"))
            out["range"] = await refused(pmi.get("k", rank=n))
            out["negative"] = await refused(pmi.get("k", rank=-1))
            try:
                await pmi.put("k", object())
            except TypeError as exc:
                out["unsendable"] = "TypeError"
            try:
                async with pmi.reserve(1 << 50):  # more than any node has
                    out["reserve"] = "admitted"
            except RequestFailed as exc:
                out["reserve"] = str(exc)
        # Every rank, the failed one included, goes on as usual.
        await pmi.put("k", b"v%d" % r)
        await pmi.fence()
        out["after"] = [(await pmi.get("k", rank=i)).decode()
                        for i in range(n)] + [v.decode() for v in await pmi.allgather(b"%d" % r)]
    report(**out)

asyncio.run(main())
'''


@pytest.mark.parametrize("opts", LAYOUTS[:2])
def test_errors_are_clear_and_hurt_nobody_else(pmrun: Any, tmp_path: Path,
                                               opts: list[str]) -> None:
    n = 3
    got, proc = run_ranks(pmrun, tmp_path, "errors.py", ERRORS, n, *opts)
    bad = got[1]
    assert bad["type"] == "put refused by the node agent: value must be bytes or str, not int"
    assert bad["long_key"] == ("put refused by the node agent: "
                               "key of 2000 bytes exceeds the limit of 1024")
    assert bad["range"] == "get refused by the node agent: get from rank 3: ranks are 0..2"
    assert bad["negative"] == "get refused by the node agent: get from rank -1: ranks are 0..2"
    assert bad["unsendable"] == "TypeError"
    assert bad["reserve"].startswith("reserve refused by the node agent: "), bad["reserve"]
    assert "high watermark" in bad["reserve"], bad["reserve"]
    for r in range(n):
        assert got[r]["after"] == [f"v{i}" for i in range(n)] + [str(i) for i in range(n)]
    # The agent logged each refusal, naming the rank.
    for what in ("put failed: value must be bytes or str, not int",
                 "put failed: key of 2000 bytes exceeds",
                 "get failed: get from rank 3: ranks are 0..2",
                 "reserve failed: "):
        assert re.search(rf"rank 1: native {re.escape(what)}", proc.stderr), proc.stderr


REPUT = r'''
from pm.client import connect

async def main():
    async with connect() as pmi:
        r, n = pmi.rank, pmi.size
        seen = []
        for round in range(3):
            await pmi.put("k", f"{round}-{r}")
            await pmi.fence()
            seen.append([(await pmi.get("k", rank=i)).decode() for i in range(n)])
    report(rank=r, seen=seen)

asyncio.run(main())
'''


@pytest.mark.parametrize("opts", LAYOUTS)
def test_a_later_put_replaces_the_value(pmrun: Any, tmp_path: Path, opts: list[str]) -> None:
    n = 4
    got, _ = run_ranks(pmrun, tmp_path, "reput.py", REPUT, n, *opts)
    for res in got.values():
        assert res["seen"] == [[f"{k}-{i}" for i in range(n)] for k in range(3)]


#: A second connect() in a rank that has a client: refused at once (it used to wait for
#: ever, its bytes read by the agent as the first client's), the first goes on.
TWICE = r'''
from pm.client import connect
from pm.client.sync import connect as connect_sync
from pm.proto.errors import PMError

async def main():
    async with connect() as pmi:
        said = []
        for second in (connect, connect_sync):
            try:
                await second() if second is connect else second()
            except PMError as exc:
                said.append(str(exc))
        await pmi.barrier()
        report(rank=pmi.rank, said=said)

asyncio.run(main())
'''


def test_a_second_connection_in_a_rank_is_refused_at_once(pmrun: Any, tmp_path: Path) -> None:
    got, _ = run_ranks(pmrun, tmp_path, "twice.py", TWICE, 2)
    for res in got.values():
        assert len(res["said"]) == 2 and all(
            "this process connected to its node agent already" in s for s in res["said"])


#: An allgather whose result is larger than a reply carries over the socket (5 x 60 MiB).
AG_BIG = r'''
from pm.client.sync import connect
from pm.client import RequestFailed

with connect() as pmi:
    try:
        said = len(pmi.allgather(b"a" * (60 << 20)))
    except RequestFailed as exc:
        said = str(exc)
    pmi.barrier()  # (the connection goes on)
    report(rank=pmi.rank, said=said)
'''


def test_an_allgather_too_large_for_a_reply_is_refused_and_the_ranks_go_on(
        pmrun: Any, tmp_path: Path) -> None:
    got, proc = run_ranks(pmrun, tmp_path, "agbig.py", AG_BIG, 5, "--kvs", "socket",
                          timeout=100)
    for res in got.values():
        assert "allgather: its result of 314572829 bytes is over the 268435456 bytes a reply " \
            "carries" in res["said"], res
    assert proc.stderr.count("over the 268435456 bytes a reply carries") == 5, proc.stderr
    got, _ = run_ranks(pmrun, tmp_path, "agbig.py", AG_BIG, 5, timeout=100)
    assert all(res["said"] == 5 for res in got.values())  # (shared memory: no such bound)


ORDER = r'''
from pm.client import connect

async def main():
    async with connect() as pmi:
        r = pmi.rank
        orders = set()
        for it in range(100):
            done = []
            futs = [pmi.iallgather(b"%d-%d-%d" % (it, k, r)) for k in range(3)]
            futs.append(pmi.ifence())
            for k, f in enumerate(futs[:3]):
                f.add_done_callback(lambda f, k=k: done.append(k))
            results = await asyncio.gather(*reversed(futs))
            assert [v.decode() for v in results[3]] == [f"{it}-0-{i}" for i in range(pmi.size)]
            orders.add(tuple(done))
    report(rank=r, orders=sorted(orders))

asyncio.run(main())
'''


def test_in_flight_collectives_complete_in_the_order_they_started(pmrun: Any,
                                                                  tmp_path: Path) -> None:
    got, _ = run_ranks(pmrun, tmp_path, "order.py", ORDER, 6, "--local-nodes", "4",
                       "--fanout", "2")
    assert all(res["orders"] == [[0, 1, 2]] for res in got.values()), got
