"""``--pipe``'s input in blocks of whole records, as GNU parallel cuts them.

Our stdin, or ``--pipepart``'s file, cut between records (``--recend``, ``--recstart``,
regular expressions with ``--regexp``) into blocks of about ``--block`` bytes, of ``-N``
records or of ``-L`` lines' records (:class:`Blocks`), or of the records that
``--group-by``'s column makes (:class:`Groups`); each block starts with the ``--header``
lines.  How the blocks reach the tasks is :mod:`pm.ensemble.pipe`'s.
"""

from __future__ import annotations

import collections
import math
import os
import re
from collections.abc import Callable
from typing import Protocol

from pm.agent.memory import parallel_size
from pm.ensemble.stream import read_some
from pm.proto.errors import UsageError


class Source(Protocol):
    """Where --pipe's blocks come from (:class:`Blocks`, :class:`Groups`)."""

    header: bytes

    async def next(self) -> bytes | None: ...


class Blocks:
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


class Groups:
    """GNU parallel's ``--group-by COL``: stdin's lines (from ``lines``) in records of the
    consecutive lines whose column COL has one value, and blocks of whole records: ``per``
    of them (``-N``), or as many as fill ``size`` bytes (a record larger than that alone).
    Each block starts with the ``--header`` lines, as --pipe's."""

    def __init__(self, lines: Blocks, column: str, split: Callable[[bytes], list[bytes]],
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
                self._at = column_index(self._column, self.header, self._split, "--group-by")
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


def unescaped(separator: str) -> bytes:
    """A --recend/--recstart value with ``\\n``, ``\\t`` and ``\\r`` read as GNU parallel
    reads them."""
    return separator.replace("\\n", "\n").replace("\\t", "\t").replace("\\r", "\r").encode()


def block_size(text: str, fd: int, slots: int) -> int:
    """``--block``'s bytes; ``-N`` (``--pipepart``): the file ``fd`` in N blocks for each of
    the ``slots`` tasks that can run at once (GNU parallel's size: one byte more than the
    file's size over their number)."""
    if not text.startswith("-"):
        return parallel_size(text) or 1
    return 1 + os.fstat(fd).st_size // max(1, slots) // int(text[1:])


def column_index(column: str, header: bytes, split: Callable[[bytes], list[bytes]],
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


def splitter(colsep: str | None) -> Callable[[bytes], list[bytes]]:
    """How a line is cut into columns: by --colsep's regular expression, else at tabs."""
    if colsep:
        return re.compile(os.fsencode(colsep)).split
    return lambda text: text.split(b"\t")
