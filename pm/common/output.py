"""Output of ranks: line assembly on the agent, tagging and writing on the head; and which
stdin goes to rank 0."""

from __future__ import annotations

import os
import stat
import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's quick path)
if TYPE_CHECKING:
    from collections.abc import Callable

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
        self._behind: _WriteBehind | None = None
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
            self._behind = _WriteBehind(call_soon, written, self._fd_gone)

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
                    fd = _create(path, per_rank_folder(self._patterns[stream]), self.append)
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


class _WriteBehind:
    """The thread that writes a :class:`Writer`'s stdout and stderr chunks in order."""

    def __init__(self, call_soon: Callable[[Callable[[], None]], object],
                 written: Callable[[int, int], None], broken: Callable[[int], None]) -> None:
        import threading

        self._loop_call = call_soon
        self.written = written
        self._broken = broken
        self._cond = threading.Condition()
        self._items: list[tuple[int, bytes, int, int]] = []
        self._done: dict[int, int] = {}  # tag -> bytes written, not yet reported
        self._gone = False
        #: Descriptors whose reader went away: what is for them counts as written.
        self._dead: set[int] = set()
        self._idle = True
        self._thread = threading.Thread(target=self._run, name="pm-output", daemon=True)
        self._thread.start()

    def put(self, fd: int, chunk: bytes, tag: int, size: int) -> bool:
        """Queue ``chunk`` for ``fd``; False if it was dropped (the writer is abandoned)."""
        with self._cond:
            if self._gone:
                gone = True
            else:
                gone = False
                self._items.append((fd, chunk, tag, size))
                self._cond.notify()
        if gone:
            self.written(tag, size)
        return not gone

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._items:
                    self._idle = True
                    cond.notify_all()
                    if self._gone:
                        return  # closed (or nobody reads): the thread ends
                    cond.wait()
                self._idle = False
                items, self._items = self._items, []
            for fd, chunk, tag, size in items:
                if self._gone:
                    break  # abandoned
                if fd not in self._dead and not write_out(fd, chunk):
                    self._dead.add(fd)  # the other stream may still have a reader
                    self._broken_soon(fd)
                with cond:
                    report = not self._done
                    self._done[tag] = self._done.get(tag, 0) + size
                if report:
                    self._call_soon(self._report)

    def _broken_soon(self, fd: int) -> None:
        self._call_soon(lambda: self._broken(fd))

    def _call_soon(self, fn: Callable[[], None]) -> None:
        try:  # noqa: SIM105 (contextlib is not imported on pmrun's quick path)
            self._loop_call(fn)
        except RuntimeError:
            pass  # the loop is closed: the job is over, nobody waits for credit

    def _report(self) -> None:
        with self._cond:
            done, self._done = self._done, {}
        for tag, size in done.items():
            self.written(tag, size)

    def drain(self) -> None:
        with self._cond:
            while (self._items or not self._idle) and not self._gone:
                self._cond.wait()

    def drained(self) -> bool:
        with self._cond:
            return self._gone or (not self._items and self._idle)

    def abandon(self) -> None:
        with self._cond:
            self._gone = True
            self._items = []
            self._cond.notify_all()


#: What a file pattern's ``%X`` stands for (expand_pattern), as said in a refusal.
PATTERN_CODES = "%r or %t the rank, %j the job id, %x its name, %h or %N the host, %n or " \
                "%p the node number, %u the user, %A and %a a Slurm job array's id and " \
                "index, %% a percent sign"


def pattern_problem(option: str, pattern: str) -> str | None:
    """What is wrong with an output file pattern (a %X it does not know, its folder is
    missing), or None.  A folder of each rank's, node's or job's (``out/%r/stdout``) is made
    when the file is."""
    i = pattern.find("%")
    while 0 <= i < len(pattern) - 1:
        if pattern[i + 1] not in _CODES:
            return f"{option} {pattern}: %{pattern[i + 1]} stands for nothing ({PATTERN_CODES})"
        i = pattern.find("%", i + 2)
    if "%x" in os.path.dirname(pattern).replace("%%", ""):
        return None  # (checked again with the job's name in it: pm.options)
    folder = os.path.dirname(expand_pattern(pattern, 0, "job"))
    if not folder or os.path.isdir(folder):
        return _file_problem(option, pattern)
    if not per_rank_folder(pattern):
        return f"{option} {pattern}: no such directory {folder}"
    part = folder_in_the_way(folder)
    return f"{option} {pattern}: {part} is not a folder" if part else None


