"""Start-up at scale: simulated ranks up to 65,536, the cost of ``--profile``, a scale model.

    python -m bench.scale [--quick]

1. *Simulated ranks* (``pmrun --local-nodes M --sim-ranks-per-node R``): the
   address exchange (64-byte values, iallgather + on-demand gets of three
   peers) through the real agents, tree, collectives and KVS, for 1,024 ..
   65,536 ranks: 64 agents x R, and M agents x 1,024.  All agents share this
   machine's cores, so the figures include that contention.
2. *Profile overhead*: a real MPICH job (``tests/c/hello.c``, 8 ranks on 2
   local nodes) with and without ``--profile``, interleaved.
3. *Scale model*: per-level costs measured here (tree hop latency, agent
   boot, spawn, the codec's per-byte cost, per-rank agent work) put into a
   model of start-up for 1,024 and 16,384 nodes at 64 ranks per node.

Writes ``bench/results/scale.md`` and ``bench/results/scale.png``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench._util import RESULTS, ROOT, build_c, interleaved, median_range, pmrun, write_section

SUMMARY = re.compile(r"pmrun sim: (\d+) ranks .*?exchange ([\d.]+) s")
ROW = re.compile(r"^(.*?)\s{2,}([\d.]+) (us|ms|s)\s+([\d.]+) (us|ms|s)\s*$")
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
FANOUT = 32  # pmrun's default
VALUE = 64


# ---------------------------------------------------------------- running pmrun
def _run(args: Sequence[str], timeout: float = 600.0) -> tuple[float, str, str]:
    """(wall seconds, stdout, stderr) of one pmrun; raises if it fails."""
    t0 = time.perf_counter()
    p = subprocess.run([*pmrun(), *args], capture_output=True, text=True, timeout=timeout,
                       cwd=tempfile.gettempdir())
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"pmrun {' '.join(args)} exited {p.returncode}: "
                           f"{(p.stdout + p.stderr)[-2000:]}")
    return wall, p.stdout, p.stderr




def sim(nodes: int, per: int, *extra: str) -> tuple[float, float, str]:
    """(exchange s, wall s, stderr) of a simulated job; fails on a wrong value."""
    # A generous heartbeat: 64 agents on 2 shared cores may not run for seconds when
    # the machine is busy, and a lost agent would end the run.
    wall, out, err = _run(["--local-nodes", str(nodes), "--sim-ranks-per-node", str(per),
                           "--sim-value-size", str(VALUE), "--heartbeat", "60", *extra])
    m = SUMMARY.search(out)
    if m is None or "all values right" not in out:
        raise RuntimeError(f"unexpected sim output: {out}")
    assert int(m[1]) == nodes * per
    return float(m[2]), wall, err


def table_rows(stderr: str) -> dict[str, tuple[float, float]]:
    """The --profile breakdown table: phase -> (median s, max s)."""
    rows = {}
    for line in stderr.splitlines():
        m = ROW.match(line)
        if m:
            rows[m[1].strip()] = (float(m[2]) * UNIT[m[3]], float(m[4]) * UNIT[m[5]])
    return rows


def _hello() -> Path:
    """tests/c/hello.c built with the MPICH wheel's mpicc (kept in the temp dir)."""
    return build_c(ROOT / "tests" / "c" / "hello.c",
                   Path(tempfile.gettempdir()) / "pm-bench" / "hello")


# ---------------------------------------------------------------- 1. the sweep
def sweep(shapes: Sequence[tuple[int, int]], runs: int) -> dict[tuple[int, int], list[float]]:
    """Exchange seconds per (nodes, ranks per node), shapes interleaved round-robin."""
    def one(n: int, r: int) -> Callable[[], float]:
        return lambda: sim(n, r)[0]

    contenders = {f"{n}x{r}": one(n, r) for n, r in shapes}
    got = interleaved(contenders, runs, warmup=0)
    return {(n, r): got[f"{n}x{r}"] for n, r in shapes}


