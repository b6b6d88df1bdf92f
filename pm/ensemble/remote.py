"""An ensemble's tasks on other hosts: one runner per host, for as long as the ensemble.

:class:`RemoteRunner` starts, on each other host, a job of two vertices:
vertex 0 here runs ``true``, vertex 1 there the host's runner
(:func:`runner_main`, ``python -m pm.ensemble runner``).  The ensemble then
speaks to the runner on that rank's stdin and hears it on its stdout
(:mod:`pm.proto.runner`): a task's start or signal is one line there, its
output and exit status lines back, with a sample of the host's memory every
interval.  So a task on another host costs what one here does (a
``posix_spawn`` by :class:`~pm.ensemble.local.LocalRunner`, the same code),
not an ssh session or a Slurm step of its own.  Apart from :mod:`pm.ensemble`
because this is how the head reaches a host it cannot see, both ends of the
runner's lines together; this machine's tasks are :mod:`pm.ensemble.local`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from pm.agent.memory import NodeMemory
from pm.common.activity import ActivityProbe
from pm.common.output import STDERR, read_ready
from pm.ensemble.domain import CPU_UNIT, local_cores
from pm.ensemble.local import LocalRunner, signal_tree, tree_anon
from pm.ensemble.task import Task
from pm.ensemble.taskspec import TaskSpec
from pm.ensemble.transfer import FileSink, chunks
from pm.jobspec import AppSpec, JobSpec
from pm.proto.runner import (
    CommandReader,
    FileChunk,
    ProbeSample,
    RunnerReader,
    TaskExit,
    TaskInput,
    TaskOutput,
    TasksEnv,
    TaskSignal,
    TaskStart,
)

if TYPE_CHECKING:
    from pm.common.nodes import Nodes
    from pm.head import JobRun

__all__ = ["RemoteRunner", "runner_main"]

log = logging.getLogger("pm.ensemble")

Emit = Callable[[Task, int, bytes], None]


class RemoteRunner:
    """Runs tasks on the other hosts of ``nodes`` through one runner each, started from
    ``here`` as a job (:meth:`start`).  ``spec`` gives the tasks' environment.
    :attr:`running` holds the task runs under way there: task index -> host."""

    def __init__(self, nodes: Nodes, spec: JobSpec, here: str) -> None:
        self._nodes = nodes
        self._spec = spec
        self._here = here
        self._hosts: dict[str, _Host] = {}
        self.running: dict[int, str] = {}

    async def start(self, host: str, interval: float, samples: Callable[[ProbeSample], None],
                    lost: Callable[[str], None], activity: bool = False) -> JobRun:
        """Start ``host``'s runner, sampling every ``interval`` seconds into ``samples``
        (``activity``: its load, swapping and disks too): its job, started.  Its end is the
        host's loss: ``lost`` hears why, before the runs under way there end (with None)."""
        from pm.bootstrap.base import lean_code, site_dirs
        from pm.head import JobRun

        h = self._hosts[host] = _Host(host, samples, lost)
        python = self._nodes.bootstrap.get("python")  # (--agent-python)
        # As the agents start (pm.bootstrap.base.agent_command): without site, our site
        # directories on the path, so another path to the interpreter (a symlink out of a
        # virtual environment) still finds pmrun's dependencies.
        argv = [str(python or sys.executable), "-S", "-P", "-c",
                lean_code(site_dirs(), "pm.ensemble.remote", "pmrun's task runner"),
                "runner", str(interval)]
        if CPU_UNIT[0] != "thread" or activity:  # (what -j's CPU rules count there too)
            argv.append(CPU_UNIT[0])
        if activity:
            argv.append("activity")
        spec = JobSpec([AppSpec(["true"]), AppSpec(argv)], genv=dict(self._spec.genv),
                       env_mode=self._spec.env_mode, genvlist=list(self._spec.genvlist),
                       stdin_rank=1)
        rfd, wfd = os.pipe2(os.O_CLOEXEC)
        try:
            loop = asyncio.get_running_loop()
            h.commands, _ = await loop.connect_write_pipe(
                lambda: h.flow, os.fdopen(wfd, "wb", buffering=0))
        except BaseException:
            os.close(rfd)
            os.close(wfd)
            raise
        h.send(TasksEnv(self._spec.base_env()).line())
        # Quiet: the ensemble names the host's loss, once (``lost``).
        h.job = JobRun(spec, self._pair(host), sink=h.sink, stdin=rfd, quiet=True)
        try:
            await h.job.start()
        except BaseException:
            h.ended(rfd)
            raise
        h.job.finished.add_done_callback(lambda _f: h.ended(rfd))
        return h.job

    async def run(self, task: Task, host: str, env: dict[str, str], emit: Emit,
                  puts: Sequence[tuple[str, str]] = (), returns: Mapping[str, str] | None = None,
                  remove: Sequence[str] = ()) -> int | None:
        """One run of ``task`` on ``host`` with ``env`` over the tasks' environment: its
        output goes to ``emit`` (task, stream, data).  ``puts``: files (here, there) put
        there first; ``returns``: files (there -> here) brought back once it ended, then
        ``remove`` removed there (:mod:`pm.ensemble.transfer`).  Returns its shell status,
        None if the host was lost."""
        h = self._hosts[host]
        if h.lost is not None:
            return None
        fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        h.runs[task.index] = (task, emit, fut)
        h.returns[task.index] = dict(returns or {})
        self.running[task.index] = host
        try:
            for here, there in puts:
                try:
                    await h.put(task.index, here, there)
                except OSError as exc:  # (the task runs all the same, as parallel's)
                    emit(task, STDERR, f"pmrun: --transferfile {here}: "
                                       f"{exc.strerror or exc}\n".encode())
            if task.stdin is not None:
                # (--roundrobin's streams are this machine's: pm.options refuses hosts.)
                assert isinstance(task.stdin, bytes)
                h.send(TaskInput(task.index, task.stdin).records())
            h.send(TaskStart(task.index, list(task.argv), env, task.wdir,
                             list(h.returns[task.index]), list(remove)).line())
            return await fut
        finally:
            h.runs.pop(task.index, None)
            h.returns.pop(task.index, None)
            self.running.pop(task.index, None)

    async def put_base(self, host: str, files: Sequence[tuple[str, str]], drop: bool
                       ) -> list[str]:
        """Put ``files`` (here, there) on ``host`` before its first task (``--basefile``;
        ``drop``: removed there when its runner ends): what could not be read here."""
        h = self._hosts[host]
        failed = []
        for here, there in files:
            try:
                await h.put(-1, here, there, drop)
            except OSError as exc:
                failed.append(f"--basefile {here}: {exc.strerror or exc}")
        return failed

    def signal(self, index: int, signum: int) -> None:
        """Send ``signum`` to task ``index``'s processes, where it runs."""
        host = self.running.get(index)
        if host is not None:
            self._hosts[host].send(TaskSignal(index, signum).line())

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every task running on another host."""
        for h in self._hosts.values():
            if h.runs:
                h.send(TaskSignal(-1, signum).line())

    def cut_starts(self, signum: int) -> None:
        """Wait no more for the runners still starting (pmrun was interrupted): their
        hosts are lost, named once by the ensemble."""
        for h in self._hosts.values():
            if h.job is not None and h.job.children is not None and h.job.children.waiting():
                h.job.interrupt(signum)

    def close(self) -> None:
        """Tell every runner to end (they kill what still runs there)."""
        for h in self._hosts.values():
            if h.commands is not None:
                h.commands.close()

    def _pair(self, host: str) -> Nodes:
        """The two nodes of the runner's job: vertex 0 in our process, vertex 1 started
        there by it (not by a Slurm step over both, nor by a head relaying to vertex 0:
        this machine need not be one of the allocation's nodes)."""
        from pm.common.nodes import Nodes

        boot = {k: v for k, v in self._nodes.bootstrap.items() if k != "start"}
        boot["head_only"] = False
        return Nodes([self._here, host], [1, 1], 2, boot)


class _Flow(asyncio.BaseProtocol):
    """The pipe to a runner's stdin, as its writer sees it: full (its buffer above the
    transport's high-water mark) or not.  A file put there is read here as the runner
    takes it, not held whole in memory (the job reads that pipe as the runner's stdin
    credit allows)."""

    def __init__(self) -> None:
        self._room = asyncio.Event()
        self._room.set()

    def pause_writing(self) -> None:
        self._room.clear()

    def resume_writing(self) -> None:
        self._room.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._room.set()

    async def room(self) -> None:
        await self._room.wait()


class _Host:
    """One host's runner as the ensemble sees it: its job, the pipe to its stdin, the runs
    it has under way, and what is left of a record its output cut."""

    def __init__(self, name: str, samples: Callable[[ProbeSample], None],
                 lost: Callable[[str], None]) -> None:
        self.name = name
        self._samples = samples
        self._on_lost = lost
        self.job: JobRun | None = None
        self.commands: asyncio.WriteTransport | None = None
        self.flow = _Flow()
        #: One file at a time goes there (the pieces of two puts of one path would mix).
        self._putting = asyncio.Lock()
        #: Task index -> (task, its output's destination, its run's status).
        self.runs: dict[int, tuple[Task, Emit, asyncio.Future[int | None]]] = {}
        #: Task index -> the files its run brings back: there -> here.
        self.returns: dict[int, dict[str, str]] = {}
        self.files = FileSink()
        #: Why the host is lost (its runner's job ended), None while it runs.
        self.lost: str | None = None
        self._reader = RunnerReader()

    def send(self, line: bytes) -> None:
        if self.commands is not None and not self.commands.is_closing():
            self.commands.write(line)

    async def put(self, index: int, here: str, there: str, drop: bool = False) -> None:
        """Put file ``here`` at ``there`` for task ``index`` (-1: a ``--basefile``), a
        piece at a time as the pipe takes them (``OSError`` if it cannot be read here)."""
        async with self._putting:
            for chunk in chunks(index, here, there, drop):
                if self.commands is None or self.commands.is_closing():
                    return  # (the runner is gone: the run ends as the host's loss)
                self.send(chunk.put_record())
                await self.flow.room()

    def sink(self, rank: int, stream: int, data: bytes) -> None:
        """The runner's output (rank 1; rank 0 is ``true`` and says nothing)."""
        if rank != 1:
            return
        if stream == STDERR:  # the interpreter's own words: a warning, or a crash
            for text in data.decode(errors="replace").splitlines():
                log.warning("the task runner on %s: %s", self.name, text)
            return
        for rec in self._reader.feed(data):
            if isinstance(rec, TaskOutput):
                run = self.runs.get(rec.index)
                if run is not None:
                    run[1](run[0], rec.stream, rec.data)
            elif isinstance(rec, FileChunk):
                run = self.runs.get(rec.index)
                here = self.returns.get(rec.index, {}).get(rec.path)
                if run is not None and here is not None:
                    failed = self.files.write(rec, here)
                    if failed:
                        run[1](run[0], STDERR, f"pmrun: --return {failed}\n".encode())
            elif isinstance(rec, TaskExit):
                run = self.runs.get(rec.index)
                if run is not None and not run[2].done():
                    run[0].exit_rss = rec.rss
                    run[2].set_result(rec.code)
            else:
                self._samples(rec)

    def ended(self, stdin_fd: int) -> None:
        """The runner's job ended: the host is lost to the runs still under way."""
        from pm.head import NOT_JOINED  # (loaded: the runner's job is a JobRun)

        os.close(stdin_fd)
        self.files.close()
        if self.commands is not None:
            self.commands.close()
        self.lost = "its task runner ended"
        job = self.job
        r = job.ranks.get(1) if job is not None else None
        cause = (job.cause if job is not None else None) or ""
        if r is not None and r.signal:
            self.lost = f"its task runner was killed by {signal.Signals(r.signal).name}"
        elif " lost: " in cause:  # the agent there, or the way to it (ssh, Slurm's step)
            self.lost = cause.split(" lost: ", 1)[1]
        elif cause.endswith(NOT_JOINED):  # pmrun interrupted while it started
            self.lost = f"its task runner had not started ({cause.split()[0]})"
        elif r is not None and r.reason:
            self.lost = f"its task runner: {r.reason}"
        elif r is not None:
            self.lost = f"its task runner exited with code {r.code}"
        self._on_lost(self.lost)
        for _task, _emit, fut in list(self.runs.values()):
            if not fut.done():
                fut.set_result(None)


# ---------------------------------------------------------------------- the runner
def main(argv: Sequence[str]) -> int:
    """``runner INTERVAL [UNIT [activity]]`` (``python -m pm.ensemble``'s arguments): runs
    :func:`runner_main`, or says how it is called (exit 2)."""
    gc.enable()  # (off while a lean start imported us: pm.bootstrap.base.lean_code)
    if len(argv) in (2, 3, 4) and argv[0] == "runner":
        return runner_main(float(argv[1]), *argv[2:])
    sys.stderr.write("usage: python -m pm.ensemble runner INTERVAL "
                     "[thread|core|socket [activity]]\n")
    return 2


def runner_main(interval: float, unit: str = "thread", activity: str = "") -> int:
    """``python -m pm.ensemble runner INTERVAL [UNIT [activity]]``: run the tasks the
    ensemble sends on stdin, report their output and exits on stdout, and every INTERVAL
    seconds a :class:`~pm.proto.runner.ProbeSample` of this node's memory, the cores it
    may run on, each task's anonymous resident bytes (and with ``activity`` the node's
    :class:`~pm.common.activity.Activity`).  Ends at EOF on stdin, or on SIGTERM
    or SIGHUP, killing what still runs; SIGINT is the ensemble's to pass on."""
    async def serve() -> int:
        return await _Runner(interval, unit, activity == "activity").serve()

    return asyncio.run(serve())


class _Runner:
    def __init__(self, interval: float, unit: str = "thread", activity: bool = False) -> None:
        self._interval = interval
        self._env: dict[str, str] = {}
        self._local = LocalRunner(lambda: dict(self._env))
        self._tasks: dict[int, Task] = {}
        self._runs: set[asyncio.Task[None]] = set()
        self._commands = CommandReader()
        self._inputs: dict[int, bytes] = {}  # a task's stdin, until its start
        self._memory = NodeMemory()
        self._files = FileSink()
        self._dropped: list[str] = []  # --basefile --cleanup: removed at our end
        self._cores = local_cores(unit)
        self._activity = ActivityProbe() if activity else None
        self._stop = asyncio.Event()

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._stop.set)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.set_blocking(0, False)
        loop.add_reader(0, self._read)
        try:
            while not self._stop.is_set():
                self._sample()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self._interval)
        except BrokenPipeError:  # nobody hears us any more
            pass
        finally:
            loop.remove_reader(0)
            for task in self._tasks.values():
                if task.pid:
                    signal_tree(task.pid, signal.SIGKILL)
            if self._runs:
                await asyncio.wait(set(self._runs))
            self._local.close()
            self._files.remove(self._dropped)
            self._files.close()
        return 0

    def _read(self) -> None:
        data = read_ready(0)
        if data is None:
            return
        if not data:
            asyncio.get_running_loop().remove_reader(0)
            self._stop.set()
            return
        for cmd in self._commands.feed(data):
            if isinstance(cmd, TaskInput):
                self._inputs[cmd.index] = cmd.data
            elif isinstance(cmd, FileChunk):
                self._put(cmd)
            elif isinstance(cmd, TaskStart):
                task = Task(TaskSpec(cmd.index, tuple(cmd.argv), None, ""), {}, cmd.wdir,
                            self._inputs.pop(cmd.index, None))
                self._tasks[cmd.index] = task
                run = asyncio.ensure_future(self._run(task, cmd))
                self._runs.add(run)
                run.add_done_callback(self._runs.discard)
            elif isinstance(cmd, TaskSignal):
                if cmd.index < 0:
                    self._local.signal(cmd.signum)
                elif (t := self._tasks.get(cmd.index)) is not None and t.pid:
                    signal_tree(t.pid, signal.Signals(cmd.signum))
            elif isinstance(cmd, TasksEnv):
                self._env = cmd.env
            else:  # only pmrun writes here: this is pmrun's defect
                sys.stderr.write(f"ignored a line that is no command: {cmd[:80]!r}\n")
                sys.stderr.flush()

    def _put(self, chunk: FileChunk) -> None:
        failed = self._files.write(chunk)
        if chunk.drop and chunk.offset == 0:
            self._dropped.append(chunk.path)
        if not failed:
            return
        if chunk.index >= 0:  # (its run is known there: the words go to its stderr)
            self._write(TaskOutput(chunk.index, STDERR,
                                   f"pmrun: --transferfile {failed}\n".encode()).records())
        else:
            sys.stderr.write(f"--basefile {failed}\n")
            sys.stderr.flush()

    async def _run(self, task: Task, start: TaskStart) -> None:
        try:
            code = await self._local.run(task, start.env, self._emit)
            if self._stop.is_set():
                return
            for path in start.returns:
                try:
                    for chunk in chunks(task.index, path, path):
                        self._write(chunk.got_record())
                except OSError as exc:
                    self._write(TaskOutput(task.index, STDERR, (
                        f"pmrun: --return {path}: {exc.strerror or exc} on "
                        f"{os.uname().nodename}\n").encode()).records())
            self._files.remove(start.remove)
            self._write(TaskExit(task.index, code, task.exit_rss).line())
        except BrokenPipeError:
            self._stop.set()
        finally:
            del self._tasks[task.index]

    def _emit(self, task: Task, stream: int, data: bytes) -> None:
        try:
            self._write(TaskOutput(task.index, stream, data).records())
        except BrokenPipeError:
            self._stop.set()

    def _sample(self) -> None:
        snap = self._memory.read()
        sizes = {i: tree_anon(t.pid) for i, t in self._tasks.items() if t.pid}
        kind = snap.limit_source.split(":")[0]
        activity = self._activity.read() if self._activity is not None else None
        self._write(ProbeSample(snap.total, snap.used, kind, self._cores, sizes,
                                activity).line().encode() + b"\n")

    @staticmethod
    def _write(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]
