"""An ensemble's tasks on this machine: their processes, pipes and memory.

:class:`LocalRunner` starts each run as a node's ranks start
(:func:`pm.agent.started.start_local`) into one guardian process group,
reads its stdout and stderr on the loop as whole lines (the one pipe
reader, :func:`pm.common.output.read_pipe`) and waits for its exit;
:func:`tree_anon` measures a task from /proc and :func:`signal_tree`
signals it.  Apart from :mod:`pm.ensemble` because this is what a task is
to this machine's operating system, while the ensemble decides what runs
where and when.  A host's runner (:mod:`pm.ensemble.remote`) starts the tasks
of its host with it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import termios
from collections.abc import Callable, Iterator
from typing import Any

from pm.agent.memory import tree_pids
from pm.agent.spawn import Guardian, SpawnError, resolve, spawn
from pm.agent.started import RankStart, start_local
from pm.agent.watch import ChildWatch
from pm.common.output import STDERR, STDOUT, LineBuffer, read_pipe
from pm.ensemble.task import InputStream, Task

__all__ = ["DRAIN", "LocalRunner", "signal_tree", "tree_anon"]

#: How long a task's pipes may stay open after it exited (a daemon it left behind).
DRAIN = 1.0
#: A run's variable naming the file its end removes (``--cat``, ``--fifo``: the
#: block's file or named pipe, which a killed shell leaves behind).
TASK_TMP = "PMRUN_TASK_TMP"
_PAGE = os.sysconf("SC_PAGE_SIZE")


class LocalRunner:
    """Runs tasks on this machine, each in a fresh copy of ``base_env()`` updated with
    its own variables (the ensemble's: its spec's environment; a host's runner: what
    the ensemble sent it).

    Owns the guardian of their process group and the watch on their exits
    from the ensemble's start to :meth:`close`.
    """

    def __init__(self, base_env: Callable[[], dict[str, str]], tty: bool = False) -> None:
        self._base_env = base_env
        self._watch = ChildWatch()
        self._watch.max_rss = {}
        self._guardian = Guardian()
        #: GNU parallel's --tty: tasks get our terminal and run in its foreground.
        self._terminal = _Foreground(self._guardian.pgid) if tty else None
        #: ``--tty``: called with SIGINT or SIGQUIT when a task was ended by it, typed at
        #: the terminal (which gives it to the foreground: the tasks, not us).
        self.on_key: Callable[[int], None] | None = None
        self._sent: set[int] = set()  # signals we passed to the tasks (:meth:`signal`)

    async def run(self, task: Task, env: dict[str, str],
                  emit: Callable[[Task, int, bytes], None]) -> int:
        """One run of ``task`` with ``env`` over the base environment: posix_spawn into
        our guardian's group, pipes read here and their lines passed to ``emit`` (task,
        stream, data).  ``task.pid`` is the run's while it runs.  Returns its shell status;
        ``task.exit_rss`` is then the largest resident size of its processes (the kernel's
        account; it counts ours as well, which a spawned process shares until its exec)."""
        try:
            return await self._run(task, env, emit)
        finally:
            if isinstance(task.stdin, InputStream):  # (however the run ended: it reads no more)
                task.stdin.leave()

    async def _run(self, task: Task, env: dict[str, str],
                   emit: Callable[[Task, int, bytes], None]) -> int:
        full = self._base_env()
        full.update(env)
        try:
            path = resolve(task.argv[0], full, task.wdir)
        except SpawnError as exc:
            emit(task, STDERR, f"pmrun: {exc}\n".encode())
            return 127
        if self._terminal is not None:
            return await self._run_on_terminal(task, path, full, emit)
        loop = asyncio.get_running_loop()
        # Started as ranks are (no PMI socket, stdin from /dev/null or a pipe of its
        # block of --pipe input), in our group.
        started = start_local([RankStart(0, 0, path, task.argv, full, task.wdir)],
                              stdin_rank=None if task.stdin is None else 0, pmi=False,
                              guardian=self._guardian)
        (r,) = started.ranks
        if r.failure:
            emit(task, STDERR, f"pmrun: {r.failure}\n".encode())
            return 127
        task.pid = r.pid
        if r.stdin_fd >= 0:
            given = task.stdin
            stdin = given if isinstance(given, InputStream) else InputStream.whole(given or b"")
            _stream(loop, r.stdin_fd, stdin)
            r.stdin_fd = -1
        open_fds = {STDOUT: r.out_fd, STDERR: r.err_fd}
        # Lines, a task's bytes as they are: a line longer than MAX_LINE comes in pieces,
        # and the last one without the newline it lacked.
        bufs = {STDOUT: LineBuffer(), STDERR: LineBuffer()}
        r.out_fd = r.err_fd = -1
        drained = loop.create_future()

        def readable(stream: int, last: bool = False) -> None:
            fd = open_fds[stream]
            if last:  # the drain time is over: what is left of the line, and no more
                lines, got = bufs[stream].flush(), 0
            else:
                lines, got = read_pipe(fd, bufs[stream])
            if lines:
                emit(task, stream, lines)
            if got == 0:
                loop.remove_reader(fd)
                os.close(fd)
                del open_fds[stream]
                if not open_fds and not drained.done():
                    drained.set_result(None)

        for stream, fd in open_fds.items():
            loop.add_reader(fd, readable, stream)
        pidfd, r.pidfd = r.pidfd, -1
        try:
            status = await self._watch.watch(task.pid, pidfd)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drained), DRAIN)
        finally:
            assert self._watch.max_rss is not None
            task.exit_rss = self._watch.max_rss.pop(task.pid, 0)
            task.pid = 0
            for stream in list(open_fds):
                readable(stream, last=True)
            if env.get(TASK_TMP):  # --cat's file, --fifo's pipe: its shell may have been killed
                with contextlib.suppress(OSError):
                    os.unlink(env[TASK_TMP])
        return status.shell_code

    async def _run_on_terminal(self, task: Task, path: str, env: dict[str, str],
                               emit: Callable[[Task, int, bytes], None]) -> int:
        """``--tty``: the run reads our terminal and writes where we do, in our guardian's
        group, which is the terminal's foreground while it runs."""
        assert self._terminal is not None
        try:
            with self._terminal as tty:
                task.pid = spawn(path, task.argv, env, cwd=task.wdir, fds={0: tty, 1: 1, 2: 2},
                                 pgid=self._guardian.pgid)
                try:
                    status = await self._watch.watch(task.pid, os.pidfd_open(task.pid))
                finally:
                    assert self._watch.max_rss is not None
                    task.exit_rss = self._watch.max_rss.pop(task.pid, 0)
                    task.pid = 0
                self._terminal.ended(status.signal)
        except (SpawnError, OSError) as exc:
            emit(task, STDERR, f"pmrun: {exc}\n".encode())
            return 127
        if status.signal in (signal.SIGINT, signal.SIGQUIT) and status.signal not in self._sent \
                and self.on_key is not None:
            # The key was the user's, to end the whole run (a shell's rule for its
            # foreground job): told now, before another task could start.
            self.on_key(status.signal)
        return status.shell_code

    def signal(self, signum: int) -> None:
        """Pass ``signum`` to every task running here (their whole process group)."""
        self._sent.add(signum)
        self._guardian.signal(signum)

    def close(self) -> None:
        """Stop watching exits and release the process group."""
        self._watch.close()
        self._guardian.release()


