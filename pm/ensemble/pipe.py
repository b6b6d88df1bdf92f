"""``--pipe``'s runs: how the blocks of our stdin (:mod:`pm.ensemble.blocks`) reach the
tasks.

A run of the command for each block, the block its stdin (:func:`pipe`; ``--cat`` and
``--fifo``: in a file or a named pipe, :func:`temp_input`); or runs that all start at once
and read what they are given as they take it: one per task slot, the next block to the one
with the least still to read (``--roundrobin``), one per argument, each given every block
(``--tee``), one per task slot, each given the lines a column deals it (``--shard``,
``--bin``).  Blocks are read only as fast as the tasks take them.  The ensemble's command
line (:func:`pm.ensemble.cli.run_cli`) imports this module for ``--pipe`` alone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pm.ensemble.blocks import Source, column_index, splitter
from pm.ensemble.inputs import fill, has_replacement
from pm.ensemble.local import TASK_TMP
from pm.ensemble.stream import offered
from pm.ensemble.task import InputStream
from pm.ensemble.taskspec import TaskSpec
from pm.proto.errors import UsageError

if TYPE_CHECKING:
    from pm.ensemble.console import Console
    from pm.ensemble.core import Ensemble

#: --pipe: blocks read ahead of the tasks that take them.
PIPE_AHEAD = 4


async def pipe(ens: Ensemble, console: Console, line: TaskSpec, blocks: Source,
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
#: into it; once the command ended a cat still waiting for a reader is ended too (SIGKILL:
#: a SIGTERM that comes while the shell's forked child still has the shell's handlers is
#: only noted there, and the child then waits in open() for a reader for ever).
_FIFO = """trap 'rm -f "$PARALLEL_TMP"' EXIT
mkfifo -m 600 "$PARALLEL_TMP" || exit
exec 3<&0
cat <&3 >"$PARALLEL_TMP" 3<&- & c=$!
exec 3<&-
({line}
) & p=$!
wait $p; s=$?
kill -KILL $c 2>/dev/null; wait $c 2>/dev/null
exit $s
"""


def temp_input(spec: TaskSpec, fifo: bool) -> TaskSpec:
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


async def roundrobin(ens: Ensemble, console: Console, line: TaskSpec,
                     blocks: Source) -> None:
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


async def tee(ens: Ensemble, specs: list[TaskSpec], blocks: Source) -> None:
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


async def shard(ens: Ensemble, console: Console, line: TaskSpec, blocks: Source,
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
    split = splitter(extra.get("colsep"))
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
                at = column_index(column, blocks.header, split, "--shard/--bin")
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


def pipe_line(line: TaskSpec, temp: bool) -> Callable[[int], bytes]:
    """-v's line of --pipe's run ``index`` (:func:`numbered`)."""

    def command(index: int) -> bytes:
        spec = numbered(line, index)
        return os.fsencode(spec.line if temp else spec.argv[-1])

    return command
