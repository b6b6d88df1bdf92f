"""What ``pmrun`` prints of a task ensemble: the tasks' output, messages, a progress line.

Output comes as GNU parallel gives it: each task's whole once it ended,
stdout then stderr (``--group``, the default of ``pmrun CMD ::: ARGS``), or
line by line as it comes (``--lb``, the default of ``pmrun --tasks FILE``,
whose lines are prefixed ``[task N] ``); ``--tag`` prefixes each line with
the task's arguments and a tab, ``--tagstring STR`` with STR filled for the
task; ``-k`` keeps task order; ``--results DIR`` writes each task's output
to files of its own instead (``DIR/1/ARG1/2/ARG2/stdout``, ``stderr``, ``seq``,
as parallel names them).  What waits (a running task's output under
``--group``, a later task's under ``-k``) is held in memory up to
:data:`SPOOL_MEMORY` bytes a task, then in an unlinked temporary file, as
parallel spools to files.  On a terminal a progress line is redrawn in place
on stderr (cleared before anything else is written there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from pm.common.output import STDERR, STDOUT
from pm.common.output_writer import Writer
from pm.ensemble.core import Event

__all__ = ["SPOOL_MEMORY", "Console", "colors"]

#: What a task's held output may take in memory before it goes to a temporary file.
SPOOL_MEMORY = 1 << 20

_RECORD = struct.Struct("<BI")  # stream, length: one piece of held output in its file

#: What ends a colored line and what clears the rest of the line after the color starts
#: (GNU parallel's without a terminal to ask: ``tput sgr0``, ``tput el``).
RESET, EOL = b"\033[m", b"\033[K"
#: A failed task's color with ``--colorfailed``: white on red.
FAILED = b"\033[48;5;196;38;5;231m" + EOL


def colors() -> list[bytes]:
    """GNU parallel's colors for tasks, task N's at N modulo their number: black or white
    on a colored background, in its order (neighbors unlike each other) (pure)."""
    def spans(*ranges: tuple[int, int]) -> list[int]:
        return [n for a, b in ranges for n in range(a, b + 1)]

    pairs = ([(n, 0) for n in spans((6, 7), (9, 11), (13, 15), (40, 51), (75, 87), (113, 123),
                                    (147, 159), (171, 182), (185, 231), (249, 254))]
             + [(n, 231) for n in spans((1, 9), (12, 13), (16, 45), (52, 81), (88, 114),
                                        (124, 149), (160, 178), (180, 180), (182, 184),
                                        (196, 214), (232, 250))])
    order = sorted(range(len(pairs)), key=lambda k: (k % 23, -(k % 7)))
    return [b"\033[48;5;%03d;38;5;%03dm" % pairs[k] + EOL for k in order]


class _Spool:
    """A task's held output: (stream, bytes) pieces in order, in memory up to
    :data:`SPOOL_MEMORY` bytes, then in an unlinked temporary file."""

    __slots__ = ("_file", "_parts", "_size")

    def __init__(self) -> None:
        self._parts: list[tuple[int, bytes]] = []
        self._size = 0
        self._file: IO[bytes] | None = None

    def add(self, stream: int, data: bytes) -> None:
        self._size += len(data)
        if self._file is None and self._size > SPOOL_MEMORY:
            self._file = tempfile.TemporaryFile(prefix="pmrun-output-")  # noqa: SIM115
            for s, d in self._parts:
                self._file.write(_RECORD.pack(s, len(d)) + d)
            self._parts = []
        if self._file is not None:
            self._file.write(_RECORD.pack(stream, len(data)) + data)
        else:
            self._parts.append((stream, data))

    def pieces(self) -> Iterator[tuple[int, bytes]]:
        """The pieces in order (read back from the file once spooled), then closed."""
        f = self._file
        if f is None:
            yield from self._parts
            return
        try:
            f.seek(0)
            while head := f.read(_RECORD.size):
                stream, n = _RECORD.unpack(head)
                yield stream, f.read(n)
        finally:
            f.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Console:
    """The tasks' output, ``pmrun:`` messages and the progress line of one ensemble.

    ``group``: a task's output whole once it ended (else line by line).  ``tag``: a
    task's line prefix from its index (None: none).  ``results``: each task's stdout, stderr
    and sequence number files, by index (then nothing of it is printed).  ``command``: a
    task's command line, written first in its output as each run starts (GNU parallel's
    ``-v``).  ``files``: each run's stdout goes to a new file in this directory, whose name
    is printed as its output once the task ended (GNU parallel's ``--files``; its stderr
    is printed as without).  Written in order by
    the output thread (:class:`pm.common.output_writer.Writer`): a slow reader of our stdout
    never stops the loop that runs the tasks.  :meth:`aclose` waits until all is
    written."""

    def __init__(self, verbose: int, tty: bool, *, group: bool = False,
                 tag: Callable[[int], bytes | None] | None = None,
                 results: dict[int, tuple[str, str, str]] | None = None,
                 command: Callable[[int], bytes] | None = None,
                 files: str | None = None, color: bool = False,
                 color_failed: bool = False, collect: bool = False) -> None:
        self.verbose = verbose
        #: The number messages give the first task (:attr:`Ensemble.numbered_from`).
        self.numbered_from = 0
        #: A task's last line without its newline is written so, as GNU parallel writes it
        #: (``--lb``, ``--tag``); else it is given one, so that the next task's line, which
        #: a prefix starts (pmrun's ``--tasks FILE``), does not join it.
        self.as_written = False
        #: The verbosity that shows the nodes' memory figures (watermarks, admission
        #: blocked and again open): -v, or -vv where memory control was not asked for.
        self.memory_level = 1
        #: GNU parallel's --color (each task's lines in its color) and --colorfailed (a
        #: failed task's white on red): the colors, and the tasks that failed.
        self._colors = colors() if color else None
        self._color_failed = color_failed
        self._failed: set[int] = set()
        self._files = files
        #: --files: each task's file (of its last run), by index.
        self._file_of: dict[int, str] = {}
        #: GNU parallel's -v: each run's command line, on stdout before its output.
        self._command = command
        self._results = results
        #: --results NAME.csv: each task's output held (:meth:`collected`), not printed.
        self._collect = collect
        self._collected: dict[int, _Spool] = {}
        #: Tasks whose --results files could not be written: their output is printed.
        self._unstored: set[int] = set()
        self.tty = tty
        self._group = group
        self._tag = tag
        #: -k: the tasks in the order their output is written (in line mode the first
        #: one's as it comes, the others' held until those before them ended).
        self._order: deque[int] | None = None
        self._held: dict[int, _Spool] = {}
        #: What goes on stdout after a task's output, by index (:meth:`ended`).
        self._trailers: dict[int, bytes] = {}
        self._ended: set[int] = set()
        self._shown = False
        self._text = ""
        self._timer: asyncio.TimerHandle | None = None
        self._writer = Writer(False)
        self._writer.write_behind(asyncio.get_running_loop().call_soon_threadsafe,
                                  lambda _tag, _n: None)

    def _write(self, stream: int, data: bytes) -> None:
        self._writer.write(0, stream, data)

    def keep_order(self, indices: Iterable[int]) -> None:
        """Write tasks' output in this order (GNU parallel's ``-k``)."""
        self._order = deque(indices)

    def expect(self, index: int) -> None:
        """With ``-k``: task ``index`` comes after those already known (``--pipe``)."""
        if self._order is not None:
            self._order.append(index)

    def output(self, index: int, stream: int, data: bytes) -> None:
        """Lines task ``index`` wrote on ``stream``."""
        if self._collect and index not in self._unstored:  # (for its row in the table)
            spool = self._collected.get(index)
            if spool is None:
                spool = self._collected[index] = _Spool()
            try:
                spool.add(stream, data)
                return
            except OSError as exc:  # (spooled past SPOOL_MEMORY: --tmpdir is full...)
                self._unstored.add(index)
                self.message(f"task {index + self.numbered_from}'s output cannot be held "
                             f"({exc.strerror}): printed from here on")
        path = None  # (--results: its stdout and stderr files; --files: its stdout's)
        if index not in self._unstored and self._results is not None:
            path = self._results[index][0 if stream == STDOUT else 1]
        elif index not in self._unstored and stream == STDOUT:
            path = self._file_of.get(index)
        if path is not None:
            try:
                with open(path, "ab") as f:
                    f.write(data)
                return
            except OSError as exc:  # (its files went, the disk is full...): printed instead
                self._unstored.add(index)
                self.message(f"task {index + self.numbered_from}'s output cannot be stored "
                             f"({exc.filename}: {exc.strerror}): printed from here on")
        self._pass(index, stream, data)

    def _pass(self, index: int, stream: int, data: bytes) -> None:
        order = self._order
        if self._group or (order is not None and order and order[0] != index):
            held = self._held.get(index)
            if held is None:
                held = self._held[index] = _Spool()
            held.add(stream, data)
            return
        self._output(index, stream, data)

    def ended(self, index: int, failed: bool = False, trailer: bytes = b"") -> None:
        """Task ``index`` has ended for good (``failed``: not well): its output, or with
        ``-k`` what waited on it, goes.  ``trailer``: written on stdout right after its
        output, as it is (GNU parallel's ``--joblog -``: the task's line in the log)."""
        if failed:
            self._failed.add(index)
        if trailer:
            self._trailers[index] = trailer
        order = self._order
        if self._collect and index not in self._unstored:
            self._trail(index)
            return
        if self._results is not None:
            out, _, path = self._results[index]
            if os.path.exists(out):  # (it ran)
                with contextlib.suppress(OSError), open(path, "w") as f:
                    f.write(str(index + 1))  # (a failure is named at its output, if any)
            if index not in self._unstored:
                self._trail(index)
                return
        name = self._file_of.get(index)
        if name is not None and index not in self._unstored:
            self._pass(index, STDOUT, os.fsencode(name) + b"\n")
        if order is None:
            self._release(index)
            self._trail(index)
            return
        self._ended.add(index)
        while order and order[0] in self._ended:
            self._ended.discard(done := order.popleft())
            if self._group:
                self._release(done)
            self._trail(done)
            if not self._group and order:
                self._release(order[0])  # the next task's output streams from now on

    def collected(self, index: int) -> tuple[bytes, bytes]:
        """The stdout and stderr task ``index`` wrote (its last run), no longer held."""
        spool = self._collected.pop(index, None)
        parts: tuple[list[bytes], list[bytes]] = ([], [])
        for stream, data in spool.pieces() if spool is not None else ():
            parts[stream != STDOUT].append(data)
        return b"".join(parts[0]), b"".join(parts[1])

    def _trail(self, index: int) -> None:
        trailer = self._trailers.pop(index, None)
        if trailer is not None:
            self.write_out(trailer)

    def write_out(self, data: bytes) -> None:
        """``data`` on stdout as it is, after what was written there before."""
        self._clear()
        self._write(STDOUT, data)
        self._later()

    def _release(self, index: int) -> None:
        held = self._held.pop(index, None)
        if held is None:
            return
        if not self._group:
            for stream, data in held.pieces():
                self._output(index, stream, data)
            return
        err: list[bytes] = []
        for stream, data in held.pieces():  # stdout first, then stderr (as parallel)
            if stream == STDOUT:
                self._output(index, stream, data)
            else:
                err.append(data)
        if err:
            self._output(index, STDERR, b"".join(err))

    def _output(self, index: int, stream: int, data: bytes) -> None:
        prefix = None if self._tag is None else self._tag(index)
        if self._colors is not None or self._color_failed:
            data = self._colored(index, prefix or b"", data)
        elif prefix is not None:
            lines = data.split(b"\n")
            last = lines.pop()  # (b"": the data ended with its line)
            if last and not self.as_written:
                lines.append(last)
                last = b""
            data = b"".join(prefix + line + b"\n" for line in lines) + (
                prefix + last if last else b"")
        elif not self._group and not data.endswith(b"\n") and not self.as_written:
            data += b"\n"  # a line's piece, or its end without one: no other task's joins it
        self._clear()
        self._write(stream, data)
        self._later()

    def _colored(self, index: int, prefix: bytes, data: bytes) -> bytes:
        """Each line of ``data`` as GNU parallel colors it: the task's color and tag first,
        the color reset before each carriage return (and the line's end), and again after
        it; a last line without its end is given one."""
        if self._color_failed and index in self._failed:
            color, reset = FAILED, RESET
        elif self._colors is not None:
            color, reset = self._colors[(index + 1) % len(self._colors)], RESET
        else:
            color = reset = b""
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        start = color + prefix
        return b"".join(start + line.replace(b"\r", reset + b"\r" + start) + reset + b"\n"
                        for line in lines)

    def message(self, text: str) -> None:
        self._clear()
        self._write(STDERR, f"pmrun: {text}\n".encode(errors="surrogateescape"))
        self._later()

    def prepare(self, index: int) -> None:
        """A run of task ``index`` begins: its ``--results`` files start empty (OSError if
        they cannot be made: :attr:`Ensemble.prepare`)."""
        if self._results is not None:
            for name in self._results[index][:2]:
                os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
                open(name, "wb").close()

    def event(self, e: Event) -> None:
        if e.kind == "start" and self._files is not None and e.task is not None:
            self._new_file(e.task)
        if e.kind == "start" and self._collect and e.task is not None:
            spool = self._collected.pop(e.task, None)  # a retry: only the last run's output
            if spool is not None:
                spool.close()
        if e.kind == "start" and self._group and e.task is not None:
            held = self._held.pop(e.task, None)  # a retry: only the last run's output shows
            if held is not None:
                held.close()
        if e.kind == "start" and self._command is not None and e.task is not None:
            self.output(e.task, STDOUT, self._command(e.task) + b"\n")
        if e.kind in ("overrun", "killed", "suspended", "resumed", "lost", "timeout", "error"):
            level = 0
        elif e.kind in ("watermarks", "blocked", "unblocked"):
            level = self.memory_level
        elif e.kind in ("start", "exit") or (e.kind == "sample" and e.used + e.reserved > e.low):
            level = 2  # samples only while they matter: between the watermarks or above
        else:
            return
        if self.verbose >= level:
            self.message(e.text)

    def _new_file(self, index: int) -> None:
        """--files: a run of task ``index`` begins: its stdout's file, new and empty (a
        retried run's replaces the one before)."""
        assert self._files is not None
        old = self._file_of.pop(index, None)
        if old is not None:
            with contextlib.suppress(OSError):
                os.unlink(old)
        try:
            fd, name = tempfile.mkstemp(prefix="par", suffix=".par", dir=self._files)
        except OSError as exc:
            self._unstored.add(index)
            self.message(f"task {index + self.numbered_from}'s output cannot be stored "
                         f"({exc.filename}: {exc.strerror}): printed")
            return
        os.close(fd)
        self._unstored.discard(index)
        self._file_of[index] = name

    def progress(self, text: str) -> None:
        self._text = text
        self._later()

    def _later(self) -> None:
        if self.tty and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(0.1, self._draw)

    def _draw(self) -> None:
        self._timer = None
        if self._text:
            self._write(STDERR, f"\r{self._text}\x1b[K".encode(errors="surrogateescape"))
            self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self._write(STDERR, b"\r\x1b[K")
            self._shown = False

    async def aclose(self, last: str = "") -> None:
        """Clear the progress line, write what is still held (a task the end cut short),
        then ``last``, and wait until everything is written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._clear()
        for index in sorted(self._held):
            self._release(index)
            self._trail(index)
        for index in sorted(self._trailers):  # (-k: after a task that never ended)
            self._trail(index)
        for spool in self._collected.values():  # (a task that never ended: no row)
            spool.close()
        self._collected.clear()
        if last:
            self._write(STDERR, last.encode(errors="surrogateescape"))
        await asyncio.to_thread(self._writer.drain)
        self._writer.close()
