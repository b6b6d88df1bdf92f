"""Front ends of task ensembles: ``pmrun --tasks FILE`` and :func:`pm.run_tasks`.

What is printed is :mod:`pm.ensemble.console`'s; the machinery is :mod:`pm.ensemble`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import math
import os
import random
import re
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pm.agent.memory import SizeError, parallel_size, parse_size
from pm.ensemble.console import Console
from pm.ensemble.core import Ensemble
from pm.ensemble.domain import CPU_UNIT, planned_slots
from pm.ensemble.inputs import (
    Plus,
    by_name,
    chunked,
    combinations,
    fill,
    has_replacement,
    line_limit,
    shaping,
    shell_quote,
    split_columns,
    spread,
    with_rpl,
)
from pm.ensemble.joblog import HEADER, JobLog, failed_commands, log_target, read_joblog
from pm.ensemble.local import TASK_TMP
from pm.ensemble.perl_expr import PERL
from pm.ensemble.scheduler import (
    TaskSpec,
    parse_command,
    parse_tasks,
    quoted_line,
    with_arguments,
    with_quoted_words,
)
from pm.ensemble.stream import Arrivals, is_fifo, offered, read_some, streamable
from pm.ensemble.task import InputStream, Task, TaskResult
from pm.options import jobs_value, parse_jobs, separators, source_words
from pm.proto.errors import PMError, UsageError

if TYPE_CHECKING:
    from pm.cli import CliOptions
    from pm.common.nodes import Nodes
    from pm.jobspec import JobSpec

__all__ = ["run_cli", "run_ensemble"]

def _results_dir(top: str, spec: TaskSpec, names: Sequence[str]) -> str:
    """GNU parallel's ``--results DIR`` directory of a task: ``DIR/1/ARG1/2/ARG2`` (a
    source's name instead of its number with ``--header``; the line for a tasks file's
    line without sources), ``\\`` doubled and ``/`` written ``\\_`` in arguments (and a NUL
    byte, which no path can hold, ``\\000``)."""
    args = spec.args or (spec.line,)
    parts = [top]
    for k, arg in enumerate(args, 1):
        name = names[k - 1] if k <= len(names) else str(k)
        parts += [name, arg.replace("\\", "\\\\").replace("/", "\\_").replace("\0", "\\000")
                  or "\\0"]
    return os.path.join(*parts)


_T = TypeVar("_T")

#: GNU parallel's options that rename a replacement string (``-I STR``: STR is ``{}``).
RENAMES = (("replace", "{}"), ("seqreplace", "{#}"), ("slotreplace", "{%}"),
           ("extensionreplace", "{.}"), ("basenamereplace", "{/}"),
           ("dirnamereplace", "{//}"), ("basenameextensionreplace", "{/.}"))


def _renames(extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """The renamings the command line asks for: (STR, the string it stands for)."""
    return [(extra[key], std) for key, std in RENAMES if extra.get(key, std) != std]


def _kept(k: int) -> str:
    """What a command's own replacement string is while another stands for it."""
    return f"\x01{chr(2 + k)}"


def _marked(text: str, renames: list[tuple[str, str]]) -> str:
    """``text`` with each renaming's STR as the string it stands for, and those strings
    themselves kept aside (:func:`_unmarked` puts them back once the line is filled)."""
    for k, (_, std) in enumerate(renames):
        text = text.replace(std, _kept(k))
    for given, std in sorted(renames, key=lambda r: -len(r[0])):  # (,be before ,b)
        text = text.replace(given, std)
    return text


def _unmarked(text: str, renames: list[tuple[str, str]]) -> str:
    for k, (_, std) in enumerate(renames):
        text = text.replace(_kept(k), std)
    return text


#: Options that ask for memory control (their figures show with -v).
MEMORY_OPTIONS = frozenset({"mem_per_task", "mem_high", "mem_low", "memfree", "memsuspend",
                            "mem_overrun", "mem_settle"})


def _same(value: _T, _index: int) -> _T:
    return value


#: --pipe: blocks read ahead of the tasks that take them.
PIPE_AHEAD = 4


async def _pipe(ens: Ensemble, console: Console, line: TaskSpec, blocks: _Source,
                temp: str | None = None) -> None:
    """``--pipe``: each block of stdin the stdin of one run of ``line``, read only as fast
    as the tasks take them (:data:`PIPE_AHEAD` blocks ahead).  ``temp`` (``--cat``,
    ``--fifo``): the start of each run's ``$PARALLEL_TMP`` path (the task's number ends
    it)."""
    index = 0
    async for block in offered(ens, blocks, PIPE_AHEAD):
        spec = numbered(line, index)
        console.expect(index)
        env = None
        if temp is not None:
            env = {"PARALLEL_TMP": f"{temp}{index}", TASK_TMP: f"{temp}{index}"}
        ens.add(spec.argv, spec=spec, stdin=block, env=env)
        index += 1


#: --cat: the block into the file ``$PARALLEL_TMP`` (made by us alone: -C, 077), then the
#: command; the file goes however the shell ends (and if it is killed: the runner's end).
_CAT = """trap 'rm -f "$PARALLEL_TMP"' EXIT
(umask 077 && set -C && cat >"$PARALLEL_TMP") || exit
{line}
"""
#: --fifo: the command in the background reading the named pipe, cat writing the block
#: into it; once the command ended a cat still waiting for a reader is ended too.
_FIFO = """trap 'rm -f "$PARALLEL_TMP"' EXIT
mkfifo -m 600 "$PARALLEL_TMP" || exit
exec 3<&0
cat <&3 >"$PARALLEL_TMP" 3<&- & c=$!
exec 3<&-
({line}
) & p=$!
wait $p; s=$?
kill $c 2>/dev/null; wait $c 2>/dev/null
exit $s
"""


async def _produced(ens: Ensemble, producer: asyncio.Future[None]) -> None:
    """Wait for ``producer`` (--pipe's reader, stdin's arguments) to add its last task; its
    cancellation because the ensemble stops (an interrupt, --halt) is no error."""
    try:
        await producer
    except asyncio.CancelledError:
        if not ens.stopping:
            raise


async def _streamed(ens: Ensemble, arrivals: Arrivals, template: list[TaskSpec],
                    take: Callable[[list[TaskSpec]], None], ahead: int) -> None:
    """Arguments read as they come (:mod:`pm.ensemble.stream`): each batch's tasks, from
    ``template``, given to ``take``; read on only while fewer than ``ahead`` wait."""
    done = 0
    async for items in offered(ens, arrivals, ahead):
        take(with_arguments(template, [(item,) for item in items], first=done))
        done += len(items)


