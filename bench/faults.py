"""The fault matrix: every way a job can go wrong, many times, and what pmrun left behind.

    python -m bench.faults [--runs N] [--ci] [--case CASE[,CASE...]] [--json FILE]
    python -m bench.faults --merge FILE [FILE...]

A full matrix takes hours on a small machine: run it in chunks, one case and a
number of runs at a time, each chunk's tallies saved with ``--json``; then
``--merge`` adds the chunks up (by case) and writes the table.

Each case (``bench/_fault_cases.py``: ranks exiting, killed by a signal,
aborting or closing PMI early; pmrun and agents killed or stopped; SIGTERM
and SIGINT; a namespace host's link cut; hypothesis-made PMI-1, PMI-2 and
native input; strangers on the tree ports; sequential jobs on persistent
agents; concurrent jobs; output floods into a slow reader; 100 MB of stdin
from a file and from a pipe) runs N times (default 100).  ``--ci`` is the
short version CI runs: 6 runs of one case or two of each kind (those marked
``ci``).  A run (``bench/_fault_harness.py``) is measured for:

* **hang**: pmrun still running at the run's deadline (then killed);
* **wrong rc**: an exit status other than the case's;
* **unnamed**: the cause the case expects not said on stderr (or a message it
  must not print, such as a node "lost" in the flood case);
* **traceback**: a Python traceback on pmrun's stderr;
* **procs**: processes of the run (they carry its token) alive 10 s after
  pmrun ended;
* **files**: new ``/dev/shm`` files nobody maps or holds, new pmrun files in
  ``/tmp``, after the run;
* **peak RSS**: the largest pmrun peak (``wait4``), first vs last runs;
* persistent agents: the services' RSS and open fds before the first job and
  after the last.

The table goes to ``bench/results/faults.md`` (a section of ``bench/REPORT.md``).
The exit status is 1 when any count is not 0.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from bench._fault_cases import CASES, FUZZ, SENT, Case
from bench._fault_harness import Run
from bench._util import machine, write_section

TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Tally:
    case: Case
    runs: int = 0
    hangs: int = 0
    wrong_rc: int = 0
    unnamed: int = 0
    tracebacks: int = 0
    procs: int = 0
    files: int = 0
    others: int = 0
    peaks: list[int] = field(default_factory=list)
    agent_peaks: list[int] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""
    samples: list[str] = field(default_factory=list)
    other_samples: list[str] = field(default_factory=list)
    attributed: int = 0  # runs whose files were told apart (ours / other jobs')
    extra: list[dict[str, object]] = field(default_factory=list)

    def add(self, r: Run) -> None:
        c = self.case
        self.runs += 1
        self.attributed += 1
        bad: list[str] = []
        if r.hung:
            self.hangs += 1
            bad.append("hung")
        elif c.expect_rc is not None and r.rc not in c.expect_rc:
            self.wrong_rc += 1
            bad.append(f"rc {r.rc}")
        if not r.hung and ((c.cause and not re.search(c.cause, r.err))
                           or (c.forbidden and re.search(c.forbidden, r.err))):
            self.unnamed += 1
            bad.append("cause")
        if TRACEBACK in r.err:
            self.tracebacks += 1
            bad.append("traceback")
        if r.leftovers:
            self.procs += 1
            bad.append(f"procs {r.leftovers[:3]}")
        if r.files:
            self.files += 1
            bad.append(f"files {r.files[:3]}")
        if r.extra.get("others_files"):
            self.others += 1
            if len(self.other_samples) < 3:
                self.other_samples.append(", ".join(r.extra["others_files"][:3]))
        if "action_error" in r.extra:
            bad.append(f"harness: {r.extra['action_error']}")
        self.peaks.append(r.peak_kb)
        self.agent_peaks.append(r.agent_peak_kb)
        self.extra.append(r.extra)
        if bad and len(self.samples) < 3:
            tail = r.err.strip().splitlines()[-3:]
            self.samples.append(f"{'; '.join(bad)} | stderr: {' / '.join(tail)[:300]}")

    def to_json(self) -> dict[str, Any]:
        return {"case": self.case.name, "runs": self.runs, "hangs": self.hangs,
                "wrong_rc": self.wrong_rc, "unnamed": self.unnamed,
                "tracebacks": self.tracebacks, "procs": self.procs, "files": self.files,
                "others": self.others, "attributed": self.attributed,
                "other_samples": self.other_samples,
                "peaks": self.peaks, "agent_peaks": self.agent_peaks, "seconds": self.seconds,
                "skipped": self.skipped,
                "samples": self.samples, "extra": [_plain(e) for e in self.extra]}

    def merge(self, d: dict[str, Any]) -> None:
        """Add a chunk's tallies (``to_json``) to these."""
        for k in ("runs", "hangs", "wrong_rc", "unnamed", "tracebacks", "procs", "files"):
            setattr(self, k, getattr(self, k) + int(d[k]))
        self.others += int(d.get("others", 0))
        self.attributed += int(d.get("attributed", 0))
        self.other_samples = (self.other_samples + list(d.get("other_samples", [])))[:3]
        self.peaks += [int(p) for p in d["peaks"]]
        self.agent_peaks += [int(p) for p in d.get("agent_peaks", [])]
        self.seconds += float(d["seconds"])
        self.skipped = self.skipped or str(d["skipped"])
        self.samples = (self.samples + list(d["samples"]))[:3]
        self.extra += list(d["extra"])

    @property
    def clean(self) -> bool:
        return not (self.hangs or self.wrong_rc or self.unnamed or self.tracebacks
                    or self.procs or self.files)


