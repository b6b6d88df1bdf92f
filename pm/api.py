"""The Python launcher API; ``pmrun`` is a thin layer over it.

Blocking::

    result = pm.run(["./app"], n=8, local_nodes=2, env={"OMP_NUM_THREADS": "1"})
    result.returncode, result.exit_codes, result.cause

Async::

    async with pm.Cluster(local_nodes=2, fanout=2) as cluster:
        job = await cluster.launch(["./app"], n=8)
        async for rank, stream, line in job.output():
            ...
        result = await job.wait()
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pm import options as pmopts
from pm.agent.watch import guardians_reaped
from pm.api_args import (
    JOB_CHECKS,
    JOB_WORDS,
    NOT_JOB_OPTIONS,
    ArgumentTypeError,
    argv_words,
    bootstrap_of,
    by_option,
    bytes_of,
    env_of,
    job_hints,
    path_of,
    stdin_fd,
    task_options,
    tasks_of,
    typed,
    unknown,
    whole,
    whole_number,
)
from pm.common.nodes import Nodes
from pm.head import JobRun
from pm.job_result import JobResult, RankResult
from pm.jobspec import AppSpec, JobSpec, JobSpecError, check_nodes
from pm.options import MOST_LOCAL_NODES, MOST_RANKS
from pm.proto.errors import RankFailed
from pm.proto.plan import STDIN_ALL

if TYPE_CHECKING:
    from pm.ensemble import Ensemble, Task, TaskResult

log = logging.getLogger("pm")

#: What became of a job whose event loop ended first (asyncio.run returned, its tasks
#: cancelled): a job runs on the loop that launched it, and ends with it.
_ORPHANED = ("killed when the event loop that launched it ended, before the job did (a job "
             "belongs to the loop that launched it)")

__all__ = ["ArgumentTypeError", "Cluster", "Job", "JobFailed", "JobResult", "RankResult", "run",
           "run_tasks"]


class JobFailed(RankFailed):
    """Raised by ``check=True`` runs: ``result`` names the root cause."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.cause or f"job failed with status {result.returncode}")
        self.result = result


