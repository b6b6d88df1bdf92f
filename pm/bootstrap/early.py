"""Start the first level's agents before the head has imported its own machinery.

An ssh connection takes longer than anything else in a launch (~0.4 s), and the
head's imports (asyncio, zmq, the agent code) another ~0.2 s before it could
start one.  So the commands that start vertex 0 and its children (``start ==
"first"``) run right after the command line is read, without their config; the
agents import while ssh connects and the head imports, and the head writes each
one's config line on its stdin once it listens (:mod:`agent.children` takes
them with :func:`take`).  If the job never gets that far, our exit closes
their stdin and they leave without a word.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pm.bootstrap.pipes import Piped
    from pm.jobspec import JobSpec

#: vertex -> (host, started command) of the agents started early.
_STARTED: dict[int, tuple[str, Piped]] = {}


def prestart(hosts: list[str], given: list[int | None], options: dict[str, Any],
             spec: JobSpec, fanout: int) -> None:
    """Start vertex 0's and its children's commands (``start == "first"``), or the one
    command that starts every agent (``"step"``), if the bootstrap is one that can."""
    if options.get("start") not in ("first", "step") or not spec.apps:
        return
    from pm.bootstrap import get_bootstrap
    from pm.bootstrap.exec import CommandBootstrap
    from pm.common.kary_tree import Tree
    from pm.common.mapping import place
    from pm.jobspec import sequence_slots

    try:
        slots = sequence_slots(spec, len(hosts), given)
        used = max(place(spec.size, slots)) + 1
        boot = get_bootstrap(str(options.get("name")), options)
    except Exception:  # the full path names whatever is wrong
        return
    if not isinstance(boot, CommandBootstrap):
        return
    if options.get("start") == "step":
        from pm.common.hostlist import compress

        with contextlib.suppress(Exception):  # vertex -1: the step that starts them all
            _STARTED[-1] = (compress(hosts[:used]), boot.launch_step(hosts[:used]))
        return
    first = (0, *Tree(used, max(1, fanout)).children(0))
    prefetch = getattr(boot, "prefetch", None)
    if prefetch is not None:
        with contextlib.suppress(Exception):  # ssh -G for every host at once
            prefetch([hosts[v] for v in first])
    for v in first:
        try:
            _STARTED[v] = (hosts[v], boot.launch(hosts[v]))
        except Exception:  # started the usual way later, which names the failure
            continue


def take(vertex: int, host: str) -> Piped | None:
    """The command started early for ``vertex`` on ``host``, now the caller's."""
    entry = _STARTED.pop(vertex, None)
    if entry is None:
        return None
    if entry[0] != host:  # not the plan we guessed: let it go
        entry[1].abandon()
        return None
    return entry[1]


def abandon_all() -> None:
    """Let go of what was started early and not taken (closing its stdin ends it)."""
    while _STARTED:
        _, (_, proc) = _STARTED.popitem()
        proc.abandon()
