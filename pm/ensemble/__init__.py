"""Task ensembles under memory admission: ``pmrun --tasks``, ``Cluster.submit``, ``run_tasks``.

* :mod:`~pm.ensemble.taskspec`: the tasks file and the tasks of a command line;
* :mod:`~pm.ensemble.scheduler`: the pure scheduler (events in, starts out);
* :mod:`~pm.ensemble.core`: the :class:`Ensemble` that feeds it memory samples and runs tasks
  (its state: :mod:`~pm.ensemble.base`; a task's runs: :mod:`~pm.ensemble.runs`; its hosts'
  samples and what follows from them: :mod:`~pm.ensemble.hosts`);
* :mod:`~pm.ensemble.domain`: which node entries share one machine's memory;
* :mod:`~pm.ensemble.local` / :mod:`~pm.ensemble.remote`: a task's processes on this machine,
  and on other hosts through the agent tree (with the hosts' memory probe);
* :mod:`~pm.ensemble.task`: the :class:`Task` handle and its :class:`TaskResult`;
* :mod:`~pm.ensemble.cli`: ``pmrun --tasks FILE`` and :func:`pm.run_tasks` (its options read:
  :mod:`~pm.ensemble.cli_options`; ``--halt``: :mod:`~pm.ensemble.halt`; ``--pipe``'s
  blocks and runs: :mod:`~pm.ensemble.blocks`, :mod:`~pm.ensemble.pipe`).
"""

from __future__ import annotations

TYPE_CHECKING = False

if TYPE_CHECKING:
    from typing import Any

    from pm.ensemble.core import DEFAULT_SETTLE, Ensemble, Event
    from pm.ensemble.task import Task, TaskResult

__all__ = ["DEFAULT_SETTLE", "Ensemble", "Event", "Task", "TaskResult"]


def __getattr__(name: str) -> Any:
    # Lazy: the memory probe (python -m pm.ensemble probe) needs none of the machinery.
    if name in __all__:
        from pm.ensemble import core

        return getattr(core, name)
    raise AttributeError(name)
