"""Memory-controlled ensembles: pmrun --tasks against GNU parallel --memfree and no control.

    python -m bench.memory [--quick]

One ensemble of tasks of mixed sizes (each allocates and writes a known
amount, holds it a while, exits), whose sizes add up to 2-3x the memory
cap, run inside a fresh memory-capped cgroup (no swap) by:

* ``pmrun --tasks`` with each task's bound in the file (``[mem=SIZE]``),
  default watermarks (high 90 %, low 80 % of the cgroup's limit);
* ``pmrun --tasks`` without bounds: reservations learned from finished
  tasks of the same command (a guess for the first ones);
* GNU ``parallel -j0 --memfree SIZE`` (SIZE: the largest task), which reads
  free memory from /proc/meminfo: as is, that is the machine's memory, not
  the cgroup's; so it also runs with ``awk`` shimmed to report the cgroup's
  free memory (what LXCFS does for containers), its fair best case;
* ``parallel -j0``: no memory control at all.

The contenders run round-robin, each in its own fresh cgroup per run.
Reported per contender: makespan, the kernel's peak usage of the cgroup
(``memory.max_usage_in_bytes`` / ``memory.peak``: includes page cache),
OOM kills, tasks that failed for good, and, for parallel --memfree, the
jobs it killed and re-ran itself.  Also: a lower bound of the makespan
(memory x time of all tasks / high watermark, or the longest task).

Needs root and a memory cgroup hierarchy.  Writes ``bench/results/memory.md``
and ``bench/results/memory.png`` (usage over time of one run of each).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench._util import ROOT, machine, median_range, pmrun, write_section

sys.path.insert(0, str(ROOT / "tests"))
from cgroup_util import CgroupUnavailable, MemCgroup, capped_cgroup

MiB = 1 << 20

TOUCH = """\
import sys, time
b = bytearray(b'x') * (int(sys.argv[1]) << 20)
time.sleep(float(sys.argv[2]))
"""

# awk as parallel calls it for --memfree (the sum of MemFree, Buffers, Cached,
# SwapCached in kB), answered from the cgroup of the run instead (parallel runs it
# with a cleaned environment, so the path is written in): limit - usage +
# inactive page cache.  Any other call goes to awk.
AWK_SHIM = """\
#!/bin/sh
case "$*" in
*/proc/meminfo*)
    cg={cg}
    if [ -f "$cg/memory.max" ]; then
        limit=$(cat "$cg/memory.max"); usage=$(cat "$cg/memory.current"); key=inactive_file
    else
        limit=$(cat "$cg/memory.limit_in_bytes"); usage=$(cat "$cg/memory.usage_in_bytes")
        key=total_inactive_file
    fi
    inactive=$(sed -n "s/^$key //p" "$cg/memory.stat")
    echo $(( (limit - usage + inactive) / 1024 ))
    ;;
