"""MPI_Comm_spawn: pmrun against MPICH's Hydra (``mpiexec`` from the same wheel).

    python -m bench.spawn [--quick] [--nodes 1,4] [--sizes 1,4,16] [--runs R] [--reps S]
                          [--no-reference] [--baseline CHECKOUT]

A C program built with the wheel's ``mpicc`` spawns N = 1, 4, 16 children of
itself, several times in a row, and times each ``MPI_Comm_spawn`` call in the
parent (``MPI_Wtime`` around it, after a barrier of the parents): the request
to the process manager, the children's start, their ``MPI_Init`` and their
connection back.  After each spawn, parents and children meet in a barrier on
the intercommunicator and disconnect; the children then finalize and exit.

* one node: ``pmrun -n 1`` against ``mpiexec -n 1``;
* 4 virtual nodes: ``pmrun --local-nodes 4 -ppn 1 -n 4`` against
  ``mpiexec -launcher fork -hosts n1,n2,n3,n4 -ppn 1 -n 4`` (four Hydra proxies
  on this machine); the 4 parents spawn together, so the children go one per
  node round-robin under both.

pmrun and Hydra jobs run interleaved, round-robin; a cell is the median
(min-max) over every timed spawn, the first spawn of each job left out (MPICH
opens its port then).  pmrun runs from the checkout (``python -m pm``): the
figure is measured inside the running job, so the launcher's start-up is not
in it.

The first spawn of each job is reported apart (median over the jobs): it also
holds what a process manager does on its first spawn.  ``--baseline CHECKOUT``
runs a second pmrun, from another checkout, interleaved with the two (printed,
not written to the results): before/after figures from one window.

For reference, the same run times a plain launch of N ranks of an
``MPI_Init``/``MPI_Finalize`` program (wall time of ``pmrun -n N`` and
``mpiexec -n N``, interleaved): a spawn of N children costs what such a launch
costs, so the two ratios side by side tell a cost of spawning from a cost of
serving N ranks' start-up on this machine.

A run of only some points (``--nodes``, ``--sizes``, ``--no-reference``,
``--baseline``) prints its tables and leaves ``bench/results/spawn.md`` alone;
the whole run writes it.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._util import (
    ROOT,
    build_c,
    interleaved,
    machine,
    median_range,
    timed,
    tool,
    write_section,
)

OUT = ROOT / "bench" / "out"
SPAWN_LINE = re.compile(r"^spawn (\d+) ([\d.]+)$", re.M)
#: pmrun/Hydra median ratio that meets the target.
TARGET = 1.0

PROGRAM = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

/* argv: N (children per spawn), REPS (spawns in a row).  A child only meets its
   parents in a barrier and leaves. */
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm parent;
    MPI_Comm_get_parent(&parent);
    if (parent != MPI_COMM_NULL) {
        MPI_Barrier(parent);
        MPI_Comm_disconnect(&parent);
        MPI_Finalize();
        return 0;
    }
    int n = atoi(argv[1]), reps = atoi(argv[2]), rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    for (int i = 0; i < reps; i++) {
        MPI_Comm inter;
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        MPI_Comm_spawn(argv[0], MPI_ARGV_NULL, n, MPI_INFO_NULL, 0, MPI_COMM_WORLD, &inter,
                       MPI_ERRCODES_IGNORE);
        double t1 = MPI_Wtime();
        MPI_Barrier(inter);
        MPI_Comm_disconnect(&inter);
        if (rank == 0) {
            printf("spawn %d %.6f\n", n, t1 - t0);
            fflush(stdout);
        }
    }
    MPI_Finalize();
    return 0;
}
"""


HELLO = r"""
#include <mpi.h>
int main(int argc, char **argv) { MPI_Init(&argc, &argv); MPI_Finalize(); return 0; }
"""


def _build(name: str, text: str) -> Path:
    src = OUT / f"{name}.c"
    OUT.mkdir(parents=True, exist_ok=True)
    if not src.exists() or src.read_text() != text:
        src.write_text(text)
    return build_c(src, OUT / name)


