"""Arguments on stdin (or a pipe) read as they come: GNU parallel starts the first tasks
before its input ends (``find ... | pmrun -j 4 gzip``, ``tail -f log | pmrun ...``).

:class:`Arrivals` gives the arguments that arrived since it was last asked, whole
ones only (a line, or an item ending with ``-d``/``-0``'s delimiter); the
ensemble's command line (:func:`pm.ensemble.cli.run_cli`) makes their tasks and
queues them, reading on only while few tasks wait (:meth:`Ensemble.room`).
:func:`streamable` says when a command line can be run so: one source, stdin or a
named pipe, and nothing that needs every argument first (``-m``/``-X``, ``--shuf``,
``--header``, ``{##}``, Perl expressions, a percentage in ``--halt``...).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

from pm.ensemble.inputs import input_lines

if TYPE_CHECKING:
    from pm.ensemble.core import Ensemble

_T = TypeVar("_T", covariant=True)


class _Source(Protocol[_T]):
    async def next(self) -> _T | None: ...

#: Options that need every argument before the first task (or that this path leaves to
#: the one that reads them all).
_WHOLE_INPUT = ("header", "max_args", "many_args", "colsep", "csv", "plus", "shuf",
                "retry_failed", "pipe", "tee", "cat", "fifo", "join_blank", "dry_run",
                "shell_quote", "tasks_words", "link", "tasks")


def streamable(extra: Mapping[str, str], sources: Sequence[str], files_sep: str) -> bool:
    """Whether the tasks of this command line can start as their arguments come: one
    source, stdin or a pipe (``-a <(producer)``)."""
    if len(sources) != 2 or sources[0] != files_sep or any(k in extra for k in _WHOLE_INPUT):
        return False
    if sources[1] != "-" and not is_fifo(sources[1]):
        return False  # (a file, or none: the whole input's reading says so)
    if any("{=" in extra.get(k, "") for k in ("tasks_line", "tagstring", "transfer",
                                               "returns", "trc")):
        return False  # (Perl expressions: all filled before the tasks start)
    return "%" not in extra.get("halt", "")


def is_fifo(where: str | int) -> bool:
    """Whether the path, or the open descriptor, is a pipe (False if it cannot be told)."""
    import stat

    try:
        return stat.S_ISFIFO(os.stat(where).st_mode)
    except OSError:
        return False


async def offered(ens: Ensemble, source: _Source[_T], ahead: int) -> AsyncIterator[_T]:
    """What ``source`` gives next, taken only while fewer than ``ahead`` tasks wait and
    the ensemble runs on (a producer of tasks: --pipe's blocks, stdin's arguments)."""
    while not ens.stopping:
        await ens.room(ahead)
        item = await source.next()
        if item is None or ens.stopping:
            return
        yield item


class Arrivals:
    """The arguments on ``fd`` as they arrive: each call of :meth:`next` gives the whole
    ones read since the last (an item ends with ``delimiter``, else at a line's end);
    at the end of the input the last, unended one too, then None.  ``eof`` (GNU
    parallel's ``-E``): the input ends at that argument; ``skip``: items dropped first
    (``--skip-first-line``); ``shape``: what becomes of each batch (``--trim``, ``-r``:
    :func:`pm.ensemble.inputs.shaping`)."""

    def __init__(self, fd: int = 0, delimiter: str | None = None, eof: str | None = None,
                 skip: int = 0, shape: Callable[[list[str]], list[str]] | None = None
                 ) -> None:
        self._fd = fd
        self._sep = (delimiter or "\n").encode(errors="surrogateescape")
        self._lines = delimiter is None
        self._eof_word = eof
        self._skip = skip
        self._shape = shape
        self._buf = bytearray()
        self._ended = False
        #: False once the loop cannot poll ``fd`` (a regular file: reads never block).
        self._polled = True

    async def next(self) -> list[str] | None:
        while not self._ended:
            data = await self._read()
            if not data:
                self._ended = True
                rest = bytes(self._buf)
                self._buf.clear()
                items = self._split(rest, last=True)
                return self._shaped(items)
            self._buf += data
            cut = self._buf.rfind(self._sep)
            if cut < 0:
                continue
            whole = bytes(self._buf[:cut + len(self._sep)])
            del self._buf[:cut + len(self._sep)]
            items = self._shaped(self._split(whole, last=False))
            if items:
                return items
        return None

    def _split(self, data: bytes, last: bool) -> list[str]:
        text = data.decode(errors="surrogateescape")
        if self._lines:
            return input_lines(text)
        items = text.split(self._sep.decode(errors="surrogateescape"))
        # (What follows the last delimiter: nothing, or at the end a last item, but not
        # a lone newline after it, as the whole input's reading has it.)
        tail = items.pop()
        if last and tail not in ("", "\n"):
            items.append(tail)
        return items

    def _shaped(self, items: list[str]) -> list[str]:
        if self._skip:
            dropped = min(self._skip, len(items))
            self._skip -= dropped
            items = items[dropped:]
        if self._eof_word is not None and self._eof_word in items:
            items = items[:items.index(self._eof_word)]
            self._ended = True  # (-E: nothing after it is read)
        return self._shape(items) if self._shape is not None and items else items

    async def _read(self) -> bytes:
        data, self._polled = await read_some(self._fd, self._polled)
        return data


async def read_some(fd: int, polled: bool) -> tuple[bytes, bool]:
    """What ``fd`` holds now, once it holds something (b"": its end, or it cannot be
    read), and whether it can be waited for on the loop next time: ``polled``, unless it
    turned out it cannot (a regular file: epoll takes none, and its reads never block)."""
    while True:
        if polled:
            loop = asyncio.get_running_loop()
            ready: asyncio.Future[None] = loop.create_future()
            try:
                loop.add_reader(fd, _wake, ready)
            except (PermissionError, OSError):
                polled = False
            else:
                try:
                    await ready
                finally:
                    loop.remove_reader(fd)
        try:
            return os.read(fd, 1 << 20), polled
        except BlockingIOError:
            continue  # (woken for nothing: wait again)
        except OSError:
            return b"", polled


def _wake(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)
