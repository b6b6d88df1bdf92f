"""Memory subscription control for one node: the asyncio governor.

* :class:`MemoryGovernor` -- owns an :class:`Admission` and a sampler task.
* :class:`RankReservations` -- one job's ``pmi.reserve`` blocks on a node.

The pure parts (:func:`parse_size`, :class:`Watermarks`, :class:`Admission`)
live in :mod:`pm.agent.admission`, the kernel's figures (:class:`NodeMemory`,
:func:`read_node_memory`, :func:`tree_pids`, :func:`tree_rss`: cgroup v2,
cgroup v1, ``/proc/meminfo``; ``/proc/<pid>``) in :mod:`pm.agent.memprobe`;
both are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pm.agent.admission import (
    DEFAULT_HIGH_PERCENT,
    DEFAULT_LOW_PERCENT,
    Admission,
    AdmissionReport,
    Ident,
    Overrun,
    SizeError,
    Watermarks,
    format_size,
    parallel_size,
    parse_size,
)
from pm.agent.memprobe import (
    MemorySnapshot,
    NodeMemory,
    pidfd_alive,
    read_node_memory,
    signal_tree,
    tree_pids,
    tree_rss,
)
from pm.proto.errors import ResourceLimit

__all__ = [
    "DEFAULT_HIGH_PERCENT",
    "DEFAULT_LOW_PERCENT",
    "Admission",
    "AdmissionReport",
    "Ident",
    "MemoryGovernor",
    "MemorySnapshot",
    "NodeMemory",
    "Overrun",
    "OverrunEvent",
    "OverrunPolicy",
    "RankReservations",
    "SizeError",
    "Watermarks",
    "format_size",
    "parallel_size",
    "parse_size",
    "read_node_memory",
    "tree_pids",
    "tree_rss",
]

log = logging.getLogger(__name__)

# -------------------------------------------------------------------------- governor

OverrunPolicy = Literal["warn", "kill", "suspend"]


@dataclass(frozen=True)
class OverrunEvent:
    """Reported once when work first goes over its bound (``action="report"``), then
    when the node is over its high watermark and the policy acts
    (``"killed"``, ``"suspended"``, ``"resumed"``)."""

    ident: Ident
    bound: int
    measured: int
    over_high: bool
    action: str


@dataclass
class _Waiter:
    future: asyncio.Future[None]
    owner: Hashable | None = None


@dataclass
class _Acted:
    suspended: dict[Ident, Overrun] = field(default_factory=dict)
    exempt: set[Ident] = field(default_factory=set)  # resumed: nothing else could free memory
    killed: set[Ident] = field(default_factory=set)
    reported: set[Ident] = field(default_factory=set)


class MemoryGovernor:
    """Asyncio shell around an :class:`Admission` with a sampler task.

    ``usage``: a callable returning the node's bytes in use (called from a
    worker thread); default: ``NodeMemory(cgroup).read().used``.  Every
    ``interval`` seconds the sampler reads it and the process tree of every
    watched ident, and applies both at once (:meth:`Admission.observe`).

    ``overrun``: what to do with work over its declared bound while the node
    is over its high watermark: ``"warn"`` (log and report only),
    ``"kill"`` (SIGKILL its tree) or ``"suspend"`` (SIGSTOP its tree;
    SIGCONT when the node unblocks, or when nothing else runs that could free
    memory).  ``on_overrun`` receives every :class:`OverrunEvent`.

    Use ``async with`` or :meth:`start` / :meth:`aclose`.  Closing fails the
    pending ``admit`` calls with :class:`ResourceLimit` and resumes what it suspended.
    """

    def __init__(
        self,
        watermarks: Watermarks,
        *,
        usage: Callable[[], int] | None = None,
        cgroup: str | os.PathLike[str] | None = None,
        interval: float = 0.2,
        backfill: bool = False,
        settle: float | None = None,
        margin: float = 0.1,
        overrun: OverrunPolicy = "warn",
        on_overrun: Callable[[OverrunEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._usage = usage if usage is not None else NodeMemory(cgroup).used
        self._interval = interval
        self._policy = overrun
        self._on_overrun = on_overrun
        self._clock = clock
        self.admission = Admission(watermarks, backfill=backfill, settle=settle, margin=margin)
        self._waiters: dict[Ident, _Waiter] = {}
        self._watched: dict[Ident, tuple[int, int]] = {}  # ident -> (pid, baseline)
        self._pidfds: dict[Ident, int] = {}  # ident -> its process's pidfd (we own it)
        self._acted = _Acted()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> MemoryGovernor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Take a first sample, then start the sampler task."""
        if self._closed:
            raise ResourceLimit("the memory governor is closed")
        if self._task is None:
            await self.sample()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop sampling, fail pending admissions, resume suspended work. Idempotent."""
        task = self._task
        self.close()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        """:meth:`aclose` for synchronous teardown: the sampler is cancelled, not awaited."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        for ident, waiter in list(self._waiters.items()):
            self.admission.release(ident)
            if not waiter.future.done():
                waiter.future.set_exception(ResourceLimit("the memory governor closed"))
        self._waiters.clear()
        self._resume_all()
        for fd in self._pidfds.values():
            os.close(fd)
        self._pidfds.clear()
        self._watched.clear()

    async def admit(
        self, ident: Ident, nbytes: int, *, declared: bool = True, owner: Hashable | None = None
    ) -> None:
        """Return once ``ident`` is admitted with ``nbytes`` reserved (see Admission.request).

        Cancelling the call withdraws the request.  Raises :class:`ResourceLimit`
        when released or closed while waiting.
        """
        if self._closed:
            raise ResourceLimit("the memory governor is closed")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(future, owner)
        self._waiters[ident] = waiter
        try:
            admitted = self.admission.request(ident, nbytes, declared=declared, owner=owner)
        except BaseException:
            del self._waiters[ident]
            raise
        if admitted:
            del self._waiters[ident]
            return
        try:
            await future
        except asyncio.CancelledError:
            if self._waiters.get(ident) is waiter:
                self.release(ident)
            elif future.done() and not future.cancelled() and future.exception() is None:
                self.release(ident)  # admitted just as we were cancelled: give it back
            raise

    def release(self, ident: Ident) -> None:
        """Release ``ident`` (admitted or waiting); idempotent.  A waiter gets ResourceLimit."""
        self._forget(ident)
        self._wake(self.admission.release(ident))

    def release_owner(self, owner: Hashable) -> None:
        """Release everything ``owner`` holds or waits for (a rank that died)."""
        for ident in [i for i, w in self._waiters.items() if w.owner == owner]:
            self._forget(ident)
        self._wake(self.admission.release_owner(owner))

    def watch(self, ident: Ident, pid: int, *, baseline: int = 0, pidfd: int = -1) -> None:
        """Sample the process tree of ``pid`` as ``ident``'s usage from now on.

        ``baseline``: bytes of that tree that are not ``ident``'s (a rank's
        memory before its reservation): the usage is what it holds above them.
        ``pidfd``: a pidfd of ``pid`` the governor owns from now on; without
        one it opens its own (the caller vouches ``pid`` is its unreaped child).
        Overrun actions signal through it: never a pid reused by someone else.
        """
        if pidfd < 0:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                return  # gone: nothing to sample or act on
        old = self._pidfds.pop(ident, -1)
        if old >= 0:
            os.close(old)
        self._pidfds[ident] = pidfd
        self._watched[ident] = (pid, baseline)

    def resize(self, ident: Ident, nbytes: int) -> None:
        self._wake(self.admission.resize(ident, nbytes))

    def report(self) -> AdmissionReport:
        return self.admission.report()

    async def sample(self) -> None:
        """One sampling round now (the sampler calls it every ``interval``)."""
        async with self._lock:
            watched = {i: (*w, self._pidfds.get(i, -1)) for i, w in self._watched.items()}
            used, measured = await asyncio.to_thread(self._measure, watched)
            self._wake(self.admission.observe(used, measured, now=self._clock()))
            self._handle_overruns()

    # -- internals
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # the sampling period, not a wait for an event
            try:
                await self.sample()
            except Exception:  # a failed probe must not stop admission for good
                log.exception("memory sampling failed")

    def _measure(self, watched: Mapping[Ident, tuple[int, int, int]]
                 ) -> tuple[int, dict[Ident, int]]:
        used = self._usage()
        out = {}
        for i, (pid, base, fd) in watched.items():
            rss = tree_rss(pid)
            # Read, then checked: a pid whose process was reaped may be someone else's now.
            out[i] = max(0, rss - base) if pidfd_alive(fd) else 0
        return used, out

    def _forget(self, ident: Ident) -> None:
        self._watched.pop(ident, None)
        fd = self._pidfds.pop(ident, -1)
        if fd >= 0:
            os.close(fd)
        self._acted.suspended.pop(ident, None)
        for s in (self._acted.exempt, self._acted.killed, self._acted.reported):
            s.discard(ident)
        waiter = self._waiters.pop(ident, None)
        if waiter is not None and not waiter.future.done():
            waiter.future.set_exception(
                ResourceLimit(f"the reservation of {ident!r} was released before admission")
            )

    def _wake(self, admitted: Iterable[Ident]) -> None:
        for ident in admitted:
            waiter = self._waiters.pop(ident, None)
            if waiter is not None and not waiter.future.done():
                waiter.future.set_result(None)

    def _emit(self, o: Overrun, action: str) -> None:
        event = OverrunEvent(o.ident, o.bound, o.measured, self.admission.blocked, action)
        log.warning(
            "%r uses %s, over its bound of %s (node %s): %s",
            o.ident,
            format_size(o.measured),
            format_size(o.bound),
            "over its high watermark" if event.over_high else "under its high watermark",
            action,
        )
        if self._on_overrun is not None:
            self._on_overrun(event)

    def _handle_overruns(self) -> None:
        acted, adm = self._acted, self.admission
        overruns = adm.overruns()
        for o in overruns:
            if o.ident not in acted.reported:
                acted.reported.add(o.ident)
                self._emit(o, "report")
        if not adm.blocked:
            acted.exempt.clear()
            self._resume_all()
            return
        running = set(adm.admitted()) - set(acted.suspended)
        for o in overruns:
            if o.ident in acted.killed or o.ident in acted.suspended or o.ident in acted.exempt:
                continue
            if self._policy == "kill":
                acted.killed.add(o.ident)
                self._signal(o.ident, signal.SIGKILL)
                self._emit(o, "killed")
            elif self._policy == "suspend" and running - {o.ident}:
                # Only while something else runs that can finish and free memory.
                running.discard(o.ident)
                acted.suspended[o.ident] = o
                self._signal(o.ident, signal.SIGSTOP)
                self._emit(o, "suspended")
        if acted.suspended and not running:
            # Waiting cannot free memory any more: let the suspended work go on.
            acted.exempt.update(acted.suspended)
            self._resume_all()

    def _resume_all(self) -> None:
        suspended, self._acted.suspended = self._acted.suspended, {}
        for ident, o in suspended.items():
            self._signal(ident, signal.SIGCONT)
            self._emit(o, "resumed")

    def _signal(self, ident: Ident, sig: signal.Signals) -> None:
        watched, fd = self._watched.get(ident), self._pidfds.get(ident, -1)
        if watched is not None and fd >= 0:
            signal_tree(fd, watched[0], sig)