def launch_rows(sizes: Sequence[int], runs: int) -> list[str]:
    """Wall time of a plain launch of N ranks, pmrun against Hydra, interleaved."""
    hello = _build("spawn_bench_hello", HELLO)
    env = _env()
    rows = []
    for n in sizes:
        res = interleaved({
            "pmrun": lambda n=n: timed([sys.executable, "-m", "pm", "-n", str(n), str(hello)],
                                       env=env, cwd=tempfile.gettempdir()),
            "hydra": lambda n=n: timed([tool("mpiexec"), "-n", str(n), str(hello)], env=env,
                                       cwd=tempfile.gettempdir()),
        }, runs)
        pm_ms = [x * 1e3 for x in res["pmrun"]]
        hy_ms = [x * 1e3 for x in res["hydra"]]
        ratio = statistics.median(pm_ms) / statistics.median(hy_ms)
        rows.append(f"| 1 | {n} | {median_range(pm_ms, '{:.0f}')} | "
                    f"{median_range(hy_ms, '{:.0f}')} | {ratio:.2f}x |")
    return rows


def program() -> Path:
    return _build("spawn_bench", PROGRAM)


def _env(root: Path = ROOT) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    env.pop("MPIEXEC_TIMEOUT", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def commands(prog: Path, n: int, reps: int, nodes: int) -> dict[str, list[str]]:
    args = [str(prog), str(n), str(reps)]
    pmrun = [sys.executable, "-m", "pm"]
    if nodes == 1:
        return {"pmrun": [*pmrun, "-n", "1", *args],
                "hydra": [tool("mpiexec"), "-n", "1", *args]}
    hosts = ",".join(f"n{i + 1}" for i in range(nodes))
    return {"pmrun": [*pmrun, "--local-nodes", str(nodes), "-ppn", "1", "-n", str(nodes),
                      *args],
            "hydra": [tool("mpiexec"), "-launcher", "fork", "-hosts", hosts, "-ppn", "1",
                      "-n", str(nodes), *args]}


def runner(argv: Sequence[str], samples: list[float], failures: list[str],
           firsts: list[float], root: Path = ROOT) -> Callable[[], float]:
    """One job: its spawn times (all but the first) go to ``samples``, the first to
    ``firsts``; a failed job (MPICH's shared-memory transport sometimes fails a spawn,
    under both launchers) is noted in ``failures`` and its figures dropped."""
    env = _env(root)

    def run() -> float:
        p = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=300,
                           cwd=tempfile.gettempdir())
        times = [float(m.group(2)) for m in SPAWN_LINE.finditer(p.stdout)]
        if p.returncode != 0:
            why = [line for line in p.stderr.splitlines()
                   if line.startswith(("pmrun:", "Abort", "="))][:1]
            failures.append(f"{argv[0].rsplit('/', 1)[-1]} exited {p.returncode}"
                            + (f" ({why[0][:120]})" if why else ""))
            return 0.0
        samples.extend(times[1:])
        firsts.extend(times[:1])
        return statistics.median(times[1:]) if len(times) > 1 else 0.0

    return run


