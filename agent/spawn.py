"""Starting, watching and killing processes (ranks, child agents).

* ``posix_spawn`` (vfork + exec in glibc): no Python runs in the child, so a
  node's ranks start in well under a millisecond each.
* Each process is watched through a pidfd on the event loop (uvloop reserves
  SIGCHLD for itself), so no exit is lost, even one that happens before the
  caller starts waiting.
* A *guardian* process leads the process group of a job's ranks on a node.  It
  blocks reading a pipe that only the agent holds: if the agent dies, even by
  SIGKILL, the read returns and the guardian kills the whole group.  Ranks
  therefore never outlive their agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pm.proto.errors import PMError

# The guardian ignores the job-control signals the agent forwards to the group.
_GUARDIAN = "trap '' INT TERM HUP QUIT USR1 USR2; read _; kill -KILL 0"

#: Target fd number of the PMI socket in a rank (``PMI_FD``).
PMI_FD = 3


class SpawnError(PMError):
    """A process could not be started (command not found, not executable, ...)."""


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """How a process ended: ``code`` for an exit, ``signal`` when killed by one."""

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


def resolve(argv0: str, env: Mapping[str, str], cwd: str | None) -> str:
    """Find the program the way a shell would (PATH of the rank's environment)."""
    if "/" in argv0:
        path = argv0 if os.path.isabs(argv0) or cwd is None else os.path.join(cwd, argv0)
        if not os.path.exists(path):
            raise SpawnError(f"{argv0}: no such file")
        if not os.access(path, os.X_OK) or os.path.isdir(path):
            raise SpawnError(f"{argv0}: not executable")
        return path
    found = shutil.which(argv0, path=env.get("PATH", os.defpath))
    if found is None:
        raise SpawnError(f"{argv0}: command not found")
    if cwd is not None and not os.path.isabs(found):
        found = os.path.join(cwd, found)
    return found


def spawn(
    path: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | None = None,
    fds: Mapping[int, int] | None = None,
    pgid: int | None = None,
    cpus: frozenset[int] | None = None,
) -> int:
    """Start ``path`` and return its pid.

    ``fds`` maps target fd numbers in the child (0, 1, 2, PMI_FD) to fds of
    ours (which stay close-on-exec here; dup2 clears the flag in the child).
    ``pgid`` puts the child in that process group (0: a new group it leads).
    ``cpus`` binds the child before exec: the calling thread's affinity is
    inherited by the child, so it is set around the spawn and restored.
    """
    actions: list[tuple[int, ...]] = []
    for target, src in (fds or {}).items():
        if src == target:
            os.set_inheritable(src, True)
        else:
            actions.append((os.POSIX_SPAWN_DUP2, src, target))
    kwargs: dict[str, object] = {"file_actions": actions}
    if pgid is not None:
        kwargs["setpgroup"] = pgid
    # The agent blocks SIGCHLD and friends in no thread; reset handlers the
    # interpreter ignores (SIGPIPE) so ranks see default behaviour.
    kwargs["setsigdef"] = (signal.SIGPIPE, signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    kwargs["setsigmask"] = ()
    old_cpus = None
    if cpus:
        old_cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
    old_cwd = None
    try:
        # os.posix_spawn has no chdir action: change ours around the call (the
        # loop thread is the only one that spawns or depends on the cwd).
        if cwd is not None:
            old_cwd = os.getcwd()
            os.chdir(cwd)
        try:
            return os.posix_spawn(path, list(argv), dict(env), **kwargs)  # type: ignore[arg-type]
        except OSError as exc:
            raise SpawnError(f"{argv[0]}: {exc.strerror}") from exc
    finally:
        if old_cwd is not None:
            os.chdir(old_cwd)
        if old_cpus is not None:
            os.sched_setaffinity(0, old_cpus)


class ChildWatch:
    """Futures for process exits, driven by pidfds on the running loop."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._futs: dict[int, asyncio.Future[ExitStatus]] = {}
        self._fds: dict[int, int] = {}

    def watch(self, pid: int) -> asyncio.Future[ExitStatus]:
        """The exit status of ``pid`` (a child of ours) when it ends."""
        fut = self._futs.get(pid)
        if fut is not None:
            return fut
        fut = self._loop.create_future()
        self._futs[pid] = fut
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._reap(pid)
            return fut
        self._fds[pid] = fd
        self._loop.add_reader(fd, self._reap, pid)
        return fut

    def _reap(self, pid: int) -> None:
        try:
            got, status = os.waitpid(pid, os.WNOHANG)
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


class Guardian:
    """Leads a process group; kills it when the agent that started it dies.

    Ranks join the group with ``spawn(..., pgid=guardian.pgid)``.
    """

    def __init__(self) -> None:
        rfd, self._wfd = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        try:
            self.pid = spawn(
                "/bin/sh",
                ["pm-guardian", "-c", _GUARDIAN],
                {"PATH": os.defpath},
                fds={0: rfd, 1: null, 2: null},
                pgid=0,
            )
        finally:
            os.close(rfd)
            os.close(null)
        self.pgid = self.pid

    def signal(self, signum: int) -> None:
        """Send ``signum`` to every process of the group (the guardian ignores most)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)

    def kill_all(self) -> None:
        """SIGKILL the whole group, guardian included."""
        self.signal(signal.SIGKILL)

    def release(self) -> None:
        """Close our end of the pipe: the guardian kills what is left of the group and exits."""
        if self._wfd >= 0:
            os.close(self._wfd)
            self._wfd = -1


def raise_fd_limit() -> None:
    """Ranks need four fds each: raise the soft limit to the hard one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