class _Foreground:
    """Our terminal, given to a process group while its tasks run (``with``: an open
    descriptor of it): the group is the terminal's foreground from the first task's start
    to the last one's end (if we were: a pmrun in the background leaves it as it is),
    and a task killed by a signal leaves the terminal's modes as they were before it,
    as a shell restores them after its foreground job."""

    def __init__(self, pgid: int) -> None:
        self._pgid = pgid
        self._fd = -1
        self._users = 0
        self._ours = False  # we gave the terminal away (and take it back at the end)
        self._modes: list[Any] | None = None

    def __enter__(self) -> int:
        if self._users == 0:
            self._fd = os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC)
            with contextlib.suppress(termios.error):
                self._modes = termios.tcgetattr(self._fd)
            with contextlib.suppress(OSError):
                if os.tcgetpgrp(self._fd) == os.getpgrp():
                    os.tcsetpgrp(self._fd, self._pgid)
                    self._ours = True
        self._users += 1
        return self._fd

    def ended(self, signum: int) -> None:
        """A task ended (by ``signum``, 0 for an exit)."""
        if signum and self._modes is not None:
            with _background(), contextlib.suppress(termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._modes)

    def __exit__(self, *exc: object) -> None:
        self._users -= 1
        if self._users:
            return
        if self._ours:
            with _background(), contextlib.suppress(OSError):
                os.tcsetpgrp(self._fd, os.getpgrp())
            self._ours = False
        os.close(self._fd)
        self._fd = -1


@contextlib.contextmanager
def _background() -> Iterator[None]:
    """Around a change of the terminal made while another group is its foreground, which
    would stop us (SIGTTOU) otherwise."""
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTTOU, old)


def _stream(loop: asyncio.AbstractEventLoop, fd: int, stream: InputStream) -> None:
    """Write ``stream``'s blocks to the pipe ``fd`` as they come and the task takes them,
    then, at its end, close it (owning ``fd``); a reader that goes away leaves the
    stream."""
    os.set_blocking(fd, False)
    view = memoryview(b"")
    watching = False

    def more() -> None:
        nonlocal view, watching
        try:
            while True:
                if not view:
                    if not stream.blocks:
                        break
                    view = memoryview(stream.blocks.popleft())
                wrote = os.write(fd, view[:PIPE_CHUNK])
                view = view[wrote:]
                stream.took(wrote)
        except BlockingIOError:
            return
        except OSError:  # the task closed its stdin, or ended
            stream.leave()
            view = memoryview(b"")
        if stream.gone or stream.ended:
            stream.wake = None
            if watching:
                loop.remove_writer(fd)
            os.close(fd)
            return
        if watching:  # nothing to write until more comes
            loop.remove_writer(fd)
            watching = False

    def wake() -> None:
        nonlocal watching
        if not watching:
            loop.add_writer(fd, more)
            watching = True

    stream.wake = wake
    wake()


#: What one write to a task's stdin pipe offers.
PIPE_CHUNK = 65536


def tree_anon(pid: int) -> int:
    """Anonymous resident bytes of ``pid`` and its descendants (statm: resident - shared)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                fields = f.read().split()
            total += (int(fields[1]) - int(fields[2])) * _PAGE
        except (OSError, IndexError, ValueError):  # exited between the walk and the read
            continue
    return total


def signal_tree(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid`` and its descendants."""
    for p in tree_pids(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