*) exec {awk} "$@" ;;
esac
"""

#: (MiB touched, seconds held, count) of the full and of the quick ensemble.
FULL = [(24, 0.6, 12), (64, 0.8, 8), (160, 1.0, 4)]
QUICK = [(24, 0.5, 8), (64, 0.6, 6), (160, 0.8, 3)]
CAP = 512 * MiB


@dataclass
class Run:
    seconds: float
    peak: int | None
    oom_kills: int
    failed: int
    rerun: int = 0  # jobs parallel killed and ran again
    trace: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class Setup:
    work: Path
    touch: Path
    tasks: list[tuple[int, float]]  # (MiB, seconds) in file order

    def lines(self, bounds: bool) -> list[str]:
        out = []
        for mib, secs in self.tasks:
            line = f"{sys.executable} -S {self.touch} {mib} {secs}"
            # Bound: what it touches plus the interpreter's own few MiB.
            out.append(f"[mem={mib + 8}M] {line}" if bounds else line)
        return out


def _sample(cg: MemCgroup, stop: threading.Event, trace: list[tuple[float, int]]) -> None:
    t0 = time.monotonic()
    while not stop.is_set():
        try:
            trace.append((time.monotonic() - t0, cg.current()))
        except OSError:
            return
        stop.wait(0.02)  # the sampling period of the plot


def _in_cgroup(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
               prepare: Callable[[MemCgroup], None] | None = None) -> tuple[Run, str]:
    with capped_cgroup(CAP) as cg:
        if prepare is not None:
            prepare(cg)
        stop = threading.Event()
        trace: list[tuple[float, int]] = []
        sampler = threading.Thread(target=_sample, args=(cg, stop, trace))
        sampler.start()
        t0 = time.perf_counter()
        proc = subprocess.run(cg.wrap(argv), env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=600)
        seconds = time.perf_counter() - t0
        stop.set()
        sampler.join()
        return Run(seconds, cg.peak(), cg.oom_kills(), proc.returncode, trace=trace), \
            proc.stderr.decode(errors="replace")


def run_pmrun(s: Setup, bounds: bool) -> Run:
    path = s.work / ("bounded.txt" if bounds else "unbounded.txt")
    path.write_text("\n".join(s.lines(bounds)) + "\n")
    # -j 0: memory is the only limit, as for parallel -j0 (pmrun's default is one per core).
    run, err = _in_cgroup([*pmrun(), "-j", "0", "--tasks", str(path)], cwd=s.work)
    # The exit status says only whether all succeeded: take the count from the summary.
    m = re.search(r"^\d+ tasks: \d+ succeeded, (\d+) failed", err, re.M)
    run.failed = int(m.group(1)) if m else len(s.tasks)
    return run


def run_parallel(s: Setup, memfree: str | None, shim: bool) -> Run:
    path = s.work / "plain.txt"
    path.write_text("\n".join(s.lines(False)) + "\n")
    log = s.work / "joblog"
    argv = ["parallel", "-j0", "--joblog", str(log)]
    if memfree is not None:
        argv += ["--memfree", memfree]
    argv += ["--arg-file", str(path)]
    env = dict(os.environ)
    if shim:
        env["PATH"] = f"{s.work / 'shim'}:{env['PATH']}"
    run, _ = _in_cgroup(argv, env=env, cwd=s.work,
                        prepare=(lambda cg: write_shim(s, cg)) if shim else None)
    # Joblog: Seq Host Starttime JobRuntime Send Receive Exitval Signal Command; a job
    # --memfree killed and ran again has a row per run: the last one decides.
    last: dict[str, tuple[str, str]] = {}
    rows = 0
    for line in log.read_text().splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) >= 9:
            rows += 1
            last[cols[0]] = (cols[6], cols[7])
    run.failed = len(s.tasks) - sum(v == ("0", "0") for v in last.values())
    run.rerun = rows - len(last)
    return run


def write_shim(s: Setup, cg: MemCgroup) -> None:
    """An ``awk`` that answers parallel's free-memory question from ``cg``."""
    shim = s.work / "shim"
    shim.mkdir(exist_ok=True)
    awk = shutil.which("awk") or "/usr/bin/awk"
    (shim / "awk").write_text(AWK_SHIM.format(awk=awk, cg=shlex.quote(str(cg.path))))
    (shim / "awk").chmod(0o755)


def lower_bound(tasks: list[tuple[int, float]], high: int) -> float:
    area = sum((mib + 8) * MiB * secs for mib, secs in tasks)
    return max(area / high, max(secs for _, secs in tasks))