def _temp_input(spec: TaskSpec, fifo: bool) -> TaskSpec:
    """``--cat``/``--fifo``'s form of a --pipe line: ``{}`` (else an argument appended) is
    ``"$PARALLEL_TMP"``, the block's file or named pipe; the spec's ``line`` is that
    command, as ``-v`` shows it."""
    line = spec.argv[-1]
    shown = (line.replace("{}", '"$PARALLEL_TMP"') if "{}" in line
             else f'{line} "$PARALLEL_TMP"')
    script = (_FIFO if fifo else _CAT).format(line=shown)
    return dataclasses.replace(spec, argv=(*spec.argv[:-1], script), line=shown, words=())


def _reading_run(ens: Ensemble, spec: TaskSpec, console: Console | None = None
                 ) -> InputStream:
    """A run of ``spec`` that reads the stream returned, as it is given.  Such runs start
    together: they share the input, so none waits for another's size to be measured (a
    --mem-per-task bound still counts)."""
    stream = InputStream()
    if console is not None:
        console.expect(spec.index)
    ens.add(spec.argv, spec=dataclasses.replace(spec, mem=0 if spec.mem is None else spec.mem),
            stdin=stream)
    return stream


async def _all_taken(streams: list[InputStream]) -> None:
    """Until every run still reading took all it was given."""
    while True:
        busy = [s for s in streams if s.pending and not s.gone]
        if not busy:
            return
        waits = [asyncio.ensure_future(s.drained.wait()) for s in busy]
        try:
            await asyncio.wait(waits)
        finally:
            for w in waits:
                w.cancel()


async def _roundrobin(ens: Ensemble, console: Console, line: TaskSpec,
                      blocks: _Source) -> None:
    """``--roundrobin``: as many runs of ``line`` as there are task slots (at most one a
    block), each reading block after block of stdin as it takes them: the next block goes
    to the run with the least still to read, once one has taken all it was given.  Once
    every run left (closed its stdin), no more is read."""
    streams: list[InputStream] = []
    waits: list[asyncio.Task[bool]] = []
    try:
        while not ens.stopping:
            block = await blocks.next()
            if block is None or ens.stopping:
                return
            if len(streams) < max(1, ens.slot_count):
                stream = _reading_run(ens, numbered(line, len(streams)), console)
                streams.append(stream)
            else:
                while True:
                    live = [s for s in streams if not s.gone]
                    if not live:
                        return
                    if any(not s.pending for s in live):
                        break
                    waits = [asyncio.ensure_future(s.drained.wait()) for s in live]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for w in waits:
                        w.cancel()
                stream = min(live, key=lambda s: s.pending)
            stream.put(block)
    finally:
        for w in waits:
            w.cancel()
        for stream in streams:
            stream.end()


async def _tee(ens: Ensemble, specs: list[TaskSpec], blocks: _Source) -> None:
    """``--tee``: a run of each task, all at once, each reading every block of stdin.  The
    next block is read once every run took the last (the slowest reader sets the pace,
    and pmrun holds one block); a run that closed its stdin is given no more."""
    streams: list[InputStream] = []
    try:
        for spec in specs:
            streams.append(_reading_run(ens, spec))
        while not ens.stopping:
            await _all_taken(streams)
            live = [s for s in streams if not s.gone]
            if not live:
                return
            block = await blocks.next()
            if block is None or ens.stopping:
                return
            for stream in live:
                stream.put(block)
    finally:
        for stream in streams:
            stream.end()


#: GNU parallel's --plus strings that leave tasks out: the arguments as {} gives them, the
#: task skipped unless they rise (``{choose_k}``: each combination once, n choose k) or
#: differ (``{uniq}``), as parallel's own perl expressions say.
_PLUS_FILTERS = {
    "{choose_k}": "{= for my $t (2..$#arg) { skip() if $arg[$t-1] ge $arg[$t] } =}",
    "{uniq}": "{= my %seen; for my $a (@arg[1..$#arg]) { skip() if $seen{$a}++ } =}",
}


def _plus_filters(text: str) -> str:
    for name, expr in _PLUS_FILTERS.items():
        text = text.replace(name, expr)
    return text


async def _shard(ens: Ensemble, console: Console, line: TaskSpec, blocks: _Source,
                 extra: Mapping[str, str]) -> None:
    """``--shard COL`` / ``--bin COL``: a run of ``line`` per task slot, all at once, each
    given the lines whose column COL (split by ``--colsep``, a tab by default) says so: a
    hash of its value (every line of a value to one run), or the value as a whole number
    modulo the runs (``--bin``; not a number: 0).  The next block is read once every run
    took what it was given; a run that closed its stdin is given no more."""
    import zlib

    runs = ens.slot_count
    if runs < 1:
        raise UsageError(f"{'--shard' if 'shard' in extra else '--bin'} deals lines to a "
                         "number of runs: give -j N")
    column = extra.get("shard", extra.get("bin", "1"))
    by_hash = "shard" in extra
    split = _splitter(extra.get("colsep"))
    streams: list[InputStream] = []
    at = -1
    try:
        while not ens.stopping:
            block = await blocks.next()
            if block is None or ens.stopping:
                return
            if blocks.header:
                block = block[len(blocks.header):]
            if at < 0:
                at = _column_index(column, blocks.header, split, "--shard/--bin")
                for k in range(runs):
                    streams.append(_reading_run(ens, numbered(line, k), console))
            parts: list[list[bytes]] = [[] for _ in range(runs)]
            for record in block.splitlines(keepends=True):
                cols = split(record.rstrip(b"\r\n"))
                value = cols[at] if at < len(cols) else b""
                if by_hash:
                    k = zlib.crc32(value) % runs
                else:
                    try:
                        k = int(value) % runs
                    except ValueError:
                        k = 0
                parts[k].append(record)
            for stream, part in zip(streams, parts, strict=True):
                stream.put(b"".join(part))
            await _all_taken(streams)
            if all(s.gone for s in streams):
                return
    finally:
        for stream in streams:
            stream.end()


def _column_index(column: str, header: bytes, split: Callable[[bytes], list[bytes]],
                  opt: str) -> int:
    """Where ``column`` (a number from 1, or a name the ``--header`` line gives) is in a
    line cut by ``split``."""
    if column.isdecimal():
        return int(column) - 1
    names = split(header.rstrip(b"\r\n"))
    try:
        return names.index(os.fsencode(column))
    except ValueError:
        shown = b", ".join(names[:6]).decode(errors="replace")
        raise UsageError(f"{opt} {column}: no such column in the header ({shown})") from None


def _splitter(colsep: str | None) -> Callable[[bytes], list[bytes]]:
    """How a line is cut into columns: by --colsep's regular expression, else at tabs."""
    if colsep:
        return re.compile(os.fsencode(colsep)).split
    return lambda text: text.split(b"\t")


class _Source(Protocol):
    """Where --pipe's blocks come from (:class:`_Blocks`, :class:`_Groups`)."""

    header: bytes

    async def next(self) -> bytes | None: ...


