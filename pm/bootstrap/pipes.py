"""A bootstrap command (ssh, srun, an exec template) with pipes on all three streams.

stdin carries the agent's config (first line) and, later, the addresses of
parents that were not known when the agent started (``{"addresses": {...}}``
lines).  stdout carries what an agent that listens for children reports:
``{"vertex": V, "address": "tcp://..."}``, one line each, and why an agent could
not start (``{"vertex": V, "error": "..."}``).  stderr is passed on
to ours line by line (the agents' warnings), and its last lines are kept: when
ssh or srun itself fails, that is the one line that says why ("Permission
denied (publickey).", "Host key verification failed.", ...).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from pm.agent.spawn import spawn
from pm.bootstrap.base import NOT_INSTALLED

if TYPE_CHECKING:
    import asyncio


#: How many stderr lines of a bootstrap command are kept to explain its failure.
KEEP_LINES = 8


class Piped:
    """One started command; reads its stdout and stderr on the running loop."""

    def __init__(self, argv: list[str], first_line: bytes | None, env: dict[str, str], *,
                 on_report: Callable[[int, str], None] | None = None,
                 on_error: Callable[[int, str], None] | None = None,
                 on_error_line: Callable[[str], bool] | None = None) -> None:
        self.on_report = on_report
        self.on_error = on_error
        self.on_error_line = on_error_line
        self.last: deque[str] = deque(maxlen=KEEP_LINES)
        fds: list[int] = []
        try:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            fds += [in_r, in_w]
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            fds += [out_r, out_w]
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            fds += [err_r, err_w]
            # Its own process group: a Ctrl-C in the terminal reaches the head alone,
            # which passes it on down the tree (ssh or srun would die of it by itself).
            self.pid = spawn(argv[0], argv, env, fds={0: in_r, 1: out_w, 2: err_w}, pgid=0)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.stdin = in_w
        self._out = out_r
        self._err = err_r
        self._bufs = {out_r: b"", err_r: b""}
        os.set_blocking(out_r, False)
        os.set_blocking(err_r, False)
        self._loop: asyncio.AbstractEventLoop | None = None
        if first_line is not None:
            self.write(first_line)
            self.attach()

    def attach(self) -> None:
        """Read stdout and stderr on the running loop (started before it: now)."""
        import asyncio

        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        for fd in (self._out, self._err):
            if fd >= 0:
                self._loop.add_reader(fd, self._read, fd)

    def abandon(self) -> None:
        """We will never use it: close our ends (its stdin's EOF ends it)."""
        if self.stdin >= 0:
            with contextlib.suppress(OSError):
                os.close(self.stdin)
            self.stdin = -1
        self.close()

    def write(self, data: bytes) -> bool:
        """Write ``data`` on the command's stdin (small lines: a pipe takes them whole)."""
        if self.stdin < 0:
            return False
        try:
            os.write(self.stdin, data)
        except OSError:
            return False
        return True

    def _read(self, fd: int) -> bool:
        """Take what ``fd`` holds now; whether there may be more (not empty, not at its end)."""
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._eof(fd)
            return False
        buf = self._bufs[fd] + data
        *lines, self._bufs[fd] = buf.split(b"\n")
        for line in lines:
            self._line(fd, line)
        return True

    def _eof(self, fd: int) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        rest = self._bufs.pop(fd, b"")
        if rest:
            self._line(fd, rest)
        os.close(fd)
        if fd == self._out:
            self._out = -1
        else:
            self._err = -1

    def _line(self, fd: int, line: bytes) -> None:
        if fd == self._out:
            self._report(line)
            return
        text = line.decode(errors="replace").rstrip()
        if not text:
            return
        self.last.append(text)
        if NOT_INSTALLED in text and text.startswith("pm-agent: "):
            return  # the agent's last words: the reason the job gives for the node's loss
        if self.on_error_line is not None and self.on_error_line(text):
            return
        os.write(2, line + b"\n")

    def _report(self, line: bytes) -> None:
        try:
            import json

            msg = json.loads(line)
            vertex = int(msg["vertex"])
            error = msg.get("error")
            address = "" if error is not None else str(msg["address"])
        except (ValueError, KeyError, TypeError, AttributeError):
            import logging

            logging.getLogger("pm.bootstrap").warning("bootstrap: ignored output %r",
                                                      line[:200])
            return
        if error is not None:
            # An agent that could not start says why here, for the job's one line.
            self.last.append(str(error))
            if self.on_error is not None:
                self.on_error(vertex, str(error))
        elif self.on_report is not None:
            self.on_report(vertex, address)

    def drain(self) -> None:
        """Read what the pipes hold now (the command ended: its last words are there)."""
        for fd in (self._out, self._err):
            while fd >= 0 and fd in self._bufs and self._read(fd):
                pass

    def close_stdin(self) -> None:
        if self.stdin >= 0:
            with contextlib.suppress(OSError):
                os.close(self.stdin)
            self.stdin = -1

    def close(self) -> None:
        """Stop reading (idempotent); stdin is the caller's to close."""
        for fd in (self._out, self._err):
            if fd >= 0:
                if self._loop is not None:
                    with contextlib.suppress(Exception):
                        self._loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._out = self._err = -1