def measure(prog: Path, sizes: Sequence[int], nodes: int, runs: int, reps: int,
            baseline: Path | None = None) -> tuple[list[str], list[str], list[str]]:
    rows, notes, firsts_rows = [], [], []
    for n in sizes:
        samples: dict[str, list[float]] = {"pmrun": [], "hydra": [], "baseline": []}
        firsts: dict[str, list[float]] = {"pmrun": [], "hydra": [], "baseline": []}
        failures: list[str] = []
        cmds = commands(prog, n, reps, nodes)
        contenders = {k: runner(v, samples[k], failures, firsts[k]) for k, v in cmds.items()}
        if baseline is not None:
            contenders["baseline"] = runner(cmds["pmrun"], samples["baseline"], failures,
                                            firsts["baseline"], baseline)
        interleaved(contenders, runs, warmup=1)
        pm_ms = [x * 1e3 for x in samples["pmrun"]]
        hy_ms = [x * 1e3 for x in samples["hydra"]]
        if baseline is not None and samples["baseline"] and hy_ms:
            base_ms = [x * 1e3 for x in samples["baseline"]]
            print(f"baseline {baseline}: {nodes} node(s), N={n}: "
                  f"{median_range(base_ms, '{:.0f}')} ms, "
                  f"{statistics.median(base_ms) / statistics.median(hy_ms):.2f}x Hydra; "
                  f"first spawn {statistics.median(firsts['baseline']) * 1e3:.0f} ms",
                  flush=True)
        if firsts["pmrun"] and firsts["hydra"]:
            f_pm = [x * 1e3 for x in firsts["pmrun"]]
            f_hy = [x * 1e3 for x in firsts["hydra"]]
            firsts_rows.append(
                f"| {nodes} | {n} | {median_range(f_pm, '{:.0f}')} | "
                f"{median_range(f_hy, '{:.0f}')} | "
                f"{statistics.median(f_pm) / statistics.median(f_hy):.2f}x |")
        if not pm_ms or not hy_ms:
            rows.append(f"| {nodes} | {n} | - | - | - | no figures ({'; '.join(failures)}) |")
            continue
        ratio = statistics.median(pm_ms) / statistics.median(hy_ms)
        verdict = "met" if ratio <= TARGET else "missed"
        rows.append(f"| {nodes} | {n} | {median_range(pm_ms, '{:.0f}')} | "
                    f"{median_range(hy_ms, '{:.0f}')} | {ratio:.2f}x | {verdict} |")
        if failures:
            notes.append(f"{nodes} node(s), N={n}: {len(failures)} job(s) failed and were "
                         f"left out ({', '.join(sorted(set(failures)))})")
    return rows, notes, firsts_rows


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs")
    ap.add_argument("--nodes", type=_ints, default=[1, 4], help="node counts (1,4)")
    ap.add_argument("--sizes", type=_ints, default=[1, 4, 16], help="children (1,4,16)")
    ap.add_argument("--runs", type=int, help="jobs of each launcher per point")
    ap.add_argument("--reps", type=int, help="spawns in a job")
    ap.add_argument("--no-reference", action="store_true", help="skip the plain launches")
    ap.add_argument("--baseline", type=Path, help="also run pmrun from this checkout")
    args = ap.parse_args(argv)
    runs, reps = (3, 3) if args.quick else (6, 4)
    runs, reps = args.runs or runs, args.reps or reps
    sizes = args.sizes
    prog = program()
    rows: list[str] = []
    notes: list[str] = []
    firsts: list[str] = []
    for nodes in args.nodes:
        r, n, f = measure(prog, sizes, nodes, runs, reps, args.baseline)
        rows += r
        notes += n
        firsts += f
    reference = [] if args.no_reference else launch_rows(sizes, runs)
    load = os.getloadavg()[0]
    text = "\n".join([
        "## MPI_Comm_spawn",
        "",
        f"{machine()}. Time of one `MPI_Comm_spawn` of N children (C, MPICH wheel), "
        f"measured in the parent: request, children's start, their `MPI_Init` and "
        f"connection. pmrun and Hydra jobs interleaved, {runs} jobs each of {reps} spawns "
        f"(the first of each job left out); median (min-max) in ms. Target: pmrun/Hydra "
        f"<= {TARGET:.1f}x.",
        "",
        "| nodes | N | pmrun (ms) | Hydra (ms) | pmrun/Hydra | target |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        *(f"- {note}" for note in notes),
        "",
        "First spawn of each job, same run (median over the jobs, ms): what a process "
        "manager does on its first spawn (pmrun's one-node jobs run their spawned jobs in "
        "the quick phase, pm.agent.quick_spawns, with nothing more to load than a spawn "
        "costs). Target: pmrun/Hydra <= 1.0x as well.",
        "",
        "| nodes | N | pmrun (ms) | Hydra (ms) | pmrun/Hydra |",
        "|---|---|---|---|---|",
        *firsts,
        "",
        *([] if not reference else [
            "Reference, same run: wall time of a plain launch of N ranks of an "
            "`MPI_Init`/`MPI_Finalize` program (ms).",
            "",
            "| nodes | N | pmrun (ms) | Hydra (ms) | pmrun/Hydra |",
            "|---|---|---|---|---|",
            *reference,
            ""]),
        f"Load average when the run ended: {load:.1f} on {os.cpu_count()} CPUs.",
    ])
    # Only the whole table (every node count and size, the reference) replaces the results.
    partial = (args.nodes != [1, 4] or sizes != [1, 4, 16] or args.no_reference
               or args.baseline is not None)
    if partial:
        print(text)
    else:
        write_section("spawn", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
