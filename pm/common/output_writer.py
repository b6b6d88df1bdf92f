"""Writing the ranks' output on the head: tagged, its lines kept whole, to pmrun's stdout and
stderr or to files; and what becomes of output that cannot be written.

The agents pass on what their ranks wrote as lines (:class:`pm.common.output.LineBuffer`);
:class:`Writer` writes them where they go, labelled, prefixed or time-stamped on demand,
so that no other rank's bytes join a line, in the caller's thread or (once the loop runs)
through a thread of its own (:mod:`pm.common.write_behind`).  :func:`write_out` is how
pmrun writes to its own stdout and stderr; output lost there (a reader gone, a full
disk, a descriptor closed when pmrun started: :func:`ensure_std_fds`) becomes pmrun's
exit status and words (:func:`loss_status`, :func:`loss_words`, :func:`loss_line`).
"""

from __future__ import annotations

import errno
import os
import time

from pm.common.outfiles import create, expand_pattern, per_rank_folder
from pm.common.output import STDERR, STDOUT

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's quick path)
if TYPE_CHECKING:
    from collections.abc import Callable

    from pm.common.write_behind import WriteBehind

#: While a rank's line longer than :data:`~pm.common.output.MAX_LINE` goes on, the other
#: ranks' lines for the same file or terminal wait (:class:`Writer`), up to this many bytes
#: of them and this many seconds: beyond, the long line is ended there (a newline in its
#: bytes) and they go.
HOLD_BYTES = 1 << 20
HOLD_TIME = 5.0


class _Line:
    """What :class:`Writer` knows of one output (a descriptor, or stdout and stderr when
    they are the same file): whose line is open there (its last bytes had no newline), and
    the other ranks' chunks waiting for that line's end."""

    __slots__ = ("by", "ended", "fd", "held", "since", "size")

    def __init__(self) -> None:
        #: (job, rank, stream) whose bytes the open line ends with (None: none is open).
        self.by: tuple[int, int, int] | None = None
        #: That stream has ended: its line will not go on (the next line ends it).
        self.ended = False
        self.fd = -1
        #: (job, rank, stream, chunk, fd) waiting, in the order they came; their bytes.
        self.held: list[tuple[int, int, int, bytes, int]] = []
        self.size = 0
        #: When the first of them came (time.monotonic()).
        self.since = 0.0


