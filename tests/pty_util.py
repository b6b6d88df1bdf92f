"""Drive pmrun from a terminal of its own (a pseudo-terminal), as a user at a keyboard does."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from launch_util import pmrun_argv, pmrun_env


class Typed:
    """What a run on a terminal printed, its status, and the terminal's modes before and
    after it (pmrun must leave them as it found them)."""

    def __init__(self, code: int, out: bytes, before: list[object], after: list[object]
                 ) -> None:
        self.code = code
        self.out = out
        self.before = before
        self.after = after

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")


def on_terminal(args: Sequence[str],
                keys: Sequence[tuple[bytes, bytes | tuple[int, int]]] = (),
                cwd: Path | None = None, size: tuple[int, int] = (33, 111),
                env: Mapping[str, str] | None = None, timeout: float = 30,
                controlling: bool = False) -> Typed:
    """Run pmrun with ``args`` on a new terminal of ``size`` (rows, columns); each of
    ``keys`` is (what the screen must show first, what is typed then, or a new size of the
    terminal: pmrun gets SIGWINCH, as a window's resize gives its terminal's processes).
    ``controlling``: the terminal is pmrun's controlling terminal (its ``/dev/tty``) and
    pmrun a foreground job of a shell's on it, in a process group of its own (a job pmrun
    stops, as a change of the terminal from the background would, fails the run)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    before = termios.tcgetattr(slave)
    argv = pmrun_argv(*args)
    if controlling:
        argv = [sys.executable, "-c", _JOB_SHELL, *argv]
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=pmrun_env(env), start_new_session=True,
                            preexec_fn=_take_terminal if controlling else None)
    out = b""
    todo = list(keys)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if todo and todo[0][0] in out:
                what = todo.pop(0)[1]
                if isinstance(what, tuple):
                    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *what, 0, 0))
                    proc.send_signal(signal.SIGWINCH)
                else:
                    os.write(master, what)
            ended = proc.poll() is not None
            # Once pmrun ended, what it wrote last may still be on its way through the line
            # discipline (a kernel worker moves it, later on a loaded machine): read until
            # the terminal stays silent a while.
            ready, _, _ = select.select([master], [], [], 0.5 if ended else 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # (EIO: nobody has the terminal open any more)
                    data = b""
                out += data
                if data:
                    continue
            if ended and not ready:
                break
        else:
            raise AssertionError(f"pmrun {' '.join(args)} did not end within {timeout:g} s; "
                                 f"the screen: {out!r}")
        code = proc.wait(timeout=10)
        after = termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(slave)
        os.close(master)
    return Typed(code, out, before, after)


def _take_terminal() -> None:
    """(In the child, a session leader by now: stdin's terminal becomes its own.)"""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


#: A shell's job control, for one command (its argv): the command in a group of its own,
#: the terminal's foreground while it runs; exit 99 if it stopped.
_JOB_SHELL = r"""
import os, signal, sys
signal.signal(signal.SIGTTOU, signal.SIG_IGN)
pid = os.fork()
if pid == 0:
    os.setpgid(0, 0)
    os.tcsetpgrp(0, os.getpid())
    signal.signal(signal.SIGTTOU, signal.SIG_DFL)
    os.execvp(sys.argv[1], sys.argv[1:])
try:
    os.setpgid(pid, pid)
    os.tcsetpgrp(0, pid)
except OSError:
    pass
_, status = os.waitpid(pid, os.WUNTRACED)
if os.WIFSTOPPED(status):
    sys.stderr.write("job shell: the command stopped (signal %d)\n" % os.WSTOPSIG(status))
    os.killpg(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    sys.exit(99)
os.tcsetpgrp(0, os.getpgrp())
code = os.waitstatus_to_exitcode(status)
sys.exit(128 - code if code < 0 else code)
"""
