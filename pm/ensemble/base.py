"""What an :class:`~pm.ensemble.Ensemble` holds: its options read, its hosts' memory
domains, the scheduler and its tasks (:class:`EnsembleBase`, made from the ensemble's
arguments, which :class:`~pm.ensemble.core.Ensemble` describes).

The ensemble's code is in parts over this state, each a class of its own module that the
ensemble inherits: its API (start, tasks added, stopping, closing) in
:mod:`pm.ensemble.core`, a task's runs in :mod:`pm.ensemble.runs`, the hosts' samples and
what follows from them in :mod:`pm.ensemble.hosts`.  What one part calls of another is
declared here for the type checker.
"""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

from pm.agent.memory import NodeMemory, OverrunPolicy, SizeError
from pm.common.activity import ActivityProbe
from pm.ensemble.domain import CPU_UNIT, local_cores, make_domains
from pm.ensemble.gates import load_file, parse_limit, parse_load
from pm.ensemble.local import LocalRunner
from pm.ensemble.remote import RemoteRunner
from pm.ensemble.scheduler import DEFAULT_RESERVATION, SMALL, EnsembleScheduler
from pm.ensemble.task import Task, TaskResult
from pm.ensemble.timeouts import RunLimit, parse_termseq
from pm.jobspec import JobSpec
from pm.options import JOBS_FORMS, cpu_rule

if TYPE_CHECKING:
    import signal

    from pm.common.nodes import Nodes
    from pm.ensemble.core import Event
    from pm.ensemble.domain import Domain
    from pm.ensemble.runs import Clock
    from pm.ensemble.scheduler import Start

#: Seconds a running task's peak must hold still before its reservation shrinks to it.
DEFAULT_SETTLE = 1.0
#: Seconds between two memory samples of a node.
DEFAULT_INTERVAL = 0.1

#: Receives a task's output: (task index, 1 for stdout or 2 for stderr, whole lines).
TaskSink = Callable[[int, int, bytes], None]