def _file_problem(option: str, pattern: str) -> str | None:
    """What keeps the one file ``pattern`` names (the same for every rank, job and node) from
    taking the job's output, or None: a directory of that name, a file that cannot be
    written (a file of /proc, one read-only for us), a folder we may not create it in.  A
    name that differs between ranks is left to the job (a rank whose file cannot be opened
    is named then, and the others' output goes on)."""
    if "{{" in pattern or any(f"%{k}" in pattern.replace("%%", "") for k in "rtjxhNnp"):
        return None  # (Flux's {{tags}}: pmrun's codes by now, checked as such: pm.options)
    path = expand_pattern(pattern, 0, "job")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        folder = os.path.dirname(path) or "."
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{option} {pattern}: cannot create a file in {folder} (permission denied)"
        return None
    except OSError as exc:
        return f"{option} {pattern}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{option} {pattern}: is a directory"
    if not stat.S_ISREG(st.st_mode):
        return None  # a terminal, /dev/null, a named pipe (whose reader may come later)
    # Opened as the job opens it (not truncated yet) and written nothing: the kernel says
    # whether it would take bytes (a file of /proc: EIO; read-only: EACCES, EROFS).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            os.write(fd, b"")
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{option} {pattern}: cannot be written: {exc.strerror}"
    return None


def folder_in_the_way(folder: str) -> str | None:
    """The nearest part of ``folder`` that exists, when it is not a folder (the folders
    below it cannot be made); None when they can be."""
    part = folder
    while part and not os.path.exists(part):
        part = os.path.dirname(part)
    return part if part and not os.path.isdir(part) else None


def per_rank_folder(pattern: str) -> bool:
    """Whether the folder part of ``pattern`` names a rank, a node or the job (``%r``,
    ``%t``, ``%j``, ``%h``...): such folders cannot be there beforehand, and are made as
    needed."""
    folder = os.path.dirname(pattern).replace("%%", "")
    return any(f"%{k}" in folder for k in "rtjhNnp")


def with_job_name(pattern: str, name: str) -> str:
    """``pattern`` with srun's ``%x`` (the job's name) put in (``%%x`` stays as it is)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            pair = pattern[i:i + 2]
            out.append(name if pair == "%x" else pair)
            i += 2
            continue
        out.append(pattern[i])
        i += 1
    return "".join(out)


def _create(path: str, make_folder: bool, append: bool = False) -> int:
    """Open ``path`` for a job's output (created, truncated unless ``append``);
    ``make_folder``: with the folders it needs."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (0 if append else os.O_TRUNC)
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        if not make_folder:
            raise
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, flags, 0o666)


#: The codes of a file pattern (see expand_pattern).
_CODES = frozenset("rtjxhNnpuAa%")


def expand_pattern(pattern: str, rank: int, job_id: str, spawned: int = 0, *, host: str = "",
                   node: int = 0) -> str:
    """An output file name: ``%r`` (or Slurm's ``%t``) is the rank, ``%j`` the job id
    (inside a Slurm job Slurm's, as srun's; ``%A``/``%a`` its array's id and index),
    ``%h`` (Hydra's) or ``%N`` (Slurm's) the rank's host, ``%n`` (Slurm's) or ``%p``
    (Hydra's) its node's number, ``%u`` the user, ``%%`` a percent sign; without ``%r``,
    every rank writes to the one file (of its host, with ``%h``).

    A rank of spawned job ``J`` (``spawned``) has its own file, never rank R's of the
    launched job: ``%j`` is the job id followed by ``sJ``, and a pattern with a rank
    but no ``%j`` gets ``.sJ`` at the end (``out.%r`` -> ``out.3.s1``).
    """
    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm:  # inside a Slurm job, its id, as srun's %j (pmrun's own id is not the user's)
        job_id = slurm
    array = os.environ.get("SLURM_ARRAY_JOB_ID") or job_id
    index = os.environ.get("SLURM_ARRAY_TASK_ID") or "4294967294"  # (srun's, outside one)
    if spawned:
        job_id = f"{job_id}s{spawned}"
    out = []
    i = 0
    ranked = has_job = False
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            sub = ({"r": str(rank), "t": str(rank), "j": job_id, "%": "%", "h": host,
                    "N": host.split(".")[0], "n": str(node), "p": str(node), "A": array,
                    "a": index}.get(nxt)
                   if nxt != "u" else _user())
            if sub is not None:
                ranked = ranked or nxt in "rt"
                has_job = has_job or nxt in "jA"
                out.append(sub)
                i += 2
                continue
        out.append(c)
        i += 1
    if spawned and ranked and not has_job:
        out.append(f".s{spawned}")
    return "".join(out)


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


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
