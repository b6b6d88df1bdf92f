"""An :class:`~pm.ensemble.Ensemble`'s hosts: their samples, and what follows from each.

This machine's memory (and with a gate its activity) is read here every interval; every
other host's runner (:mod:`pm.ensemble.remote`) is started, sends that host's samples and
may be lost (its running tasks' runs then fail).  A host's first figures set its
watermarks; every sample then moves the scheduler's admission there (blocked over the high
watermark until under the low one), the overrun policy (``--mem-overrun``: a task over its
bound while its host is blocked), ``--memsuspend``'s stopped tasks, and the gates
``--load``, ``--noswap`` and ``--limit`` (:mod:`pm.ensemble.gates`).  :class:`Hosts` is
the part of :class:`~pm.ensemble.core.Ensemble` that does this (:mod:`pm.ensemble.base`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from pm.agent.memory import SizeError, Watermarks, format_size
from pm.common.activity import Activity
from pm.ensemble.base import EnsembleBase, file_state
from pm.ensemble.domain import Domain, cpu_slots, local_cores
from pm.ensemble.gates import (
    Builtin,
    builtin_answer,
    describe_status,
    load_file,
    load_gate,
    run_limit,
)
from pm.ensemble.local import tree_anon
from pm.proto.runner import ProbeSample

log = logging.getLogger("pm.ensemble")


class Hosts(EnsembleBase):
    """An ensemble's hosts (see the module docstring)."""

    # ----------------------------------------------------------------- memory
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

    def _resume(self, d: Domain) -> None:
        for index in sorted(d.suspended):
            self._act(d, index, signal.SIGCONT, "resumed")
        d.suspended.clear()

    def _act(self, d: Domain, index: int, sig: signal.Signals, what: str) -> None:
        self._signal_task(d, index, sig, f"task {index} over its memory bound")
        self._event(what, d, f"[{self._name(index)}] {what}: over its bound while node {d.name} "
                    "is over its high watermark", index)

    # ----------------------------------------------------------------- gates
    def _gated(self) -> bool:
        """Whether a start condition besides slots and memory applies (pm.ensemble.gates)."""
        return self._load is not None or self._noswap or self._limit is not None

    def _gate(self, d: Domain, used: int) -> None:
        """A sample of ``d`` came: its gates say how many tasks may start until the next."""
        a = d.activity
        if self._load_file is not None and file_state(self._load_file) != self._load_seen:
            self._load_seen = file_state(self._load_file)
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


def _index(ident: object) -> int:
    assert isinstance(ident, int)  # the scheduler's admission idents are task indices
    return ident