def sweep_table(title: str, res: dict[tuple[int, int], list[float]]) -> str:
    lines = [f"**{title}**", "",
             "| ranks | nodes x ranks/node | exchange, s: median (min\u2013max) | per rank, µs |",
             "|---:|---|---|---:|"]
    for (n, r), xs in sorted(res.items(), key=lambda kv: kv[0][0] * kv[0][1]):
        lines.append(f"| {n * r:,} | {n} x {r:,} | {median_range(xs)} | "
                     f"{statistics.median(xs) / (n * r) * 1e6:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------- 2. profile overhead
def profile_overhead(runs: int) -> tuple[dict[str, list[float]], int, float]:
    """Wall times with and without --profile; events recorded; trace write seconds."""
    hello = _hello()
    trace = Path(tempfile.gettempdir()) / "pm-bench-scale-profile.json"
    job = ["-n", "8", "--local-nodes", "2", str(hello)]
    counted: list[int] = []

    def on() -> float:
        wall, _out, err = _run(["--profile", str(trace), *job])
        m = re.search(r"pmrun profile: (\d+) events", err)
        counted.append(int(m[1]) if m else 0)
        return wall

    got = interleaved({"off": lambda: _run(job)[0], "on": on}, runs)
    # What writing costs, measured apart and cold, as pmrun does it once per job: in a
    # fresh interpreter, import pm.common.profile and write a timeline of as many events.
    n = max(counted)
    writes = []
    # From bytecode, as an installed pmrun runs (the first run writes it).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for i in range(4):
        p = subprocess.run([sys.executable, "-c", _WRITE, str(trace), str(n)], cwd=ROOT,
                           capture_output=True, text=True, check=True, env=env)
        if i:
            writes.append(float(p.stdout))
    return got, n, statistics.median(writes)


_WRITE = """
import sys, time
import json, typing, pm.common.kary_tree  # pmrun has these loaded whether it profiles or not
t0 = time.perf_counter()
from pm.common.profile import write_profile
now = time.time()
n = int(sys.argv[2])
timeline = [[now + i * 1e-4, i % 2, (i % 8) if i % 3 else -1, "put", {"size": 64}]
            for i in range(n)]
t1 = time.perf_counter()
write_profile(sys.argv[1], timeline, 2, 32)
print((time.perf_counter() - t1) + (t1 - t0))
"""


def mark_cost(events: int = 20000) -> float:
    """Seconds per recorded event (JobAgent.mark's body: one clock read and an append)."""
    timeline: list[Any] = []
    t0 = time.perf_counter()
    for i in range(events):
        timeline.append([time.time(), 1, i, "put", {"key": "addr", "size": 64}])
    return (time.perf_counter() - t0) / events


# ---------------------------------------------------------------- 3. the scale model
def codec_costs(entries: int = 65536) -> tuple[float, float, float, float]:
    """(encode+seal s/byte, unseal+decode s/byte, bytes per entry, root s/entry) of an
    allgather result, with the real tree codec and collective state machine."""
    from pm.agent.collectives import Collectives
    from pm.proto import tree_wire as t
    from pm.proto.tree_frames import seal, unseal

    values = [bytes([i & 255]) * VALUE for i in range(entries)]
    secret = b"k" * 32
    msg = t.CollOut(1, t.ALLGATHER, values)
    enc, dec = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        frame = seal(secret, t.encode(msg))
        t1 = time.perf_counter()
        t.decode(unseal(secret, frame))
        enc.append(t1 - t0)
        dec.append(time.perf_counter() - t1)
    size = len(frame)
    # The root: 32 children's flat [rank, value, ...] pieces -> the whole result.
    kids = list(range(1, FANOUT + 1))
    per = entries // FANOUT
    pieces = {c: [x for r in range((c - 1) * per, c * per) for x in (r, values[r])]
              for c in kids}
    root_t = []
    for _ in range(3):
        coll = Collectives([], kids, entries, True)
        for c in kids[:-1]:
            coll.child_in(c, 1, t.ALLGATHER, pieces[c])
        t0 = time.perf_counter()
        coll.child_in(kids[-1], 1, t.ALLGATHER, pieces[kids[-1]])
        root_t.append(time.perf_counter() - t0)
    return (statistics.median(enc) / size, statistics.median(dec) / size, size / entries,
            statistics.median(root_t) / entries)


def map_cost(entries: int = 65536, per: int = 1024) -> float:
    """Seconds per rank of the rank map every agent computes from the plan (placement,
    its local ranks, the ring-order check: what ``JobAgent.__init__`` does, O(ranks))."""
    from pm.common.mapping import local_ranks, place

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        node_of_rank = place(entries, [per] * (entries // per))
        by_node = local_ranks(node_of_rank)
        local_ranks(node_of_rank)
        order: list[int] = []
        for v in range(entries // per):
            order.extend(by_node.get(v, []))
        _same = order == list(range(entries))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / entries


def tree_costs() -> dict[str, float]:
    """Per-level latencies and boot/spawn costs from --profile runs on this machine."""
    trace = Path(tempfile.gettempdir()) / "pm-bench-scale-tree.json"
    # 15 agents, fanout 2: three levels below the root; small messages.
    _ex, _wall, err = sim(15, 8, "--fanout", "2", "--profile", str(trace))
    rows = table_rows(err)
    ups = [v[0] for k, v in rows.items() if re.match(r"tree level \d+: collective up", k)]
    downs = [v[0] for k, v in rows.items() if re.match(r"tree level \d+: collective down", k)]
    hello = _hello()
    boots, spawns, inits = [], [], []
    for _ in range(3):
        _w, _o, err = _run(["--profile", str(trace), "-n", "8", "--local-nodes", "2",
                            str(hello)])
        rows = table_rows(err)
        boots.append(rows["bootstrap: head start -> agent connected (1 agents)"][0])
        spawns.append(rows["spawn: agent spawning its ranks"][0] / 4)
        inits.append(rows["rank: spawned -> PMI init (8 ranks)"][0])
    return {"hop": statistics.median(ups) + statistics.median(downs),
            "hop_up": statistics.median(ups), "hop_down": statistics.median(downs),
            "agent_boot": statistics.median(boots), "spawn": statistics.median(spawns),
            "rank_init": statistics.median(inits)}


def height(nodes: int, fanout: int) -> int:
    from pm.common.kary_tree import Tree

    return Tree(nodes, fanout).height()


def model(nodes: int, per: int, k: int, c: dict[str, float], bw: float) -> dict[str, float]:
    """Projected start-up phases (seconds) for ``nodes`` x ``per`` ranks at fan-out ``k``."""
    d = height(nodes, k)
    entries = nodes * per
    size = entries * c["entry_bytes"]
    out = {
        # Level by level: a parent starts up to k children, each boots and says hello.
        "tree bootstrap": d * (c["agent_boot"] + k * c["spawn"]),
        # Every agent maps all N·P ranks from the plan before it spawns its own.
        "rank map (per agent)": entries * c["map"],
        "rank spawn + init": per * c["spawn"] + c["rank_init"],
        "start barrier": d * c["hop"],
        # Up: every level's aggregate is encoded once and decoded once on the way up
        # (the subtree sizes shrink by k per level: a geometric sum).
        "allgather up": d * c["hop_up"] + size * (c["enc"] + c["dec"]) * k / (k - 1)
        + entries * c["root_entry"],
        # Down: per level, encode+seal once, k copies through the NIC, unseal+decode.
        "allgather down": d * (c["hop_down"] + size * (c["enc"] + c["dec"]) + k * size / bw),
        "local completion": per * c["per_rank"],
        # A direct get crosses at most 2d hops (to the common ancestor and down).
        "on-demand gets": 2 * d * c["hop"],
    }
    out["total"] = sum(out.values())
    return out


def model_section(c: dict[str, float], bw: float) -> str:
    cases = [(1024, 64), (16384, 64)]
    proj = {n: model(n, p, FANOUT, c, bw) for n, p in cases}
    lines = [
        "**Scale model** (fan-out 32, 64 ranks per node, 64-byte addresses, "
        "iallgather + on-demand gets)", "",
        "Measured here (medians): tree hop up "
        f"{c['hop_up'] * 1e3:.2f} ms / down {c['hop_down'] * 1e3:.2f} ms (small messages, "
        f"15 agents sharing 2 cores); agent boot {c['agent_boot'] * 1e3:.0f} ms "
        f"(process start to hello); spawn {c['spawn'] * 1e3:.2f} ms per process; "
        f"rank spawned to PMI init {c['rank_init'] * 1e3:.0f} ms (MPICH hello); "
        f"allgather codec {c['enc'] * 1e9:.2f} ns/B encode+seal, {c['dec'] * 1e9:.2f} ns/B "
        f"unseal+decode, {c['entry_bytes']:.1f} B per 64-byte entry; root assembly "
        f"{c['root_entry'] * 1e9:.0f} ns per entry; agent work "
        f"{c['per_rank'] * 1e6:.1f} µs per local rank (one agent, 1,024 simulated ranks); "
        f"rank map {c['map'] * 1e9:.0f} ns per rank of the job, on every agent.", "",
        "Model, per phase (d = tree height, N nodes, P ranks per node, S = result bytes = "
        "N·P·entry, k = fan-out): bootstrap d·(boot + k·spawn); rank map N·P·map; "
        "ranks P·spawn + init; barrier d·hop; "
        "allgather up d·hop↑ + S·(enc+dec)·k/(k-1) + N·P·root; down d·(hop↓ + S·(enc+dec) + "
        f"k·S/B); completion P·per-rank; gets 2d·hop.  B = {bw / 1e9:.1f} GB/s per node "
        "(assumed: a 100 Gb/s link).", "",
        "Assumptions: one agent per node with a core of its own (here 64 agents share 2 "
        "cores, so the measured 64 x 1,024 run is slower than the model of 64 nodes); store "
        "and forward per level (no pipelining inside a message); the network is not "
        "congested beyond each node's link; hop latency as measured on loopback "
        "(a real network adds a few µs); bootstrap by local spawn (ssh/Slurm add their "
        "own per-level cost); ranks' own start-up is the MPICH hello's.  Not modelled: "
        "the exit path (every rank's exit status travels to the head: O(N·P) there).", "",
        "| phase | " + " | ".join(f"{n:,} nodes ({n * p:,} ranks), s" for n, p in cases) + " |",
        "|---|" + "---:|" * len(cases)]
    for phase in proj[cases[0][0]]:
        cells = " | ".join(f"{proj[n][phase]:.3f}" for n, _p in cases)
        name = f"**{phase}**" if phase == "total" else phase
        lines.append(f"| {name} | {cells} |")
    lines.append("")
    lines.append("Tree height: " + ", ".join(
        f"{n:,} nodes: {height(n, FANOUT)}" for n, _p in cases)
        + "; allgather result per node: " + ", ".join(
        f"{n * p * c['entry_bytes'] / 2**20:.1f} MiB" for n, p in cases) + ".")
    return "\n".join(lines)


# ---------------------------------------------------------------- the plot
def plot(sweeps: dict[str, dict[tuple[int, int], list[float]]]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for label, res in sweeps.items():
        pts = sorted((n * r, statistics.median(xs), min(xs), max(xs)) for (n, r), xs in
                     res.items())
        x = [p[0] for p in pts]
        ax1.errorbar(x, [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts],
                                                    [p[3] - p[1] for p in pts]],
                     marker="o", capsize=3, label=label)
        ax2.plot(x, [p[1] / p[0] * 1e6 for p in pts], marker="o", label=label)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("simulated ranks")
        ax.grid(True, alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("address exchange, s")
    ax2.set_ylabel("exchange per rank, µs")
    ax2.set_ylim(bottom=0)
    ax1.legend()
    fig.suptitle("pmrun simulated ranks: 64-byte iallgather + on-demand gets (2 cores)")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "scale.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="a short run that checks it works")
    ap.add_argument("--bandwidth", type=float, default=12.5e9,
                    help="per-node link bandwidth of the model, bytes/s (default 12.5e9)")
    args = ap.parse_args(argv)
    quick = args.quick
    load = os.getloadavg()[0]
    runs = 1 if quick else 3
    if quick:
        wide = [(64, 16), (64, 256)]
        deep = [(1, 1024), (8, 1024)]
    else:
        wide = [(64, 16), (64, 64), (64, 256), (64, 1024)]
        deep = [(1, 1024), (4, 1024), (16, 1024), (64, 1024)]
    print(f"sweep: {wide} and {deep}, {runs} run(s) each", file=sys.stderr)
    res_wide = sweep(wide, runs)
    res_deep = sweep([s for s in deep if s not in res_wide], runs)
    for s in deep:
        if s in res_wide:
            res_deep[s] = res_wide[s]
    print("profile overhead", file=sys.stderr)
    prof, events, write_s = profile_overhead(5 if quick else 21)
    per_event = mark_cost()
    print("scale model inputs", file=sys.stderr)
    enc, dec, entry_bytes, root_entry = codec_costs()
    costs = tree_costs()
    costs.update(enc=enc, dec=dec, entry_bytes=entry_bytes, root_entry=root_entry,
                 per_rank=statistics.median(res_deep[(1, 1024)]) / 1024, map=map_cost())

    off, on = statistics.median(prof["off"]), statistics.median(prof["on"])
    accounted = events * per_event + write_s
    big = res_wide.get((64, 1024)) or res_deep.get((64, 1024))
    lines = [
        "## Start-up at scale (`bench/scale.py`)", "",
        "Simulated ranks run the real agents, tree, collectives and KVS with everything "
        "but the rank processes and their sockets: each rank puts a 64-byte address, "
        "iallgathers it, gets 3 peers' addresses on demand (left, right, first rank of the "
        "next node: a direct get through the tree), checks every value and finalizes.  The "
        "exchange runs from the first rank leaving the start barrier to the last finalize. "
        f"All agents share this machine's cores; fan-out {FANOUT}; {runs} run(s) per shape, "
        "shapes interleaved." + (" **Quick run.**" if quick else ""), "",
        sweep_table("64 agents, ranks per agent growing", res_wide), "",
        sweep_table("1,024 ranks per agent, agents growing", res_deep), "",
    ]
    if big:
        lines += [f"65,536 ranks (64 x 1,024): exchange {median_range(big)} s "
                  f"(target ≤ 5.8 s, stretch ≤ 2 s).", ""]
    lines += [f"Load average (1 min) when the benchmark started: {load:.1f}; the 64-agent "
              "figures grow with whatever else runs on the machine.", ""]
    lines += [
        f"**Cost of `--profile`** (MPICH hello, 8 ranks on 2 local nodes, "
        f"{len(prof['on'])} runs interleaved): job wall time off {median_range(prof['off'])} "
        f"s, on {median_range(prof['on'])} s: {100 * (on - off) / off:+.1f} % (median vs "
        f"median; the run-to-run spread is wider than the effect).  Accounted cost: "
        f"{events} events x {per_event * 1e6:.2f} µs to record + {write_s * 1e3:.1f} ms to "
        f"write the trace and table = {accounted * 1e3:.2f} ms, "
        f"{100 * accounted / off:.2f} % of the job (target < 2 %).  Off, every hook is one "
        "`is not None` test.", "",
        model_section(costs, args.bandwidth),
    ]
    png = plot({"64 agents x R": res_wide, "M agents x 1,024": res_deep})
    if png is not None:
        lines += ["", f"![simulated ranks sweep]({png.name})"]
    write_section("scale", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