class Writer:
    """Writes ranks' lines to the launcher's stdout/stderr, tagged ``[rank]`` on demand, or to
    files named by a pattern per stream (``files``: see :func:`expand_pattern`).

    The bytes go as the ranks wrote them (:class:`~pm.common.output.LineBuffer` passes
    complete lines, a long line's pieces and a last line without newline): nothing is added
    where no other rank's bytes can join a line.  Where they can (an output several ranks
    write to, or a rank's stdout and stderr when they are the same file), a line left open
    is ended by a newline before another rank's bytes only once its stream has ended; while
    it goes on (a line longer than :data:`~pm.common.output.MAX_LINE`, in pieces), the other
    ranks' chunks wait for its end, up to :data:`HOLD_BYTES` and :data:`HOLD_TIME` (then it
    is ended there).  :attr:`raw` (srun's ``-u``): every chunk goes as it comes.

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
        #: Where each stream's lines meet (stderr's is stdout's when it is the same file).
        self._meet = {STDOUT: out_fd, STDERR: out_fd if _same_file(out_fd, err_fd) else err_fd}
        self._lines: dict[int, _Line] = {}
        self._releasing = False
        #: Starts a timer on the caller's loop (``call_later(seconds, fn)``): lines held
        #: behind a long one go after :data:`HOLD_TIME` even if nothing else is written.
        self.call_later: Callable[[float, Callable[[], None]], object] | None = None
        #: Output passed on as it comes, partial lines too (srun's ``-u``): nothing waits.
        self.raw = False
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
        #: The streams whose output could not all be written, in that order, and why (an
        #: errno: EPIPE when the reader went away).
        self.lost: dict[int, int] = {}
        #: The first rank's output file that could not be opened or written, as said then
        #: (what its ranks wrote from then on is lost: the job's status is 1); None if none.
        self.file_loss: str | None = None
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
        """Bytes of ``rank`` (of spawned job ``job``, labelled ``[job:rank]``, when not 0):
        complete lines, a long line's piece, or its stream's last line without newline;
        no bytes: that stream has ended.  ``tag`` comes back with the byte count once they
        are written."""
        size = len(chunk)
        behind = self._behind
        if self.only is not None and not job and not any(lo <= rank <= hi
                                                         for lo, hi in self.only):
            if behind is not None:
                behind.written(tag, size)  # (its credit goes back all the same)
            return
        if stream in self._patterns:
            fd = meet = self._file(rank, stream, job)
        else:
            fd = -1 if stream in self.broken else self._fds[stream]
            meet = self._meet[stream]
        if fd < 0 or not (size or self._lines):  # dropped (nobody reads it), or nothing
            if behind is not None:
                behind.written(tag, size)
            return
        line = self._lines.get(meet)
        if self.raw or ((line is None or line.by is None) and chunk[-1:] == b"\n"):
            # No line is open there (nor does any chunk wait: only behind an open line).
            self._put(fd, self._dress(rank, job, chunk, True), tag, size, rank, stream)
        else:
            self._line(meet, job, rank, stream, chunk, fd, tag)

    def _line(self, meet: int, job: int, rank: int, stream: int, chunk: bytes, fd: int,
              tag: int = -1) -> None:
        """``chunk`` (or its stream's end) where a line may be open (see the class)."""
        line = self._lines.get(meet)
        if line is None:
            line = self._lines[meet] = _Line()
        if not chunk:  # the stream's end: the line it left open goes on no more
            if any(h[0] == job and h[1] == rank for h in line.held):
                line.held.append((job, rank, stream, chunk, fd))  # (after its bytes)
            elif line.by == (job, rank, stream):
                line.ended = True
                if line.held:
                    self._release(meet, line)
            if self._behind is not None:
                self._behind.written(tag, 0)
            return
        by = line.by
        if by is not None and (by[0] != job or by[1] != rank):  # another rank's line
            if not line.ended:
                self._hold(meet, line, (job, rank, stream, chunk, fd), tag)
                return
            # Its rank wrote its last: the line ends here.
            self._put(line.fd, b"\n", -1, 0, by[1], by[2])
            line.by = by = None
        self._put(fd, self._dress(rank, job, chunk, by is None), tag, len(chunk), rank,
                  stream)
        if chunk[-1:] == b"\n":
            line.by = None
            if line.held:
                self._release(meet, line)
        else:
            line.by, line.ended, line.fd = (job, rank, stream), False, fd

    def _hold(self, meet: int, line: _Line, item: tuple[int, int, int, bytes, int],
              tag: int) -> None:
        """``item`` waits for the end of the line open at ``meet`` (its credit goes back:
        what waits is bounded here)."""
        now = time.monotonic()
        if not line.held:
            line.since = now
            if self.call_later is not None:
                self.call_later(HOLD_TIME, lambda: self._expire(meet))
        line.held.append(item)
        line.size += len(item[3])
        if self._behind is not None:
            self._behind.written(tag, len(item[3]))
        if line.size > HOLD_BYTES or now - line.since >= HOLD_TIME:
            self._cut(meet, line)

    def _expire(self, meet: int) -> None:
        line = self._lines.get(meet)
        if line is not None and line.held and time.monotonic() - line.since >= HOLD_TIME:
            self._cut(meet, line)

    def _cut(self, meet: int, line: _Line) -> None:
        """The open line is ended here (a newline), and what waited for it goes."""
        by = line.by
        if by is not None:
            self._put(line.fd, b"\n", -1, 0, by[1], by[2])
            line.by = None
        self._release(meet, line)

    def _release(self, meet: int, line: _Line) -> None:
        """The chunks that waited at ``meet`` go, in order, while no other rank's line is
        open there (one may open it again: the rest wait on; each rank's stay in order)."""
        if self._releasing:
            return  # (the outer call goes on)
        self._releasing = True
        try:
            while line.held:
                held, line.held, line.size = line.held, [], 0
                waiting: set[tuple[int, int]] = set()
                for item in held:
                    job, rank, stream, chunk, fd = item
                    by = line.by
                    if (job, rank) in waiting or (
                            chunk and by is not None and (by[0] != job or by[1] != rank)
                            and not line.ended):
                        waiting.add((job, rank))
                        line.held.append(item)
                        line.size += len(chunk)
                    else:
                        self._line(meet, job, rank, stream, chunk, fd)
                if len(line.held) == len(held):
                    break  # (all wait for the line now open)
        finally:
            self._releasing = False
        if line.held:  # (waiting anew: from now)
            line.since = time.monotonic()
            if self.call_later is not None:
                self.call_later(HOLD_TIME, lambda: self._expire(meet))

    def end_lines(self) -> None:
        """The job is over: what still waits for a line's end goes (that line ended by a
        newline)."""
        for meet, line in list(self._lines.items()):
            if line.held:
                self._cut(meet, line)

    def _dress(self, rank: int, job: int, chunk: bytes, start: bool) -> bytes:
        """``chunk`` with the label and the time at the start of each line (``start``: its
        first bytes start one; not when they go on with the rank's open line)."""
        if self.label:
            who = rank if not job else -((job << 32) | rank) - 1
            prefix = self._prefixes.get(who)
            if prefix is None:
                prefix = self._prefixes[who] = (
                    b"[%d:%d] " % (job, rank) if job
                    else b"[%d] " % rank if self.prefix is None else self.prefix(rank))
            lines = chunk.split(b"\n")
            last = lines.pop()
            chunk = b"".join([prefix + line + b"\n" for line in lines]
                             + ([prefix + last] if last else []))
            if not start:
                chunk = chunk[len(prefix):]
        if self.timestamp:
            stamp = time.strftime("[%a %b %e %H:%M:%S %Y] ").encode()
            pieces = chunk.splitlines(keepends=True)
            chunk = b"".join(stamp + line for line in pieces)
            if not start and pieces:
                chunk = chunk[len(stamp):]
        return chunk

    def _put(self, fd: int, data: bytes, tag: int, size: int, rank: int, stream: int
             ) -> None:
        """Write ``data`` (``size`` bytes of the ranks') to ``fd``, ``stream``'s."""
        behind = self._behind
        if stream in self._patterns:
            if fd >= 0:
                try:
                    write_all(fd, data)  # a regular file: no reader to wait for
                except OSError as exc:  # (a full disk, a file of /proc...)
                    self._file_lost(fd, rank, stream, exc)
        elif stream in self.broken:
            pass  # nobody reads it any more: dropped
        elif behind is not None:
            behind.put(fd, data, tag, size)
            return
        else:
            err = write_out(fd, data)
            if err:
                self._fd_gone(fd, err)
        if behind is not None:
            behind.written(tag, size)

    def _fd_gone(self, fd: int, err: int) -> None:
        # `pmrun ... | head`: the streams written to ``fd`` are lost (and their writers are
        # told, as in a shell pipeline).
        for stream, to in self._fds.items():
            if to == fd and stream not in self.broken and stream not in self._patterns:
                self.broken.add(stream)
                self.lost.setdefault(stream, err)
                if self.on_broken is not None:
                    self.on_broken(stream)

    def loss(self) -> tuple[int, int] | None:
        """The first of our stdout and stderr whose ranks' output could not all be written,
        and why (an errno; EPIPE: its reader went away), once what was written is out (the
        thread's failures count before the loop hears of them); None if none."""
        if self.lost:
            return next(iter(self.lost.items()))
        if self._behind is not None:
            for fd, err in self._behind.failed().items():
                for stream, to in self._fds.items():
                    if to == fd and stream not in self._patterns:
                        return stream, err
        return None

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
                    self._file_loss(rank, stream, f"cannot open {path}: {exc.strerror}")
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
        self._lines.pop(fd, None)  # (its number may be another file's next)
        self._file_loss(rank, stream,
                        f"cannot write {paths[0] if paths else fd}: {exc.strerror}")

    def _file_loss(self, rank: int, stream: int, why: str) -> None:
        line = _lost(rank, stream, why)
        if self.file_loss is None:
            self.file_loss = line

    @property
    def err_fd(self) -> int:
        """Where the ranks' stderr goes when no file is named for it."""
        return self._fds[STDERR]

    def say(self, text: str) -> None:
        """pmrun's own message on stderr, after the output written so far (a rank's last
        lines come before the line that says how it ended), on a line of its own."""
        if self._fds[STDERR] in _CLOSED:
            return  # (closed when pmrun started: nothing can be said, and nothing is lost)
        line = self._lines.get(self._meet[STDERR])
        while line is not None and line.by is not None:  # (a rank's line without newline)
            self._cut(self._meet[STDERR], line)
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


def _same_file(a: int, b: int) -> bool:
    """Whether descriptors ``a`` and ``b`` are one file (``2>&1``, a terminal): the lines
    written to them meet."""
    try:
        one, two = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)


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


