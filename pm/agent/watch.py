"""How processes end: exit statuses, and futures for them on the event loop.

* Each process is watched through a pidfd on the event loop (uvloop reserves
  SIGCHLD for itself), so no exit is lost, even one that happens before the
  caller starts waiting.
* Signals go through the same pidfd (:meth:`ChildWatch.kill`): once a process
  is reaped its pid may be another process's, and it is never signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import NamedTuple


class ExitStatus(NamedTuple):
    """How a process ended: ``code`` for an exit, ``signal`` when killed by one.

    (A named tuple: a dataclass would cost every agent's start a millisecond of CPU.)"""

    code: int
    signal: int

    @classmethod
    def from_wait(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(-1, os.WTERMSIG(status))
        return cls(os.waitstatus_to_exitcode(status), 0)

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.signal == 0

    @property
    def shell_code(self) -> int:
        """The code a shell would report: the exit code, or 128 + signal."""
        return 128 + self.signal if self.signal else self.code

    def describe(self) -> str:
        if self.signal:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with code {self.code}"


class ChildWatch:
    """Futures for process exits, driven by pidfds on the running loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._futs: dict[int, asyncio.Future[ExitStatus]] = {}
        self._fds: dict[int, int] = {}
        #: When a dict: each reaped process's largest resident size, and its reaped
        #: descendants', in bytes (the kernel's ``ru_maxrss``), by pid, for the taking.
        self.max_rss: dict[int, int] | None = None

    def watch(self, pid: int, pidfd: int = -1) -> asyncio.Future[ExitStatus]:
        """The exit status of ``pid`` (a child of ours) when it ends.  ``pidfd``: its
        pidfd if the caller has one (the watch owns it from now on)."""
        fut = self._futs.get(pid)
        if fut is not None:
            if pidfd >= 0:
                os.close(pidfd)
            return fut
        fut = self._loop.create_future()
        self._futs[pid] = fut
        try:
            fd = pidfd if pidfd >= 0 else os.pidfd_open(pid)
        except ProcessLookupError:
            self._reap(pid)
            return fut
        self._fds[pid] = fd
        self._loop.add_reader(fd, self._reap, pid)
        return fut

    def _reap(self, pid: int) -> None:
        try:
            if self.max_rss is None:
                got, status = os.waitpid(pid, os.WNOHANG)
            else:
                got, status, usage = os.wait4(pid, os.WNOHANG)
                if got:
                    self.max_rss[got] = usage.ru_maxrss << 10  # (KiB)
        except ChildProcessError:
            got, status = pid, 255 << 8  # reaped elsewhere: report a failure, never hang
        if got == 0:
            return  # spurious wake-up
        fd = self._fds.pop(pid, None)
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)
        fut = self._futs.pop(pid, None)
        if fut is not None and not fut.done():
            fut.set_result(ExitStatus.from_wait(status))

    def poll(self, pid: int) -> None:
        """Reap ``pid`` now if it has ended, before the loop gets to it (its future's
        callbacks are called soon)."""
        if pid in self._fds:
            self._reap(pid)

    def kill(self, pid: int, signum: int = signal.SIGKILL) -> bool:
        """Send ``signum`` to ``pid`` if it is still ours: watched and not reaped yet.

        Through its pidfd, which names that very process: a pid already reaped
        (and perhaps reused by another process) is never signalled.  True if sent.
        """
        fd = self._fds.get(pid)
        if fd is None:
            return False
        try:
            signal.pidfd_send_signal(fd, signum)
        except (ProcessLookupError, PermissionError):
            return False  # exited (not reaped yet) or not ours to signal
        return True

    def dup_pidfd(self, pid: int) -> int:
        """A pidfd of ``pid`` for the caller to own (-1 once it is not ours any more):
        what signals it later reaches that very process, whatever became of the pid."""
        fd = self._fds.get(pid)
        return os.dup(fd) if fd is not None else -1

    @property
    def running(self) -> int:
        return len(self._futs)

    def close(self) -> None:
        """Stop watching (processes are not touched)."""
        for pid, fd in list(self._fds.items()):
            self._loop.remove_reader(fd)
            os.close(fd)
            fut = self._futs.pop(pid, None)
            if fut is not None and not fut.done():
                fut.cancel()
        self._fds.clear()


#: Seconds :func:`guardians_reaped` waits at most: a guardian let go ends at once, or
#: after a look at every process's maps (tens of ms).
GUARDIANS_WAIT = 5.0


async def guardians_reaped(timeout: float = GUARDIANS_WAIT) -> None:  # noqa: ASYNC109
    """Wait (not blocking the loop) until the ranks' guardians let go have ended, and
    collect their exits: a process that runs jobs in itself and goes on (the Python API)
    keeps no zombie of theirs.  One still running after ``timeout`` seconds is collected by
    a later release or call (pm.agent.spawn.released_guardians)."""
    from pm.agent.spawn import released_guardians

    await _ended_all([fd for g in released_guardians() if (fd := g.pidfd()) >= 0], timeout)
    released_guardians()  # (collects those that ended)


#: Seconds :func:`killed_reaped` waits at most for ranks just killed (SIGKILL: at once,
#: unless one is stuck in the kernel).
KILLED_WAIT = 1.0


async def killed_reaped(pids: list[int], timeout: float = KILLED_WAIT) -> None:  # noqa: ASYNC109
    """Collect the exits of ranks just killed, our children whose ends nobody watches any
    more (the agent is closing): a process that runs jobs in itself and goes on (the
    Python API) keeps no zombie of theirs.  Waits for them (not blocking the loop) at most
    ``timeout`` seconds; one that has not ended by then is left to its fate."""
    fds: dict[int, int] = {}
    for pid in pids:
        try:
            fds[pid] = os.pidfd_open(pid)
        except OSError:
            continue  # collected already
    await _ended_all(list(fds.values()), timeout)
    for pid in fds:
        _collect(pid)


async def _ended_all(pidfds: list[int], timeout: float) -> None:  # noqa: ASYNC109
    """Wait (not blocking the loop) until the processes of ``pidfds`` have ended, at most
    ``timeout`` seconds; the descriptors are closed then."""
    loop = asyncio.get_running_loop()
    ended: list[asyncio.Future[None]] = []
    try:
        for fd in pidfds:
            fut: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _ended, fut)
            ended.append(fut)
        if ended:
            await asyncio.wait(ended, timeout=timeout)
    finally:
        for fd in pidfds:
            loop.remove_reader(fd)
            os.close(fd)


def _collect(pid: int) -> None:
    """The exit of ``pid``, if it has ended (WNOHANG: never waits)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return  # (not ours: started by another process of the job's)


def _ended(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