def run_case(case: Case, runs: int) -> Tally:
    tally = Tally(case)
    t0 = time.monotonic()
    with ExitStack() as stack:
        try:
            ctx = case.setup(stack) if case.setup is not None else None
        except Exception as exc:  # no namespaces here, say: the case is skipped, and why
            tally.skipped = str(exc)
            return tally
        for i in range(runs):
            tally.add(case.once(ctx))
            if (i + 1) % 10 == 0 or i + 1 == runs:
                print(f"{case.name}: {i + 1}/{runs} runs, hangs {tally.hangs}, wrong rc "
                      f"{tally.wrong_rc}, unnamed {tally.unnamed}, procs {tally.procs}, "
                      f"files {tally.files}", flush=True)
    tally.seconds = time.monotonic() - t0
    return tally


def _plain(e: dict[str, object]) -> dict[str, object]:
    """A run's extra figures, JSON-safe (int keys become strings; back with int())."""
    return json.loads(json.dumps(e, default=str))


def others(t: Tally) -> str:
    """Runs that saw other jobs' new /dev/shm files (of the runs that told them apart)."""
    if not t.attributed:
        return "–"
    return f"{t.others}" + (f" (of {t.attributed})" if t.attributed != t.runs else "")


def _mb(kb: float) -> str:
    return f"{kb / 1024:.0f}"


