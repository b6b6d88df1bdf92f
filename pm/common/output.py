"""Output of ranks: line assembly on the agent, tagging and writing on the head; and which
stdin goes to rank 0."""

from __future__ import annotations

import os
import stat
import time

from pm.common.outfiles import create, expand_pattern, per_rank_folder

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's quick path)
if TYPE_CHECKING:
    from collections.abc import Callable

    from pm.common.write_behind import WriteBehind

#: A line longer than this is passed on in pieces (a rank printing without newlines).
MAX_LINE = 1 << 20

STDOUT = 1
STDERR = 2


class LineBuffer:
    """Turns a stream's chunks into complete lines (newline included).

    ``terminate``: a line cut at :data:`MAX_LINE` and the last partial line get a
    newline (a rank's, so that no other rank's bytes join it); without, they come as
    they are (a task's output, passed on byte for byte).  ``raw`` (srun's ``-u``): no
    line is held, every chunk passes as it came."""

    __slots__ = ("_part", "_raw", "_terminate")

    def __init__(self, terminate: bool = True, raw: bool = False) -> None:
        self._part = b""
        self._terminate = terminate
        self._raw = raw

    def feed(self, data: bytes) -> bytes:
        """The complete lines in ``data`` (with what was left before); keeps the rest."""
        if self._raw:
            return data
        buf = self._part + data if self._part else data
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            if len(buf) >= MAX_LINE:
                self._part = b""
                return buf + b"\n" if self._terminate else buf
            self._part = buf
            return b""
        self._part = buf[cut:]
        return buf[:cut]

    def flush(self) -> bytes:
        """At EOF: the last partial line (terminated, unless told not to)."""
        part, self._part = self._part, b""
        return part + b"\n" if part and self._terminate else part