def write_out(fd: int, data: bytes) -> int:
    """:func:`write_all` to pmrun's stdout or stderr (``fd``): 0, or once it takes no more,
    why (an errno): EPIPE because nobody reads it, else an error said on stderr (a full
    disk, a terminal gone: EIO; EBADF: it was closed when pmrun started, see
    :func:`ensure_std_fds`); what goes to it from then on is lost, as with no reader."""
    try:
        if fd in _CLOSED:
            raise OSError(errno.EBADF, "it was closed when pmrun started")
        return 0 if write_all(fd, data) else errno.EPIPE
    except OSError as exc:
        name = {1: "stdout", 2: "stderr"}.get(fd, f"descriptor {fd}")
        if 2 not in _CLOSED:
            try:  # noqa: SIM105 (stderr itself, perhaps: nothing can be said; no contextlib)
                write_all(2, f"pmrun: cannot write to {name}: {exc.strerror}: what goes "
                             "there from now on is lost\n".encode())
            except OSError:
                pass
        return exc.errno or errno.EIO


#: pmrun's exit status when the ranks' output could not all be written and no rank failed
#: before: a reader gone (EPIPE) gives SIGPIPE's, as a shell pipeline does; another error
#: (a full disk, a descriptor closed when pmrun started) 1.
EXIT_OUTPUT_CLOSED = 141
EXIT_OUTPUT_FAILED = 1


