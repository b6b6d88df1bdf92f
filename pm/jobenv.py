"""What ranks inherit from the launcher's environment, and job ids.

Kept free of heavy imports: ``pmrun``'s quick path (:mod:`pm.quick`) uses it
before asyncio and dataclasses are loaded.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Never passed on to ranks: they would make MPI pick the wrong PMI or mis-place ranks.
_ENV_DROP_PREFIXES = ("PMI_", "PMIX_", "PMI2_", "SLURM_", "OMPI_", "PRTE_", "HYDRA_", "HYDI_")
_ENV_DROP = frozenset({"MPI_LOCALRANKID", "MPI_LOCALNRANKS", "I_MPI_PMI_LIBRARY", "PM_SECRET"})


def filter_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of an environment that may be propagated to ranks."""
    return {
        k: v
        for k, v in env.items()
        if k not in _ENV_DROP and not k.startswith(_ENV_DROP_PREFIXES)
    }


def base_env(mode: str, genvlist: Sequence[str], genv: Mapping[str, str],
             launcher_env: Mapping[str, str]) -> dict[str, str]:
    """The environment every rank starts from, before per-app and per-rank variables.

    ``mode`` "all" passes the launcher's (filtered, Hydra's -genvall), "none" only
    PATH, HOME, USER, LANG and TERM (-genvnone), "list" only ``genvlist``
    (-genvlist); ``genv`` (-genv) comes on top.
    """
    if mode == "all":
        env = filter_env(launcher_env)
    else:
        keep = ("PATH", "HOME", "USER", "LANG", "TERM") if mode == "none" else ()
        env = {k: launcher_env[k] for k in (*keep, *genvlist) if k in launcher_env}
    env.update(genv)
    return env


def new_job_id() -> str:
    """A job id unique on the machine and across machines (MPICH names shm after the kvsname)."""
    host = os.uname().nodename.split(".")[0].replace("_", "-")[:16]
    return f"{host}-{os.getpid()}-{os.urandom(4).hex()}"