def output_window(nodes: int) -> int:
    """Bytes of output a node's agent may have on their way to the head (its credit): the
    head holds at most ``nodes`` times this while its stdout is slow."""
    return max(OUTPUT_WINDOW_MIN, OUTPUT_BUDGET // max(1, nodes))


#: What the head may hold of the ranks' output in all, and at least per node.
OUTPUT_BUDGET = 8 << 20
OUTPUT_WINDOW_MIN = 256 << 10


def read_ready(fd: int) -> bytes | None:
    """One read of ``fd`` that the loop said is readable: its bytes, ``b""`` at its end (or
    an error), None if nothing was there after all."""
    try:
        return os.read(fd, PIPE_READ)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def read_pipe(fd: int, buf: LineBuffer) -> tuple[bytes, int]:
    """One read of a rank's output pipe (non-blocking), assembled into lines by ``buf``.

    Returns the complete lines and how many bytes were read: -1 if none were
    there yet, 0 at EOF (the last partial line comes with it; the caller
    closes ``fd``).  The only reader of ranks' pipes, in every phase.
    """
    data = read_ready(fd)
    if data is None:
        return b"", -1
    return (buf.feed(data) if data else buf.flush()), len(data)


#: Bytes read from a rank's pipe at once (a pipe holds 64 KiB by default).
PIPE_READ = 65536


def rank_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """``0-3,5`` as ranges of ranks (Hydra's ``-output-from 0``); ValueError if it is not."""
    out = []
    for part in text.split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdecimal() or (dash and (not hi.isdecimal() or int(hi) < int(lo))):
            raise ValueError(f"{text!r} is not ranks (0, or 0-3,5)")
        out.append((int(lo), int(hi) if dash else int(lo)))
    return tuple(out)


class Writer:
    """Writes ranks' lines to the launcher's stdout/stderr, tagged ``[rank]`` on demand, or to
    files named by a pattern per stream (``files``: see :func:`expand_pattern`).

    It starts out writing in the caller's thread (pmrun's quick path: a slow
    reader simply holds the ranks).  :meth:`write_behind` makes stdout and stderr
    writes go through a thread instead, so an event loop never waits for a slow
    reader: ``written(tag, nbytes)`` then says, on the loop, when a chunk left
    (this is what the head turns into output credit for the nodes).
    """

    def __init__(self, label: bool, out_fd: int = 1, err_fd: int = 2,
                 files: dict[int, str] | None = None, job_id: str = "") -> None:
        self.label = label
        self._fds = {STDOUT: out_fd, STDERR: err_fd}
        self._prefixes: dict[int, bytes] = {}
        self._patterns = {k: v for k, v in (files or {}).items() if v}
        self._job_id = job_id
        #: A rank's line prefix when labelling (None: ``[rank] ``): -prepend-pattern's.
        self.prefix: Callable[[int], bytes] | None = None
        #: (host, node number) of a job's rank, for %h/%N and %n/%p in file patterns.
        self.where: Callable[[int, int], tuple[str, int]] | None = None
        #: (stream, rank) -> fd of its file (-1: it could not be opened); path -> fd.
        self._to: dict[tuple[int, int, int], int] = {}
        self._opened: dict[str, int] = {}
        #: Called once per stream (STDOUT, STDERR) whose reader went away (its output is
        #: lost from then on).
        self.on_broken: Callable[[int], None] | None = None
        self._behind: WriteBehind | None = None
        #: The streams nobody reads any more.
        self.broken: set[int] = set()
        #: Every line starts with the time it is written (Open MPI's --timestamp-output).
        self.timestamp = False
        #: Output files are appended to, not truncated first (srun's --open-mode=append).
        self.append = False
        #: Only these ranks' output (of the launched job) is written (Hydra's -output-from);
        #: None: every rank's.
        self.only: tuple[tuple[int, int], ...] | None = None

    def write_behind(self, call_soon: Callable[[Callable[[], None]], object],
                     written: Callable[[int, int], None]) -> None:
        """From now on, write stdout and stderr from a thread (see the class)."""
        if self._behind is None:
            from pm.common.write_behind import WriteBehind

            self._behind = WriteBehind(call_soon, written, self._fd_gone)

    def write(self, rank: int, stream: int, chunk: bytes, tag: int = -1, job: int = 0
              ) -> None:
        """Lines of ``rank`` (of spawned job ``job``, labelled ``[job:rank]``, when not 0);
        ``tag`` comes back with the byte count once they are written."""
        size = len(chunk)
        if self.only is not None and not job and not any(lo <= rank <= hi
                                                         for lo, hi in self.only):
            if self._behind is not None:
                self._behind.written(tag, size)  # (its credit goes back all the same)
            return
        if self.label:
            who = rank if not job else -((job << 32) | rank) - 1
            prefix = self._prefixes.get(who)
            if prefix is None:
                prefix = self._prefixes[who] = (
                    b"[%d:%d] " % (job, rank) if job
                    else b"[%d] " % rank if self.prefix is None else self.prefix(rank))
            lines = chunk.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            chunk = b"".join(prefix + line + b"\n" for line in lines)
        if self.timestamp:
            stamp = time.strftime("[%a %b %e %H:%M:%S %Y] ").encode()
            chunk = b"".join(stamp + line for line in chunk.splitlines(keepends=True))
        behind = self._behind
        if stream in self._patterns:
            fd = self._file(rank, stream, job)
            if fd >= 0:
                try:
                    write_all(fd, chunk)  # a regular file: no reader to wait for
                except OSError as exc:  # (a full disk, a file of /proc...)
                    self._file_lost(fd, rank, stream, exc)
        elif stream in self.broken:
            pass  # nobody reads it any more: dropped
        elif behind is not None:
            behind.put(self._fds[stream], chunk, tag, size)
            return
        elif not write_out(self._fds[stream], chunk):
            self._fd_gone(self._fds[stream])
        if behind is not None:
            behind.written(tag, size)

    def _fd_gone(self, fd: int) -> None:
        # `pmrun ... | head`: the streams written to ``fd`` are lost (and their writers are
        # told, as in a shell pipeline).
        for stream, to in self._fds.items():
            if to == fd and stream not in self.broken and stream not in self._patterns:
                self.broken.add(stream)
                if self.on_broken is not None:
                    self.on_broken(stream)

    def _file(self, rank: int, stream: int, job: int = 0) -> int:
        fd = self._to.get((stream, job, rank))
        if fd is None:
            host, node = self.where(job, rank) if self.where is not None else ("", 0)
            path = expand_pattern(self._patterns[stream], rank, self._job_id, job, host=host,
                                  node=node)
            fd = self._opened.get(path)
            if fd is None:
                try:  # truncated once per job: ranks sharing a file append to it
                    fd = create(path, per_rank_folder(self._patterns[stream]), self.append)
                except OSError as exc:
                    fd = -1
                    _lost(rank, stream, f"cannot open {path}: {exc.strerror}")
                self._opened[path] = fd
            self._to[(stream, job, rank)] = fd
        return fd

    def _file_lost(self, fd: int, rank: int, stream: int, exc: OSError) -> None:
        """A file that took output cannot take more: said once, in the words of one that
        could not be opened; it is closed, and what its ranks write from now on is dropped."""
        paths = [path for path, opened in self._opened.items() if opened == fd]
        for path in paths:
            self._opened[path] = -1
        for key, to in self._to.items():
            if to == fd:
                self._to[key] = -1
        os.close(fd)
        _lost(rank, stream, f"cannot write {paths[0] if paths else fd}: {exc.strerror}")

    @property
    def err_fd(self) -> int:
        """Where the ranks' stderr goes when no file is named for it."""
        return self._fds[STDERR]

    def say(self, text: str) -> None:
        """pmrun's own message on stderr, after the output written so far (a rank's last
        lines come before the line that says how it ended)."""
        data = text.encode(errors="replace")
        behind = self._behind
        if behind is None or STDERR in self.broken or not behind.put(self._fds[STDERR], data,
                                                                       -1, 0):
            write_out(self._fds[STDERR], data)

    def drain(self) -> None:
        """Wait until what the thread holds is written (or its reader is gone).  Blocks:
        call it from a thread, or when nothing else has to run."""
        if self._behind is not None:
            self._behind.drain()

    def drained(self) -> bool:
        """Whether :meth:`drain` would return at once (nothing is waiting to be written)."""
        return self._behind is None or self._behind.drained()

    def abandon(self) -> None:
        """Drop what is not written yet (the job is being killed): :meth:`drain` returns."""
        if self._behind is not None:
            self._behind.abandon()

    def close(self) -> None:
        """Close the output files (idempotent); what the thread holds is dropped."""
        if self._behind is not None:
            self._behind.abandon()
        for fd in self._opened.values():
            if fd >= 0:
                os.close(fd)
        self._opened.clear()
        self._to.clear()


class SaidAfterOutput:
    """A stream for a logging handler: what it is given goes through ``writer``
    (:meth:`Writer.say`), in order with the output."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer

    def write(self, text: str) -> int:
        self.writer.say(text)
        return len(text)

    def flush(self) -> None:
        pass


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


def write_out(fd: int, data: bytes) -> bool:
    """:func:`write_all` to pmrun's stdout or stderr (``fd``): False once it takes no more,
    because nobody reads it or, said on stderr, because of an error (a full disk, a
    terminal gone: EIO); what goes to it from then on is lost, as with no reader."""
    try:
        return write_all(fd, data)
    except OSError as exc:
        name = {1: "stdout", 2: "stderr"}.get(fd, f"descriptor {fd}")
        try:  # noqa: SIM105 (stderr itself, perhaps: nothing can be said; no contextlib)
            write_all(2, f"pmrun: cannot write to {name}: {exc.strerror}: what goes there "
                         "from now on is lost\n".encode())
        except OSError:
            pass
        return False


def _lost(rank: int, stream: int, why: str) -> None:
    """Say that a rank's output (``stream``) is lost, and ``why``, on pmrun's stderr."""
    what = "output" if stream == STDOUT else "error output"
    write_out(2, f"pmrun: rank {rank}'s {what} is lost: {why}\n".encode())


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


def rank_map(node_of_rank: list[int], hosts: list[str]) -> str:
    """-print-rank-map: each node's ranks (``0-3,8``), one line per node, in node order."""
    from pm.agent.topology import format_cpuset  # (a kernel-style list of numbers)

    per_node: dict[int, list[int]] = {}
    for rank, node in enumerate(node_of_rank):
        per_node.setdefault(node, []).append(rank)
    return "".join(f"pmrun: rank map: node {node} ({hosts[node]}): {format_cpuset(ranks)}\n"
                   for node, ranks in sorted(per_node.items()))
