"""pmrun: a process manager for parallel jobs.

``pm.run`` launches a job and waits for it; ``pm.Cluster`` keeps a tree of
node agents up and launches jobs on it.  Both are what ``pmrun`` runs.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)

if TYPE_CHECKING:
    from typing import Any

    from pm.api import Cluster, Job, JobResult, run, run_tasks

__all__ = ["Cluster", "Job", "JobResult", "run", "run_tasks"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `pmrun` imports pm.cli and must not pay for the API's imports.
    if name in __all__:
        from pm import api

        return getattr(api, name)
    raise AttributeError(name)
