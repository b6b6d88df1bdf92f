"""Task ensembles under memory admission: ``pmrun --tasks``, ``Cluster.submit``, ``run_tasks``.

An :class:`Ensemble` runs one-command tasks over the nodes of a
:class:`~pm.common.nodes.Nodes` as fast as each node's memory admits them: the pure
:class:`~pm.ensemble.scheduler.EnsembleScheduler` decides; this module feeds it memory
samples, applies the overrun policy, has the admitted tasks run and reports
what happens (:class:`Event`).

Nodes and memory.  The scheduler's nodes are *memory domains*
(:mod:`pm.ensemble.domain`).  Every node entry on this machine
(``--local-nodes N``, or every host with the local launcher) is one domain,
since they share one machine's memory: one admission for the machine, N
execution targets that label the tasks (``PMRUN_TASK_NODE``).  Tasks per
domain are bounded by ``jobs`` (``-j``), else by ``-ppn`` / host slots when
given, else (``jobs="cores"``, the command line's default) by its cores, else
by memory alone; memory admission applies on top.
This machine's tasks are started here directly (posix_spawn into one
guardian process group: :mod:`pm.ensemble.local`); its memory is the
cgroup's or the machine's (:class:`~pm.agent.memory.NodeMemory`) and each
task's process tree is read from /proc (anonymous resident bytes: shared
library pages are not the task's).  Any other host is a domain of its own
(:mod:`pm.ensemble.remote`): one runner there, a job of the agent tree that
lives as long as the ensemble, starts its tasks as this machine's are
started, passes on their output and exits, and samples the host's memory
and its tasks' usage.

:class:`Task` and :class:`TaskResult` are defined in :mod:`pm.ensemble.task`
and imported from here; the command-line front end is :mod:`pm.ensemble.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import resource
import secrets
import shlex
import signal
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pm.agent.memory import (
    NodeMemory,
    OverrunPolicy,
    SizeError,
    Watermarks,
    format_size,
    parse_size,
)
from pm.common.activity import Activity, ActivityProbe
from pm.common.output import STDOUT
from pm.ensemble.domain import CPU_UNIT, Domain, cpu_slots, local_cores, make_domains
from pm.ensemble.gates import (
    Builtin,
    builtin_answer,
    describe_status,
    load_file,
    load_gate,
    parse_limit,
    parse_load,
    run_limit,
)
from pm.ensemble.local import LocalRunner, signal_tree, tree_anon
from pm.ensemble.remote import RemoteRunner
from pm.ensemble.scheduler import (
    DEFAULT_RESERVATION,
    SMALL,
    EnsembleScheduler,
    Start,
    TaskSpec,
    TaskStatus,
)
from pm.ensemble.task import InputStream, Task, TaskResult
from pm.ensemble.timeouts import RunLimit
from pm.ensemble.transfer import here_path, there_path
from pm.jobspec import JobSpec
from pm.options import JOBS_FORMS, cpu_rule, parse_jobs
from pm.proto.errors import ResourceLimit, defect
from pm.proto.runner import ProbeSample

if TYPE_CHECKING:
    from pm.common.nodes import Nodes

__all__ = ["DEFAULT_SETTLE", "Ensemble", "Event", "Task", "TaskResult"]

log = logging.getLogger("pm.ensemble")

#: Seconds a running task's peak must hold still before its reservation shrinks to it.
DEFAULT_SETTLE = 1.0
#: Seconds between two memory samples of a node.
DEFAULT_INTERVAL = 0.1
#: Seconds between a timed-out task's SIGTERM and its SIGKILL.
KILL_AFTER = 2.0
#: The exit code of a run that did not start because its output could not be stored, or
#: that a defect of pmrun's broke.
EXIT_BROKEN = 255

#: Receives a task's output: (task index, 1 for stdout or 2 for stderr, whole lines).
TaskSink = Callable[[int, int, bytes], None]


@dataclass(frozen=True)
class Event:
    """Something the ensemble did or saw, for logs and callers.

    ``kind``: ``watermarks`` (a node's figures are known), ``start``, ``exit``,
    ``blocked`` (the node passed its high watermark), ``unblocked`` (back under
    its low one), ``sample`` (a memory sample), ``overrun`` (a task over its
    declared bound), ``killed`` / ``suspended`` / ``resumed`` (the overrun
    policy acted), ``lost`` (a node's runner is gone).  ``used`` and
    ``reserved`` are the node's figures when it happened.
    """

    kind: str
    time: float
    node: str
    text: str
    task: int | None = None
    used: int = 0
    reserved: int = 0
    high: int = 0
    low: int = 0


@dataclass
class _Clock:
    """A task's run against its time limit: on which host, when it started (the loop's
    time), the timers that end it, whether they did."""

    domain: Domain
    start: float
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    timed_out: bool = False


class Ensemble:
    """Runs tasks over ``nodes`` under memory admission (see the module docstring).

    ``mem_high`` / ``mem_low``: watermarks per node, sizes or percentages of
    its memory (None: 90 % / 80 %).  ``mem_per_task``: the bound of a task
    that states none (None: learned from finished tasks of the same command,
    else a guess).  ``retries``: reruns of a failed task.  ``overrun``: what
    to do with a task over its bound while its node is over the high
    watermark (``warn``, ``kill``, ``suspend``).  ``settle``: a running task's
    reservation shrinks to its measured peak (+10 %) once that peak held
    ``settle`` seconds (None: reservations only grow).  ``spec``: environment
    and working directory of the tasks, and ``ppn`` (tasks per node entry).
    ``jobs``: tasks at most per host (0: memory alone), or ``"cores"``: one per
    core of the host unless ``ppn`` or the hosts give slots, or another
    :func:`pm.options.cpu_rule` (None: those slots, else memory alone).  ``jobs_file``
    (GNU parallel's ``-j FILE``): the file ``jobs`` was read from, read again whenever it
    changed as a task ends.  ``timeout``: seconds a task's run may take (GNU parallel's
    ``--timeout``): then it gets SIGTERM, and SIGKILL :data:`KILL_AFTER` seconds later;
    ``timeout_median``: instead, that multiple of the median successful run (2.0: GNU
    parallel's ``--timeout 200%``).
    ``load``, ``noswap``, ``limit``: GNU parallel's ``--load``, ``--noswap`` and
    ``--limit``, gates of each host besides its slots and memory (:mod:`pm.ensemble.gates`).
    ``output``: a :data:`TaskSink`, or None to keep each task's output in its
    result.  ``on_event``: every :class:`Event`.  ``cgroup``: the memory cgroup
    of this machine's tasks (default: this process's).  ``local_hosts``: host
    names that are this machine (default: all with the local launcher, else
    this host's names).  ``tty`` (GNU parallel's ``--tty``): each task's stdin is our
    terminal, its stdout and stderr ours, in the terminal's foreground (none of its
    output reaches ``output``); every host must be this machine.
    Use ``async with`` or :meth:`start` / :meth:`aclose`.
    """

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
        self._clocks: dict[int, _Clock] = {}
        #: GNU parallel's --delay: seconds between two starts, and when the next may start.
        self._delay = delay
        #: GNU parallel's --process-slot-var: each run's slot number less one, in this name.
        self._slot_var = slot_var
        self._next_start = 0.0
        #: GNU parallel's --load, --noswap and --limit (pm.ensemble.gates).
        #: --load FILE: the file, and what tells that it changed.
        self._load_file = load if load is not None and os.path.isfile(load) else None
        self._load_seen = (_file_state(self._load_file) if self._load_file is not None
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
        self._jobs_seen = _file_state(jobs_file) if jobs_file is not None else None
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

    # ----------------------------------------------------------------- set-up
    async def __aenter__(self) -> Ensemble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Read every node's memory and watermarks; then tasks can start.  Idempotent."""
        if self._closed:
            raise ResourceLimit("the task ensemble is closed")
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        if self._stopping:  # interrupted before it started: nothing will run
            return
        for d in self._domains.values():
            if d.local:
                if self._gated():
                    self._activity = ActivityProbe()
                snap = await asyncio.to_thread(self._probe_mem.read)
                self._memory_known(d, snap.total, snap.used, snap.limit_source)
                if self._sampler is None:
                    self._local = LocalRunner(self._spec.base_env, tty=self._tty)
                    self._local.on_key = self._typed
                    self._sampler = asyncio.ensure_future(self._sample_local(d))
        # Every other host's runner at once (each is an ssh session or a Slurm step); all
        # have started or failed before a failure is raised (aclose() then ends them).
        ends = await asyncio.gather(*(self._start_runner(d) for d in self._domains.values()
                                      if not d.local), return_exceptions=True)
        for end in ends:
            if isinstance(end, BaseException):
                raise end

    def _memory_known(self, d: Domain, total: int, used: int, source: str) -> None:
        high = self._high
        d.total = total
        if self._free is not None or self._suspend_at is not None:
            # (--memsuspend SIZE admits as --memfree SIZE does, and adds up with it)
            free = (self._free or 0) + (self._suspend_at or 0)
            if free >= total:
                name = "--memfree" if self._suspend_at is None else "--memsuspend"
                raise SizeError(f"{name} {format_size(free)} is all of node {d.name}'s "
                                f"memory ({format_size(total)}) or more")
            high = total - free
        marks = Watermarks.resolve(total, high, self._low)
        if self._gated():  # (closed until the host's activity is known, or the limit's word)
            self._gate(d, used)
        self._event("watermarks", d, marks.describe(total, source))
        self._apply(self._sched.node_memory(d.name, used, marks, now=time.monotonic()))
        d.peak_used = max(d.peak_used, used)

    # ----------------------------------------------------------------- submitting
    def add(self, argv: Sequence[str], mem: str | int | None = None, *,
            env: dict[str, str] | None = None, wdir: str | None = None,
            spec: TaskSpec | None = None, stdin: bytes | InputStream | None = None,
            transfer: Sequence[str] = (), returns: Sequence[str] = ()) -> Task:
        """Queue a task without waiting for its admission (``spec``: a parsed line;
        ``stdin``: what its runs read there, else /dev/null; ``transfer``, ``returns``: files
        put on its host before each run and brought back after, GNU parallel's
        ``--transferfile`` and ``--return``: :mod:`pm.ensemble.transfer`)."""
        if self._closed:
            raise ResourceLimit("the task ensemble is closed")
        index = self._next_index
        if spec is None:
            nbytes = parse_size(mem) if isinstance(mem, str) else mem
            if nbytes is None:
                nbytes = self._mem_per_task
            spec = TaskSpec(index, tuple(argv), nbytes, shlex.join(argv))
        elif spec.index in self._tasks or spec.index < 0:
            spec = replace(spec, index=index)
        index = spec.index  # a parsed line keeps its number (--resume skips some)
        self._next_index = max(self._next_index, index + 1)
        if not spec.argv:
            raise ValueError("a task needs a command")
        task = Task(spec, dict(env or {}), wdir or self._spec.wdir, stdin)
        task.transfer, task.returns = tuple(transfer), tuple(returns)
        if self._output is None:
            task.out, task.err = [], []
        self._tasks[index] = task
        self._apply(self._sched.add([spec]))
        return task

    async def submit(self, argv: Sequence[str], mem: str | int | None = None, *,
                     env: dict[str, str] | None = None, wdir: str | None = None) -> Task:
        """Queue ``argv`` and return once it is admitted on a node (it is then starting).

        ``mem``: its memory bound (``"2G"`` or bytes; default ``mem_per_task``).
        While no node can admit it (memory, or a node waiting to fall under its
        low watermark), this does not return.  Cancelling withdraws the task.
        Raises :class:`ResourceLimit` if it can never be admitted.
        """
        await self.start()
        task = self.add(argv, mem, env=env, wdir=wdir)
        try:
            await asyncio.shield(task.admitted)
        except asyncio.CancelledError:
            self._apply(self._sched.cancel(task.index))
            raise
        return task

    @property
    def stopping(self) -> bool:
        """Interrupted, halted or closed: tasks added now never run."""
        return self._stopping

    @property
    def slot_count(self) -> int:
        """Tasks that can run at once over every host (GNU parallel's job slots; a host
        that memory alone bounds counts one), once :meth:`start` has returned."""
        return sum(d.slots or 1 for d in self._domains.values())

    async def room(self, most: int) -> None:
        """Return once fewer than ``most`` tasks wait to start, or the ensemble stops (a
        producer such as ``--pipe`` adds tasks only as fast as they are taken)."""
        loop = asyncio.get_running_loop()
        while self._sched.queued() >= most and not self._stopping:
            fut = loop.create_future()
            self._room.append(fut)
            await fut

    async def join(self) -> list[TaskResult]:
        """Every task's result, in submission order, once all have ended.  An exception
        ``on_event`` raised is raised here, once every task ended (the callback raising
        halts the ensemble: the running tasks are killed, no more start, and it is called
        no more)."""
        results = [await t.wait() for t in list(self._tasks.values())]
        if self._caller_error is not None:
            raise self._caller_error
        return results

    def progress_text(self) -> str:
        """The progress line: counts, what the queue waits for, and once a task ended
        an estimate of the time left (as GNU parallel's ``--eta``: the time so far per
        ended task, times the tasks left)."""
        progress = self._sched.progress()
        total = max(len(self._tasks), self.total_hint)
        text = progress.format(total)
        left = total - progress.done
        if self._began is not None and progress.done and left:
            eta = (time.monotonic() - self._began) / progress.done * left
            text += f", about {_duration(eta)} left"
        return text

    def is_here(self, node: str | None) -> bool:
        """Whether ``node`` (a task's :attr:`Task.node`) is this machine."""
        d = self._domains.get(str(node))
        return d is not None and d.local

    def all_succeeded(self) -> bool:
        """Whether every task added succeeded, each at its first run."""
        summary = self._sched.summary()
        return summary.succeeded == summary.total and not summary.retries

    def _name(self, index: int) -> str:
        """Task ``index`` as messages name it (:attr:`numbered_from`)."""
        return f"task {index + self.numbered_from}"

    def summary_text(self) -> str:
        lines = [self._sched.summary().format(by_seq=self.numbered_from == 1)]
        for d in self._domains.values():
            adm = self._sched.admission(d.name)
            if adm is not None:
                lines.append(f"node {d.name}: peak memory in use {format_size(d.peak_used)} "
                             f"(high watermark {format_size(adm.watermarks.high)})")
        return "\n".join(lines)

    # ----------------------------------------------------------------- stopping
    def _typed(self, signum: int) -> None:
        """``--tty``: a task ended by ``signum`` typed at the terminal: nothing more
        starts, and ``signum`` is ours too (the user meant the whole run), handled as our
        process handles it (pmrun's :meth:`interrupt`; Python's KeyboardInterrupt)."""
        if self._stop(f"not run: {signal.Signals(signum).name}"):
            self._typed_signal = signum
            self._wake()
            os.kill(os.getpid(), signum)

    def interrupt(self, signum: int) -> None:
        """First call: start nothing more, pass ``signum`` to running tasks; then kill them."""
        if self._typed_signal == signum:  # (the tasks had it from the terminal)
            self._typed_signal = 0
            return
        if self._stop(f"not run: {signal.Signals(signum).name}"):
            if self._local is not None:
                self._local.signal(signum)
            self._remote.signal_all(signum)
            self._remote.cut_starts(signum)
            self._wake()
        else:
            self._kill_all("interrupted twice")

    def halt(self, why: str, now: bool = False) -> None:
        """Start nothing more (queued tasks fail with ``why``, failed runs are not
        retried); ``now``: kill the running tasks too (GNU parallel's ``--halt``)."""
        self._stop(why)
        if now and self._termseq is not None:
            for d in self._domains.values():
                for index in sorted(self._sched.running_on(d.name)):
                    self._end_task(d, index, why)
        elif now:
            self._kill_all(why)

    def _stop(self, why: str) -> bool:
        """Start nothing more: queued tasks fail with ``why``, failed runs are not retried,
        and a start whose run has not begun is withdrawn (:meth:`_run`).  False if the
        ensemble was stopping already."""
        if self._stopping:
            return False
        self._stopping = True
        self._sched.stop(why)
        self._apply([])
        return True

    def _kill_all(self, why: str) -> None:
        if self._local is not None:
            for t in self._tasks.values():
                if t.pid:
                    signal_tree(t.pid, signal.SIGKILL)
        for index in list(self._remote.running):
            self._remote.signal(index, signal.SIGKILL)

    async def aclose(self) -> None:
        """Kill what runs, fail what waits, stop sampling and the hosts' runners.  Idempotent."""
        if self._closed:
            return
        self._closed = self._stopping = True
        self._sched.stop("the ensemble closed")
        self._apply([])
        self._kill_all("the ensemble closed")
        if self._runs:
            await asyncio.wait(set(self._runs))
        self._remote.close()  # each runner ends at the end of its stdin
        for d in self._domains.values():
            if d.runner is not None:
                with contextlib.suppress(Exception):
                    await d.runner.wait()
        if self._runner_ends:
            await asyncio.wait(set(self._runner_ends))
        for job_task in (self._sampler, self._starting,
                         *(d.limit_run for d in self._domains.values())):
            if job_task is not None and not job_task.done():
                job_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job_task
        if self._local is not None:
            self._local.close()

    # ----------------------------------------------------------------- running
    def _apply(self, starts: list[Start]) -> None:
        for start in starts:
            run = asyncio.ensure_future(self._run(start))
            self._runs.add(run)
            run.add_done_callback(functools.partial(self._run_ended, start.task.index))
        for index in self._sched.take_failed_unrun():
            task = self._tasks[index]
            rec = self._sched.record(index)
            if not task.admitted.done():
                task.admitted.set_exception(ResourceLimit(f"{self._name(index)}: {rec.reason}"))
                task.admitted.exception()  # an add()-ed task may have no submitter
            self._finish(task)
        if self._room:
            waiting, self._room = self._room, []
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        if self.on_progress is not None:
            self.on_progress()

    def _run_ended(self, index: int, run: asyncio.Task[None]) -> None:
        """A run's coroutine ended; if with an exception (outside its run: :meth:`_run`
        names those itself), a defect of ours: fail the task so that nobody waits for it."""
        self._runs.discard(run)
        if run.cancelled() or run.exception() is None:
            return
        exc = run.exception()
        assert exc is not None
        self._defect(index, exc)
        if self._sched.record(index).status is TaskStatus.RUNNING:
            self._apply(self._sched.task_exited(index, EXIT_BROKEN))
        self._finish(self._tasks[index])

    def _defect(self, index: int, exc: BaseException) -> None:
        """A defect of ours broke task ``index``'s run: say so on one line and end the
        ensemble (nothing new starts, what runs is killed)."""
        why = f"{defect(exc)} (a defect of pmrun's own)"
        d = self._domains.get(str(self._tasks[index].node))
        if d is not None and self._on_event is not None and self._caller_error is None:
            self._event("error", d, f"{self._name(index)}: {why}", index)
        else:
            log.error("%s: %s", self._name(index), why)
        self.halt(f"not run: {why}", now=True)

    async def _run(self, start: Start) -> None:
        if self._delay:  # --delay: our turn (the slot is held meanwhile, as parallel's)
            loop = asyncio.get_running_loop()
            at = max(loop.time(), self._next_start)
            self._next_start = at + self._delay
            await asyncio.sleep(at - loop.time())
        if self._stopping:  # started by the scheduler just before a stop: never runs
            self._sched.withdraw(start.task.index)
            self._apply([])
            return
        task = self._tasks[start.task.index]
        d = self._domains[str(start.node)]
        for gate, (allow, why) in d.gates.items():  # (the scheduler counted it too)
            d.gates[gate] = (max(allow - 1, 0), why)
        entry = min(d.entries, key=lambda e: d.running.get(e, 0))
        d.running[entry] = d.running.get(entry, 0) + 1
        task.node, task.started, task.ended = d.name, time.time(), None
        task.received = 0  # (the job log's Receive: this run's bytes)
        if not task.admitted.done():
            task.admitted.set_result(None)
        if self._began is None:
            self._began = time.monotonic()
        slot = next(k for k in itertools.count(1) if k not in self._slots)
        self._slots.add(slot)
        env = {**task.env, "PMRUN_ENSEMBLE": self._token, "PMRUN_TASK": str(task.index),
               "PMRUN_TASK_NODE": str(entry), "PMRUN_TASK_ATTEMPT": str(start.attempt),
               "PARALLEL_SEQ": str(task.index + 1), "PARALLEL_JOBSLOT": str(slot),
               # (GNU parallel's names of the host a task runs on: ":" is this machine)
               "PARALLEL_SSHLOGIN": ":" if d.local else d.name,
               "PARALLEL_SSHHOST": ":" if d.local else d.name.rpartition("@")[2],
               "PARALLEL_PID": str(os.getpid())}
        if self._slot_var:
            env[self._slot_var] = str(slot - 1)
        code: int | None = None
        clock = _Clock(d, asyncio.get_running_loop().time())
        try:
            try:
                if self.prepare is not None:
                    self.prepare(task.index)
            except OSError as exc:  # the run's files could not be made (--results)
                code = EXIT_BROKEN
                why = f"{self._name(task.index)}'s output cannot be stored: {_os_error(exc)}"
                self._event("error", d, why, task.index)
                self.halt(f"not run: {why}")  # the others' would not be either
                return
            self._event("start", d, f"[{self._name(task.index)}] started on node {entry} "
                        f"({d.name}), reserving {format_size(start.reservation)}: "
                        f"{task.spec.line}", task.index)
            self._clocks[task.index] = clock
            self._arm(task.index, clock)
            if d.local:
                assert self._local is not None
                code = await self._local.run(task, env, self._emit)
            else:
                code = await self._remote.run(task, d.name, env, self._emit,
                                              *await self._transfers(d, task))
        except Exception as exc:  # a defect of ours: halted before the task counts as ended
            code = EXIT_BROKEN
            self._defect(task.index, exc)
        finally:
            for timer in clock.timers:
                timer.cancel()
            if self._clocks.get(task.index) is clock:
                del self._clocks[task.index]
            if code == 0 and self._limit_of_run.moving:
                self._limit_of_run.succeeded(asyncio.get_running_loop().time() - clock.start)
                for index, other in self._clocks.items():
                    self._arm(index, other)
            task.ended = time.time()
            self._slots.discard(slot)
            d.running[entry] -= 1
            for s in (d.reported, d.killed, d.suspended, d.exempt, d.held, d.limit_ended):
                s.discard(task.index)
            peak = self._sched.record(task.index).peak
            self._event("exit", d, f"[{self._name(task.index)}] exited with {code} after "
                        f"{task.ended - task.started:.2f} s, peak {format_size(peak)}", task.index)
            rec = self._sched.record(task.index)
            if (rec.status is TaskStatus.RUNNING and rec.node == start.node
                    and rec.attempts == start.attempt):  # (not ended with its node already)
                self._apply(self._sched.task_exited(task.index, code, rss=task.exit_rss))
            if self._sched.record(task.index).status in (TaskStatus.DONE, TaskStatus.FAILED):
                self._finish(task)
            if self._jobs_file is not None:
                self._jobs_changed(self._jobs_file)

    def _jobs_changed(self, path: str) -> None:
        """GNU parallel's -j FILE: when the file changed, every host's slots are what it
        says now (running tasks go on; none starts until fewer run).  Unreadable, or
        saying nothing -j takes: the slots stay as they are."""
        state = _file_state(path)
        if state is None or state == self._jobs_seen:
            return
        self._jobs_seen = state
        try:
            with open(path, "rb") as f:
                jobs = parse_jobs(f.read(4096).decode(errors="replace"))
        except OSError:
            return
        if jobs is None:
            return
        for d in self._domains.values():
            if d.lost:
                continue
            if isinstance(jobs, int):
                d.cores, d.slots = False, jobs or None
            elif d.local or d.cpus:
                # (A rule that leaves none gives one, as parallel's manual says.)
                d.rule, d.cores = jobs, True
                d.slots = max(cpu_slots(jobs, local_cores() if d.local else d.cpus), 1)
            else:
                d.rule, d.cores = jobs, True  # its first sample applies it
                continue
            self._apply(self._sched.set_slots(d.name, d.slots))

    def _finish(self, task: Task) -> None:
        if task.done():
            return
        rec = self._sched.record(task.index)
        codes = tuple(rec.exit_codes)
        result = TaskResult(
            task.index, task.argv, codes[-1] if codes else None, codes, task.node, rec.peak,
            rec.reservation, rec.reason, task.started, task.ended,
            b"".join(task.out or []), b"".join(task.err or []))
        task._result.set_result(result)
        if self.on_done is not None:
            self.on_done(task, result)

    def _emit(self, task: Task, stream: int, data: bytes) -> None:
        if stream == STDOUT:  # (GNU parallel's "Receive": its stdout's bytes)
            task.received += len(data)
        if self._output is not None:
            self._output(task.index, stream, data)
        else:
            buf = task.out if stream == STDOUT else task.err
            assert buf is not None
            buf.append(data)

    # ----------------------------------------------------------------- memory
    async def _sample_local(self, d: Domain) -> None:
        while True:
            await asyncio.sleep(self._interval)  # the sampling period, not a wait for an event
            pids = {t.index: t.pid for t in self._tasks.values() if t.pid and t.node == d.name}
            try:
                used, sizes, activity = await asyncio.to_thread(self._measure, pids)
            except OSError as exc:  # a probe that failed once must not stop the ensemble
                log.warning("memory sample failed: %s", exc)
                continue
            self._sampled(d, used, sizes, activity)

    def _measure(self, pids: dict[int, int]
                 ) -> tuple[int, dict[int, int], Activity | None]:
        activity = self._activity.read() if self._activity is not None else None
        return (self._probe_mem.used(), {i: tree_anon(p) for i, p in pids.items()},
                activity)

    def _sampled(self, d: Domain, used: int, sizes: dict[int, int],
                 activity: Activity | None = None) -> None:
        d.peak_used = max(d.peak_used, used)
        if self._gated() and not self._stopping:
            d.activity = activity or d.activity
            self._gate(d, used)
        starts = self._sched.node_memory(d.name, used, tasks=sizes, now=time.monotonic())
        adm = self._sched.admission(d.name)
        assert adm is not None
        # The figures of the sample itself: without what it just admitted (unused yet).
        reserved = adm.reserved - sum(s.reservation for s in starts if s.node == d.name)
        if adm.blocked != d.blocked:
            d.blocked = adm.blocked
            marks = adm.watermarks
            if adm.blocked:
                text = (f"over the high watermark {format_size(marks.high)}: admitting "
                        f"nothing until it is under the low one ({format_size(marks.low)})")
            else:
                text = f"under the low watermark {format_size(marks.low)}: admitting again"
            self._event("blocked" if adm.blocked else "unblocked", d,
                        f"node {d.name}: used+reserved {format_size(adm.used + reserved)} "
                        + text, reserved=reserved)
        self._event("sample", d, f"node {d.name}: used {format_size(adm.used)}, "
                    f"reserved {format_size(reserved)}", reserved=reserved)
        self._overruns(d)
        if self._suspend_at is not None and not self._stopping:
            self._hold(d)
        self._apply(starts)

    def _overruns(self, d: Domain) -> None:
        """Report tasks over their bound; act on them per policy while the node is blocked."""
        adm = self._sched.admission(d.name)
        assert adm is not None
        overruns = [(_index(o.ident), o) for o in adm.overruns()]
        for index, o in overruns:
            if index not in d.reported:
                d.reported.add(index)
                self._event("overrun", d, f"[{self._name(index)}] uses {format_size(o.measured)}, "
                            f"over its bound of {format_size(o.bound)}", index)
        if not adm.blocked:
            d.exempt.clear()
            self._resume(d)
            return
        running = {_index(i) for i in adm.admitted()} - d.suspended - d.held
        for index, _o in overruns:
            if index in d.killed or index in d.suspended or index in d.exempt:
                continue
            if self._overrun == "kill":
                d.killed.add(index)
                self._act(d, index, signal.SIGKILL, "killed")
            elif self._overrun == "suspend" and running - {index}:
                # Only while something else runs that can end and free memory.
                running.discard(index)
                d.suspended.add(index)
                self._act(d, index, signal.SIGSTOP, "suspended")
        if d.suspended and not running:
            d.exempt.update(d.suspended)  # waiting cannot free memory any more
            self._resume(d)

    def _hold(self, d: Domain) -> None:
        """GNU parallel's ``--memsuspend SIZE`` on node ``d``: while less than 2 x SIZE is
        free, only its oldest tasks run -- the more of them the nearer 2 x SIZE (free =
        SIZE (2 - 1/k): k), one under SIZE -- the others stopped (SIGSTOP); with 2 x SIZE
        free again, one stopped task goes on (SIGCONT) a sample, the oldest first."""
        adm = self._sched.admission(d.name)
        assert adm is not None and self._suspend_at is not None
        size, free = self._suspend_at, d.total - adm.used
        tasks = sorted(i for i in map(_index, adm.admitted())
                       if i in self._tasks and self._tasks[i].started and i not in d.suspended)
        said = (f"node {d.name} has {format_size(max(free, 0))} free, --memsuspend "
                f"{format_size(size)}")
        if free >= 2 * size:
            held = sorted(d.held)
            if held:
                d.held.discard(held[0])
                self._hold_act(d, held[0], signal.SIGCONT, "resumed", said)
            return
        keep = int(1 / (2 - max(free, 0) / size)) + 1
        for k, index in enumerate(tasks):
            if k < keep and index in d.held:
                d.held.discard(index)
                self._hold_act(d, index, signal.SIGCONT, "resumed", said)
            elif k >= keep and index not in d.held:
                d.held.add(index)
                self._hold_act(d, index, signal.SIGSTOP, "suspended", said)

    def _hold_act(self, d: Domain, index: int, sig: signal.Signals, what: str,
                  said: str) -> None:
        self._signal_task(d, index, sig, f"task {index}: {said}")
        self._event(what, d, f"[{self._name(index)}] {what}: {said}", index)

    def _wake(self) -> None:
        """Every stopped task goes on, to hear what it was just sent (SIGTERM waits while a
        process is stopped) -- pmrun stops them no more."""
        for d in self._domains.values():
            for index in sorted(d.held | d.suspended):
                self._signal_task(d, index, signal.SIGCONT, f"task {index} ends")
            d.held.clear()
            d.suspended.clear()

    def _arm(self, index: int, clock: _Clock) -> None:
        """(Re)set the timer of task ``index``'s run to the time limit there is now."""
        limit = self._limit_of_run.seconds()
        if limit is None or clock.timed_out:
            return
        for timer in clock.timers:
            timer.cancel()
        loop = asyncio.get_running_loop()
        clock.timers = [loop.call_at(clock.start + limit, self._timed_out, index, clock, limit)]

    def _timed_out(self, index: int, clock: _Clock, limit: float) -> None:
        """A task's run took its time limit: SIGTERM now, SIGKILL if it is still there
        :data:`KILL_AFTER` seconds later (the run's end cancels the clock's timers); with
        ``--termseq``, its signals."""
        d, timers = clock.domain, clock.timers
        clock.timed_out = True
        after = self._limit_of_run.describe(limit)
        if self._termseq is not None:
            self._event("timeout", d, f"[{self._name(index)}] timed out after {after}: "
                        "ending it (--termseq)", index)
            self._end_task(d, index, f"task {index} timed out")
            return
        self._event("timeout", d, f"[{self._name(index)}] timed out after {after}: "
                    f"{'killed' if timers[1:] else 'terminated'}", index)
        self._signal_task(d, index, signal.SIGKILL if timers[1:] else signal.SIGTERM,
                          f"task {index} timed out")
        if index in d.held or index in d.suspended:  # (stopped, it would not hear SIGTERM)
            d.held.discard(index)
            d.suspended.discard(index)
            self._signal_task(d, index, signal.SIGCONT, f"task {index} timed out")
        if not timers[1:]:
            timers.append(asyncio.get_running_loop().call_later(
                KILL_AFTER, self._timed_out, index, clock, limit))

    def _signal_task(self, d: Domain, index: int, sig: signal.Signals, why: str) -> None:
        task = self._tasks[index]
        if d.local and task.pid:
            signal_tree(task.pid, sig)
        else:
            self._remote.signal(index, sig)

    def _resume(self, d: Domain) -> None:
        for index in sorted(d.suspended):
            self._act(d, index, signal.SIGCONT, "resumed")
        d.suspended.clear()

    def _act(self, d: Domain, index: int, sig: signal.Signals, what: str) -> None:
        self._signal_task(d, index, sig, f"task {index} over its memory bound")
        self._event(what, d, f"[{self._name(index)}] {what}: over its bound while node {d.name} "
                    "is over its high watermark", index)

    def _event(self, kind: str, d: Domain, text: str, task: int | None = None, *,
               reserved: int | None = None) -> None:
        if self._on_event is None or self._caller_error is not None:
            return
        adm = self._sched.admission(d.name)
        figures = (adm.used, adm.reserved if reserved is None else reserved,
                   adm.watermarks.high, adm.watermarks.low) if adm else (0, 0, 0, 0)
        try:
            self._on_event(Event(kind, time.time(), d.name, text, task, *figures))
        except Exception as exc:  # the caller's own: theirs to see, from join()
            self._caller_error = exc
            # (Halted once the code that said it is done: whichever event raised, the same.)
            asyncio.get_running_loop().call_soon(
                self.halt, f"not run: on_event raised {type(exc).__name__}", True)

    async def _put_bases(self, d: Domain) -> None:
        """Put the ``--basefile`` files on ``d``'s host."""
        for here, there in ((here_path(p), there_path(p, self._spec.wdir))
                            for p in self._basefiles):
            for why in await self._remote.put_base(d.name, [(here, there)],
                                                   self._cleanup and _elsewhere(here, there)):
                self._event("error", d, why)
                if self._on_event is None:
                    log.error("%s", why)

    async def _transfers(self, d: Domain, task: Task
                   ) -> tuple[list[tuple[str, str]], dict[str, str], list[str]]:
        """The files of ``task``'s run on ``d``: put there, brought back, removed after."""
        if self._basefiles:  # before its first task there, which the others wait for too
            if d.based is None:
                d.based = asyncio.ensure_future(self._put_bases(d))
            await asyncio.shield(d.based)
        puts = [(here_path(p), there_path(p, task.wdir)) for p in task.transfer]
        returns = {there_path(p, task.wdir): here_path(p) for p in task.returns}
        remove = [there for here, there in [*puts, *((h, t) for t, h in returns.items())]
                  if _elsewhere(here, there)] if self._cleanup else []
        return puts, returns, remove

    # ----------------------------------------------------------------- gates
    def _gated(self) -> bool:
        """Whether a start condition besides slots and memory applies (pm.ensemble.gates)."""
        return self._load is not None or self._noswap or self._limit is not None

    def _gate(self, d: Domain, used: int) -> None:
        """A sample of ``d`` came: its gates say how many tasks may start until the next."""
        a = d.activity
        if self._load_file is not None and _file_state(self._load_file) != self._load_seen:
            self._load_seen = _file_state(self._load_file)
            with contextlib.suppress(OSError, ValueError):  # (unreadable: the rule stays)
                self._load = load_file(self._load_file)
        if self._load is not None:
            cpus = local_cores() if d.local else d.cpus
            d.gates["load"] = (load_gate(self._load, cpus, a.load) if a is not None
                               else (0, "the host's first sample"))
        if self._noswap:
            d.gates["swap"] = ((0, "no swapping") if a is None or a.swapping
                               else (1 << 30, ""))
        limit = self._limit
        if isinstance(limit, Builtin):
            answer = builtin_answer(limit, d.total - used, a)
            self._limit_said(d, answer.code, answer.why)
        elif limit is not None:
            if not self._sched.queued():  # (a task added later waits for a fresh word)
                d.gates["limit"] = (0, f"--limit {limit}")
            if d.limit_run is None and (self._sched.queued() or self._sched.running_on(d.name)):
                d.limit_run = asyncio.ensure_future(self._run_limit(d, limit))
        self._open_gates(d)

    def _open_gates(self, d: Domain) -> None:
        allow, why = min(d.gates.values(), default=(None, ""))
        self._apply(self._sched.set_gate(d.name, allow, why))

    async def _run_limit(self, d: Domain, command: str) -> None:
        try:
            code = await run_limit(command, ":" if d.local else d.name)
        finally:
            d.limit_run = None
        if self._stopping or d.lost:
            return
        if code not in (0, 1, 2):
            why = describe_status(command, code)
            self._event("error", d, why)
            if self._on_event is None:
                log.error("%s", why)
            self.halt(f"not run: {why}")
            return
        self._limit_said(d, code, f"--limit {command}")
        self._open_gates(d)

    def _limit_said(self, d: Domain, code: int, why: str) -> None:
        """--limit's answer for ``d``: one task may start (0), none (1), none and the
        youngest running there ends (2)."""
        d.gates["limit"] = (1 if code == 0 else 0, why)
        if code != 2:
            return
        running = sorted(set(self._sched.running_on(d.name)) - d.limit_ended)
        if not running:
            return
        index = running[-1]
        d.limit_ended.add(index)
        self._event("killed", d, f"[{self._name(index)}] terminated: {why} says the host is "
                    "way over its limit (2)", index)
        self._end_task(d, index, f"task {index} ended by --limit")

    def _end_task(self, d: Domain, index: int, why: str) -> None:
        """End task ``index``'s run: SIGTERM (continued if stopped), SIGKILL if the same run
        is still there :data:`KILL_AFTER` seconds later; with ``--termseq``, each of its
        signals in turn, the next its wait later if the run is still there."""
        attempt = self._sched.record(index).attempts
        steps = self._termseq or [(signal.SIGTERM, KILL_AFTER), (signal.SIGKILL, 0.0)]
        if index in d.held or index in d.suspended:  # (stopped, it would not hear them)
            d.held.discard(index)
            d.suspended.discard(index)
            self._signal_task(d, index, signal.SIGCONT, why)

        def step(at: int) -> None:
            rec = self._sched.record(index)
            if rec.status is not TaskStatus.RUNNING or rec.attempts != attempt:
                return  # (it ended)
            sig, wait = steps[at]
            self._signal_task(d, index, signal.Signals(sig), why)
            if at + 1 < len(steps):
                asyncio.get_running_loop().call_later(wait, step, at + 1)

        step(0)

    # ----------------------------------------------------------------- remote runners
    async def _start_runner(self, d: Domain) -> None:
        loop = asyncio.get_running_loop()
        d.first = loop.create_future()
        d.runner = await self._remote.start(d.name, self._interval,
                                            lambda sample: self._probe_sample(d, sample),
                                            lambda why: self._lost(d, why), self._gated())
        ended = asyncio.ensure_future(d.runner.wait())
        self._runner_ends.add(ended)
        ended.add_done_callback(self._runner_ends.discard)
        ended.add_done_callback(lambda f: self._runner_ended(d, f))
        deadline = float(str(self._nodes.bootstrap.get("join_timeout", 60)))
        first: asyncio.Future[Any] = d.first
        await asyncio.wait({first, ended}, timeout=deadline, return_when="FIRST_COMPLETED")
        if not d.first.done():
            self._lost(d, "its task runner sent nothing")

    def _probe_sample(self, d: Domain, sample: ProbeSample) -> None:
        if d.first is not None and not d.first.done():
            d.cpus = sample.cores or 0
            if d.cores and not d.local and sample.cores is None:  # (memory alone bounds it)
                d.slots = None
                self._apply(self._sched.set_slots(d.name, None))
            elif d.cores and not d.local:
                d.slots = cpu_slots(d.rule, d.cpus)
                if d.slots < 1:
                    self._lost(d, f"-j {d.rule}: its {sample.cores} CPU threads leave no job "
                                  "slot")
                    return
                self._apply(self._sched.set_slots(d.name, d.slots))
            d.activity = sample.activity
            try:
                self._memory_known(d, sample.total, sample.used, f"{sample.kind} on {d.name}")
            except SizeError as exc:  # watermarks this node cannot have: no task goes there
                self._lost(d, str(exc))
            d.first.set_result(None)
        else:
            self._sampled(d, sample.used, sample.sizes, sample.activity)

    def _runner_ended(self, d: Domain, f: asyncio.Future[Any]) -> None:
        self._lost(d, "its task runner ended")  # (said already, with the cause)

    def _lost(self, d: Domain, why: str) -> None:
        """``d`` is gone: said once, its running tasks' runs fail (retried elsewhere if
        allowed).  Nothing to say once the ensemble closed."""
        if self._closed or d.lost:
            return
        d.lost = True
        if d.first is not None and not d.first.done():
            d.first.set_result(None)
        self._event("lost", d, f"node {d.name} lost: {why}")
        if self._on_event is None:  # (else the event is said, once)
            log.warning("node %s lost: %s", d.name, why)
        self._apply(self._sched.node_lost(d.name))


