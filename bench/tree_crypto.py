"""What encrypting the tree links (CURVE) costs: launch and collectives, on and off.

    python -m bench.tree_crypto [--quick]

Tree links are CURVE-encrypted by default (``pm.agent.links``); ``PM_TREE_CURVE=0``
in the environment of pmrun and its agents turns it off.  Both are run here,
interleaved, on this machine's virtual nodes (``--local-nodes``):

1. the 8-node launch: ``pmrun --local-nodes 8 -n 8 true``, wall time;
2. the collectives of ``bench/collectives.py`` (fence, allgather, ring of
   64-byte values) with 32 ranks on 8 nodes, and an allgather of 1 MiB per rank
   (bulk data, where encryption costs most) with 8 ranks on 8 nodes;
3. one link in this process (a ChildPort and a ParentLink over TCP loopback):
   the time to join (TCP, ZMTP and CURVE handshakes, hello) and the round trip
   of a 64-byte and of a 1 MiB message, which the figures above are made of
   and which a loaded machine disturbs less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from bench._util import ROOT, machine, write_section

RANK = ROOT / "bench" / "_coll_rank.py"
KINDS = ("fence", "allgather", "ring")
BULK = r"""
import time
from pm.client.sync import connect
with connect() as pmi:
    v = bytes([pmi.rank % 256]) * (1 << 20)
    pmi.allgather(v)
    out = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        got = pmi.allgather(v)
        out.append(time.perf_counter() - t0)
        assert len(got) == pmi.size and all(len(x) == 1 << 20 for x in got)
    print("BULK", ",".join(map(str, out)), flush=True)
"""


def env_of(curve: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PM_TREE_CURVE"] = "1" if curve else "0"
    env.pop("PM_QUICK", None)
    return env


def pm(*args: str) -> list[str]:
    return [sys.executable, "-m", "pm", *args]


def run(argv: Sequence[str], curve: bool) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(argv), env=env_of(curve), capture_output=True, text=True,
                       timeout=600, cwd=tempfile.gettempdir())
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr[-2000:]}")
    return p


def launch(curve: bool) -> float:
    t0 = time.perf_counter()
    run(pm("--local-nodes", "8", "-n", "8", "true"), curve)
    return time.perf_counter() - t0


def collectives(curve: bool, reps: int) -> dict[str, list[float]]:
    p = run(pm("--local-nodes", "8", "-n", "32", "--heartbeat", "30", sys.executable,
               str(RANK), "ops", str(reps)), curve)
    res = [json.loads(line[5:]) for line in p.stdout.splitlines() if line.startswith("COLL ")]
    return {k: [max(r[k][i] for r in res) for i in range(reps)] for k in KINDS}


def bulk(curve: bool, reps: int) -> list[float]:
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(BULK.replace("REPS", str(reps)))
    try:
        p = run(pm("--local-nodes", "8", "-n", "8", "--heartbeat", "30", sys.executable,
                   f.name), curve)
    finally:
        os.unlink(f.name)
    per_rank = [[float(x) for x in line[5:].split(",")] for line in p.stdout.splitlines()
                if line.startswith("BULK ")]
    return [max(col) for col in zip(*per_rank, strict=True)]


async def _link(curve: bool, sizes: Sequence[int], reps: int) -> dict[str, list[float]]:
    import asyncio

    from pm.agent import child_port, links
    from pm.proto import tree_wire as t

    links.CURVE = curve
    secret = os.urandom(32)
    loop = asyncio.get_running_loop()
    up: asyncio.Queue[t.Msg] = asyncio.Queue()
    down: asyncio.Queue[t.Msg] = asyncio.Queue()
    joined = loop.create_future()
    out: dict[str, list[float]] = {}
    port = child_port.ChildPort(secret, "tcp://127.0.0.1", lambda v, h: joined.set_result(v),
                                lambda v, m: up.put_nowait(m))
    t0 = time.perf_counter()
    link = links.ParentLink(secret, port.address, 1, down.put_nowait)
    link.send(t.Hello(1, "bench", os.getpid()))
    await asyncio.wait_for(joined, 30)
    out["join"] = [time.perf_counter() - t0]
    link.start()
    try:
        for size in sizes:
            payload = os.urandom(size)
            times = []
            for _ in range(reps + 1):
                t1 = time.perf_counter()
                link.send(t.Output([t.RankOutput(0, 1, payload)]))
                await asyncio.wait_for(up.get(), 30)
                port.send(1, t.Output([t.RankOutput(0, 1, payload)]))
                await asyncio.wait_for(down.get(), 30)
                times.append(time.perf_counter() - t1)
            out[f"rtt {size}"] = times[1:]
    finally:
        link.close(0)
        port.close(0)
    return out


def link_costs(rounds: int, reps: int) -> dict[bool, dict[str, list[float]]]:
    import asyncio

    got: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}

    async def all_rounds() -> None:  # one event loop: pmrun's zmq context lives in it
        for _ in range(rounds):
            for curve in (True, False):
                for k, v in (await _link(curve, (64, 1 << 20), reps)).items():
                    got[curve].setdefault(k, []).extend(v)

    asyncio.run(all_rounds())
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run to check that it works")
    ap.add_argument("--link-only", action="store_true", help="only the one-link figures")
    ap.add_argument("--launches", type=int, default=0, help="launches each way (default 21)")
    ap.add_argument("--jobs", type=int, default=0, help="collective jobs each way (default 3)")
    args = ap.parse_args(argv)
    link = link_costs(3 if args.quick else 15, 20 if args.quick else 100)
    launches, jobs, reps = (3, 1, 5) if args.quick else (21, 3, 20)
    launches, jobs = args.launches or launches, args.jobs or jobs
    if args.link_only:
        launches = jobs = 0
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(launches + 1 if launches else 0):
        for curve in (True, False):
            t = launch(curve)
            if i:
                times[curve].append(t)
    coll: dict[bool, dict[str, list[float]]] = {True: {}, False: {}}
    big: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(jobs):
        for curve in (True, False):
            for k, v in collectives(curve, reps).items():
                coll[curve].setdefault(k, []).extend(v)
            big[curve].extend(bulk(curve, reps))

    def row(name: str, on: list[float], off: list[float], scale: float, unit: str) -> str:
        a, b = statistics.median(on) * scale, statistics.median(off) * scale
        return f"| {name} | {a:.2f} {unit} | {b:.2f} {unit} | {a / b:.2f}× |"

    lines = [f"Machine: {machine()}.  Medians; CURVE on (the default) against "
             "`PM_TREE_CURVE=0`, interleaved.", "",
             "| what | CURVE | MACs only | ratio |", "|---|---|---|---|"]
    for k, label, scale, unit in (("join", "one link: connect and join", 1e3, "ms"),
                                  ("rtt 64", "one link: round trip, 64 B", 1e6, "µs"),
                                  (f"rtt {1 << 20}", "one link: round trip, 1 MiB", 1e3, "ms")):
        lines.append(row(label, link[True][k], link[False][k], scale, unit))
    if launches:
        lines.append(row(f"launch, 8 nodes, `true` ({launches} runs)", times[True],
                         times[False], 1e3, "ms"))
    if jobs:
        for k in KINDS:
            lines.append(row(f"{k}, 32 ranks on 8 nodes ({jobs}×{reps})", coll[True][k],
                             coll[False][k], 1e3, "ms"))
        lines.append(row(f"allgather of 1 MiB per rank, 8 ranks on 8 nodes ({jobs}×{reps})",
                         big[True], big[False], 1e3, "ms"))
    write_section("tree_crypto", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
