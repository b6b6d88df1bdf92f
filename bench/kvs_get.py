"""Get latency and KVS memory per node: shared-memory KVS against the socket.

    python -m bench.kvs_get [--quick]

1. *Get latency seen by a Python rank.*  1, 8 and 32 ranks on one node put a
   64-byte value each, fence, then all get at once, round-robin over every
   rank's key, for a fixed time (``pm.client.sync``'s ``get``; each call timed
   alone with ``perf_counter_ns``, the clock's own cost removed).  A rank
   reports its median; a run's figure is the median over its ranks; the table
   gives the median (min-max) over runs, ``--kvs shm`` and ``--kvs socket``
   interleaved.  The first get of each key (the table probe before the
   reader's cache has it) is reported apart.
2. *KVS memory per node.*  R = 1..32 ranks on one node share a KVS of a fixed
   size S (each puts S/R bytes), then every rank takes hold of every value:
   with shm as zero-copy views into the node's segment
   (``pm.client.shmkvs.ShmKVSReader.get_view``), with the socket as the bytes
   ``get`` returns.  Measured: the growth of PSS (``/proc/PID/smaps_rollup``,
   shared pages divided among their users) of every rank plus the agent's
   process, from before the puts to when every value is held.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._util import interleaved, machine, median_range, pmrun, write_section

MIB = 1 << 20

LATENCY_RANK = r'''
import json, os, statistics, sys, time
from pm.client.sync import connect

clock = time.perf_counter_ns
duration = float(sys.argv[1])
with connect() as pmi:
    r, n = pmi.rank, pmi.size
    pmi.put("addr", b"%064d" % r)
    pmi.fence()
    overhead = []
    for _ in range(5000):
        t0 = clock()
        overhead.append(clock() - t0)
    ov = statistics.median(overhead)
    get = pmi.get
    first, rest = [], []
    pmi.barrier()  # everyone starts getting at once
    end = time.monotonic() + duration
    i = 0
    while True:
        src = i % n
        t0 = clock()
        get("addr", rank=src)
        dt = clock() - t0 - ov
        (first if i < n else rest).append(dt)
        i += 1
        if not i & 63 and time.monotonic() > end:
            break
    pmi.barrier()
    print("RESULT " + json.dumps(dict(rank=r, first=statistics.median(first),
                                      median=statistics.median(rest), gets=i,
                                      shm=pmi.info.get("shm") is not None)), flush=True)
'''

MEMORY_RANK = r'''
import json, os, sys
from pm.client.sync import connect
from pm.client.shmkvs import ShmKVSReader
from pm.proto import native

def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss line")

total = int(sys.argv[1])
with connect() as pmi:
    r, n = pmi.rank, pmi.size
    lead = pmi.local_rank == 0
    agent = os.getppid()
    value = os.urandom(total // n)
    pmi.barrier()
    before = pss_kib("self")
    agent_before = pss_kib(agent) if lead else 0
    pmi.barrier()
    pmi.put("blob", value)
    pmi.fence()
    name = pmi.info.get("shm")
    if name:
        reader = ShmKVSReader(name)
        held = [reader.get_view(native.rank_key(i, b"blob")) for i in range(n)]
    else:
        held = [pmi.get("blob", rank=i) for i in range(n)]
    assert sum(len(v) for v in held) == n * (total // n)
    pmi.barrier()
    after = pss_kib("self")
    agent_after = pss_kib(agent) if lead else 0
    pmi.barrier()  # every value still held while the others measure
    print("RESULT " + json.dumps(dict(rank=r, delta=after - before,
                                      agent_delta=agent_after - agent_before,
                                      shm=name is not None)), flush=True)
'''


def results(stdout: str) -> list[dict[str, float]]:
    return [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]


def run_job(prog: Path, n: int, kvs: str, *args: str) -> list[dict[str, float]]:
    argv = [*pmrun(), "-n", str(n), "--kvs", kvs, sys.executable, str(prog), *args]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    got = results(p.stdout)
    if p.returncode != 0 or len(got) != n:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode} with {len(got)} results:\n"
                           f"{p.stderr[-2000:]}")
    if any(bool(g["shm"]) != (kvs == "shm") for g in got):
        raise RuntimeError(f"--kvs {kvs}: a rank saw the wrong KVS path")
    return got


def latency(prog: Path, counts: Sequence[int], runs: int, duration: float
            ) -> dict[int, dict[str, list[float]]]:
    out: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        firsts: dict[str, list[float]] = {"shm": [], "socket": []}
        gets: dict[str, list[float]] = {"shm": [], "socket": []}

        def one(kvs: str, n: int = n, firsts: dict[str, list[float]] = firsts,
                gets: dict[str, list[float]] = gets) -> Callable[[], float]:
            def go() -> float:
                got = run_job(prog, n, kvs, str(duration))
                firsts[kvs].append(statistics.median(g["first"] for g in got))
                gets[kvs].append(sum(g["gets"] for g in got))
                return statistics.median(g["median"] for g in got)
            return go

        med = interleaved({"shm": one("shm"), "socket": one("socket")}, runs, warmup=0)
        out[n] = {"shm": med["shm"], "socket": med["socket"], "shm_first": firsts["shm"],
                  "socket_first": firsts["socket"], "shm_gets": gets["shm"],
                  "socket_gets": gets["socket"]}
        print(f"latency n={n}: shm {median_range(med['shm'], '{:.0f}')} ns, "
              f"socket {median_range(med['socket'], '{:.0f}')} ns", file=sys.stderr, flush=True)
    return out


def memory(prog: Path, counts: Sequence[int], runs: int, total: int
           ) -> dict[int, dict[str, list[float]]]:
    out: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        def one(kvs: str, n: int = n) -> Callable[[], float]:
            def go() -> float:
                got = run_job(prog, n, kvs, str(total))
                return sum(g["delta"] + g["agent_delta"] for g in got) * 1024.0
            return go

        out[n] = interleaved({"shm": one("shm"), "socket": one("socket")}, runs, warmup=0)
        print(f"memory n={n}: shm {median_range([x / MIB for x in out[n]['shm']], '{:.1f}')} "
              f"MiB, socket {median_range([x / MIB for x in out[n]['socket']], '{:.1f}')} MiB",
              file=sys.stderr, flush=True)
    return out


def plot(mem: dict[int, dict[str, list[float]]], total: int) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    from bench._util import RESULTS

    xs = sorted(mem)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for kvs in ("shm", "socket"):
        ax.plot(xs, [statistics.median(mem[n][kvs]) / MIB for n in xs], marker="o",
                label=f"--kvs {kvs}")
    ax.axhline(total / MIB, color="grey", linestyle=":", label="KVS size S")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks per node")
    ax.set_ylabel("KVS memory per node (MiB, PSS)")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(RESULTS / "kvs_get.png", dpi=110)
    return "\n![KVS memory per node](kvs_get.png)\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run: does it work?")
    args = ap.parse_args()
    runs = 1 if args.quick else 5
    duration = 0.3 if args.quick else 1.0
    lat_counts = (1, 8) if args.quick else (1, 8, 32)
    mem_counts = (1, 4) if args.quick else (1, 2, 4, 8, 16, 32)
    total = (1 if args.quick else 8) * MIB
    with tempfile.TemporaryDirectory(prefix="pm-bench-kvs-") as d:
        lat_prog = Path(d) / "latency.py"
        lat_prog.write_text(LATENCY_RANK)
        mem_prog = Path(d) / "memory.py"
        mem_prog.write_text(MEMORY_RANK)
        lat = latency(lat_prog, lat_counts, runs, duration)
        mem = memory(mem_prog, mem_counts, runs, total)

    md = ["## KVS get latency and memory: shared memory vs socket", "",
          f"{machine()}; {runs} run(s) per point, `--kvs shm` and `--kvs socket` interleaved; "
          "medians (min-max over runs).", "",
          f"**Get latency** seen by a Python rank (`pm.client.sync`, every rank getting "
          f"round-robin from every rank's 64-byte value for {duration:g} s at once; a run's "
          "figure is the median over its ranks).  Target: shm <= 1 us, >= 100x faster than "
          "the socket with 32 ranks.", "",
          "| ranks on the node | shm get (ns) | socket get (ns) | socket / shm | "
          "first get of a key, shm (ns) | target |",
          "|---:|---:|---:|---:|---:|---|"]
    for n, d_ in lat.items():
        shm, sock = statistics.median(d_["shm"]), statistics.median(d_["socket"])
        ok = shm <= 1000 and (n != 32 or sock / shm >= 100)
        md.append(f"| {n} | {median_range(d_['shm'], '{:.0f}')} | "
                  f"{median_range(d_['socket'], '{:.0f}')} | {sock / shm:.0f}x | "
                  f"{median_range(d_['shm_first'], '{:.0f}')} | {'met' if ok else 'MISSED'} |")
    md += ["", f"**KVS memory per node** (PSS growth of the ranks and the agent's process "
           f"while every rank holds every value; KVS size S = {total / MIB:g} MiB, "
           "spread over the ranks).  Target: flat in ranks per node with shm.", "",
           "| ranks per node | shm (MiB) | socket (MiB) | shm / S | socket / S |",
           "|---:|---:|---:|---:|---:|"]
    for n, d_ in mem.items():
        shm_mib = [x / MIB for x in d_["shm"]]
        sock_mib = [x / MIB for x in d_["socket"]]
        md.append(f"| {n} | {median_range(shm_mib, '{:.1f}')} | "
                  f"{median_range(sock_mib, '{:.1f}')} | "
                  f"{statistics.median(shm_mib) / (total / MIB):.1f} | "
                  f"{statistics.median(sock_mib) / (total / MIB):.1f} |")
    md += ["", "With shm a node holds the agent's table and the segment (the agent keeps "
           "its own dictionary too), whatever the number of ranks: ranks map the segment "
           "and hold views into it.  With the socket every rank holds its own copy of what "
           "it got."]
    md.append(plot(mem, total))
    write_section("kvs_get", "\n".join(md))


if __name__ == "__main__":
    main()
