"""Run every benchmark and assemble ``bench/REPORT.md``.

    python -m bench [--quick] [--only NAME[,NAME...]] [--no-run] [--timeout S]

``--only`` runs some benchmarks and keeps the others' sections from their last run.

Runs each benchmark module that exists, in a fixed order (then any other
``bench/NAME.py`` that writes a report section), each as its own
``python -m bench.NAME [--quick]`` subprocess from the checkout.  A benchmark
that fails or times out is named in the report with the end of its output;
the others go on.  Each one's full output is kept in
``bench/results/NAME.log``.

The report: a header (machine, date, commit, whether the run was quick), a
summary table (benchmark, status, time), then each section of this run from
``bench/results/NAME.md`` with its plots (``bench/results/NAME*.png``) linked.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._util import RESULTS, ROOT, machine

BENCH = ROOT / "bench"
REPORT = BENCH / "REPORT.md"
#: The order of the report; other modules that write a section come after, by name.
ORDER = ("launch", "collectives", "kvs_get", "topology", "memory", "hosts", "scale")
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


@dataclass
class Outcome:
    name: str
    status: str  # "ok", "failed (exit N)", "timed out", "not run"
    seconds: float = 0.0
    tail: str = ""
    section: str = ""


def benches() -> list[str]:
    """Modules to run: ORDER's that exist, then other section writers by name."""
    present = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")}
    extra = sorted(n for n in present - set(ORDER)
                   if "write_section" in (BENCH / f"{n}.py").read_text(errors="replace"))
    return [n for n in ORDER if n in present] + extra


def run_one(name: str, quick: bool, timeout: float) -> Outcome:
    """``python -m bench.NAME [--quick]``; its output goes to results/NAME.log."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{name}.log"
    argv = [sys.executable, "-m", f"bench.{name}", *(["--quick"] if quick else [])]
    print(f"bench: {' '.join(argv[1:])}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    with log.open("wb") as out:
        try:
            proc = subprocess.run(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.perf_counter() - t0
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
    if code is None:
        status = f"timed out after {timeout:g} s"
    elif code != 0:
        status = f"failed (exit {code})"
    else:
        status = "ok"
    print(f"bench: {name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return Outcome(name, status, seconds, tail)


def section_of(name: str, since: float | None) -> str:
    """results/NAME.md (if written at or after ``since``) with its image links fixed
    to be relative to bench/, and links to its plots that it does not show itself."""
    md = RESULTS / f"{name}.md"
    if not md.exists() or (since is not None and md.stat().st_mtime < since):
        return ""
    text = md.read_text(errors="replace").rstrip()

    def relink(m: re.Match[str]) -> str:
        target = m[2]
        if "://" in target or target.startswith("/") or "/" in target:
            return m[0]
        return f"![{m[1]}](results/{target})"

    text = IMAGE.sub(relink, text)
    shown = {Path(m[2]).name for m in IMAGE.finditer(text)}
    for png in sorted(RESULTS.glob(f"{name}*.png")):
        if png.name not in shown and (since is None or png.stat().st_mtime >= since):
            text += f"\n\n![{png.stem}](results/{png.name})"
    return text


def commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def assemble(outcomes: Sequence[Outcome], quick: bool, only: str = "") -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# pmrun benchmark report", "",
        f"* Machine: {machine()}",
        f"* Date: {now}",
        f"* Commit: {commit()}",
        f"* Run: `python -m bench{' --quick' if quick else ''}"
        f"{f' --only {only}' if only else ''}`"
        + (" (quick: short runs that check the benchmarks work; not for citing)"
           if quick else ""),
        "",
        "Every figure is a median (min\u2013max) over runs on this machine; contenders are "
        "interleaved in the same run.  Each benchmark's full output is in "
        "`bench/results/NAME.log`.", "",
        "| benchmark | status | time |", "|---|---|---:|",
    ]
    for o in outcomes:
        if o.status != "not run":
            lines.append(f"| [{o.name}](#{o.name}) | {o.status} | {o.seconds:.0f} s |")
        elif o.section:
            lines.append(f"| [{o.name}](#{o.name}) | not run here: section of an earlier run | |")
        else:
            lines.append(f"| {o.name} | not run, no section yet | |")
    for o in outcomes:
        lines += ["", f'<a id="{o.name}"></a>', ""]
        if o.section:
            lines.append(o.section)
        else:
            lines.append(f"## {o.name}")
        if o.status not in ("ok", "not run"):
            lines += ["", f"**`python -m bench.{o.name}` {o.status}.** Last lines of its "
                      "output:", "", "```", o.tail or "(no output)", "```"]
        elif not o.section:
            lines += ["", f"(`bench.{o.name}` wrote no section to bench/results/{o.name}.md)"]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    ap.add_argument("--only", default="", help="comma-separated benchmark names to run")
    ap.add_argument("--no-run", action="store_true",
                    help="only assemble the report from the sections already written")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds each benchmark may take (default 3600, 900 with --quick)")
    args = ap.parse_args(argv)
    names = benches()
    wanted = names
    if args.only:
        wanted = [n for n in args.only.split(",") if n]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            ap.error(f"no benchmark named {', '.join(unknown)} (have: {', '.join(names)})")
    timeout = args.timeout or (900.0 if args.quick else 3600.0)
    outcomes = []
    for name in names:
        if name not in wanted:
            # Not run this time: the report keeps its section from the run that wrote it.
            o = Outcome(name, "not run", section=section_of(name, None))
        elif args.no_run:
            o = Outcome(name, "not run", section=section_of(name, None))
        else:
            started = time.time() - 1  # file times are coarser than this clock
            o = run_one(name, args.quick, timeout)
            o.section = section_of(name, started)
        outcomes.append(o)
    REPORT.write_text(assemble(outcomes, args.quick, args.only))
    failed = [o.name for o in outcomes if o.status not in ("ok", "not run")]
    print(f"bench: wrote {REPORT.relative_to(ROOT)}"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
