"""Which of the launcher's variables ranks see: site facts pass, PMI and step variables do not.

A rank started inside a Slurm allocation keeps the job's own variables (its id,
array index, CPUs per task, node list: scripts and site tools read them) but
never srun's step, task and PMI variables, which describe srun's tasks rather
than pmrun's ranks and would mislead an MPI library (Open MPI reads
``SLURM_PROCID``/``SLURM_NPROCS``, Intel MPI picks its PMI from ``SLURM_MPI_TYPE``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from pm.jobenv import filter_env, own_env, ranks_env, set_for_agent

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(60)

#: Set by sbatch/salloc for the whole job: ranks see them unchanged.
KEPT = {
    "SLURM_JOB_ID": "4242", "SLURM_JOBID": "4242", "SLURM_ARRAY_TASK_ID": "7",
    "SLURM_ARRAY_JOB_ID": "4235", "SLURM_CPUS_PER_TASK": "4", "SLURM_JOB_NAME": "sweep",
    "SLURM_SUBMIT_DIR": "/home/u/run", "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
    "SLURM_CLUSTER_NAME": "c1", "SLURM_JOB_PARTITION": "batch", "SLURMD_NODENAME": "n1",
    "SLURM_NODELIST": "n1", "SLURM_JOB_CPUS_PER_NODE": "8", "SLURM_NTASKS_PER_NODE": "2",
}
#: srun's step, task and PMI variables, and other launchers' PMI: never passed on.
DROPPED = {
    "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NODELIST": "n1",
    "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_PROCID": "1",
    "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_GTIDS": "0,1", "SLURM_TASK_PID": "99",
    "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_TASKS_PER_NODE": "2",
    "SLURM_MPI_TYPE": "pmi2", "SLURM_PMIX_MAPPING_SERV": "x", "SLURM_PMI_KVS_NO_DUP_KEYS": "1",
    "SLURM_SRUN_COMM_HOST": "10.0.0.1", "SLURM_SRUN_COMM_PORT": "4000",
    "SLURM_LAUNCH_NODE_IPADDR": "10.0.0.1", "SLURM_CPU_BIND": "quiet,mask_cpu:0x1",
    "SLURM_CPU_BIND_TYPE": "mask_cpu:", "SLURM_MEM_BIND": "none", "SLURM_DISTRIBUTION": "block",
    "PMI_PORT": "host:1", "PMIX_RANK": "3", "PMIX_SERVER_URI41": "x", "HYDI_CONTROL_FD": "9",
    "I_MPI_PMI_LIBRARY": "/usr/lib/libpmi2.so",
}

SHOW = ("import os; print(sorted(k for k in os.environ "
        "if k.startswith(('SLURM', 'PMI', 'HYDI', 'I_MPI_PMI'))))")


def test_filter_keeps_the_jobs_variables_and_drops_step_and_pmi_ones() -> None:
    assert filter_env({**KEPT, **DROPPED, "HOME": "/h"}) == {**KEPT, "HOME": "/h"}


def test_ranks_start_from_their_agents_environment_less_what_was_the_agents_alone() -> None:
    """As Hydra's proxy's: the agent's environment, less what pmrun set for the agent alone
    (restored to what it was, or gone), what srun put there for the agents' step, and what
    never passes; pmrun's over it, or (the "only" mode) pmrun's alone."""
    env = {"HOME": "/h", "PYTHONPATH": "/x"}
    set_for_agent(env, "PYTHONPATH", "/pm:/x")
    set_for_agent(env, "PM_KNOB", "1")
    set_for_agent(env, "PYTHONPATH", "/later")  # (the launcher's value stays the one before)
    assert (env["PYTHONPATH"], env["PM_KNOB"]) == ("/later", "1")
    assert own_env(env) == {"HOME": "/h", "PYTHONPATH": "/x"}
    step = {**KEPT, **DROPPED, "SRUN_DEBUG": "2"}
    assert own_env(step) == {k: v for k, v in KEPT.items() if k != "SLURM_NTASKS_PER_NODE"}
    assert ranks_env({"A": "1", "HOME": "/p"}, here=env) == {"HOME": "/p", "PYTHONPATH": "/x",
                                                             "A": "1"}
    assert ranks_env({"A": "1"}, False, here=env) == {"A": "1"}


@pytest.mark.parametrize("opts", [
    pytest.param([], id="quick"),
    pytest.param(["--local-nodes", "2"], id="2nodes"),
    pytest.param(["--launcher", "local"], id="in-allocation"),
])
def test_ranks_see_the_site_variables_and_not_the_step_ones(pmrun: Run, opts: list[str]) -> None:
    env = {**KEPT, **DROPPED}
    if opts == ["--launcher", "local"]:
        # Inside an allocation pmrun would use srun; asked for local, it runs here.
        env["SLURM_JOB_NODELIST"] = "n1"
    r = pmrun("-n", "2", *opts, "python", "-c", SHOW, env=env)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    expected = sorted({*KEPT, *(["SLURM_JOB_NODELIST"] if "local" in opts else []),
                       "PMI_FD", "PMI_RANK", "PMI_SIZE", "PMI_HOSTNAME"})
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    for line in lines:
        assert line == str(expected)


@pytest.mark.timeout(120)
def test_intel_mpi_runs_with_the_site_variables_present(pmrun: Run) -> None:
    """Intel MPI reads SLURM_JOB_ID and SLURM_NODELIST; with PMI_FD set they do not mislead it."""
    from test_intel_mpi import IMPI
    if IMPI is None:
        pytest.skip("Intel MPI not installed: set PMRUN_IMPI_PYTHON")
    prog = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.rank, c.size, c.allreduce(1))"
    r = pmrun("-n", "2", "--local-nodes", "2", IMPI, "-c", prog, env={**KEPT, **DROPPED},
              timeout=100)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 2 2", "1 2 2"]