def loss_status(err: int) -> int:
    """pmrun's exit status for output lost with errno ``err`` (:data:`EXIT_OUTPUT_CLOSED`)."""
    return EXIT_OUTPUT_CLOSED if err == errno.EPIPE else EXIT_OUTPUT_FAILED


def loss_words(stream: int, err: int) -> str:
    """What happened to pmrun's ``stream`` whose output was lost with errno ``err``, as the
    end of a sentence (``rank 1 ... exited with code 1 after ...``)."""
    what = f"pmrun's standard {'output' if stream == STDOUT else 'error'}"
    if err == errno.EPIPE:
        return f"{what} was closed"
    if err == errno.EBADF:
        return f"{what} was closed when pmrun started"
    return f"{what} could not be written ({os.strerror(err)})"


def loss_line(stream: int, err: int) -> str:
    """pmrun's line when output was lost with errno ``err`` and every rank ended well: ''
    where it was said as it happened (:func:`write_out`: every error but a reader gone)."""
    if err != errno.EPIPE:
        return ""
    return (f"standard {'output' if stream == STDOUT else 'error'} closed by its reader: "
            "what the ranks wrote there after that is lost")


def _lost(rank: int, stream: int, why: str) -> str:
    """Say that a rank's output (``stream``) is lost, and ``why``, on pmrun's stderr (that
    line is returned, without ``pmrun: ``)."""
    what = "output" if stream == STDOUT else "error output"
    line = f"rank {rank}'s {what} is lost: {why}"
    write_out(2, f"pmrun: {line}\n".encode())
    return line


def ensure_std_fds() -> None:
    """Give a closed stdin, stdout or stderr /dev/null, before any other descriptor is made:
    else the first pipe of a rank would take its number, and the job's output would go in.
    A closed stdout or stderr stays one for the ranks' output: :func:`write_out` loses it
    (EBADF), said once, as a shell's ``echo hi >&-`` fails."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: ``fd``
            if fd:
                _CLOSED.add(fd)


#: pmrun's stdout and stderr when they were closed as it started (:func:`ensure_std_fds`).
_CLOSED: set[int] = set()
