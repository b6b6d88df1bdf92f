"""srun's ``--propagate``: the resource limits of pmrun's shell, the ranks' on every node.

A rank on another host inherits the limits of whatever started its agent (sshd,
slurmd), not those of the shell the user ran pmrun in: ``ulimit -s unlimited;
pmrun ...`` would not reach it.  With ``--propagate`` (srun's; its default is
the site's PropagateResourceLimits) the head reads its soft limits
(:func:`current`) into the plan and each agent gives them to its ranks
(:class:`RankLimits`): set on the agent's main thread around the spawn, which the
ranks inherit, and put back at once.  A limit above a node's hard limit is
capped at it (root raises the hard limit too), said once per node.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Callable, Mapping, Sequence

#: srun's names of the limits it propagates.
LIMITS = {"AS": resource.RLIMIT_AS, "CORE": resource.RLIMIT_CORE, "CPU": resource.RLIMIT_CPU,
          "DATA": resource.RLIMIT_DATA, "FSIZE": resource.RLIMIT_FSIZE,
          "MEMLOCK": resource.RLIMIT_MEMLOCK, "NOFILE": resource.RLIMIT_NOFILE,
          "NPROC": resource.RLIMIT_NPROC, "RSS": resource.RLIMIT_RSS,
          "STACK": resource.RLIMIT_STACK}


def current(names: Sequence[str]) -> dict[str, int]:
    """This process's soft limits of ``names`` (-1: unlimited)."""
    out = {}
    for name in names:
        soft = resource.getrlimit(LIMITS[name])[0]
        out[name] = -1 if soft == resource.RLIM_INFINITY else soft
    return out


def _shown(value: int) -> str:
    return "unlimited" if value in (-1, resource.RLIM_INFINITY) else str(value)


class RankLimits:
    """Around the spawn of a node's ranks: the soft limits ``wanted`` (:func:`current`'s),
    each capped at this node's hard limit unless we may raise it; ``warn`` hears one line
    for each capped limit."""

    __slots__ = ("_old", "_wanted", "_warn")

    def __init__(self, wanted: Mapping[str, int], warn: Callable[[str], None]) -> None:
        self._wanted = wanted
        self._warn = warn
        self._old: list[tuple[int, tuple[int, int]]] = []

    def __enter__(self) -> RankLimits:
        for name, value in self._wanted.items():
            res = LIMITS.get(name)
            if res is None:
                continue
            old = resource.getrlimit(res)
            want = resource.RLIM_INFINITY if value < 0 else value
            hard = old[1]
            if hard != resource.RLIM_INFINITY and (want == resource.RLIM_INFINITY or want > hard):
                try:
                    resource.setrlimit(res, (want, want))  # (root may)
                except (OSError, ValueError):
                    self._warn(f"--propagate: {name} {_shown(value)} is above this node's "
                               f"hard limit, {_shown(hard)}: the ranks get {_shown(hard)}")
                    want = hard
                else:
                    self._old.append((res, old))
                    continue
            try:
                resource.setrlimit(res, (want, hard))
            except (OSError, ValueError) as exc:
                self._warn(f"--propagate: cannot set {name} to {_shown(value)}: {exc}")
                continue
            self._old.append((res, old))
        return self

    def __exit__(self, *_exc: object) -> None:
        for res, old in reversed(self._old):
            with contextlib.suppress(OSError, ValueError):  # (a hard limit root raised: too)
                resource.setrlimit(res, old)
        self._old.clear()
