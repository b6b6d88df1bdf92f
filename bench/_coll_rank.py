"""A Python rank for ``bench/collectives.py`` (run by pmrun, one process per rank).

    python bench/_coll_rank.py ops REPS          # time fence, allgather, ring
    python bench/_coll_rank.py init-nb | init-b  # start-up with iallgather / allgather

Each rank prints one line ``COLL {json}`` with its own figures (seconds, from
``time.perf_counter``); the benchmark aggregates them.  Every exchanged value
is checked, so a wrong result fails the run instead of timing it.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # before pm.client is imported

import asyncio  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from pm.client import PMIClient, connect  # noqa: E402

VALUE = 64  # bytes of each rank's value


def value(rank: int, rep: int) -> bytes:
    return (b"%d:%d:" % (rank, rep)).ljust(VALUE, b"x")


async def ops(pmi: PMIClient, reps: int) -> dict[str, object]:
    """Each collective ``reps`` times after one untimed round (connections, caches)."""
    me, n = pmi.rank, pmi.size
    out: dict[str, list[float]] = {"fence": [], "allgather": [], "ring": []}
    for rep in range(reps + 1):
        # The fence carries one 64-byte put per rank (a new key each time: the node's
        # shared-memory table keeps the first value of a key).
        await pmi.put(f"addr{rep}", value(me, rep))
        t0 = time.perf_counter()
        await pmi.fence()
        t1 = time.perf_counter()
        got = await pmi.allgather(value(me, rep))
        t2 = time.perf_counter()
        left, right = await pmi.ring(value(me, rep))
        t3 = time.perf_counter()
        if got != [value(r, rep) for r in range(n)]:
            raise SystemExit(f"rank {me}: wrong allgather result in repetition {rep}")
        if (left, right) != (value((me - 1) % n, rep), value((me + 1) % n, rep)):
            raise SystemExit(f"rank {me}: wrong ring result in repetition {rep}")
        if rep:
            out["fence"].append(t1 - t0)
            out["allgather"].append(t2 - t1)
            out["ring"].append(t3 - t2)
    peer = (me + 1) % n
    got1 = await pmi.get(f"addr{reps}", rank=peer)
    if got1 != value(peer, reps):
        raise SystemExit(f"rank {me}: wrong value after the fences: {got1!r}")
    return {"rank": me, **out}


async def init(pmi: PMIClient, t_connect: float, overlap: bool) -> dict[str, object]:
    """Start-up: publish an address; ``overlap`` returns before the exchange is done."""
    me, n = pmi.rank, pmi.size
    if overlap:
        pending = pmi.iallgather(value(me, 0))
        t_ret = time.perf_counter()  # start-up returns; the rank would go on working
        got = await pending
    else:
        got = await pmi.allgather(value(me, 0))
        t_ret = time.perf_counter()
    t_done = time.perf_counter()
    if got != [value(r, 0) for r in range(n)]:
        raise SystemExit(f"rank {me}: wrong allgather result")
    return {"rank": me, "connect": t_connect - T_START, "startup": t_ret - T_START,
            "startup_after_imports": t_ret - T_IMPORTED, "exchanged": t_done - T_START}


async def main() -> None:
    mode = sys.argv[1]
    async with connect() as pmi:
        t_connect = time.perf_counter()
        if mode == "ops":
            res = await ops(pmi, int(sys.argv[2]))
        else:
            res = await init(pmi, t_connect, mode == "init-nb")
    sys.stdout.write("COLL " + json.dumps(res) + "\n")


T_IMPORTED = time.perf_counter()

if __name__ == "__main__":
    asyncio.run(main())