class Job:
    """A running job. Its output is queued for :meth:`output` unless ``output="inherit"``."""

    def __init__(self, spec: JobSpec, nodes: Nodes, capture: bool, stdin: int | None) -> None:
        self._queue: asyncio.Queue[tuple[int | str, str, bytes] | None] | None = (
            asyncio.Queue() if capture else None)
        self._run = JobRun(spec, nodes, sink=self._sink if capture else None, stdin=stdin)
        self._result: JobResult | None = None
        self._waiter: asyncio.Task[JobResult] | None = None
        #: The event loop that launched the job ended before it: the job was killed then.
        self._orphaned = False

    @property
    def plan(self) -> Any:
        return self._run.plan

    def _sink(self, rank: int, stream: int, data: bytes, job: int = 0) -> None:
        assert self._queue is not None
        name = "stdout" if stream == 1 else "stderr"
        who: int | str = rank if not job else f"{job}:{rank}"
        for line in data.splitlines(keepends=True):
            self._queue.put_nowait((who, name, line))

    async def _start(self) -> None:
        await self._run.start()
        begun = asyncio.Event()
        self._waiter = asyncio.get_running_loop().create_task(self._wait(begun))
        # Once it runs, the end of this loop (which cancels it) ends the job; cancelled
        # before its first step, it would leave the job running.
        await begun.wait()

    async def _wait(self, begun: asyncio.Event) -> JobResult:
        begun.set()
        try:
            result = await self._run.wait()
        except asyncio.CancelledError:
            # Only the end of the loop that launched the job cancels us (wait() shields us,
            # aclose() kills the job and awaits us): the job cannot outlive that loop, and
            # the run killed it as it was cancelled.  Said here: nobody may wait for it.
            self._orphaned = True
            log.warning("job %s %s", self.plan.job_id, _ORPHANED)
            await guardians_reaped()
            if self._queue is not None:
                self._queue.put_nowait(None)
            raise
        # Its ranks' guardian (and any spawned job's) was let go: collected, not left a
        # zombie of this process, which outlives its jobs.
        await guardians_reaped()
        if self._queue is not None:
            self._queue.put_nowait(None)
        self._result = result
        return result

    def _on_its_loop(self) -> None:
        """Refuse a wait for the job on another event loop than the one that launched it
        (the job runs on that one), in a line that says what became of it."""
        if asyncio.get_running_loop() is self._run.loop:
            return
        if self._orphaned:
            raise RuntimeError(f"job {self.plan.job_id} was {_ORPHANED}: launch and await a "
                               f"job in one asyncio.run()")
        if self._run.loop.is_closed():  # (closed without its tasks cancelled: not asyncio.run)
            raise RuntimeError(f"job {self.plan.job_id} belongs to the event loop that "
                               f"launched it, which is closed: launch and await a job on "
                               f"one loop")
        raise RuntimeError(f"job {self.plan.job_id} belongs to the event loop that launched "
                           f"it (another thread's, which runs it): await it there")

    async def output(self) -> AsyncIterator[tuple[int | str, str, bytes]]:
        """``(rank, "stdout" | "stderr", line)`` until every rank has ended; a rank of a
        spawned job is ``"J:R"`` (rank R of spawned job J).  The bytes are the rank's as it
        wrote them: a last line without newline comes without one, a line longer than
        1 MiB in pieces."""
        if self._queue is None:
            raise RuntimeError("this job's output goes to the launcher's stdout/stderr")
        if self._result is None:
            self._on_its_loop()
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # later iterators end too
                return
            yield item

    def _ended_well(self) -> bool:
        """The job's end is known and raised nothing: nothing for aclose() to do."""
        w = self._waiter
        return w is not None and w.done() and not w.cancelled() and w.exception() is None

    @property
    def _ended(self) -> bool:
        """Every rank has ended (the job's end may still be under way): none to signal."""
        return self._waiter is None or self._waiter.done() or self._run.finished.done()

    def send_signal(self, signum: int) -> None:
        """Deliver ``signum`` to every rank; nothing once the job has ended."""
        whole = isinstance(signum, int) and not isinstance(signum, bool)
        if not whole or signum not in signal.valid_signals():
            error = JobSpecError if whole else ArgumentTypeError
            raise error(f"signum must be a signal number (such as signal.SIGTERM), not "
                        f"{signum!r}")
        if not self._ended:
            self._run.signal(signum)

    def kill(self, reason: str = "killed by the user") -> None:
        """End the job, ``reason`` its cause; nothing once it has ended (its cause, if it
        failed, stays the one it had)."""
        typed("reason", reason, str)
        if not self._ended:
            self._run.kill(reason)

    async def aclose(self, reason: str = "cluster closed") -> None:
        """Kill the job if it still runs and wait for its end (the waiting task is ours)."""
        typed("reason", reason, str)
        if self._waiter is None or self._waiter.cancelled():
            return  # (never started, or ended with the loop that launched it)
        if not self._waiter.done():
            self._on_its_loop()
            self.kill(reason)
        await self._waiter

    async def wait(self, *, check: bool = False) -> JobResult:
        """The job's result once every rank has ended (``check``: raise JobFailed if it failed).

        On the event loop that launched the job (it runs there, and ends if that loop
        does): another's is refused, in a RuntimeError saying so."""
        typed("check", check, bool)
        assert self._waiter is not None
        if self._result is None:
            self._on_its_loop()
        result = await asyncio.shield(self._waiter)
        if check and not result.ok:
            raise JobFailed(result)
        return result


