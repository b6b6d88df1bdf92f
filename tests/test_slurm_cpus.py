"""CPU binding inside a real Slurm allocation whose steps are confined by cgroup cpusets
(``TaskPlugin=task/cgroup,task/affinity``, ``ConstrainCores=yes``), as on most clusters.

Each node declares this machine's real cpus (the namespace nodes share them), so Slurm's
cpusets and masks are real ones: a rank's ``Cpus_allowed_list`` must stay within what the
job holds on its node, and ``-c N`` binds each rank to N cpus as srun does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import BIN, REPO
from realcluster_util import RealCluster, cpuset_missing, realcluster_missing

from pm.cli_nodes import slurm_binding

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]

CPUS = len(os.sched_getaffinity(0))
SHOW = "echo $(hostname) $(grep Cpus_allowed_list /proc/self/status | cut -f2)"


@pytest.fixture(scope="module")
def cgroup_cluster() -> Iterator[RealCluster]:
    why = realcluster_missing(slurm=True, ssh=False) or cpuset_missing()
    if why:
        pytest.skip(why)
    if CPUS < 2:
        pytest.skip("needs 2 cpus")
    with RealCluster(2, ssh=False, cpus=CPUS, cgroup=True) as c:
        yield c


def _cpus(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def _per_node(lines: list[str]) -> dict[str, list[frozenset[int]]]:
    out: dict[str, list[frozenset[int]]] = {}
    for line in lines:
        host, cpus = line.split()
        out.setdefault(host, []).append(_cpus(cpus))
    return {h: sorted(v, key=sorted) for h, v in out.items()}


def _salloc(c: RealCluster, opts: list[str], script: str) -> tuple[list[str], list[str]]:
    """Run ``script`` in an allocation; its pmrun lines, then srun's (after ``---``)."""
    env = c.env({"PYTHONPATH": str(REPO), "PATH": f"{BIN}:{os.environ['PATH']}"})
    res = subprocess.run(["salloc", "--quiet", *opts, "sh", "-c", script], env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    pm, _, srun = res.stdout.partition("---\n")
    return pm.splitlines(), srun.splitlines()


def _clean(c: RealCluster) -> None:
    c.wait_queue_empty(30)
    assert not c.wait_clean(20)


def test_cpus_per_task_binds_as_srun_does(cgroup_cluster: RealCluster) -> None:
    c = cgroup_cluster
    n = CPUS + 1  # a full first node, one cpu of the second
    pm, srun = _salloc(c, ["-N2", f"-n{n}", "-c1"],
                       f"{sys.executable} -m pm -n {n} sh -c '{SHOW}'; echo ---; "
                       f"srun --mpi=none -n {n} sh -c '{SHOW}'")
    assert len(pm) == n, pm
    mine, slurms = _per_node(pm), _per_node(srun)
    # The same cpus per node as srun's own tasks: one each, distinct, within the job's.
    assert mine == slurms, (pm, srun)
    assert sorted(len(v) for v in mine.values()) == [1, CPUS]
    for sets in mine.values():
        assert all(len(s) == 1 for s in sets) and len(set(sets)) == len(sets)
    _clean(c)


def test_ranks_stay_within_the_allocation_unbound(cgroup_cluster: RealCluster) -> None:
    c = cgroup_cluster
    # One cpu of the node is the job's; unbound ranks (more than cpus) still stay on it.
    pm, srun = _salloc(c, ["-N1", "-n1", "-c1"],
                       f"{sys.executable} -m pm --bind-to none -n 3 sh -c '{SHOW}'; "
                       f"echo ---; srun --mpi=none -n 1 sh -c '{SHOW}'")
    (host, granted), = _per_node(srun).items()
    assert len(granted) == 1 and len(granted[0]) == 1, srun
    assert _per_node(pm) == {host: granted * 3}, (pm, srun)
    _clean(c)


def test_two_cpus_per_task(cgroup_cluster: RealCluster) -> None:
    c = cgroup_cluster
    pm, srun = _salloc(c, ["-N1", "-n1", f"-c{CPUS}"],
                       f"{sys.executable} -m pm sh -c '{SHOW}'; echo ---; "
                       f"srun --mpi=none sh -c '{SHOW}'")
    assert _per_node(pm) == _per_node(srun), (pm, srun)
    assert [len(s) for v in _per_node(pm).values() for s in v] == [CPUS]
    _clean(c)


def test_slurm_binding_from_cpus_per_task() -> None:
    assert slurm_binding({}) is None
    assert slurm_binding({"SLURM_CPUS_PER_TASK": "1"}) == "hwthread"
    assert slurm_binding({"SLURM_CPUS_PER_TASK": "4"}) == "hwthread:4"
    assert slurm_binding({"SLURM_CPUS_PER_TASK": "x"}) is None


def test_exact_gives_jobs_side_by_side_cpus_of_their_own(cgroup_cluster: RealCluster) -> None:
    """srun's --exact: two pmrun jobs started side by side in one allocation each get a
    CPU of their own (Slurm grants each agents' step its CPUs); without it both bind their
    rank to the node's first CPU (-c 1: a CPU a rank, counted from each agent's)."""
    c = cgroup_cluster
    both = (f"{sys.executable} -m pm {{opt}} -n 1 sh -c '{SHOW}; sleep 2' & "
            f"{sys.executable} -m pm {{opt}} -n 1 sh -c 'sleep 0.5; {SHOW}' & wait")
    pm, _ = _salloc(c, ["-N1", f"-n{CPUS}", "-c1"], both.format(opt="--exact"))
    sets = [s for v in _per_node(pm).values() for s in v]
    assert len(sets) == 2 and all(len(s) == 1 for s in sets) and sets[0] != sets[1], pm
    pm, _ = _salloc(c, ["-N1", f"-n{CPUS}", "-c1"], both.format(opt=""))
    sets = [s for v in _per_node(pm).values() for s in v]
    assert len(sets) == 2 and sets[0] == sets[1], pm  # (what --exact is for)
    _clean(c)