def plot(traces: dict[str, list[tuple[float, int]]], high: int, ratio: float,
         path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, trace in traces.items():
        if trace:
            ax.plot([t for t, _ in trace], [b / MiB for _, b in trace], label=name, lw=1.2)
    ax.axhline(CAP / MiB, color="red", ls="--", lw=1, label="cgroup limit")
    ax.axhline(high / MiB, color="black", ls=":", lw=1, label="pmrun high watermark")
    ax.set_xlabel("seconds")
    ax.set_ylabel("cgroup memory usage (MiB)")
    ax.set_title(f"One ensemble ({ratio:.1f}x the limit), one run of each")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small ensemble, one round")
    args = ap.parse_args()
    spec = QUICK if args.quick else FULL
    rounds = 1 if args.quick else 3
    if shutil.which("parallel") is None:
        print("GNU parallel is not installed", file=sys.stderr)
        return 1
    tasks: list[tuple[int, float]] = []
    # Interleave sizes so that every stretch of the file mixes small and big.
    pending = [[(mib, secs)] * n for mib, secs, n in spec]
    while any(pending):
        for group in pending:
            if group:
                tasks.append(group.pop())
    total = sum(mib for mib, _ in tasks) * MiB
    high = CAP * 9 // 10
    biggest = max(mib for mib, _ in tasks) + 8
    with tempfile.TemporaryDirectory(prefix="pmbench-mem-") as tmp:
        s = Setup(Path(tmp), Path(tmp) / "touch.py", tasks)
        s.touch.write_text(TOUCH)
        contenders: dict[str, Callable[[], Run]] = {
            "pmrun --tasks, bounds given": lambda: run_pmrun(s, True),
            "pmrun --tasks, bounds learned": lambda: run_pmrun(s, False),
            f"parallel -j0 --memfree {biggest}M, cgroup-aware free": lambda: run_parallel(
                s, f"{biggest}M", True),
            f"parallel -j0 --memfree {biggest}M, as is": lambda: run_parallel(
                s, f"{biggest}M", False),
            "parallel -j0 (no control)": lambda: run_parallel(s, None, False),
        }
        results: dict[str, list[Run]] = {name: [] for name in contenders}
        try:
            for _ in range(rounds):
                for name, fn in contenders.items():
                    results[name].append(fn())
                    r = results[name][-1]
                    print(f"{name}: {r.seconds:.2f} s, peak "
                          f"{(r.peak or 0) / MiB:.0f} MiB, {r.oom_kills} OOM kills, "
                          f"{r.failed} failed, {r.rerun} re-run", file=sys.stderr, flush=True)
        except CgroupUnavailable as exc:
            print(f"no memory-capped cgroup: {exc}", file=sys.stderr)
            return 1
    rows = []
    for name, runs in results.items():
        peaks = [r.peak / MiB for r in runs if r.peak is not None]
        rows.append(
            f"| {name} | {median_range([r.seconds for r in runs], '{:.2f}')} | "
            f"{median_range(peaks, '{:.0f}') if peaks else 'n/a'} | "
            f"{sum(r.oom_kills for r in runs)} | {sum(r.failed for r in runs)} | "
            f"{sum(r.rerun for r in runs)} |")
    sizes = ", ".join(f"{n} x {mib} MiB for {secs:g} s" for mib, secs, n in spec)
    ok = results["pmrun --tasks, bounds given"]
    pm_ok = all(r.oom_kills == 0 and r.failed == 0 for r in ok)
    pm_peak = max((r.peak or 0) for r in ok)
    lines = [
        "## Memory-controlled ensembles",
        "",
        f"{len(tasks)} tasks ({sizes}; {total / MiB:.0f} MiB in all, "
        f"{total / CAP:.1f}x the limit) in a fresh cgroup capped at {CAP // MiB} MiB "
        f"without swap, per run; {rounds} round(s), contenders interleaved; "
        f"medians (min-max). {machine()}.",
        "",
        "| contender | makespan (s) | kernel peak (MiB) | OOM kills | failed tasks | "
        "jobs killed & re-run |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"Lower bound of the makespan: {lower_bound(tasks, high):.2f} s (memory x time of "
        f"all tasks over the {high / MiB:.0f} MiB high watermark). pmrun's high watermark: "
        f"{high / MiB:.0f} MiB (90 %); its worst kernel peak {pm_peak / MiB:.0f} MiB "
        f"({'under' if pm_peak <= high else 'OVER'} high; the kernel's peak counts page cache "
        f"too), {'no OOM kill, no failure' if pm_ok else 'FAILURES, see above'}. "
        "OOM kills and failures are totals over all rounds. GNU parallel's --memfree reads "
        "/proc/meminfo, the machine's memory: as is it sees gigabytes free inside the "
        "cgroup; 'cgroup-aware free' gives it the cgroup's free memory instead.",
    ]
    png = ROOT / "bench" / "results" / "memory.png"
    if plot({name: runs[0].trace for name, runs in results.items()}, high, total / CAP, png):
        lines += ["", "![cgroup memory usage over one run of each](memory.png)"]
    write_section("memory", "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