def growth(t: Tally) -> str:
    if not t.peaks:
        return ""
    k = max(1, min(3, len(t.peaks) // 3))
    first, last = statistics.median(t.peaks[:k]), statistics.median(t.peaks[-k:])
    return f"{_mb(max(t.peaks))} ({_mb(first)} → {_mb(last)})"


def table(tallies: list[Tally], runs: int | None, ci: bool) -> str:
    per = f"{runs} runs per case" if runs else "runs per case as listed"
    lines = [f"Machine: {machine()}.  {per}"
             f"{' (the CI version)' if ci else ''}; counts are runs with the problem.  "
             "Shared machine: other jobs ran meanwhile (files of theirs could be counted).", "",
             "| case | what | runs | hangs | wrong rc | unnamed cause | tracebacks | "
             "leftover procs | leftover files | other jobs' files | "
             "pmrun peak RSS MB (first → last) | agent peak RSS MB | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in tallies:
        if t.skipped:
            lines.append(f"| {t.case.name} | {t.case.what} | skipped: {t.skipped} "
                         "| | | | | | | | | | |")
            continue
        lines.append(
            f"| {t.case.name} | {t.case.what} | {t.runs} | {t.hangs} | {t.wrong_rc} | "
            f"{t.unnamed} | {t.tracebacks} | {t.procs} | {t.files} | {others(t)} | {growth(t)} | "
            f"{_mb(max(t.agent_peaks, default=0)) if any(t.agent_peaks) else '–'} | "
            f"{t.seconds / max(1, t.runs):.1f} |")
    total = sum(t.runs for t in tallies)
    bad = [t for t in tallies if not t.clean and not t.skipped]
    lines += ["", f"{total} runs; {len(bad)} of {len(tallies)} cases with a non-zero count."]
    fuzz = ", ".join(f"{k} {v:,}" for k, v in SENT.items() if v)
    if fuzz:
        lines.append(f"Malformed input sent (PMI-1 lines; PMI-2 and native frames, about): "
                     f"{fuzz}.")
    for t in tallies:
        extra = [e for e in t.extra if e]
        if t.case.name == "strangers" and extra:
            grow = max(float(str(e.get("rss_growth_kb", 0))) for e in extra)
            ports = max(int(str(e.get("ports", 0))) for e in extra)
            lines.append(f"Strangers: {ports} tree ports attacked per run; the largest RSS "
                         f"growth of pmrun or an agent during the attack: {grow / 1024:.1f} MB.")
        if t.case.name == "persistent-seq" and extra:
            start = extra[-1].get("service_start", {})
            end = extra[-1].get("service", {})
            if isinstance(start, dict) and isinstance(end, dict):
                start = {str(k): v for k, v in start.items()}
                end = {str(k): v for k, v in end.items()}
                parts = [f"{start[p][0] / 1024:.0f} → {end[p][0] / 1024:.0f} MB RSS, "
                         f"{start[p][1]} → {end[p][1]} fds" for p in start if p in end]
                lines.append(f"Persistent services over {t.runs} jobs: " + "; ".join(parts)
                             + ".")
    for t in bad:
        lines.append(f"\n**{t.case.name}**: " + "<br>".join(t.samples))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--runs", type=int, default=0, help="runs per case (default 100; --ci 6)")
    ap.add_argument("--ci", action="store_true", help="the short version CI runs")
    ap.add_argument("--quick", action="store_true", help="as --ci (python -m bench --quick)")
    ap.add_argument("--only", "--case", dest="only", default="",
                    help="comma-separated case names")
    ap.add_argument("--json", default="", help="also save the tallies here (a chunk)")
    ap.add_argument("--merge", nargs="+", default=[], metavar="FILE",
                    help="add up chunks saved with --json and write the table")
    ap.add_argument("--fuzz", type=int, default=FUZZ[0],
                    help=f"malformed lines or frames per run (default {FUZZ[0]})")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    args = ap.parse_args(argv)
    if args.list:
        for c in CASES:
            print(f"{c.name:22} {'ci ' if c.ci else '   '}{c.what}")
        return 0
    if args.merge:
        return merge(args.merge)
    FUZZ[0] = args.fuzz
    ci = args.ci or args.quick
    runs = args.runs or (6 if ci else 100)
    only = {n for n in args.only.split(",") if n}
    cases = [c for c in CASES if (not only or c.name in only) and (c.ci or not ci or only)]
    unknown = only - {c.name for c in CASES}
    if unknown:
        ap.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    tallies = [run_case(c, runs) for c in cases]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sent": SENT, "tallies": [t.to_json() for t in tallies]}, f)
    else:
        write_section("faults", "## Fault matrix (`bench/faults.py`)\n\n"
                      + table(tallies, runs, ci))
    return 0 if all(t.clean for t in tallies) else 1


def merge(paths: list[str]) -> int:
    """Add up chunks (``--json``) by case, in the matrix's order, and write the table."""
    by_name = {c.name: c for c in CASES}
    tallies: dict[str, Tally] = {}
    for path in paths:
        with open(path) as f:
            chunk = json.load(f)
        for k, v in chunk["sent"].items():
            SENT[k] = SENT.get(k, 0) + int(v)
        for d in chunk["tallies"]:
            t = tallies.setdefault(d["case"], Tally(by_name[d["case"]]))
            t.merge(d)
    ordered = [tallies[c.name] for c in CASES if c.name in tallies]
    write_section("faults", "## Fault matrix (`bench/faults.py`)\n\n"
                  + table(ordered, None, False))
    return 0 if all(t.clean for t in ordered) else 1


if __name__ == "__main__":
    sys.exit(main())