# ------------------------------------------------------------------- rank reservations


class _Held(NamedTuple):
    rank: int
    baseline: int  # the rank's tree bytes that are not this reservation's
    nbytes: int


class _Key(NamedTuple):
    """A governor ident that names the reservation in log lines."""

    rank: int
    ident: int

    def __repr__(self) -> str:
        return f"rank {self.rank} reservation {self.ident}"


class RankReservations:
    """The ``pmi.reserve`` blocks of one job's ranks on a node: one budget for them all.

    The :class:`MemoryGovernor` is made on the first :meth:`reserve`, with
    watermarks resolved against this node's memory (``high``/``low``: sizes or
    percentages of it, None for the defaults).  While a reservation is held
    its usage is what the rank's process tree grew by since it was admitted,
    a rank's reservations being filled in the order they were admitted (two
    of them never count the same growth).  :meth:`close` fails what waits.
    """

    def __init__(
        self,
        high: str | None,
        low: str | None,
        overrun: OverrunPolicy = "warn",
        *,
        cgroup: str | os.PathLike[str] | None = None,
        interval: float = 0.1,
        where: str = "this node",
    ) -> None:
        self._high, self._low, self._overrun = high, low, overrun
        self._cgroup, self._interval, self._where = cgroup, interval, where
        self._gov: MemoryGovernor | None = None
        self._started: asyncio.Task[None] | None = None
        self._held: dict[int, _Held] = {}
        self._tasks: set[asyncio.Task[int]] = set()
        self._next = 1

    @property
    def governor(self) -> MemoryGovernor | None:
        return self._gov

    def reserve(self, rank: int, pid: int, nbytes: int, *,
                pidfd: int = -1) -> asyncio.Future[int]:
        """The reservation's id, once ``nbytes`` are admitted for ``rank`` (process ``pid``;
        ``pidfd``: a pidfd of it, ours from now on, through which it is signalled on an
        overrun: -1 if it is gone, then it is not watched).

        Cancelling the future withdraws the request.  Fails with a :class:`PMError`
        (:class:`ResourceLimit`, :class:`SizeError`) the rank is told about.
        """
        ident, self._next = self._next, self._next + 1
        task = asyncio.get_running_loop().create_task(
            self._admit(ident, rank, pid, nbytes, pidfd))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def release(self, rank: int, ident: int) -> None:
        """Give back reservation ``ident`` of ``rank`` (unknown or another rank's: ignored)."""
        held = self._held.get(ident)
        if held is not None and held.rank == rank and self._gov is not None:
            del self._held[ident]
            self._gov.release(_Key(rank, ident))

    def release_rank(self, rank: int) -> None:
        """Everything ``rank`` holds or waits for (it exited)."""
        for ident in [i for i, h in self._held.items() if h.rank == rank]:
            del self._held[ident]
        if self._gov is not None:
            self._gov.release_owner(rank)

    def close(self) -> None:
        """Stop the governor; pending reservations fail.  Idempotent."""
        for task in list(self._tasks):
            task.cancel()
        if self._started is not None:
            self._started.cancel()
        if self._gov is not None:
            self._gov.close()
        self._held.clear()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the admissions and the governor's sampler to end."""
        self.close()
        tasks: list[asyncio.Future[Any]] = [*self._tasks]
        if self._started is not None:
            tasks.append(self._started)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._gov is not None:
            await self._gov.aclose()

    def _done(self, task: asyncio.Task[int]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # the session reports it; never "exception never retrieved"

    def _governor(self) -> MemoryGovernor:
        if self._gov is None:
            probe = NodeMemory(self._cgroup)
            snap = probe.read()
            marks = Watermarks.resolve(snap.total, self._high, self._low)
            log.info("%s: %s", self._where, marks.describe(snap.total, snap.limit_source))
            self._gov = MemoryGovernor(
                marks, usage=probe.used, interval=self._interval, overrun=self._overrun
            )
        return self._gov

    async def _admit(self, ident: int, rank: int, pid: int, nbytes: int, pidfd: int) -> int:
        try:
            return await self._admit_watched(ident, rank, pid, nbytes, pidfd)
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)  # not handed to the governor
            raise

    async def _admit_watched(self, ident: int, rank: int, pid: int, nbytes: int,
                             pidfd: int) -> int:
        try:
            gov = self._governor()
            if self._started is None:
                self._started = asyncio.get_running_loop().create_task(gov.start())
            await asyncio.shield(self._started)
        except (OSError, ValueError) as exc:  # a probe that cannot be read
            raise ResourceLimit(f"no memory accounting on {self._where}: {exc}") from exc
        key = _Key(rank, ident)
        await gov.admit(key, nbytes, owner=rank)
        # Its growth counts once the rank's earlier reservations are full (a few /proc reads).
        ends = [h.baseline + h.nbytes for h in self._held.values() if h.rank == rank]
        base = max([tree_rss(pid) if pid else 0, *ends])
        self._held[ident] = _Held(rank, base, nbytes)
        if pid and pidfd >= 0:
            gov.watch(key, pid, baseline=base, pidfd=pidfd)  # the governor's from now on
        elif pidfd >= 0:
            os.close(pidfd)
        return ident
