"""An ensemble's tasks on other hosts: each run a job of the agent tree, memory seen by a probe.

:class:`RemoteRunner` runs a task on another host as a job of two vertices,
vertex 0 here running ``true`` and vertex 1 there the task, and starts the
host's memory probe the same way.  The probe is :func:`probe_main` (``python
-m pm.ensemble probe``): it reports the host's memory and its tasks' usage,
found by the ``PMRUN_ENSEMBLE`` variable they carry, one line per sample,
which :class:`pm.proto.probe.ProbeSample` reads back.  Apart from :mod:`pm.ensemble`
because this is how the head reaches a host it cannot see, both ends of the
probe's lines together; this machine's tasks are :mod:`pm.ensemble.local`'s.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from pm.agent.memory import NodeMemory
from pm.common.output import STDERR
from pm.ensemble.task import Task
from pm.jobspec import AppSpec, JobSpec
from pm.proto.probe import ProbeSample

if TYPE_CHECKING:
    from pm.common.nodes import Nodes
    from pm.head import JobRun

__all__ = ["RemoteRunner", "probe_main"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


class RemoteRunner:
    """Runs tasks and memory probes on the other hosts of ``nodes``, as jobs from ``here``.

    ``spec`` gives the tasks' environment settings.  :attr:`jobs` holds the
    task runs under way, by task index, for the ensemble to signal or kill.
    """

    def __init__(self, nodes: Nodes, spec: JobSpec, here: str) -> None:
        self._nodes = nodes
        self._spec = spec
        self._here = here
        self.jobs: dict[int, JobRun] = {}

    async def run(self, task: Task, host: str, env: dict[str, str],
                  emit: Callable[[Task, int, bytes], None]) -> int | None:
        """One run on another host: a job whose vertex 0 (here) runs ``true``.

        Its output goes to ``emit`` (task, stream, data); returns its shell status,
        None if the host was lost."""
        from pm.head import JobRun

        spec = self._job_spec([task.argv[0], *task.argv[1:]], env, task.wdir)

        def sink(rank: int, stream: int, data: bytes) -> None:
            if rank == 1:
                emit(task, stream, data)

        # Quiet: the ensemble says how its task ended (a failing rank is a failed run, a
        # kill is its own), but for a lost host, named in the task's output.
        job = JobRun(spec, self._pair(host), sink=sink, quiet=True)
        self.jobs[task.index] = job
        try:
            await job.start()
            result = await job.wait()
        finally:
            self.jobs.pop(task.index, None)
        r = result.ranks.get(1)
        if r is None or r.reason == "node lost":
            if result.cause:
                emit(task, STDERR, f"pmrun: {result.cause}\n".encode())
            return None
        if r.reason.startswith("could not start"):
            emit(task, STDERR, f"pmrun: {r.reason}\n".encode())
        return 128 + r.signal if r.signal else r.code

    def probe(self, host: str, token: str, interval: float,
              lines: Callable[[bytes], None]) -> JobRun:
        """The (unstarted) memory probe job on ``host``: its output goes to ``lines``."""
        from pm.head import JobRun

        argv = [sys.executable, "-m", "pm.ensemble", "probe", token, str(interval)]
        return JobRun(self._job_spec(argv, {}, None), self._pair(host),
                      sink=lambda rank, stream, data: lines(data))

    def _job_spec(self, argv: list[str], env: dict[str, str], wdir: str | None) -> JobSpec:
        s = self._spec
        return JobSpec([AppSpec(["true"]), AppSpec(argv, 1, env, wdir)], genv=dict(s.genv),
                       env_mode=s.env_mode, genvlist=list(s.genvlist))

    def _pair(self, host: str) -> Nodes:
        """The two nodes of a run on ``host``: vertex 0 in our process, vertex 1 started
        there by it (not by a Slurm step over both, nor by a head relaying to vertex 0:
        this machine need not be one of the allocation's nodes)."""
        from pm.common.nodes import Nodes

        boot = {k: v for k, v in self._nodes.bootstrap.items() if k != "start"}
        boot["head_only"] = False
        return Nodes([self._here, host], [1, 1], 2, boot)


def probe_main(token: str, interval: float) -> int:
    """``python -m pm.ensemble probe TOKEN INTERVAL``: every INTERVAL seconds, one
    :class:`~pm.proto.probe.ProbeSample` line with this node's memory, the cores it may
    run on and the
    anonymous resident bytes of the processes whose environment carries
    ``PMRUN_ENSEMBLE=TOKEN``, summed per ``PMRUN_TASK``.  Ends on SIGTERM or SIGINT."""
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    probe = NodeMemory()
    cores = len(os.sched_getaffinity(0)) or 1
    marker = b"PMRUN_ENSEMBLE=" + token.encode()
    while not stop.is_set():
        snap = probe.read()
        sizes: dict[int, int] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                if marker not in env:
                    continue
                index = next(int(v[11:]) for v in env if v.startswith(b"PMRUN_TASK="))
                with open(f"/proc/{entry.name}/statm") as f:
                    fields = f.read().split()
                sizes[index] = sizes.get(index, 0) + (int(fields[1]) - int(fields[2])) * _PAGE
            except (OSError, StopIteration, ValueError, IndexError):
                continue  # gone, not ours to read, or not a task
        kind = snap.limit_source.split(":")[0]
        print(ProbeSample(snap.total, snap.used, kind, cores, sizes).line(), flush=True)
        stop.wait(interval)
    return 0
