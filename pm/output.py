"""Output of ranks: line assembly on the agent, tagging and writing on the head; and which
stdin goes to rank 0."""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's quick path)
if TYPE_CHECKING:
    from collections.abc import Callable

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
    """Writes ranks' lines to the launcher's stdout/stderr, tagged ``[rank]`` on demand, or to
    files named by a pattern per stream (``files``: see :func:`expand_pattern`)."""

    def __init__(self, label: bool, out_fd: int = 1, err_fd: int = 2,
                 files: dict[int, str] | None = None, job_id: str = "") -> None:
        self.label = label
        self._fds = {STDOUT: out_fd, STDERR: err_fd}
        self._prefixes: dict[int, bytes] = {}
        self._patterns = {k: v for k, v in (files or {}).items() if v}
        self._job_id = job_id
        #: A rank's line prefix when labelling (None: ``[rank] ``): -prepend-pattern's.
        self.prefix: Callable[[int], bytes] | None = None
        #: (stream, rank) -> fd of its file (-1: it could not be opened); path -> fd.
        self._to: dict[tuple[int, int], int] = {}
        self._opened: dict[str, int] = {}
        #: Called once when the reader of our stdout or stderr went away (the output is lost).
        self.on_broken: Callable[[], None] | None = None

    def write(self, rank: int, stream: int, chunk: bytes) -> None:
        if self.label:
            prefix = self._prefixes.get(rank)
            if prefix is None:
                prefix = self._prefixes[rank] = (b"[%d] " % rank if self.prefix is None
                                                 else self.prefix(rank))
            lines = chunk.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            chunk = b"".join(prefix + line + b"\n" for line in lines)
        if stream in self._patterns:
            fd = self._file(rank, stream)
            if fd >= 0:
                write_all(fd, chunk)
        elif not write_all(self._fds[stream], chunk) and self.on_broken is not None:
            # `pmrun ... | head`: as in a shell pipeline, the writers get SIGPIPE.
            on_broken, self.on_broken = self.on_broken, None
            on_broken()

    def _file(self, rank: int, stream: int) -> int:
        fd = self._to.get((stream, rank))
        if fd is None:
            path = expand_pattern(self._patterns[stream], rank, self._job_id)
            fd = self._opened.get(path)
            if fd is None:
                try:  # truncated once per job: ranks sharing a file append to it
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
                                 | os.O_CLOEXEC, 0o666)
                except OSError as exc:
                    fd = -1
                    what = "output" if stream == STDOUT else "error output"
                    write_all(2, f"pmrun: rank {rank}'s {what} is lost: cannot open {path}: "
                                 f"{exc.strerror}\n".encode())
                self._opened[path] = fd
            self._to[(stream, rank)] = fd
        return fd

    def close(self) -> None:
        """Close the output files (idempotent)."""
        for fd in self._opened.values():
            if fd >= 0:
                os.close(fd)
        self._opened.clear()
        self._to.clear()


def pattern_problem(option: str, pattern: str) -> str | None:
    """What is wrong with an output file pattern (its folder is missing), or None."""
    folder = os.path.dirname(expand_pattern(pattern, 0, "job"))
    if folder and not os.path.isdir(folder):
        return f"{option} {pattern}: no such directory {folder}"
    return None


def expand_pattern(pattern: str, rank: int, job_id: str) -> str:
    """An output file name: ``%r`` (or Slurm's ``%t``) is the rank, ``%j`` the job id,
    ``%%`` a percent sign; without ``%r``, every rank writes to the one file."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            sub = {"r": str(rank), "t": str(rank), "j": job_id, "%": "%"}.get(nxt)
            if sub is not None:
                out.append(sub)
                i += 2
                continue
        out.append(c)
        i += 1
    return "".join(out)


def write_all(fd: int, data: bytes) -> bool:
    """Write all of ``data`` (waiting if ``fd`` is non-blocking); False if nobody reads it."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        except BrokenPipeError:
            return False  # the reader went away (e.g. `| head`)
        view = view[n:]
    return True


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
