"""Task ensembles under memory admission: ``pmrun --tasks``, ``Cluster.submit``, ``run_tasks``.

An :class:`Ensemble` runs one-command tasks over the nodes of a
:class:`~pm.common.nodes.Nodes` as fast as each node's memory admits them: the pure
:class:`~pm.ensemble.scheduler.EnsembleScheduler` decides; the ensemble feeds it memory
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

The ensemble's code is in parts, classes it inherits: what it holds (made from its
arguments) is :mod:`pm.ensemble.base`'s, a task's run :mod:`pm.ensemble.runs`'s, its
hosts' samples and what follows from them :mod:`pm.ensemble.hosts`'s; this module is
its API (start, tasks added, progress and summary, stopping, closing) and the
:class:`Event` it reports.
:class:`Task` and :class:`TaskResult` are defined in :mod:`pm.ensemble.task`
and imported from here; the command-line front end is :mod:`pm.ensemble.cli`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pm.agent.memory import format_size, parse_size
from pm.common.activity import ActivityProbe
from pm.ensemble.base import DEFAULT_SETTLE
from pm.ensemble.domain import Domain
from pm.ensemble.hosts import Hosts
from pm.ensemble.local import LocalRunner, signal_tree
from pm.ensemble.runs import Runs
from pm.ensemble.task import InputStream, Task, TaskResult
from pm.ensemble.taskspec import TaskSpec
from pm.proto.errors import ResourceLimit

__all__ = ["DEFAULT_SETTLE", "Ensemble", "Event", "Task", "TaskResult"]


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


class Ensemble(Runs, Hosts):
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
    ``--timeout``): then it gets SIGTERM, and SIGKILL
    :data:`~pm.ensemble.runs.KILL_AFTER` seconds later; ``timeout_median``: instead,
    that multiple of the median successful run (2.0: GNU parallel's ``--timeout 200%``).
    ``load``, ``noswap``, ``limit``: GNU parallel's ``--load``, ``--noswap`` and
    ``--limit``, gates of each host besides its slots and memory (:mod:`pm.ensemble.gates`).
    ``output``: a :data:`~pm.ensemble.base.TaskSink`, or None to keep each task's output in its
    result.  ``on_event``: every :class:`Event`.  ``cgroup``: the memory cgroup
    of this machine's tasks (default: this process's).  ``local_hosts``: host
    names that are this machine (default: all with the local launcher, else
    this host's names).  ``tty`` (GNU parallel's ``--tty``): each task's stdin is our
    terminal, its stdout and stderr ours, in the terminal's foreground (none of its
    output reaches ``output``); every host must be this machine.
    Use ``async with`` or :meth:`start` / :meth:`aclose`.
    """

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

    # ----------------------------------------------------------------- events
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


def _duration(seconds: float) -> str:
    """``seconds`` for a person: 45 s, 3 min 20 s, 2 h 5 min."""
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