class _Groups:
    """GNU parallel's ``--group-by COL``: stdin's lines (from ``lines``) in records of the
    consecutive lines whose column COL has one value, and blocks of whole records: ``per``
    of them (``-N``), or as many as fill ``size`` bytes (a record larger than that alone).
    Each block starts with the ``--header`` lines, as --pipe's."""

    def __init__(self, lines: _Blocks, column: str, split: Callable[[bytes], list[bytes]],
                 size: int, per: int) -> None:
        self._lines = lines
        self._column = column
        self._split = split
        self._size = size
        self._per = per
        self._at = -1
        self._key: bytes | None = None
        self._open: list[bytes] = []  # the record being read
        self._done: collections.deque[bytes] = collections.deque()  # whole records
        self._held = 0  # their bytes
        self._eof = False
        self.header = b""

    async def next(self) -> bytes | None:
        while True:
            block = self._take()
            if block is not None:
                return self.header + block
            if self._eof:
                return None
            data = await self._lines.next()
            if data is None:
                self._eof = True
                self._close_record()
                continue
            self.header = self._lines.header
            if self._at < 0:
                self._at = _column_index(self._column, self.header, self._split, "--group-by")
            for line in data[len(self.header):].splitlines(keepends=True):
                cols = self._split(line.rstrip(b"\r\n"))
                key = cols[self._at] if self._at < len(cols) else b""
                if key != self._key:
                    self._close_record()
                    self._key = key
                self._open.append(line)

    def _close_record(self) -> None:
        if self._open:
            record = b"".join(self._open)
            self._open = []
            self._done.append(record)
            self._held += len(record)

    def _take(self) -> bytes | None:
        """The next block, if its records are read (or the input ended)."""
        if not self._done:
            return None
        if self._per:
            if len(self._done) < self._per and not self._eof:
                return None
            count = min(self._per, len(self._done))
        else:
            if self._held < self._size and not self._eof:
                return None
            count, total = 0, 0
            for record in self._done:  # whole records up to the size (at least one)
                if count and total + len(record) > self._size:
                    break
                count, total = count + 1, total + len(record)
        out = [self._done.popleft() for _ in range(count)]
        self._held -= sum(map(len, out))
        return b"".join(out)


def numbered(line: TaskSpec, index: int) -> TaskSpec:
    """``--pipe``'s line for its run ``index``: ``{#}`` its number, ``{%}`` its slot, ``{}``
    nothing (GNU parallel's); :class:`UsageError` for a string that names a source."""
    text = line.argv[-1]
    if not has_replacement(text):
        return dataclasses.replace(line, index=index)
    run = fill(text, [""], index + 1)
    # (The line as written: the same, or --cat/--fifo's command the script runs.)
    shown = run if line.line == text else fill(line.line, [""], index + 1)
    return dataclasses.replace(line, index=index, argv=(*line.argv[:-1], run), line=shown)


def _pipe_line(line: TaskSpec, temp: bool) -> Callable[[int], bytes]:
    """-v's line of --pipe's run ``index`` (:func:`numbered`)."""

    def command(index: int) -> bytes:
        spec = numbered(line, index)
        return os.fsencode(spec.line if temp else spec.argv[-1])

    return command


def _unescape(separator: str) -> bytes:
    """A --recend/--recstart value with ``\\n``, ``\\t`` and ``\\r`` read as GNU parallel
    reads them."""
    return separator.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").encode()


class _Blocks:
    """Our stdin (or the open file ``fd``: ``--pipepart``) in blocks of whole records, as
    GNU parallel cuts them.  A record ends with ``end`` and the next starts with ``start``
    (``--recend``, ``--recstart``; regular expressions with ``regexp``): a block is cut
    only between the two.  ``--pipe``: what is held is filled up to the next multiple of
    ``size`` bytes, and the block ends at the last record boundary in it; without one (a
    record longer than that) the size grows by 30 % (``warn`` is told) and more is read;
    at the end of the input what is left is the last block.  A file's blocks (``part``)
    are cut as GNU parallel's ``--pipepart`` cuts them: at the first record boundary from
    ``size`` bytes on."""

    def __init__(self, size: int, end: bytes = b"\n", start: bytes = b"", fd: int = 0,
                 part: bool = False, regexp: bool = False, header: int = 0,
                 records: int = 0, lines: int = 0) -> None:
        self.size = size
        #: -N: a block is that many records (GNU parallel's --pipe -N), read as above.
        self._records = records
        #: -L: a record is that many lines (GNU parallel's --pipe -L); a block ends only
        #: after a whole number of them, and at the end of the input the lines short of
        #: a record make a block of their own.
        self._lines = lines if lines > 1 else 0
        self._queue: collections.deque[bytes] = collections.deque()
        #: Lines of the input before every block (``--header``): first read, then kept.
        self._header_lines = header
        self.header = b""
        self._part = part
        self._end = len(end)
        self._sep = end + start
        self._last: re.Pattern[bytes] | None = None
        if regexp:
            # (GNU parallel's: the greedy prefix finds the last END that START follows.)
            self._last = re.compile(b"\\A(?s:.)*(?:" + end + b")(?=(?:" + start + b"))", re.M)
        self._buf = bytearray()
        #: Of ``_buf``, the bytes GNU parallel would have read by now (it reads ahead less).
        self._held = 0
        self._eof = False
        self._fd = fd
        #: False for a regular file (it never blocks; the loop cannot poll it).
        self._polled = fd == 0
        #: Told when a record longer than the block size makes it grow.
        self.warn: Callable[[str], object] | None = None

    async def next(self) -> bytes | None:
        if not self._part:
            return await self._next_piped()
        while True:
            if len(self._buf) >= self.size:
                # (A separator may span the size: look from where it could begin.  Empty,
                # as --recend '' alone: every byte ends a record.)
                at = (max(0, self.size - len(self._sep)) if self._sep and not self._part
                      else self.size)
                found = self._buf.find(self._sep, at) if self._sep else at
                if found == 0 and not self._end:  # a record's start at 0 is no cut
                    found = self._buf.find(self._sep, 1)
                if found >= 0:
                    cut = found + self._end
                    block = bytes(self._buf[:cut])
                    del self._buf[:cut]
                    return block
            if self._eof:
                block, self._buf = bytes(self._buf), bytearray()
                return block or None
            await self._more()

    async def _next_piped(self) -> bytes | None:
        while self._header_lines:
            at = -1
            for _ in range(self._header_lines):
                at = self._buf.find(b"\n", at + 1)
                if at < 0:
                    break
            if at >= 0:
                self.header, self._header_lines = bytes(self._buf[:at + 1]), 0
                del self._buf[:at + 1]
                break
            if self._eof:  # fewer lines than the header: one block of them, as parallel's
                self._header_lines = 0
                break
            await self._more()
        block = await self._cut_piped()
        return None if block is None else self.header + block

    async def _cut_piped(self) -> bytes | None:
        while not self._queue:
            target = self._held + self.size - self._held % self.size
            while len(self._buf) < target and not self._eof:
                await self._more()
            ended = len(self._buf) < target  # (then the rest is the last block)
            pos = 0
            if self._records:  # -N: each run of N records in what is held
                held = len(self._buf) if ended else target
                while (cut := self._nth_boundary(pos, held)) > 0:
                    self._queue.append(bytes(self._buf[pos:cut]))
                    pos = cut
            elif not ended or self._lines:
                pos = self._last_boundary(len(self._buf) if ended else target)
                if pos:
                    self._queue.append(bytes(self._buf[:pos]))
            if ended:
                if len(self._buf) > pos:
                    self._queue.append(bytes(self._buf[pos:]))
                self._buf, self._held = bytearray(), 0
                if not self._queue:
                    return None
                break
            del self._buf[:pos]
            self._held = target - pos
            if not pos:
                old, self.size = self.size, min(math.ceil(self.size * 1.3 + 1), (1 << 31) - 1)
                if self.warn is not None:
                    self.warn(f"a record was longer than {old} bytes: --block grows to "
                              f"{self.size}")
        return self._queue.popleft()

    def _nth_boundary(self, pos: int, held: int) -> int:
        """Where the ``-N``-th record boundary after ``pos`` (not at it) ends, within the
        first ``held`` bytes (0: not there)."""
        at = pos
        for _ in range(self._records * (self._lines or 1)):
            at = self._buf.find(self._sep, at + 1, held)
            if at < 0:
                return 0
        return at + self._end

    def _last_boundary(self, held: int) -> int:
        """Where the last record boundary in the first ``held`` bytes is (0: none)."""
        if self._last is not None:
            m = self._last.match(self._buf, 0, held)
            return m.end() if m else 0
        if self._lines:  # after the last whole record of that many lines
            short = self._buf.count(self._sep, 0, held) % self._lines
            at = held
            for _ in range(short + 1):
                at = self._buf.rfind(self._sep, 0, at)
                if at < 0:
                    return 0
            return at + self._end
        found = self._buf.rfind(self._sep, 0, held) if self._sep else held
        return found + self._end if found >= 0 else 0

    async def _more(self) -> None:
        """Read what comes next onto the buffer (or learn that nothing will)."""
        data = await self._read()
        if data:
            self._buf += data
        else:
            self._eof = True

    async def _read(self) -> bytes:
        data, self._polled = await read_some(self._fd, self._polled)
        return data


