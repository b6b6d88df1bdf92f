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
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from pm.common.nodes import Nodes
from pm.head import JobResult, JobRun, RankResult
from pm.jobspec import AppSpec, JobSpec, check_nodes
from pm.proto.errors import RankFailed

if TYPE_CHECKING:
    from pm.ensemble import Ensemble, Task, TaskResult

__all__ = ["Cluster", "Job", "JobFailed", "JobResult", "RankResult", "run", "run_tasks"]


class JobFailed(RankFailed):
    """Raised by ``check=True`` runs: ``result`` names the root cause."""

    def __init__(self, result: JobResult) -> None:
        super().__init__(result.cause or f"job failed with status {result.returncode}")
        self.result = result


def _spec(argv: Sequence[str], n: int, env: Mapping[str, str] | None, **opts: Any) -> JobSpec:
    spec = JobSpec([AppSpec(list(argv), n)], genv=dict(env or {}))
    for key, value in opts.items():
        if not hasattr(spec, key):
            raise TypeError(f"unknown job option {key!r}")
        setattr(spec, key, value)
    return spec


class Job:
    """A running job. Its output is queued for :meth:`output` unless ``output="inherit"``."""

    def __init__(self, spec: JobSpec, nodes: Nodes, capture: bool, stdin: int | None) -> None:
        self._queue: asyncio.Queue[tuple[int | str, str, bytes] | None] | None = (
            asyncio.Queue() if capture else None)
        self._run = JobRun(spec, nodes, sink=self._sink if capture else None, stdin=stdin)
        self._result: JobResult | None = None
        self._waiter: asyncio.Task[JobResult] | None = None

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
        self._waiter = asyncio.get_running_loop().create_task(self._wait())

    async def _wait(self) -> JobResult:
        result = await self._run.wait()
        if self._queue is not None:
            self._queue.put_nowait(None)
        self._result = result
        return result

    async def output(self) -> AsyncIterator[tuple[int | str, str, bytes]]:
        """``(rank, "stdout" | "stderr", line)`` until every rank has ended; a rank of a
        spawned job is ``"J:R"`` (rank R of spawned job J)."""
        if self._queue is None:
            raise RuntimeError("this job's output goes to the launcher's stdout/stderr")
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # later iterators end too
                return
            yield item

    def send_signal(self, signum: int) -> None:
        """Deliver ``signum`` to every rank."""
        self._run.signal(signum)

    def kill(self, reason: str = "killed by the user") -> None:
        self._run.kill(reason)

    async def aclose(self, reason: str = "cluster closed") -> None:
        """Kill the job if it still runs and wait for its end (the waiting task is ours)."""
        if self._waiter is None:
            return
        if not self._waiter.done():
            self.kill(reason)
        await self._waiter

    async def wait(self, *, check: bool = False) -> JobResult:
        """The job's result once every rank has ended (``check``: raise JobFailed if it failed)."""
        assert self._waiter is not None
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
        check_nodes(local_nodes, fanout)
        if hosts:
            self.nodes = Nodes(list(hosts), list(slots or [None] * len(hosts)), fanout,
                               dict(bootstrap or {"name": "local"}))
        else:
            self.nodes = Nodes.local(local_nodes, fanout)
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

    async def launch(self, argv: Sequence[str], n: int = 1, *,
                     env: Mapping[str, str] | None = None, output: str = "capture",
                     stdin: int | None = None, **opts: Any) -> Job:
        """Start ``argv`` on ``n`` ranks. ``output="capture"`` feeds :meth:`Job.output`,
        ``"inherit"`` writes to this process's stdout/stderr. ``opts`` are JobSpec fields
        (label, timeout, wdir, ppn, kvs, bind_to, ...)."""
        if output not in ("capture", "inherit"):
            raise ValueError("output must be 'capture' or 'inherit'")
        for key, value in self._mem.items():
            opts.setdefault(key, value)
        job = Job(_spec(argv, n, env, **opts), self.nodes, output == "capture", stdin)
        await job._start()
        self._jobs.append(job)
        return job

    async def submit(self, argv: Sequence[str], mem: str | int | None = None, *,
                     env: Mapping[str, str] | None = None, wdir: str | None = None) -> Task:
        """Queue ``argv`` as a task under memory admission; returns once a node admits it.

        While no node can (memory, or a node that passed its high watermark and
        is not yet under its low one), the await does not return.  ``mem``: the
        task's bound (``"2G"`` or bytes; None: learned from finished tasks of the
        same command).  ``await task.wait()`` gives its :class:`pm.ensemble.TaskResult`
        (its output captured).  Tasks of one cluster share one :class:`pm.ensemble.Ensemble`.
        """
        if self._ensemble is None:
            from pm.ensemble import Ensemble

            self._ensemble = Ensemble(
                self.nodes, mem_high=self._mem["mem_high"], mem_low=self._mem["mem_low"],
                overrun=self._mem["mem_overrun"] or "warn", retries=self._retries)
        return await self._ensemble.submit(argv, mem, env=dict(env or {}), wdir=wdir)


def run(argv: Sequence[str], n: int = 1, *, local_nodes: int = 1, fanout: int = 32,
        env: Mapping[str, str] | None = None, check: bool = False, **opts: Any) -> JobResult:
    """Run a job to its end, its output going to this process's stdout/stderr."""

    async def main() -> JobResult:
        async with Cluster(local_nodes, fanout=fanout) as cluster:
            job = await cluster.launch(argv, n, env=env, output="inherit", **opts)
            return await job.wait(check=check)

    result: JobResult = _run_loop(main())
    return result


def run_tasks(tasks: Iterable[Sequence[str] | str], *, local_nodes: int = 1,
              output: str = "inherit", **options: Any) -> list[TaskResult]:
    """Run tasks on this machine under memory admission, to their end; their results in order.

    ``tasks``: argv lists, or tasks-file lines (``"[mem=2G] ./sim 1"``).  ``output``:
    ``"inherit"`` writes their lines here prefixed ``[task N] ``, ``"capture"`` keeps
    them in the results.  ``options``: :class:`pm.ensemble.Ensemble`'s (``mem_per_task``
    in bytes, ``mem_high``, ``mem_low``, ``retries``, ``overrun``, ``settle``, ...).
    """
    from pm.ensemble.cli import run_ensemble

    results: list[TaskResult] = _run_loop(
        run_ensemble(tasks, Nodes.local(local_nodes), output=output, **options))
    return results


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
