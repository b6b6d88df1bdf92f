"""Collectives through the agent tree: fence, allgather, ring; start-up overlap; messages.

    python -m bench.collectives [--quick]

Python ranks (``bench/_coll_rank.py``, using ``pm.client``) run under
``pmrun --local-nodes M`` (M agents on this machine, each a node with its own
KVS, joined by the tree):

1. *Latency* of ``fence`` (after one 64-byte put per rank), ``allgather`` of
   64-byte values and ``ring`` of 64-byte values, for 1..64 ranks over 1..8
   nodes.  Each rank times its own calls with ``time.perf_counter``; a
   repetition's figure is the maximum over ranks, and a cell is the median
   (min-max) over repetitions.
2. *Start-up overlap*: the time until a rank's start-up returns (connect,
   publish its address) when it starts an ``iallgather`` and awaits it later,
   against a blocking ``allgather``.  The non-blocking start-up should stay
   flat as ranks grow; the blocking one waits for the slowest rank.
3. *Tree messages per agent per collective*, from the agents' counters
   (``PM_COUNT_MSGS=1`` makes each agent print ``coll-msgs vertex=V
   kind=up/down/epochs`` at its end): they must not grow with ranks per node.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bench._util import ROOT, machine, median_range, pmrun, write_section
from bench.launch import launch_env

RANK = ROOT / "bench" / "_coll_rank.py"
KINDS = ("fence", "allgather", "ring")
COUNTS = re.compile(r"^coll-msgs vertex=(\d+)(.*)$", re.M)


def run_job(nodes: int, ranks: int, args: Sequence[str], timeout: float = 600.0
            ) -> tuple[list[dict[str, Any]], dict[int, dict[str, tuple[int, int, int]]]]:
    """Rank results and per-agent message counts of one pmrun job."""
    env = launch_env()
    env["PM_COUNT_MSGS"] = "1"
    argv = [*pmrun(), "--local-nodes", str(nodes), "-n", str(ranks),
            sys.executable, str(RANK), *args]
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                       cwd=tempfile.gettempdir())
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: "
                           f"{(p.stdout + p.stderr)[-2000:]}")
    results = [json.loads(line[5:]) for line in p.stdout.splitlines()
               if line.startswith("COLL ")]
    if len(results) != ranks:
        raise RuntimeError(f"{len(results)} of {ranks} ranks reported: {p.stdout[-2000:]}")
    counts: dict[int, dict[str, tuple[int, int, int]]] = {}
    for m in COUNTS.finditer(p.stderr):
        per: dict[str, tuple[int, int, int]] = {}
        for part in m[2].split():
            kind, _, figs = part.partition("=")
            up, down, epochs = (int(x) for x in figs.split("/"))
            per[kind] = (up, down, epochs)
        counts[int(m[1])] = per
    if len(counts) != nodes:
        raise RuntimeError(f"message counts of {len(counts)} of {nodes} agents: {p.stderr}")
    return results, counts


def shapes(ranks: Sequence[int], nodes: Sequence[int]) -> list[tuple[int, int]]:
    return [(n, r) for r in ranks for n in nodes if n <= r]


# ---------------------------------------------------------------- 1 + 3. latency, messages
def latency(ranks: Sequence[int], nodes: Sequence[int], reps: int
            ) -> tuple[dict[tuple[str, int, int], list[float]],
                       dict[tuple[int, int], dict[str, tuple[float, float]]]]:
    """Per (kind, nodes, ranks): max over ranks per repetition; and per shape and kind,
    the most messages any agent sent up and down per collective."""
    times: dict[tuple[str, int, int], list[float]] = {}
    msgs: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
    for n, r in shapes(ranks, nodes):
        results, counts = run_job(n, r, ["ops", str(reps)])
        for kind in KINDS:
            times[(kind, n, r)] = [max(res[kind][i] for res in results) for i in range(reps)]
        msgs[(n, r)] = {
            kind: (max(c[kind][0] / c[kind][2] for c in counts.values()),
                   max(c[kind][1] / c[kind][2] for c in counts.values()))
            for kind in KINDS
        }
        print(f"{n} nodes, {r} ranks: " + ", ".join(
            f"{k} {statistics.median(times[(k, n, r)]) * 1e6:.0f} us" for k in KINDS),
            flush=True)
    return times, msgs


def latency_section(times: dict[tuple[str, int, int], list[float]], ranks: Sequence[int],
                    nodes: Sequence[int], reps: int) -> str:
    fmt = "{:.2f}"
    lines = [f"Milliseconds per collective: max over ranks of each repetition, median "
             f"(min\u2013max) over {reps} repetitions (one job per cell).", ""]
    for kind in KINDS:
        what = {"fence": "fence (one 64-byte put per rank before it)",
                "allgather": "allgather of 64-byte values",
                "ring": "ring of 64-byte values"}[kind]
        lines += [f"**{what}**", "",
                  "| ranks | " + " | ".join(f"{n} node{'s' if n > 1 else ''}" for n in nodes)
                  + " |", "|---|" + "---|" * len(nodes)]
        for r in ranks:
            cells = [median_range([x * 1e3 for x in times[(kind, n, r)]], fmt)
                     if (kind, n, r) in times else "" for n in nodes]
            lines.append(f"| {r} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def messages_section(msgs: dict[tuple[int, int], dict[str, tuple[float, float]]]) -> str:
    lines = ["Tree messages per agent per collective (the most any agent sent: up to its "
             "parent / down to its children), from the agents' counters:", "",
             "| nodes | ranks | ranks per node | " + " | ".join(KINDS) + " |",
             "|---|---|---|" + "---|" * len(KINDS)]
    for (n, r), per in sorted(msgs.items()):
        cells = [f"{per[k][0]:g} up / {per[k][1]:g} down" for k in KINDS]
        lines.append(f"| {n} | {r} | {r // n}{'' if r % n == 0 else '+'} | "
                     + " | ".join(cells) + " |")
    flat = all(len({per[k] for (n2, _), per in msgs.items() if n2 == n}) == 1
               for n in {n for n, _ in msgs} for k in KINDS)
    lines += ["", "For a given number of nodes the counts are the same at every number of "
              "ranks per node: O(1) in ranks per node." if flat else
              "**The counts change with ranks per node.**"]
    return "\n".join(lines)


# ---------------------------------------------------------------- 2. start-up overlap
def overlap(ranks: Sequence[int], nodes: int, launches: int
            ) -> dict[tuple[str, int], list[tuple[float, float, float]]]:
    """Per (mode, ranks): per launch, (median, max) over ranks of the start-up time after
    imports, and the max over ranks of the time until the exchange completed."""
    out: dict[tuple[str, int], list[tuple[float, float, float]]] = defaultdict(list)
    for round_ in range(launches):  # modes and sizes interleaved, launch after launch
        for r in ranks:
            for mode in ("init-nb", "init-b"):
                results, _ = run_job(min(nodes, r), r, [mode])
                st = [res["startup_after_imports"] for res in results]
                out[(mode, r)].append((statistics.median(st), max(st),
                                       max(res["exchanged"] for res in results)))
        print(f"start-up overlap: launch round {round_ + 1} of {launches} done", flush=True)
    return out


def overlap_section(got: dict[tuple[str, int], list[tuple[float, float, float]]],
                    ranks: Sequence[int], nodes: int, launches: int) -> str:
    def cell(mode: str, r: int, i: int) -> str:
        return f"{statistics.median(x[i] for x in got[(mode, r)]) * 1e3:.1f}"

    lines = [f"Start-up of a rank (connect, then publish a 64-byte address to all) on up to "
             f"{nodes} nodes, ms after its imports; median over {launches} launches of the "
             "median and of the max over ranks.  `iallgather`: start-up returns once the "
             "request is sent, the result is awaited later; `allgather`: it returns with the "
             "result.", "",
             "| ranks | iallgather: median | iallgather: max | allgather: median | "
             "allgather: max | exchange complete (max, from process start) |",
             "|---|---|---|---|---|---|"]
    for r in ranks:
        lines.append(f"| {r} | {cell('init-nb', r, 0)} | {cell('init-nb', r, 1)} | "
                     f"{cell('init-b', r, 0)} | {cell('init-b', r, 1)} | "
                     f"{cell('init-b', r, 2)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run to check that it works")
    args = ap.parse_args(argv)
    if args.quick:
        ranks, nodes, reps, launches = [1, 4, 8], [1, 2], 5, 1
    else:
        ranks, nodes, reps, launches = [1, 4, 16, 64], [1, 2, 4, 8], 30, 3
    times, msgs = latency(ranks, nodes, reps)
    got = overlap(ranks, 2, launches)
    write_section("collectives", "\n".join([
        "## Collectives through the agent tree",
        "",
        f"{machine()}. Python ranks using `pm.client`, `pmrun --local-nodes M` (M agents on "
        "this machine, each a node of the tree); `python -m bench.collectives"
        + (" --quick" if args.quick else "") + "`.",
        "",
        latency_section(times, ranks, nodes, reps),
        "### Start-up overlap",
        "",
        overlap_section(got, ranks, 2, launches),
        "",
        "### Messages",
        "",
        messages_section(msgs),
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
