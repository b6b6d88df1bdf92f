"""A task's run in an :class:`~pm.ensemble.Ensemble`: from the scheduler's start to its end.

Its start (``--delay``'s turn, its job slot, the environment a task sees, the files
``--basefile`` and ``--transferfile`` put on its host first: :mod:`pm.ensemble.transfer`),
its time limit (``--timeout``: :class:`~pm.ensemble.timeouts.RunLimit`) and how a run is
ended (``--termseq``), and its end: the task's result once it ended for good, and what the
scheduler starts next.  A defect of pmrun's that breaks a run fails that run and halts the
ensemble.  :class:`Runs` is the part of :class:`~pm.ensemble.core.Ensemble` that does this
(:mod:`pm.ensemble.base`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from pm.agent.memory import format_size
from pm.common.output import STDOUT
from pm.ensemble.base import EnsembleBase, file_state
from pm.ensemble.domain import Domain, cpu_slots, local_cores
from pm.ensemble.local import signal_tree
from pm.ensemble.scheduler import Start, TaskStatus
from pm.ensemble.task import Task, TaskResult
from pm.ensemble.transfer import here_path, there_path
from pm.options import parse_jobs
from pm.proto.errors import ResourceLimit, defect

log = logging.getLogger("pm.ensemble")

#: Seconds between a timed-out task's SIGTERM and its SIGKILL.
KILL_AFTER = 2.0
#: The exit code of a run that did not start because its output could not be stored, or
#: that a defect of pmrun's broke.
EXIT_BROKEN = 255


@dataclass
class Clock:
    """A task's run against its time limit: on which host, when it started (the loop's
    time), the timers that end it, whether they did."""

    domain: Domain
    start: float
    timers: list[asyncio.TimerHandle] = field(default_factory=list)
    timed_out: bool = False


class Runs(EnsembleBase):
    """An ensemble's task runs (see the module docstring)."""

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
        clock = Clock(d, asyncio.get_running_loop().time())
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
        state = file_state(path)
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

    # ----------------------------------------------------------------- time limits, ends
    def _arm(self, index: int, clock: Clock) -> None:
        """(Re)set the timer of task ``index``'s run to the time limit there is now."""
        limit = self._limit_of_run.seconds()
        if limit is None or clock.timed_out:
            return
        for timer in clock.timers:
            timer.cancel()
        loop = asyncio.get_running_loop()
        clock.timers = [loop.call_at(clock.start + limit, self._timed_out, index, clock, limit)]

    def _timed_out(self, index: int, clock: Clock, limit: float) -> None:
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

    # ----------------------------------------------------------------- files
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


def _elsewhere(here: str, there: str) -> bool:
    """Whether a file's path on its task's host is another than its path here: --cleanup
    removes only such files there (on a filesystem the host shares with us, the same path
    is this machine's own file, the user's input or the result just brought back)."""
    return os.path.abspath(here) != os.path.abspath(there)


def _os_error(exc: OSError) -> str:
    """``exc`` as one line: ``PATH: what``."""
    what = exc.strerror or str(exc)
    return f"{exc.filename}: {what}" if exc.filename else what