def _block_size(text: str, fd: int, slots: int) -> int:
    """``--block``'s bytes; ``-N`` (``--pipepart``): the file ``fd`` in N blocks for each of
    the ``slots`` tasks that can run at once (GNU parallel's size: one byte more than the
    file's size over their number)."""
    if not text.startswith("-"):
        return parallel_size(text) or 1
    return 1 + os.fstat(fd).st_size // max(1, slots) // int(text[1:])


def _tags(extra: dict[str, str], specs: Sequence[TaskSpec], tasks_file: bool
          ) -> dict[int, bytes]:
    """Each task's output line prefix: ``--tagstring STR`` filled for it and a tab,
    ``--tag`` its arguments (its line, without sources) and a tab; else ``[task N] ``
    for ``--tasks FILE`` without GNU parallel's output options, and none."""
    if "tagstring" in extra:
        from pm.ensemble.perl_expr import Skipped

        text = extra["tagstring"]
        if "rpl" in extra:
            text = with_rpl(text, extra["rpl"].split("\0"))

        def tag(spec: TaskSpec) -> bytes:
            try:
                return os.fsencode(fill(text, spec.args, spec.index + 1, quote=False,
                                        total=len(specs))) + b"\t"
            except Skipped:  # ({= skip() =} in a tag: the task still runs, untagged)
                return b"\t"

        try:
            return {s.index: tag(s) for s in specs}
        except UsageError as exc:
            raise UsageError(f"--tagstring {text}: {exc}") from None
    if "tag" in extra:  # (a tasks file's line without sources: the line; --pipe's: none)
        return {s.index: os.fsencode(" ".join(s.args) if s.args or not tasks_file
                                     else s.line) + b"\t" for s in specs}
    if tasks_file and "output_mode" not in extra:
        return {s.index: b"[task %d] " % s.index for s in specs}
    return {}


