"""Task ensembles on this machine: ``pmrun CMD ::: ARGS`` against GNU parallel.

    python -m bench.tasks [--quick] [--runs N]

The same command line given to both (``-j N CMD ::: ARGS``), no memory bounds
declared (pmrun's admission learns them as it goes), output to /dev/null;
wall seconds, medians (min-max) of interleaved runs after a warm-up round:

* many short tasks (``sleep 0.05``), 8 at once: what a start costs, and
  whether the slots fill while each task is shorter than a memory sample;
* as many 1-second tasks as slots: how soon every slot is busy;
* many ``true`` tasks, one per CPU thread (GNU parallel's default ``-j``).

Writes ``bench/results/tasks.md``.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys

from bench._util import interleaved, machine, median_range, release_install, timed, write_section

#: (what, -j, command, arguments) of the full run; the quick run has fewer arguments.
CASES = [
    ("200 tasks of 50 ms", "8", "sleep 0.05; : {}", 200),
    ("8 tasks of 1 s", "8", "sleep 1; : {}", 8),
    ("500 `true` tasks", None, "true {}", 500),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs and tasks")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    parallel = shutil.which("parallel")
    if parallel is None:
        print("GNU parallel is not installed (apt-get install parallel)", file=sys.stderr)
        return 1
    runs = 2 if args.quick else args.runs
    # (As the README installs it: an editable install's import finder costs every start.)
    pmrun = str(release_install().parent / "pmrun")
    rows = ["| ensemble | `-j` | pmrun | GNU parallel | pmrun / parallel |",
            "|---|---|---|---|---|"]
    for what, jobs, command, count in CASES:
        n = max(count // 5, 8) if args.quick and count > 8 else count
        tail = [*(["-j", jobs] if jobs else []), command, ":::", *map(str, range(n))]
        times = interleaved({
            "pmrun": functools.partial(timed, [pmrun, *tail]),
            "parallel": functools.partial(timed, [parallel, "--will-cite", *tail]),
        }, runs)
        ratio = sorted(times["pmrun"])[runs // 2] / sorted(times["parallel"])[runs // 2]
        if n != count:
            what = what.replace(str(count), str(n), 1)
        rows.append(f"| {what} | {jobs or 'default'} | {median_range(times['pmrun'], '{:.2f}')} "
                    f"| {median_range(times['parallel'], '{:.2f}')} | {ratio:.2f}x |")
    text = (
        "## Task ensembles: pmrun against GNU parallel\n\n"
        "The same command line to both (`-j N CMD ::: ARGS`), no memory bounds declared, "
        f"wall seconds, median (min-max) of {runs} interleaved runs after a warm-up round. "
        f"{machine()}.\n\n" + "\n".join(rows) + "\n\n"
        "pmrun admits each task under its node's memory watermarks: a command's first "
        "task starts alone, and once tasks of it showed alike sizes (measured, or counted "
        "by the kernel at the end of a task too short to sample) the rest start together.\n")
    write_section("tasks", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