class Cluster:
    """Where jobs run: ``local_nodes`` agents on this machine, or ``hosts``.

    Agents are started for each job through the tree (tree spawn) and end with it.
    """

    def __init__(self, local_nodes: int = 1, *, fanout: int = 32,
                 hosts: Sequence[str] | None = None, slots: Sequence[int | None] | None = None,
                 bootstrap: Mapping[str, Any] | None = None, mem_high: str | None = None,
                 mem_low: str | None = None, mem_overrun: str = "warn",
                 retries: int = 0) -> None:
        whole_number("local_nodes", local_nodes)
        whole_number("fanout", fanout)
        check_nodes(local_nodes, fanout)
        hosts = typed("hosts", hosts, Sequence[str] | None)
        for i, host in enumerate(hosts or ()):
            if not host:
                raise JobSpecError(f"hosts[{i}] must be a host name, not ''")
        slots = typed("slots", slots, Sequence[int | None] | None)
        if slots is not None:
            if not hosts:
                raise JobSpecError("slots are the hosts' slots: give hosts too")
            if len(slots) != len(hosts):
                raise JobSpecError(f"slots must have an entry for each of the {len(hosts)} "
                                   f"hosts, not {len(slots)}")
            for i, count in enumerate(slots):
                if count is not None:
                    whole(f"slots[{i}]", count, 1, MOST_RANKS)
        launcher = bootstrap_of("bootstrap", bootstrap)
        for name, size in (("mem_high", mem_high), ("mem_low", mem_low)):
            if typed(name, size, str | None) is not None:
                by_option(pmopts.size)(name, size)
        by_option(pmopts.choice("warn", "kill", "suspend"))("mem_overrun",
                                                       typed("mem_overrun", mem_overrun, str))
        whole("retries", retries, 0)
        if hosts:
            self.nodes = Nodes(list(hosts), list(slots or [None] * len(hosts)), fanout,
                               launcher)
        else:
            self.nodes = Nodes.local(local_nodes, fanout)
        #: The nodes are this machine's (a working directory is checked here).
        self._local = not hosts
        self._jobs: list[Job] = []
        # Node memory watermarks: for submit()'s tasks and for the ranks' pmi.reserve.
        self._mem = {"mem_high": mem_high, "mem_low": mem_low, "mem_overrun": mem_overrun}
        self._retries = retries
        self._ensemble: Ensemble | None = None

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Kill and reap every job and task still running. Idempotent."""
        if self._ensemble is not None:
            await self._ensemble.aclose()
            self._ensemble = None
        for job in self._jobs:
            await job.aclose()
        self._jobs.clear()
        await guardians_reaped()  # (the tasks' guardian too: no zombie of ours left)

    async def launch(self, argv: Sequence[str], n: int = 1, *,
                     env: Mapping[str, str] | None = None, output: str = "capture",
                     stdin: int | None = None, **opts: Any) -> Job:
        """Start ``argv`` on ``n`` ranks. ``output="capture"`` feeds :meth:`Job.output`,
        ``"inherit"`` writes to this process's stdout/stderr. ``opts`` are JobSpec fields
        (label, timeout, wdir, ppn, kvs, bind_to, ...)."""
        if output not in ("capture", "inherit"):
            raise ValueError(f"output must be 'capture' or 'inherit', not {output!r}")
        if stdin is not None:
            stdin_fd("stdin", stdin)
        for key, value in self._mem.items():
            opts.setdefault(key, value)
        return await self._start(self._spec(argv, n, env, opts), output == "capture", stdin)

    def _spec(self, argv: object, n: object, env: object, opts: Mapping[str, Any]) -> JobSpec:
        """The job ``argv`` on ``n`` ranks with ``opts`` (JobSpec's fields), each argument
        checked before anything starts (JobSpec.validate's checks too)."""
        words = argv_words("argv", argv)
        n = whole("n", n, 1, MOST_RANKS)
        spec = JobSpec([AppSpec(words, n)], genv=env_of(env))
        hints = job_hints()
        for key, value in opts.items():
            if key not in hints or key in NOT_JOB_OPTIONS:
                raise unknown("job option", key, (k for k in hints if k not in NOT_JOB_OPTIONS),
                               NOT_JOB_OPTIONS.get(key, ""))
            if key == "wdir":
                value = path_of(key, value, here=self._local)
            else:
                value = typed(key, value, hints[key], JOB_WORDS.get(key, ""))
                if value is not None and key in JOB_CHECKS:
                    value = JOB_CHECKS[key](key, value)
            setattr(spec, key, value)
        if spec.timeout is None:
            if spec.signal_before_end is not None:  # (inside Slurm: before the job's end)
                from pm.bootstrap.slurm_job import job_end

                end = job_end("give timeout")
                if isinstance(end, str):
                    raise JobSpecError("signal_before_end: a signal before the timeout needs a "
                                       f"timeout{end}")
                spec.slurm_end = end
            if spec.timeout_report:
                raise JobSpecError("timeout_report: a report at the timeout needs a timeout")
        if not 0 <= spec.stdin_rank < spec.size and spec.stdin_rank != STDIN_ALL:
            raise JobSpecError(f"stdin_rank must be one of the job's ranks (0 to {spec.size - 1})"
                               f" or {STDIN_ALL} (every rank reads stdin), not "
                               f"{spec.stdin_rank}")
        spec.validate()
        nodes = len(self.nodes.hosts)
        for key in ("placement", "rank_slots"):
            given = getattr(spec, key)
            if given and len(given) != spec.size:
                raise JobSpecError(f"{key} must have an entry for each of the job's "
                                   f"{spec.size} ranks, not {len(given)}")
        bad = next((node for node in spec.placement if not 0 <= node < nodes), None)
        if bad is not None:
            raise JobSpecError(f"placement: node {bad} is not one of the cluster's {nodes} "
                               f"nodes (0 to {nodes - 1})")
        return spec

    async def _start(self, spec: JobSpec, capture: bool, stdin: int | None) -> Job:
        job = Job(spec, self.nodes, capture, stdin)
        await job._start()
        # The jobs that ended well go (a cluster may run many in its life); aclose() still
        # awaits the others.
        self._jobs = [j for j in self._jobs if not j._ended_well()]
        self._jobs.append(job)
        return job

    async def submit(self, argv: Sequence[str], mem: str | int | None = None, *,
                     env: Mapping[str, str] | None = None,
                     wdir: str | os.PathLike[str] | None = None) -> Task:
        """Queue ``argv`` as a task under memory admission; returns once a node admits it.

        While no node can (memory, or a node that passed its high watermark and
        is not yet under its low one), the await does not return.  ``mem``: the
        task's bound (``"2G"`` or bytes; None: learned from finished tasks of the
        same command).  ``await task.wait()`` gives its :class:`pm.ensemble.TaskResult`
        (its output captured).  Tasks of one cluster share one :class:`pm.ensemble.Ensemble`.
        """
        words = argv_words("argv", argv)
        nbytes = bytes_of("mem", mem)
        task_env = env_of(env)
        wdir = path_of("wdir", wdir, here=self._local)
        if self._ensemble is None:
            from pm.ensemble import Ensemble

            self._ensemble = Ensemble(
                self.nodes, mem_high=self._mem["mem_high"], mem_low=self._mem["mem_low"],
                overrun=self._mem["mem_overrun"] or "warn", retries=self._retries)
        return await self._ensemble.submit(words, nbytes, env=task_env, wdir=wdir)


def run(argv: Sequence[str], n: int = 1, *, local_nodes: int = 1, fanout: int = 32,
        env: Mapping[str, str] | None = None, check: bool = False, **opts: Any) -> JobResult:
    """Run a job to its end, its output going to this process's stdout/stderr.

    ``opts`` are JobSpec fields, as :meth:`Cluster.launch`'s (``output`` and ``error``
    here: files for the ranks' output, a pattern such as ``"out.%r"``).  Not in async
    code (it runs an event loop of its own): :class:`Cluster` is the API there."""
    _no_running_loop("pm.run()", "the job ends",
                     "job = await cluster.launch(argv, n, ...); result = await job.wait()")
    typed("check", check, bool)
    if opts.get("output") in ("capture", "inherit"):
        raise JobSpecError(f"run() writes the ranks' output here: its output names files "
                           f"for it (such as 'out.%r'), not {opts['output']!r} (Cluster.launch "
                           f"captures it)")
    cluster = Cluster(local_nodes, fanout=fanout)
    spec = cluster._spec(argv, n, env, opts)  # (every argument checked before the loop)

    async def main() -> JobResult:
        async with cluster:
            job = await cluster._start(spec, capture=False, stdin=None)
            return await job.wait(check=check)

    result: JobResult = _run_loop(main())
    return result


def run_tasks(tasks: Iterable[Sequence[str] | str], *, local_nodes: int = 1,
              output: str = "inherit", **options: Any) -> list[TaskResult]:
    """Run tasks on this machine under memory admission, to their end; their results in order.

    ``tasks``: argv lists, or tasks-file lines (``"[mem=2G] ./sim 1"``).  ``output``:
    ``"inherit"`` writes their lines here prefixed ``[task N] ``, ``"capture"`` keeps
    them in the results.  ``options``: :class:`pm.ensemble.Ensemble`'s (``mem_per_task``
    in bytes or a size such as ``"2G"``, ``mem_high``, ``mem_low``, ``retries``,
    ``overrun``, ``settle``, ...).  Every argument and task is checked before any runs.
    Not in async code (it runs an event loop of its own): there, :meth:`Cluster.submit`.
    """
    _no_running_loop("pm.run_tasks()", "the tasks end",
                     "task = await cluster.submit(argv, mem); result = await task.wait()")
    from pm.ensemble.cli import run_ensemble

    if output not in ("inherit", "capture"):
        raise ValueError(f"output must be 'inherit' or 'capture', not {output!r}")
    whole("local_nodes", local_nodes, 1, MOST_LOCAL_NODES)
    checked = task_options(options)
    items = tasks_of(tasks, checked.get("mem_per_task"))

    async def main() -> list[TaskResult]:
        results = await run_ensemble(items, Nodes.local(local_nodes), output=output,
                                     **checked)
        await guardians_reaped()  # (the tasks' guardian: no zombie of ours left)
        return results

    results: list[TaskResult] = _run_loop(main())
    return results


def _no_running_loop(call: str, until: str, instead: str) -> None:
    """``call`` runs an event loop of its own until ``until``: refused, before anything is
    made, where one runs already (asyncio.run would refuse it, and the coroutine made for
    it would be warned of as never awaited)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{call} cannot be called from a running event loop (it runs one of "
                       f"its own until {until}): in async code, use pm.Cluster: async with "
                       f"pm.Cluster(...) as cluster: {instead}")


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
