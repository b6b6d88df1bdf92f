"""What ranks inherit from the launcher's environment, and job ids.

Kept free of heavy imports: ``pmrun``'s quick path (:mod:`pm.quick`) uses it
before asyncio and dataclasses are loaded.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, MutableMapping, Sequence

#: Never passed on to ranks: they would make MPI pick the wrong PMI or mis-place ranks.
_ENV_DROP_PREFIXES = ("PMI_", "PMIX_", "PMI2_", "OMPI_", "PRTE_", "HYDRA_", "HYDI_",
                      # Slurm's step, task and PMI variables describe srun's tasks, not
                      # pmrun's ranks; the job's own (SLURM_JOB_ID, SLURM_ARRAY_*,
                      # SLURM_CPUS_PER_TASK, SLURM_NODELIST, ...) are site facts and pass.
                      "SLURM_STEP_", "SLURM_PMI", "SLURM_CPU_BIND", "SLURM_MEM_BIND",
                      "SLURM_SRUN_COMM_")
_ENV_DROP = frozenset({
    "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "I_MPI_PMI_LIBRARY", "PM_SECRET", "PM_AGENT_ONLY",
    # Open MPI reads SLURM_NPROCS/SLURM_PROCID as size and rank without PMI; Intel MPI
    # picks its PMI from SLURM_MPI_TYPE and reads SLURM_NTASKS/SLURM_TASKS_PER_NODE.
    "SLURM_STEPID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_GTIDS",
    "SLURM_TASK_PID", "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_TASKS_PER_NODE",
    "SLURM_MPI_TYPE", "SLURM_DISTRIBUTION", "SLURM_DIST_PLANESIZE", "SLURM_LAUNCH_NODE_IPADDR",
})


#: ... except the user's settings of Open MPI's and PMIx's components (mpirun passes them on).
_ENV_KEEP_PREFIXES = ("OMPI_MCA_", "PMIX_MCA_")


def dropped(name: str) -> bool:
    """Whether pmrun keeps ``name`` from ranks (documented in the README: Environment)."""
    if name.startswith(_ENV_KEEP_PREFIXES):
        return False
    return name in _ENV_DROP or name.startswith(_ENV_DROP_PREFIXES)


#: A host's own, never the launcher's, where the agent came over ssh (as Hydra's ssh launcher
#: does): its X display (with -enable-x, the one ssh -X forwards) and that display's cookies.
_HOST_OWN = ("DISPLAY", "XAUTHORITY")


#: A Slurm node's own, never the batch host's: what slurmd gives each node of a step (its
#: name, its CPUs, its place in the network's topology), as srun's tasks have them.
_SLURM_NODE_OWN = ("SLURMD_NODENAME", "SLURM_CPUS_ON_NODE", "SLURM_TOPOLOGY_ADDR",
                   "SLURM_TOPOLOGY_ADDR_PATTERN")


def host_own(env: dict[str, str], launcher: object, here: Mapping[str, str]) -> None:
    """Give ``env`` (a rank's, from the launcher's) this host's own :data:`_HOST_OWN`
    (``here``: the agent's environment) when the job's agents came over ssh, and its node's
    own Slurm variables (:data:`_SLURM_NODE_OWN`) when they came as a Slurm step."""
    if launcher == "slurm":
        names: tuple[str, ...] = _SLURM_NODE_OWN
    elif launcher == "ssh":
        names = _HOST_OWN
    else:
        return
    for name in names:
        if name in here:
            env[name] = here[name]
        else:
            env.pop(name, None)


#: The suffix of a heterogeneous Slurm job's variables for its first component.
_HET_GROUP_0 = "_HET_GROUP_0"


def slurm_het_group0(environ: MutableMapping[str, str]) -> bool:
    """Inside a heterogeneous Slurm allocation (``salloc -N1 : -N2``), which sets no
    ``SLURM_JOB_NODELIST`` but ``SLURM_JOB_NODELIST_HET_GROUP_0`` and the like: give
    ``environ`` the first component's variables under their plain names, as srun runs a
    step there by default.  Whether it did."""
    if not environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOB_NODELIST") or \
            not environ.get("SLURM_JOB_NODELIST" + _HET_GROUP_0):
        return False
    for name, value in list(environ.items()):
        if name.endswith(_HET_GROUP_0) and name[:-len(_HET_GROUP_0)] not in environ:
            environ[name[:-len(_HET_GROUP_0)]] = value
    return True


def filter_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that may be propagated to ranks."""
    return {k: v for k, v in env.items() if not dropped(k)}


#: An agent's variable naming what whoever started it set in its environment for the agent
#: alone (a JSON object: each such variable's value before, null where it had none), so
#: that its ranks start from the environment the host gave (:func:`own_env`).
AGENT_ONLY = "PM_AGENT_ONLY"


def set_for_agent(env: dict[str, str], name: str, value: str | None) -> None:
    """Set (``value`` None: remove) ``name`` in ``env``, an agent's environment about to be
    started, for the agent's own sake: its ranks get ``env``'s value from before
    (:data:`AGENT_ONLY` records it; a value recorded earlier, the launcher's, stays)."""
    import json

    before = json.loads(env.get(AGENT_ONLY) or "{}")
    before.setdefault(name, env.get(name))
    env[AGENT_ONLY] = json.dumps(before, separators=(",", ":"))
    if value is None:
        env.pop(name, None)
    else:
        env[name] = value


#: What srun puts in the environment of the agents' step for the options pmrun gives it
#: (``--ntasks-per-node=1``, ``--quiet``: :data:`pm.bootstrap.slurm.SRUN_OPTIONS`), not
#: the ranks' (a rank's own srun would read them); the launcher's, if any, still pass.
_STEP_OWN = ("SLURM_NTASKS_PER_NODE", "SRUN_DEBUG")


def own_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment (``environ``: os.environ) as the ranks it starts get
    it, as Hydra's proxy hands its own to its ranks: what the host gave the agent (pmrun's
    own environment here, an ssh session's, a Slurm step's, a service's session), less
    what pmrun set for the agent alone (:func:`set_for_agent`, a Slurm step's
    :data:`_STEP_OWN`) and what pmrun keeps from ranks (:func:`dropped`)."""
    env = dict(os.environ if environ is None else environ)
    if "SLURM_STEP_ID" in env:  # (a task of the agents' step)
        for name in _STEP_OWN:
            env.pop(name, None)
    before = env.pop(AGENT_ONLY, None)
    if before:
        import json

        for name, value in json.loads(before).items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
    return filter_env(env)


#: What srun's ``--export NONE`` passes of pmrun's environment (the ranks' program is
#: found on PATH as other ranks'); the task runner's -genvnone too (:func:`base_env`).
NONE_KEEPS = ("PATH", "HOME", "USER", "LANG", "TERM")


def passed_env(mode: str, genvlist: Sequence[str], genv: Mapping[str, str],
               launcher_env: Mapping[str, str]) -> dict[str, str]:
    """What pmrun passes every rank of its own environment (``launcher_env``), which the
    agents put over theirs as Hydra's proxies do (:func:`ranks_env`): for ``mode`` "all"
    all of it (filtered: Hydra's -genvall), "none" nothing (-genvnone), "list"
    ``genvlist``'s variables (-genvlist), "only" those too, with nothing of the agents'
    under them (srun's ``--export``, Flux's ``--env`` rules); ``genv`` (-genv) on top."""
    if mode == "all":
        env = filter_env(launcher_env)
    else:
        env = {k: launcher_env[k] for k in genvlist if k in launcher_env}
    env.update(genv)
    return env


def ranks_env(passed: Mapping[str, str], host: bool = True,
              here: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ranks start from: the agent's (``here``, os.environ by default) as
    :func:`own_env` gives it, then what pmrun passed (``passed``: the plan's,
    :func:`passed_env`'s); ``host`` False (the "only" mode): ``passed`` alone."""
    env = own_env(here) if host else {}
    env.update(passed)
    return env


def base_env(mode: str, genvlist: Sequence[str], genv: Mapping[str, str],
             launcher_env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of what starts from pmrun's alone, with no agent's underneath:
    the task runner's tasks (:mod:`pm.ensemble`).  ``mode`` "all" passes the launcher's
    (filtered), "none" only :data:`NONE_KEEPS`, "list" and "only" only ``genvlist``;
    ``genv`` comes on top."""
    if mode == "all":
        return passed_env(mode, (), genv, launcher_env)
    keep = NONE_KEEPS if mode == "none" else ()
    return passed_env("list", [*keep, *genvlist], genv, launcher_env)


def new_job_id() -> str:
    """A job id unique on the machine and across machines (MPICH names shm after the kvsname)."""
    host = os.uname().nodename.split(".")[0].replace("_", "-")[:16]
    return f"{host}-{os.getpid()}-{os.urandom(4).hex()}"


def kvsname_of(job_id: str) -> str:
    """The job's PMI kvsname (the quick phase serves it before the head exists)."""
    return f"kvs_{job_id}"
