"""``pmrun --profile FILE``: the job's start-up timeline as a Chrome trace, and a breakdown.

Agents record events while profiling (:meth:`pm.agent.node.JobAgent.mark`):
``[wall time, vertex, rank, what, args]``, rank -1 for the agent itself.  The
timelines of all agents come up the tree with ``Done`` and the head turns them
into trace-event JSON (open it in https://ui.perfetto.dev or chrome://tracing)
and a short table on stderr.

This module is what agents load when profiling (recording only: kept small, it
is imported by every agent); the analysis and the writer are in
:mod:`pm.profile_report`, loaded by the head at the end of the job.

Trace layout: one process per node (``pid`` = vertex), one thread per rank
(``tid`` = rank) and one for the agent itself (``tid`` = :data:`AGENT_TID`).
Times are microseconds from the head's process start.  Rank threads carry
nested slices: *launch* (spawned -> PMI init), *PMI* (init -> finalize) with a
slice per collective inside it, *exit* (finalize -> exit); puts and gets are
instants.  The agent thread carries interpreter start-up, spawning, and
instants for the tree traffic of collectives.

Event names (what agents and the head mark):

* head / agent: ``process start``, ``head start``, ``agent main``, ``plan received``,
  ``bootstrap start``, ``agent connected`` (child=), ``children joined``,
  ``spawn start``, ``ranks spawned``, ``sim start``, ``done``;
* tree: ``coll up`` / ``coll child in`` (child=) / ``coll down`` / ``coll result in``,
  each with kind= and epoch=; ``get served``;
* rank: ``rank spawned``, ``PMI init``, ``put``, ``get``, ``<kind> in`` / ``<kind> out``
  (epoch=), ``finalize``, ``rank exit``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

Event = Sequence[Any]  # [wall, vertex, rank, what, args]


class _Marks(Protocol):
    timeline: list[Any] | None
    vertex: int

    def mark(self, what: str, rank: int = -1, **args: Any) -> None: ...


# ---------------------------------------------------------------- recording helpers
def process_start_time(pid: int | str = "self") -> float | None:
    """Wall-clock time the process started (kernel clock ticks: ~10 ms resolution)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open("/proc/uptime", "rb") as f:
            uptime = float(f.read().split()[0])
        now = time.time()
        # Field 22 (starttime, ticks after boot) counts after the command name,
        # which may hold spaces.  (/proc/stat's btime is whole seconds: too coarse.)
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    return now - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def mark_process_start(agent: _Marks, what: str, at: float) -> None:
    """Record ``process start`` (from /proc) and ``what`` at wall time ``at``."""
    if agent.timeline is None:
        return
    started = process_start_time()
    if started is not None:
        # Clock ticks are coarse: never let the process start after our own first mark.
        agent.timeline.append([min(started, at), agent.vertex, -1, "process start", {}])
    agent.timeline.append([at, agent.vertex, -1, what, {}])


def mark_joined(agent: _Marks, joined: Mapping[int, float]) -> None:
    """``agent connected`` per child (``joined``: vertex -> monotonic time of its hello)."""
    if agent.timeline is None:
        return
    shift = time.time() - time.monotonic()
    for child, mono in sorted(joined.items()):
        agent.timeline.append([mono + shift, agent.vertex, -1, "agent connected",
                               {"child": child}])
    agent.mark("children joined", children=len(joined))


def write_profile(path: str, timeline: object, hosts: int, fanout: int) -> str:
    """Write the Chrome trace of ``timeline`` to ``path``; returns the breakdown table."""
    from pm.profile_report import write_profile as write

    return write(path, timeline, hosts, fanout)
