"""Drive pmrun from a terminal of its own (a pseudo-terminal), as a user at a keyboard does."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
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
                env: Mapping[str, str] | None = None, timeout: float = 30) -> Typed:
    """Run pmrun with ``args`` on a new terminal of ``size`` (rows, columns); each of
    ``keys`` is (what the screen must show first, what is typed then, or a new size of the
    terminal: pmrun gets SIGWINCH, as a window's resize gives its terminal's processes)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen(pmrun_argv(*args), stdin=slave, stdout=slave, stderr=slave,
                            cwd=cwd, env=pmrun_env(env), start_new_session=True)
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
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # (EIO: nobody has the terminal open any more)
                    data = b""
                out += data
                if data:
                    continue
            if proc.poll() is not None and not ready:
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
