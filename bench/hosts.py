"""Launch time over hosts and tree fan-out: does the tree's depth show?

    python -m bench.hosts [--quick]

Wall time of ``pmrun -ppn 1 -n N true`` (start every agent, run one rank per
node, tear down), medians (min-max) of interleaved runs:

* over 1, 2, 4, 8 network-namespace hosts (tests/netns_util.py; real TCP
  between namespaces, agents started with the exec launcher ``ip netns exec``,
  each agent starting its own children), fan-out 2, 8 and 32;
* over ``--local-nodes`` 1 … 64 agents on this machine, same fan-outs.

The tree height (levels of agents below the head) is given for each case:
with fan-out 2 the tree is deeper and agents start level by level; with 32
the head starts them all itself.  On a small machine both are bounded by the
CPU cost of starting the interpreters, which no tree shape removes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._util import ROOT, interleaved, machine, median_range, pmrun, timed, write_section
from pm.tree import Tree

sys.path.insert(0, str(ROOT / "tests"))

FANOUTS = (2, 8, 32)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MPIEXEC_TIMEOUT", None)
    return env


def _runner(argv: list[str]) -> Callable[[], float]:
    env = _env()
    return lambda: timed(argv, env=env, timeout=300)


def _height(n: int, k: int) -> int:
    return Tree(n, k).height() if n > 1 else 0


def netns_rows(sizes: Sequence[int], runs: int) -> list[str]:
    from netns_util import EXEC_TEMPLATE, NetnsHosts, netns_missing

    why = netns_missing()
    if why:
        return [f"| namespace hosts | - | - | skipped: {why} |"]
    rows = []
    for n in sizes:
        with NetnsHosts(n) as hosts:
            base = [*pmrun(), "--launcher", "exec", "--launcher-exec", EXEC_TEMPLATE,
                    "-hosts", ",".join(hosts.names), "--iface", hosts.bridge_addr,
                    "-ppn", "1", "-n", str(n)]
            res = interleaved({k: _runner([*base, "--fanout", str(k), "true"])
                               for k in FANOUTS}, runs)
        rows.append(f"| {n} namespace hosts | " + " | ".join(
            f"{median_range(res[k], '{:.2f}')} (h{_height(n, k)})" for k in FANOUTS) + " |")
    return rows


def local_rows(sizes: Sequence[int], runs: int) -> list[str]:
    rows = []
    for n in sizes:
        base = [*pmrun(), "--local-nodes", str(n), "-ppn", "1", "-n", str(n)]
        res = interleaved({k: _runner([*base, "--fanout", str(k), "true"]) for k in FANOUTS},
                          runs)
        rows.append(f"| {n} local nodes | " + " | ".join(
            f"{median_range(res[k], '{:.2f}')} (h{_height(n, k)})" for k in FANOUTS) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    ap.add_argument("--quick", action="store_true", help="a short run that checks it works")
    args = ap.parse_args(argv)
    runs = 1 if args.quick else 5
    hosts = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    local = (1, 8, 16) if args.quick else (1, 8, 16, 32, 64)
    rows = netns_rows(hosts, runs) + local_rows(local, runs)
    head = " | ".join(f"fan-out {k}" for k in FANOUTS)
    md = "\n".join([
        "## Launch time over hosts and fan-out",
        "",
        f"`pmrun -ppn 1 -n N true`, wall seconds, median (min-max) of {runs} interleaved "
        "runs; (hN) is the tree height (levels of agents below vertex 0). Namespace hosts: "
        "exec launcher (`ip netns exec`), TCP between namespaces, agents start their "
        f"children. {machine()}{', quick run' if args.quick else ''}.",
        "",
        f"| nodes | {head} |",
        "|---|" + "---|" * len(FANOUTS),
        *rows,
        "",
        "Every agent is a Python interpreter start (about 0.1-0.2 s of CPU); on a 2-core "
        "machine their start-up, not the tree's latency, bounds the launch: a deeper tree "
        "(fan-out 2) adds a level of start-up latency per level, a flat tree starts all "
        "agents from one parent.",
    ])
    write_section("hosts", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
