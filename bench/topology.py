"""What handing the node's topology to the ranks saves: MPI_Init with and without it.

    python -m bench.topology [--quick]

1. *MPI_Init time* of the C hello (``tests/c/hello.c``: every rank times its
   own ``MPI_Init``, rank 0 prints the maximum) at 16 and 64 ranks on one
   node, through pmrun with the shared XML (the default: ``HWLOC_XMLFILE``
   and ``PMI_hwloc_xmlfile`` point the ranks' hwloc at the agent's export)
   and without it (``-genv PM_TOPOLOGY_SHARE 0``: every rank's MPICH
   discovers the node itself), interleaved, medians (min-max).
2. *The agent's one-time discovery*: ``pm.agent.topology.discover()`` in a
   fresh interpreter (import of cffi and libhwloc included), repeated in a
   warm process, the sysfs fallback, and what every later job on the node
   pays instead (read the cached XML, write the job's private copy).
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
from collections.abc import Callable
from functools import partial

from bench._util import ROOT, build_c, interleaved, machine, median_range, pmrun, write_section

OUT = ROOT / "bench" / "out"
HELLO = re.compile(r"hello from (\d+) ranks, max MPI_Init ([\d.]+) ms")

COLD = """
import time
t0 = time.perf_counter()
from pm.agent.topology import discover
topo = discover()
t1 = time.perf_counter()
assert topo.source == "hwloc", topo.source
print(t1 - t0, len(topo.xml or b""))
"""


def mpi_init_ms(hello: str, n: int, share: bool) -> float:
    argv = [*pmrun(), "-n", str(n)]
    if not share:
        argv += ["-genv", "PM_TOPOLOGY_SHARE", "0"]
    p = subprocess.run([*argv, hello], capture_output=True, text=True, timeout=600,
                       cwd=tempfile.gettempdir())
    m = HELLO.search(p.stdout)
    if p.returncode != 0 or m is None or int(m.group(1)) != n:
        raise RuntimeError(f"{' '.join(argv)} {hello} exited {p.returncode}: {p.stderr[-2000:]}")
    return float(m.group(2))


def discovery(runs: int) -> dict[str, list[float]]:
    """Seconds: cold discovery (fresh interpreter), warm, sysfs, and the cached path."""
    from pm.agent import topo_share
    from pm.agent.topology import discover

    out: dict[str, list[float]] = {"cold": [], "warm": [], "sysfs": [], "cached": []}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(runs):
        p = subprocess.run([sys.executable, "-c", COLD], capture_output=True, text=True,
                           check=True, env=env)
        secs, size = p.stdout.split()
        out["cold"].append(float(secs))
        out["xml_bytes"] = [float(size)]
    discover()  # load the library once
    for _ in range(runs):
        t0 = time.perf_counter()
        discover()
        out["warm"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        discover(use_hwloc=False)
        out["sysfs"].append(time.perf_counter() - t0)
    topo_share.discover_and_cache()
    for _ in range(runs):
        t0 = time.perf_counter()
        xml = topo_share.cached_xml()
        assert xml
        path = topo_share.write_job_xml(xml, "bench")
        out["cached"].append(time.perf_counter() - t0)
        os.unlink(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run: does it work?")
    args = ap.parse_args()
    runs = 1 if args.quick else 5
    counts = (16,) if args.quick else (16, 64)
    hello = str(build_c(ROOT / "tests" / "c" / "hello.c", OUT / "hello"))

    init: dict[int, dict[str, list[float]]] = {}
    for n in counts:
        contenders: dict[str, Callable[[], float]] = {
            "shared": partial(mpi_init_ms, hello, n, True),
            "own": partial(mpi_init_ms, hello, n, False),
        }
        init[n] = interleaved(contenders, runs, warmup=1)
        print(f"n={n}: shared {median_range(init[n]['shared'], '{:.1f}')} ms, "
              f"own {median_range(init[n]['own'], '{:.1f}')} ms", file=sys.stderr, flush=True)
    disc = discovery(max(3, runs))

    md = ["## Topology: MPI_Init with the agent's XML vs each rank discovering", "",
          f"{machine()}; C hello (MPICH wheel) through pmrun on one node, {runs} run(s) "
          "per point after a warm-up, interleaved; max `MPI_Init` over ranks as the hello "
          "prints it, median (min-max) in ms.", "",
          "| ranks | shared XML (default) | each rank discovers (`-genv PM_TOPOLOGY_SHARE 0`) "
          "| saved |",
          "|---:|---:|---:|---:|"]
    for n, d in init.items():
        saved = statistics.median(d["own"]) - statistics.median(d["shared"])
        md.append(f"| {n} | {median_range(d['shared'], '{:.1f}')} | "
                  f"{median_range(d['own'], '{:.1f}')} | {saved:.1f} ms |")
    ms = {k: [x * 1e3 for x in v] for k, v in disc.items() if k != "xml_bytes"}
    md += ["", "The agent's discovery, paid once per boot (cached per user and cpu set), "
           f"median (min-max) in ms; the XML export is {disc['xml_bytes'][0] / 1024:.0f} KiB:", "",
           "| step | ms |", "|---|---:|",
           f"| hwloc discovery + XML export, fresh interpreter (cffi + libhwloc load) | "
           f"{median_range(ms['cold'], '{:.1f}')} |",
           f"| hwloc discovery + XML export, library loaded | "
           f"{median_range(ms['warm'], '{:.1f}')} |",
           f"| sysfs fallback (no hwloc, no XML) | {median_range(ms['sysfs'], '{:.2f}')} |",
           f"| every later job: read the cached XML, write the job's copy | "
           f"{median_range(ms['cached'], '{:.2f}')} |"]
    write_section("topology", "\n".join(md))


if __name__ == "__main__":
    main()
