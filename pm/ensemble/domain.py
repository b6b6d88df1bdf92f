"""An ensemble's memory domains: which node entries share one machine's memory.

The scheduler admits tasks per memory domain, not per node entry.  Every
node entry on this machine (``--local-nodes N``, or every host with the
local launcher) belongs to one domain, since they share one machine's
memory; any other host is a domain of its own.  :func:`make_domains` forms
them from a :class:`~pm.common.nodes.Nodes`, with the task slots of each (memory
alone bounds a domain without slots).  A :class:`Domain` also carries what
the ensemble tracks of it while tasks run.  Apart from :mod:`pm.ensemble`
because it is how a job's node list becomes the scheduler's nodes, decided
once, before anything runs.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pm.agent.topology import Topology
    from pm.common.activity import Activity
    from pm.common.nodes import Nodes
    from pm.head import JobRun

__all__ = ["Domain", "cpu_slots", "make_domains"]

_LOCAL_LAUNCHERS = ("", "local", "fork")


@dataclass
class Domain:
    """One memory domain (named after its host) and the ensemble's state of it."""

    name: str
    local: bool
    entries: list[int] = field(default_factory=list)  # node indices in Nodes
    slots: int | None = 0
    cores: bool = False  # its slots are its cores (a remote host's: from its runner's first sample)
    cpus: int = 0  # a remote host's CPU threads, from its runner's first sample
    rule: str = "cores"  # with ``cores``: how -j counts them (:func:`cpu_slots`)
    running: dict[int, int] = field(default_factory=dict)  # entry -> tasks on it
    blocked: bool = False
    peak_used: int = 0
    first: asyncio.Future[None] | None = None  # remote: the first sample arrived
    runner: JobRun | None = None  # remote: the job of its task runner
    lost: bool = False
    # Task indices, for the overrun policy:
    reported: set[int] = field(default_factory=set)
    killed: set[int] = field(default_factory=set)
    suspended: set[int] = field(default_factory=set)
    exempt: set[int] = field(default_factory=set)
    #: Tasks stopped by GNU parallel's --memsuspend rule (:meth:`Ensemble._hold`).
    held: set[int] = field(default_factory=set)
    total: int = 0  # its memory (bytes), from its first figures
    #: GNU parallel's --load, --noswap, --limit (pm.ensemble.gates): per gate, the tasks it
    #: lets start until the next sample, and what it waits for when none.
    gates: dict[str, tuple[int, str]] = field(default_factory=dict)
    activity: Activity | None = None  # its load, swapping and disks (with a gate)
    limit_run: asyncio.Task[None] | None = None  # --limit's command under way for it
    limit_ended: set[int] = field(default_factory=set)  # tasks --limit's 2 ended
    based: asyncio.Future[None] | None = None  # its --basefile files going there, or sent


def make_domains(nodes: Nodes, ppn: int | None, here: str,
                 local_hosts: Collection[str] | None,
                 jobs: int | str | None = None) -> dict[str, Domain]:
    """The domains of ``nodes`` by name.  ``ppn``: tasks per node entry (None: the
    hosts' slots).  ``here``: this host's name, the name of its domain.
    ``local_hosts``: host names that are this machine (None: all with the local
    launcher, else this host's names).  ``jobs``: tasks at most per domain (0:
    memory alone), or ``"cores"``: its cores where neither ``ppn`` nor the
    hosts gave slots, or another :func:`pm.options.cpu_rule`: that many by its CPU threads
    (None: those slots, else memory alone)."""
    if local_hosts is None:
        if str(nodes.bootstrap.get("name", "local")) in _LOCAL_LAUNCHERS:
            local_hosts = set(nodes.hosts)
        else:
            local_hosts = {here, here.split(".")[0], "localhost", "127.0.0.1"}
    domains: dict[str, Domain] = {}
    for i, host in enumerate(nodes.hosts):
        local = host in local_hosts
        name = here if local else host
        d = domains.setdefault(name, Domain(name, local))
        d.entries.append(i)
        slots = ppn or nodes.slots[i]
        d.slots = None if slots is None or d.slots is None else d.slots + slots
    for d in domains.values():
        if isinstance(jobs, int):
            d.slots = jobs or None
        elif jobs is not None and (jobs != "cores" or d.slots is None):
            # A remote host's cores come with its runner's first sample: none until then.
            d.rule, d.cores = jobs, True
            d.slots = cpu_slots(jobs, local_cores()) if d.local else 0
    return domains


def cpu_slots(rule: str, cpus: int) -> int:
    """The job slots ``rule`` (:func:`pm.options.cpu_rule`) gives a host of ``cpus`` CPU
    threads, rounded up as GNU parallel rounds them; 0 or less when it leaves none (pure)."""
    if rule == "cores":
        return cpus
    if rule.endswith("%"):
        return math.ceil(cpus * float(rule[:-1]) / 100)
    return cpus + int(rule)


def planned_slots(nodes: Nodes, ppn: int | None, jobs: int | str | None) -> int:
    """The job slots an ensemble over ``nodes`` will have (as :func:`make_domains` gives
    them), before any host is reached: a remote host whose cores only its runner can tell
    counts as many as this one has; one that memory alone bounds, one."""
    import socket

    total = 0
    for d in make_domains(nodes, ppn, socket.gethostname(), None, jobs).values():
        total += max(d.slots or (cpu_slots(d.rule, local_cores()) if d.cores else 1), 1)
    return total


#: What -j's CPU rules count here (GNU parallel's --use-cores-instead-of-threads and
#: --use-sockets-instead-of-threads): "thread", "core" or "socket"; set once per run.
CPU_UNIT = ["thread"]


def local_cores(unit: str = "") -> int:
    """The CPU threads this process may run on (a Slurm or cgroup cpuset counts), or the
    cores or sockets that hold them (``unit``, else :data:`CPU_UNIT`)."""
    unit = unit or CPU_UNIT[0]
    allowed = os.sched_getaffinity(0)
    if unit == "thread":
        return len(allowed) or 1
    topo = _topology()
    return sum(1 for cpus in (topo.cores if unit == "core" else topo.packages)
               if cpus & allowed) or 1


@functools.cache
def _topology() -> Topology:
    """This host's cores and sockets, read once (a -j FILE's rule is applied again as
    tasks end)."""
    from pm.agent.topology import discover

    return discover(use_hwloc=False)