class EnsembleBase:
    """An ensemble's state (see the module docstring); its arguments are
    :class:`~pm.ensemble.core.Ensemble`'s."""

    def __init__(
        self,
        nodes: Nodes,
        *,
        mem_high: str | int | None = None,
        mem_low: str | int | None = None,
        mem_free: int | None = None,
        mem_suspend: int | None = None,
        mem_per_task: int | None = None,
        retries: int = 0,
        overrun: str = "warn",
        settle: float | None = DEFAULT_SETTLE,
        interval: float = DEFAULT_INTERVAL,
        spec: JobSpec | None = None,
        output: TaskSink | None = None,
        on_event: Callable[[Event], None] | None = None,
        cgroup: str | os.PathLike[str] | None = None,
        local_hosts: Collection[str] | None = None,
        default_reservation: int = DEFAULT_RESERVATION,
        jobs: int | str | None = None,
        timeout: float | None = None,
        timeout_median: float | None = None,
        delay: float = 0.0,
        jobs_file: str | None = None,
        slot_var: str | None = None,
        load: str | None = None,
        noswap: bool = False,
        limit: str | None = None,
        cleanup: bool = False,
        basefiles: Sequence[str] = (),
        termseq: str | None = None,
        tty: bool = False,
    ) -> None:
        if overrun not in ("warn", "kill", "suspend"):
            raise SizeError(f"--mem-overrun takes warn, kill or suspend, not {overrun!r}")
        self._nodes = nodes
        self._high, self._low = mem_high, mem_low
        self._free = mem_free  # GNU parallel's --memfree: the high watermark is total - this
        #: GNU parallel's --memsuspend: the free memory under which young tasks stop.
        self._suspend_at = mem_suspend
        self._mem_per_task = mem_per_task
        self._overrun: OverrunPolicy = overrun  # type: ignore[assignment]  # checked above
        self._interval = interval
        self._limit_of_run = RunLimit(timeout, timeout_median)
        #: The running tasks' clocks (index: when it started, its timers), for a limit that
        #: moves as tasks succeed.
        self._clocks: dict[int, Clock] = {}
        #: GNU parallel's --delay: seconds between two starts, and when the next may start.
        self._delay = delay
        #: GNU parallel's --process-slot-var: each run's slot number less one, in this name.
        self._slot_var = slot_var
        self._next_start = 0.0
        #: GNU parallel's --load, --noswap and --limit (pm.ensemble.gates).
        #: --load FILE: the file, and what tells that it changed.
        self._load_file = load if load is not None and os.path.isfile(load) else None
        self._load_seen = (file_state(self._load_file) if self._load_file is not None
                           else None)
        try:
            self._load = (None if load is None else load_file(load) if self._load_file
                          else parse_load(load))
            self._limit = parse_limit(limit) if limit is not None else None
        except (OSError, ValueError) as exc:
            raise SizeError(f"--load {load}: {exc}" if self._load_file else str(exc)
                            ) from None
        self._noswap = noswap
        #: GNU parallel's --cleanup and --basefile (pm.ensemble.transfer).
        self._cleanup = cleanup
        self._basefiles = tuple(basefiles)
        #: GNU parallel's --termseq: how a task is ended (--timeout, --halt now, --limit).
        try:
            self._termseq = parse_termseq(termseq) if termseq is not None else None
        except ValueError as exc:
            raise SizeError(str(exc)) from None
        self._activity: ActivityProbe | None = None  # this machine's, with such a gate
        self._spec = spec or JobSpec(apps=[])
        self._output = output
        self._on_event = on_event
        #: What ``on_event`` raised, first (:meth:`join` raises it).
        self._caller_error: Exception | None = None
        #: Called with a task's index as each of its runs starts, before it runs: an
        #: OSError (the run's files cannot be made: ``--results``) fails the run and
        #: starts no more.
        self.prepare: Callable[[int], None] | None = None
        self._probe_mem = NodeMemory(cgroup)
        self._token = secrets.token_hex(6)
        self._here = socket.gethostname()
        #: GNU parallel's -j FILE (``jobs`` what it says now): read again when it changed.
        self._jobs_file = jobs_file
        self._jobs_seen = file_state(jobs_file) if jobs_file is not None else None
        if not (jobs is None or (isinstance(jobs, str) and cpu_rule(jobs))
                or (isinstance(jobs, int) and jobs >= 0)):
            raise SizeError(f"-j takes {JOBS_FORMS}, not {jobs!r}")
        self._domains = make_domains(nodes, self._spec.ppn, self._here, local_hosts, jobs)
        self._tty = tty
        self._typed_signal = 0  # (--tty: :meth:`_typed`)
        away = next((d.name for d in self._domains.values() if not d.local), None)
        if tty and away is not None:
            raise SizeError(f"--tty gives each task pmrun's terminal: tasks run on this "
                            f"machine, not on {away}")
        for d in self._domains.values():
            if d.local and d.cores and (d.slots or 0) < 1:
                raise SizeError(f"-j {d.rule}: {local_cores()} CPU {CPU_UNIT[0]}s here leave "
                                "no job slot")
        by_cores = all(d.cores for d in self._domains.values())
        self._sched = EnsembleScheduler(
            list(self._domains), retries, slots={d.name: d.slots for d in self._domains.values()
                                                 if d.slots is not None},
            settle=settle, default_reservation=default_reservation,
            slot_word="a core" if by_cores else "a free slot",
            # (What a task spawned here counts at its end includes our own size.)
            small=max(SMALL, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10),
        )
        self._tasks: dict[int, Task] = {}
        self._next_index = 0  # above every task's index
        self._runs: set[asyncio.Task[None]] = set()
        self._slots: set[int] = set()  # job slots (GNU parallel's {%}) held by running tasks
        self._began: float | None = None  # when the first task started (monotonic)
        #: Waits for the remote runners to end: awaited by aclose() once they are told to.
        self._runner_ends: set[asyncio.Future[Any]] = set()
        self._remote = RemoteRunner(nodes, self._spec, self._here)
        self._local: LocalRunner | None = None  # from the start, with a local domain
        self._sampler: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._closed = False
        self._stopping = False  # interrupted: start nothing new
        self._room: list[asyncio.Future[None]] = []  # room() callers: told at each change
        self.on_progress: Callable[[], None] | None = None
        #: The number of tasks to come, as far as known (GNU parallel's --total-jobs, for
        #: tasks still being added): the progress line's total if more than those added.
        self.total_hint = 0
        #: Called with each task and its result once it has ended for good.
        self.on_done: Callable[[Task, TaskResult], None] | None = None
        #: The number messages and the summary give the first task: 0, its index (pmrun's
        #: --tasks FILE, the summary naming its line too), or 1 (GNU parallel's command
        #: line: a task's Seq, as ``{#}`` and the job log number it).
        self.numbered_from = 0

    if TYPE_CHECKING:  # what the parts call of each other (pm.ensemble.core, runs, hosts)
        def _name(self, index: int) -> str: ...

        def _event(self, kind: str, d: Domain, text: str, task: int | None = None, *,
                   reserved: int | None = None) -> None: ...

        def halt(self, why: str, now: bool = False) -> None: ...

        def _apply(self, starts: list[Start]) -> None: ...

        def _signal_task(self, d: Domain, index: int, sig: signal.Signals, why: str
                         ) -> None: ...

        def _end_task(self, d: Domain, index: int, why: str) -> None: ...


def file_state(path: str) -> tuple[int, int] | None:
    """What tells that a file changed: its modification time and size (None: gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size
