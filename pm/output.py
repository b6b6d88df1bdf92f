"""Output of ranks: line assembly on the agent, tagging and writing on the head; and which
stdin goes to rank 0."""

from __future__ import annotations

import os
import stat

#: A line longer than this is passed on in pieces (a rank printing without newlines).
MAX_LINE = 1 << 20

STDOUT = 1
STDERR = 2


class LineBuffer:
    """Turns a stream's chunks into complete lines (newline included)."""

    __slots__ = ("_part",)

    def __init__(self) -> None:
        self._part = b""

    def feed(self, data: bytes) -> bytes:
        """The complete lines in ``data`` (with what was left before); keeps the rest."""
        buf = self._part + data if self._part else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) >= MAX_LINE:
                self._part = b""
                return buf + b"\n"
            self._part = buf
            return b""
        self._part = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        """At EOF: the last partial line, terminated so no other rank's bytes join it."""
        part, self._part = self._part, b""
        return part + b"\n" if part else b""


class Writer:
    """Writes ranks' lines to the launcher's stdout/stderr, tagged ``[rank]`` on demand."""

    def __init__(self, label: bool, out_fd: int = 1, err_fd: int = 2) -> None:
        self.label = label
        self._fds = {STDOUT: out_fd, STDERR: err_fd}
        self._prefixes: dict[int, bytes] = {}

    def write(self, rank: int, stream: int, chunk: bytes) -> None:
        if self.label:
            prefix = self._prefixes.get(rank)
            if prefix is None:
                prefix = self._prefixes[rank] = b"[%d] " % rank
            lines = chunk.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            chunk = b"".join(prefix + line + b"\n" for line in lines)
        write_all(self._fds[stream], chunk)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        except BrokenPipeError:
            return  # the reader went away (e.g. `| head`): drop output, keep running the job
        view = view[n:]


def stdin_for_job() -> int | None:
    """Our stdin, if there is one worth forwarding to rank 0."""
    try:
        st = os.fstat(0)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode) and not os.isatty(0):
        return None  # /dev/null and the like
    return 0


def ensure_std_fds() -> None:
    """Give a closed stdin, stdout or stderr /dev/null, before any other descriptor is made:
    else the first pipe of a rank would take its number, and the job's output would go in."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd``