def _terminal() -> bool:
    """``--tty``: True when pmrun has a terminal to give its tasks (UsageError if not)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise UsageError(f"--tty gives each task pmrun's terminal, and pmrun has none "
                         f"(/dev/tty: {exc.strerror})") from None
    return True


def _options(extra: dict[str, str]) -> dict[str, Any]:
    """Ensemble keyword arguments from the CLI's option values (UsageError if bad)."""
    out: dict[str, Any] = {"mem_high": extra.get("mem_high"), "mem_low": extra.get("mem_low")}
    try:
        if "memfree" in extra:
            if "mem_high" in extra:
                raise UsageError("--memfree sets the high watermark: give it or --mem-high")
            out["mem_free"] = parallel_size(extra["memfree"])
        if "memsuspend" in extra:
            if "mem_high" in extra:
                raise UsageError("--memsuspend sets the high watermark: give it or --mem-high")
            out["mem_suspend"] = parallel_size(extra["memsuspend"])
        if "mem_per_task" in extra:
            out["mem_per_task"] = parse_size(extra["mem_per_task"])
        # GNU parallel's --retries N: N runs in all (0 and 1: one); the ensemble's: reruns.
        out["retries"] = max(0, int(extra.get("retries", "0")) - 1)
        if "mem_settle" in extra:
            value = extra["mem_settle"]
            out["settle"] = None if value in ("off", "0") else float(value)
    except (SizeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if out["retries"] < 0:
        raise UsageError("--retries must be at least 0")
    most = extra.get("max_chars")  # (-s N: read here, as -m/-X read it)
    if most is not None and not (most.isdecimal() and int(most) >= 1):
        raise UsageError(f"-s (--max-chars) takes the most bytes of a command line, a whole "
                         f"number of at least 1, not {most!r}")
    jobs = extra.get("jobs")
    if "tty" in extra:
        out["tty"] = _terminal()
    if jobs is None:  # GNU parallel's default: one task per CPU thread (--tty: one)
        out["jobs"] = 1 if "tty" in extra else "cores"
    else:  # (checked by pm.options.task_slots: a count, a CPU rule or a file)
        out["jobs"] = jobs_value(jobs)
        if parse_jobs(jobs) is None:  # GNU parallel's -j FILE: what it says now, read again later
            out["jobs_file"] = jobs
    overrun = extra.get("mem_overrun", "warn")
    if overrun not in ("warn", "kill", "suspend"):
        raise UsageError(f"--mem-overrun takes warn, kill or suspend, not {overrun!r}")
    out["overrun"] = overrun
    if "delay" in extra:
        out["delay"] = float(extra["delay"])  # checked by pm.options.duration
    if "slot_var" in extra:
        out["slot_var"] = extra["slot_var"]
    if "load" in extra:
        out["load"] = extra["load"]  # (checked by pm.options.load_rule)
    if "limit" in extra:
        out["limit"] = extra["limit"]  # (checked by pm.options.limit_command)
    out["noswap"] = "noswap" in extra
    out["cleanup"] = "cleanup" in extra or "trc" in extra
    if "termseq" in extra:
        out["termseq"] = extra["termseq"]  # (checked by pm.options.term_sequence)
    if "timeout_pct" in extra:  # (checked by pm.options.run_timeout)
        out["timeout_median"] = float(extra["timeout_pct"].removesuffix("%")) / 100
    if "basefiles" in extra:
        out["basefiles"] = extra["basefiles"].split("\0")
    return out


def _files(extra: dict[str, str], specs: Sequence[TaskSpec]
           ) -> dict[int, tuple[list[str], list[str]]]:
    """GNU parallel's --transferfile, --return and --trc: each task's files, its arguments
    filled in (a name left empty is no file)."""
    def given(key: str) -> list[str]:
        return extra[key].split("\0") if key in extra else []

    transfer, returns = given("transfer"), given("returns") + given("trc")
    if "trc" in extra:
        transfer.append("{}")
    if not transfer and not returns:
        return {}
    from pm.ensemble.perl_expr import Skipped

    def names(templates: list[str], spec: TaskSpec) -> list[str]:
        try:
            filled = [fill(t, spec.args, spec.index + 1, quote=False, total=len(specs))
                      for t in templates]
        except Skipped:
            return []
        except UsageError as exc:
            raise UsageError(f"--transferfile/--return: {exc}") from None
        return [f for f in filled if f]

    return {s.index: (names(transfer, s), names(returns, s)) for s in specs}


class _Halt:
    """GNU parallel's ``--halt WHEN,WHY=N`` (as :func:`pm.options.halt_policy` gives it):
    :meth:`count` says why the ensemble stops, once; :meth:`status` is pmrun's exit status
    then, as parallel's."""

    def __init__(self, policy: str, total: int) -> None:
        self.policy = policy
        when, _, rule = policy.partition(",")
        self.now = when == "now"
        self.why, _, count = rule.partition("=")
        self.total = total
        self.percent = count.endswith("%")
        if self.percent:
            self.limit = max(1, -(-int(count[:-1]) * total // 100))
        else:
            self.limit = int(count) if count else 0
        self.seen = 0
        self.reached = False
        #: Tasks that ran and failed until the halt (the halt's own kills are not counted).
        self.failed = 0
        #: The exit status of the task whose end reached the halt.
        self.code = 0

    def count(self, result: TaskResult) -> str | None:
        if self.reached:
            return None  # (the halt's own kills and tasks not run)
        if not result.ok:
            self.failed += 1  # (one that could not run too: its hosts were lost)
        if not self.limit or result.started is None:
            return None  # never, or a task that never ran
        if self.why == "done" or (self.why == "fail") != result.ok:
            self.seen += 1
            if self.seen == self.limit:
                self.reached = True
                self.code = 1 if result.returncode is None else result.returncode
                what = {"fail": "failed", "success": "succeeded", "done": "ended"}[self.why]
                return (f"--halt {self.policy}: {self.seen} task{'s' * (self.seen != 1)} "
                        f"{what}: " + ("killing the running tasks" if self.now
                                       else "starting no more"))
        return None

    def status(self) -> int:
        """GNU parallel's exit status: the number of failed tasks (101: more than 100);
        after ``--halt``: 0 for ``success``, the status of the task that halted it for
        ``fail=1``/``done=1``, the percentage of the tasks that failed for ``fail=N%``."""
        if self.reached and self.why == "success":
            return 0
        if self.reached and self.limit == 1 and not self.percent:
            return self.code
        if self.reached and self.percent:
            return round(100 * self.failed / max(self.total, 1))
        return min(self.failed, 101)


def _program_options(spec: JobSpec) -> None:
    """``pmrun -wdir DIR -env A 1 -envnone CMD ::: ...``: the options given to the command
    (Hydra's per-program ones) hold for every task."""
    if not spec.apps:
        return
    app = spec.apps[0]
    spec.wdir = app.wdir or spec.wdir
    spec.genv = {**spec.genv, **app.env}
    if app.env_mode is not None:
        spec.env_mode, spec.genvlist = app.env_mode, list(app.envlist)


def sources_of(opts: CliOptions) -> list[str]:
    """The input sources' words (``::: A B``, ``:::: FILE``...; empty without them); a
    program beside ``--tasks FILE`` is refused, since the file's lines run and it would
    silently be left out."""
    apps = opts.spec.apps
    if not apps:
        return []
    if opts.n_given:
        raise UsageError("-n is the number of an MPI job's ranks: here each line and "
                         "combination of arguments is one task (-j N: N at once)")
    argv = apps[0].argv
    if len(apps) > 1 or argv[0] not in source_words(opts.extra):
        raise UsageError(f"--tasks runs the lines of {opts.extra['tasks']}, not {argv[0]!r}: "
                         "put the command in the file (arguments for its {} go after "
                         f"{separators(opts.extra)[0]})")
    return argv


def task_shell(environ: Mapping[str, str]) -> str:
    """The shell that runs the tasks of GNU parallel's command line, as parallel chooses
    it: ``$PARALLEL_SHELL``, else ``$SHELL`` (the user's: bash's arrays and ``[[`` work as
    they do at the prompt), else ``/bin/sh``.  :class:`UsageError` for one that is no
    program here."""
    for name in ("PARALLEL_SHELL", "SHELL"):
        value = environ.get(name)
        if value:
            break
    else:
        return "/bin/sh"
    found = shutil.which(value, path=environ.get("PATH", os.defpath))
    if found is None or os.path.isdir(found):
        raise UsageError(f"${name} is {value}, which is no program that can run the tasks "
                         f"(set {name} to a shell, e.g. {name}=/bin/bash)")
    return value


def _read_text(path: str) -> str:
    """A tasks file's or an input source's text; bytes that are not UTF-8 (a file name in
    another encoding) come back unchanged in the tasks' command lines (``os.fsdecode``'s
    way)."""
    if path == "-":
        return sys.stdin.buffer.read().decode(errors="surrogateescape")
    # (newline="": a line's bytes as they are, a CRLF line's "\r" too, as parallel reads)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


async def run_cli(opts: CliOptions) -> int:
    """``pmrun --tasks FILE`` (or GNU parallel's command line): run the tasks, print a
    summary; the exit status is 0 if every task succeeded, 1 if one failed for good (on
    parallel's command lines parallel's: :meth:`_Halt.status`), 128 + N after signal N."""
    from pm.cli import nodes_of
    from pm.common.nodes import Nodes

    extra = opts.extra
    if "no_keep_order" in extra:  # (GNU parallel's --nok: -k given before, say in an alias)
        extra.pop("keep_order", None)
    if "ctag" in extra:  # (--ctag is --tag in color, --ctagstring --tagstring)
        extra.setdefault("tag", "1")
    if "ctagstring" in extra:
        extra.setdefault("tagstring", extra["ctagstring"])
    path = extra.get("tasks")
    CPU_UNIT[0] = extra.get("cpu_unit", "thread")  # (-j's CPU rules, here and on hosts)
    options = _options(extra)
    sources = sources_of(opts)
    # Arguments on stdin: tasks start as they come (GNU parallel's), unless an option needs
    # them all first; then the command line is the tasks' template (``stream``).
    stream = streamable(extra, sources, separators(extra)[1])
    task_sources = [] if stream else sources

    def check_stdin(name: str) -> None:
        if name == "-" and path == "-":
            raise UsageError("--tasks - and :::: - both read standard input: give one a file")
        given = extra.get("stdin_source")
        if name == "-" and given and sys.stdin.isatty():
            raise UsageError(f"{given} is for task ensembles: give their arguments (pmrun "
                             f"{given} ... CMD ::: ARGS, or on stdin: ... | pmrun {given} ... "
                             "CMD), or --tasks FILE; stdin is a terminal")

    def read_source(name: str) -> str:
        check_stdin(name)
        return _read_text(name)

    if stream:
        check_stdin("-")
    names: list[str] | None = [] if "header" in extra else None
    renames = _renames(extra)
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    # (--tasks FILE: each line in sh -c, as README says; --dry-run runs nothing.)
    shell = ("sh" if path is not None or {"dry_run", "shell_quote"} & extra.keys()
             else task_shell(os.environ))

    def tasks() -> list[TaskSpec]:
        made = _tasks()
        if stream:  # (filled and finished as arguments come; a {2} beyond the source: now)
            with_arguments(made, [("",)])
            return made
        return finish(made)

    def finish(made: list[TaskSpec]) -> list[TaskSpec]:
        if renames:
            # -I STR: STR was {} meanwhile, and {} itself kept aside (GNU parallel's, xargs').
            def back(text: str) -> str:
                return _unmarked(text, renames)

            made = [dataclasses.replace(s, argv=tuple(map(back, s.argv)), line=back(s.line),
                                        words=tuple(map(back, s.words))) for s in made]
        if shell != "sh":  # parallel's command line: its shell runs each task's line
            made = [dataclasses.replace(s, argv=(shell, *s.argv[1:]))
                    if s.argv[:2] == ("sh", "-c") else s for s in made]
        if "nice" in extra:  # --nice N: the whole line (sh and all it runs) at niceness N;
            # (the shell line stays the last word: what -v, --dry-run and --joblog show)
            made = [dataclasses.replace(s, argv=("nice", "-n", extra["nice"], *s.argv),
                                        words=s.words or s.argv) for s in made]
        return made

    def _tasks() -> list[TaskSpec]:
        nonlocal names
        if "retry_failed" in extra:  # the log's failed commands, each its number there
            return [TaskSpec(seq - 1, ("sh", "-c", line), options.get("mem_per_task"), line,
                             lineno) for seq, lineno, line in failed_commands(
                                 log_target(extra["joblog"])[0])]
        # -q: the command's words as given (GNU parallel's), not a line the shell splits.
        words = extra["tasks_words"].split("\0") if "tasks_words" in extra else None
        rpl = extra["rpl"].split("\0") if "rpl" in extra else []
        if rpl and words is not None:  # (the user's own strings, before the built-in ones)
            words = [with_rpl(w, rpl) for w in words]
        if renames and words is not None:
            words = [_marked(w, renames) for w in words]
        if "plus" in extra and words is not None:
            words = [_plus_filters(w) for w in words]
        if words is not None and not task_sources:  # (--pipe)
            line = quoted_line(words)
            return [TaskSpec(0, ("sh", "-c", line), options.get("mem_per_task"), line, 1,
                             tuple(words))]
        text = extra["tasks_line"] if path is None else _read_text(path)
        if rpl:
            text = with_rpl(text, rpl)
        if renames and path is None:
            text = _marked(text, renames)
        if "plus" in extra:
            text = _plus_filters(text)
        specs: list[TaskSpec] = []
        if words is None:  # (the command line is one command: parallel's, several lines)
            specs = (parse_tasks(text, options.get("mem_per_task")) if path is not None
                     else [parse_command(text, options.get("mem_per_task"))])
        if not task_sources:
            if "max_args" in extra and "pipe" not in extra:
                raise UsageError(f"-N {extra['max_args']} takes the arguments of an input "
                                 "source (::: ARGS, :::: FILE, -a FILE): there is none")
            return specs
        columns = "colsep" in extra or "csv" in extra
        # (--trim with --colsep: each column once split, as GNU parallel's; not the line)
        trim = extra.get("trim", "n")
        shape = shaping(extra.get("eof"), "n" if columns else trim, "no_empty" in extra,
                        "join_blank" in extra)
        combos = combinations(task_sources, read_source, extra.get("delimiter"), names,
                              shape=shape, link="link" in extra,
                              separators=separators(extra),
                              skip_first="skip_first_line" in extra)
        width = 0
        if "max_args" in extra:
            width = int(extra["max_args"])
            combos = chunked(combos, width)
        many = extra.get("many_args")
        limit = 0  # -m, -X: the most bytes of a task's line (-s N's, else exec's)
        if many is not None:  # -m, -X: spread over the job slots; --xargs: all that fit
            slots = 0 if many == "--xargs" else planned_slots(nodes, opts.spec.ppn,
                                                              options["jobs"])
            most = int(extra["max_chars"]) if "max_chars" in extra else None
            limit = line_limit(opts.spec.base_env(), most)
            combos = spread(combos, slots, many,
                            budget=max(1, limit - len(os.fsencode(by_name(text, names or ())))))
        if columns:
            colsep, rows = extra.get("colsep", ","), "csv" in extra
            combos = split_columns(combos, colsep, rows)
            # A row's columns vary: {N} beyond a row's is empty there, as GNU parallel's.
            width = sys.maxsize
            if names:
                names = list(split_columns([tuple(names)], colsep, rows)[0])
            strip = shaping(trim=trim)
            if strip is not None:
                combos = [tuple(strip(list(c))) for c in combos]  # (--header's names: not)
        plus = None
        if "plus" in extra:  # (its {##}, {0#}, {0%} count the tasks and the job slots)
            plus = Plus(len(combos) * max(len(specs), 1),
                        planned_slots(nodes, opts.spec.ppn, options["jobs"]))
        if words is not None:
            return with_quoted_words(words, combos, names or (), width,
                                     options.get("mem_per_task"), plus=plus)
        return with_arguments(specs, combos, names or (), width, context=many == "-X",
                              plus=plus, limit=limit)

    try:
        specs = await asyncio.to_thread(tasks)
    except OSError as exc:
        raise UsageError(f"--tasks {path}: {exc.strerror}") from None
    except PMError as exc:  # naming the line of the file, or the command's words
        PERL.close()
        raise UsageError(f"{path}: {exc}" if path is not None
                         else f"{extra['tasks_line']}: {str(exc).removeprefix('line 1: ')}"
                         ) from None
    template: list[TaskSpec] = []
    if stream:
        template, specs = specs, []
        if len(template) != 1:  # (a comment, say: as the whole input's reading makes it)
            stream, task_sources = False, sources
            specs = await asyncio.to_thread(tasks)
    joblog, log_append = log_target(extra["joblog"]) if "joblog" in extra else (None, False)
    seen: dict[int, bool] = {}
    again = "resume_failed" in extra

    def unseen(spec: TaskSpec) -> bool:  # --resume: not in the log (or failed there, again)
        return spec.index + 1 not in seen or (again and not seen[spec.index + 1])

    if joblog is not None and ("resume" in extra or again):
        seen = await asyncio.to_thread(read_joblog, joblog)
        specs = [s for s in specs if unseen(s)]
    if "shuf" in extra:  # the order they start in; each keeps its number ({#}, the log's)
        random.shuffle(specs)
    temp = None
    if "cat" in extra or "fifo" in extra:  # (--pipe's one line)
        specs = [_temp_input(specs[0], "fifo" in extra)]
        temp = os.path.join(extra.get("tmpdir") or tempfile.gettempdir(),
                            f"pmrun.{secrets.token_hex(6)}.")

    def shown(spec: TaskSpec) -> str:  # the line -v and the log show
        return spec.line if temp is not None else spec.argv[-1]

    #: --pipe's one line, run once a block (--tee: a run per argument, each given all)
    piped = "pipe" in extra and "tee" not in extra
    if piped:  # (a replacement string that names a source: said now)
        numbered(specs[0], 0)
    if "tee" in extra:  # every run at once: each reads the input the others read
        slots = planned_slots(nodes, opts.spec.ppn, options["jobs"])
        if "jobs" not in extra:
            options["jobs"] = len(specs)
        elif 0 < slots < len(specs):
            raise UsageError(f"--tee runs all {len(specs)} commands at once: -j "
                             f"{extra['jobs']} gives {slots} task slots (try -j 0)")

    if "dry_run" in extra or "shell_quote" in extra:  # (--shell-quote: each line quoted)
        PERL.close()
        show = shell_quote if "shell_quote" in extra else str
        if "quote_args" in extra:  # (--shell-quote without a command: the arguments)
            sys.stdout.write("".join(f"{shell_quote(' '.join(s.args))}\n" for s in specs))
            return 0
        sys.stdout.write("".join(f"{show(s.argv[-1])}\n" for s in specs))
        return 0
    log = None if joblog is None else JobLog(
        joblog, append=log_append or bool({"resume", "resume_failed", "retry_failed"}
                                          & extra.keys()), header=not log_append)
    halt = _Halt(extra.get("halt", "never"), len(specs))
    mode = extra.get("output_mode") or ("line" if path is not None else "group")
    where = None
    if "results" in extra:
        where = {s.index: _results_dir(extra["results"], s, names or ()) for s in specs}
    _program_options(opts.spec)
    tags = _tags(extra, specs, tasks_file=path is not None)
    files = _files(extra, specs)
    PERL.close()  # (every {= expression =} is filled in by now)
    tag: Callable[[int], bytes | None] = tags.get
    if piped:  # one line, run once a block: every run's tag is the first's
        tag = functools.partial(_same, tags.get(0))
    command = None
    lines: dict[int, bytes] | None = None
    if opts.verbose and path is None:  # GNU parallel's -v: each run's command line first
        lines = {s.index: os.fsencode(shown(s)) for s in specs}
        command = lines.__getitem__
        if piped:  # (the runs are numbered as their blocks come)
            command = _pipe_line(specs[0], temp is not None)
    if "tmpdir" in extra:  # (--files, and output held past 1 MiB: pm.ensemble.console)
        tempfile.tempdir = extra["tmpdir"]
    # (No progress line under --tty: the terminal is the tasks'.)
    console = Console(opts.verbose, os.isatty(2) and "tty" not in extra,
                      group=mode == "group", tag=tag,
                      results=where, command=command,
                      files=tempfile.gettempdir() if "files" in extra else None,
                      color=bool({"color", "ctag", "ctagstring"} & extra.keys()),
                      color_failed="colorfailed" in extra)
    if log is not None and log.to_stdout:  # (--joblog -: its header first, as parallel's)
        console.write_out(HEADER.encode())
    interrupted: list[int] = []
    # (GNU parallel's command line: a task is named by its Seq, {#}; a tasks file's line
    # by its index and line.)
    console.numbered_from = int(path is None)
    console.as_written = path is None
    # (parallel's command line: -v is the command lines and the summary, as README says;
    # the memory figures too where memory control was asked for, else at -vv)
    memory = path is not None or bool(MEMORY_OPTIONS & extra.keys())
    console.memory_level = 1 if memory else 2
    try:
        ens = Ensemble(nodes, spec=opts.spec, output=console.output, on_event=console.event,
                       timeout=opts.spec.timeout, **options)
        ens.numbered_from = console.numbered_from
        ens.prepare = console.prepare
    except SizeError as exc:
        await console.aclose()
        if log is not None:
            log.close()
        raise UsageError(str(exc)) from None
    loop = asyncio.get_running_loop()
    producer: asyncio.Task[None] | None = None  # --pipe's reader of stdin

    def interrupt(signum: int) -> None:
        interrupted.append(signum)
        console.message(f"{signal.Signals(signum).name}: starting no more tasks"
                        if len(interrupted) == 1 else "killing the running tasks")
        ens.interrupt(signum)
        if producer is not None:
            producer.cancel()  # --pipe: read no more

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, interrupt, sig)
    from pm.quick import noted_signals

    for signum in noted_signals():  # what reached pmrun while it imported
        interrupt(signum)
    try:
        await ens.start()  # (an interrupt meanwhile: hosts still starting are waited for no more)
    except SizeError as exc:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await ens.aclose()
        await console.aclose()
        if log is not None:
            log.close()
        raise UsageError(str(exc)) from None
    def output_gone() -> None:
        """Whoever read our stdout went away (``| head``): its tasks' output has nowhere
        to go, and tasks that never end (``yes``) would be held for ever."""
        loop.remove_reader(1)
        interrupted.append(signal.SIGPIPE)
        console.message("standard output closed: killing the running tasks, starting no "
                        "more")
        ens.halt("not run: standard output closed", now=True)
        if producer is not None:
            producer.cancel()

    watched = is_fifo(1)
    if watched:  # (a pipe's writing end is never readable: the loop wakes when it breaks)
        loop.add_reader(1, output_gone)
    try:
        ens.total_hint = int(extra.get("total_jobs", "0"))
        if console.tty:  # (the line is only drawn on a terminal)
            ens.on_progress = lambda: console.progress(ens.progress_text())
        if "keep_order" in extra:
            console.keep_order([] if piped or stream else (spec.index for spec in specs))

        def done(task: Task, result: TaskResult) -> None:
            line = "" if log is None else log.record(
                result, shown(task.spec), task.received, task.sent,
                ":" if ens.is_here(result.node) else None)
            # (--joblog -: the task's line on stdout right after its output, as parallel's)
            console.ended(task.index, failed=not result.ok,
                          trailer=os.fsencode(line) if log is not None and log.to_stdout
                          else b"")
            why = halt.count(result)
            if why:
                console.message(why)
                ens.halt(f"not run: --halt {halt.policy}", now=halt.now)
                if producer is not None:
                    producer.cancel()  # no more blocks

        ens.on_done = done
        if "pipe" in extra:
            regexp = "regexp" in extra
            # (--regexp: the expressions as given, \n read by the regular expression; a
            # --recend '' alone ends a record at any byte, as GNU parallel's.)
            unescape = os.fsencode if regexp else _unescape
            start = unescape(extra.get("recstart", ""))
            end = unescape(extra.get("recend", "" if "recstart" in extra else "\n"))
            if regexp and not end and not start:
                end = b"(?s:.)"
            fd = 0
            if "pipe_file" in extra:  # --pipepart
                try:
                    fd = os.open(extra["pipe_file"], os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise UsageError(f"--pipepart {extra['pipe_file']}: {exc.strerror}"
                                     ) from None
            try:
                # (--pipepart's default as GNU parallel's: 10 blocks for each task slot.)
                size = _block_size(extra.get("block", "-10" if fd else "1M"), fd,
                                   ens.slot_count)
                header = extra.get("header", "0")
                grouped = "group_by" in extra  # (-N counts its records, not lines)
                cut = _Blocks(size, end, start, fd, part=bool(fd), regexp=regexp,
                              header=1 if header == ":" else int(header),
                              records=0 if grouped else int(extra.get("max_args", "0")),
                              lines=int(extra.get("max_lines", "0")))
                cut.warn = console.message
                blocks: _Source = cut
                if grouped:
                    blocks = _Groups(cut, extra["group_by"], _splitter(extra.get("colsep")),
                                     size, int(extra.get("max_args", "0")))
                producer = asyncio.ensure_future(
                    _roundrobin(ens, console, specs[0], blocks) if "roundrobin" in extra
                    else _tee(ens, specs, blocks) if "tee" in extra
                    else _shard(ens, console, specs[0], blocks, extra)
                    if "shard" in extra or "bin" in extra
                    else _pipe(ens, console, specs[0], blocks, temp))
                await _produced(ens, producer)
            finally:
                if fd:
                    os.close(fd)
        elif stream:
            def take(batch: list[TaskSpec]) -> None:
                batch = [s for s in finish(batch) if unseen(s)]
                if where is not None:
                    where.update({s.index: _results_dir(extra["results"], s, ())
                                  for s in batch})
                tags.update(_tags(extra, batch, tasks_file=False))
                files.update(_files(extra, batch))
                if lines is not None:
                    lines.update({s.index: os.fsencode(shown(s)) for s in batch})
                for spec in batch:
                    console.expect(spec.index)
                    transfer, returns = files.get(spec.index, ((), ()))
                    ens.add(spec.argv, spec=spec, transfer=transfer, returns=returns)

            shape = shaping(None, extra.get("trim", "n"), "no_empty" in extra)
            fd = 0
            if sources[1] != "-":  # a named pipe: -a <(producer)
                try:
                    fd = os.open(sources[1], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                except OSError as exc:
                    raise UsageError(f":::: {sources[1]}: {exc.strerror}") from None
            arrivals = Arrivals(fd, extra.get("delimiter"), extra.get("eof"),
                                skip=int("skip_first_line" in extra), shape=shape)
            producer = asyncio.ensure_future(
                _streamed(ens, arrivals, template, take, 2 * ens.slot_count + 8))
            try:
                await _produced(ens, producer)
            finally:
                if fd:
                    os.close(fd)
        else:
            for spec in specs:
                transfer, returns = files.get(spec.index, ((), ()))
                ens.add(spec.argv, spec=spec, transfer=transfer, returns=returns)
        results = await ens.join()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watched:
            loop.remove_reader(1)
        await ens.aclose()
        if log is not None:
            log.close()
        summary = ens.summary_text()
        if opts.verbose < console.memory_level:  # the nodes' memory peaks with -v (-vv)
            summary = "\n".join(x for x in summary.split("\n") if not x.startswith("node "))
        if path is None and not opts.verbose and ens.all_succeeded():
            summary = ""  # GNU parallel's command line (CMD ::: ARGS): silent when all went well
        await console.aclose(summary + "\n" if summary else "")
    if interrupted:
        return 128 + interrupted[0]
    if path is None:
        return halt.status()  # (GNU parallel's command line: its exit status)
    if halt.reached and halt.why == "success":
        return 0  # what was looked for was found
    return 0 if all(r.ok for r in results) else 1


async def run_ensemble(tasks: Iterable[Sequence[str] | str], nodes: Nodes, *,
                       output: str = "inherit", **options: Any) -> list[TaskResult]:
    """Run ``tasks`` (argv lists, or tasks-file lines like ``"[mem=2G] ./sim 1"``)
    to their end; ``options`` are :class:`Ensemble`'s.  ``output="inherit"``
    writes their lines to our stdout/stderr with ``[task N] ``; ``"capture"``
    keeps them in the results."""
    if output not in ("inherit", "capture"):
        raise ValueError("output must be 'inherit' or 'capture'")
    console = Console(0, False, tag=lambda index: b"[task %d] " % index
                      ) if output == "inherit" else None
    try:
        async with Ensemble(nodes, output=console.output if console else None,
                            **options) as ens:
            for item in tasks:
                if isinstance(item, str):
                    for spec in parse_tasks(item, options.get("mem_per_task")):
                        ens.add(spec.argv, spec=spec)
                else:
                    ens.add(item)
            return await ens.join()
    finally:
        if console is not None:
            await console.aclose()