def parse_termseq(text: str) -> list[tuple[int, float]]:
    """GNU parallel's ``--termseq``: ``TERM,200,TERM,100,KILL,25`` is [(SIGTERM, 0.2),
    (SIGTERM, 0.1), (SIGKILL, 0.025)] (signals by name, SIG or not, or number; waits in
    ms).  ValueError names what cannot be read (pure)."""
    words = [w.strip() for w in text.split(",")]
    if len(words) % 2 or not words[0]:
        raise ValueError(f"--termseq takes SIGNAL,MS pairs (TERM,200,KILL,25), not {text!r}")
    steps = []
    for name, wait in zip(words[::2], words[1::2], strict=True):
        try:
            sig = (int(name) if name.isdecimal()
                   else signal.Signals["SIG" + name.upper().removeprefix("SIG")])
            signal.Signals(sig)
            ms = float(wait)
        except (KeyError, ValueError):
            raise ValueError(f"--termseq {text}: cannot read {name},{wait} as a signal and "
                             "the milliseconds to wait after it") from None
        if ms < 0:
            raise ValueError(f"--termseq {text}: a wait is at least 0 ms")
        steps.append((int(sig), ms / 1000))
    return steps


def _elsewhere(here: str, there: str) -> bool:
    """Whether a file's path on its task's host is another than its path here: --cleanup
    removes only such files there (on a filesystem the host shares with us, the same path
    is this machine's own file, the user's input or the result just brought back)."""
    return os.path.abspath(here) != os.path.abspath(there)


def _file_state(path: str) -> tuple[int, int] | None:
    """What tells that a file changed: its modification time and size (None: gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _duration(seconds: float) -> str:
    """``seconds`` for a person: 45 s, 3 min 20 s, 2 h 5 min."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _os_error(exc: OSError) -> str:
    """``exc`` as one line: ``PATH: what``."""
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what


def _index(ident: object) -> int:
    assert isinstance(ident, int)  # the scheduler's admission idents are task indices
    return ident

