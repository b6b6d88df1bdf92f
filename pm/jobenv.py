"""What ranks inherit from the launcher's environment, and job ids.

Kept free of heavy imports: ``pmrun``'s quick path (:mod:`pm.quick`) uses it
before asyncio and dataclasses are loaded.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Mapping

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


def new_job_id() -> str:
    """A job id unique on the machine and across machines (MPICH names shm after the kvsname)."""
    host = os.uname().nodename.split(".")[0].replace("_", "-")[:16]
    return f"{host}-{os.getpid()}-{os.urandom(4).hex()}"
