"""A node's ranks' output and stdin: their pipes read as credit allows, pmrun's stdin written.

:class:`RankIO` is the part of :class:`~pm.agent.ranks.LocalRanks` that reads the
ranks' output pipes into complete lines for its :class:`~pm.agent.node.JobAgent`
(:meth:`JobAgent.rank_output <pm.agent.node.JobAgent.rank_output>`) while the
node has output credit (the head's reader is behind otherwise: the pipes wait, and
the ranks with them), closes them when nobody reads a stream any more, and writes
pmrun's stdin to the ranks that read it, saying how much every reader took
(:meth:`JobAgent.stdin_taken <pm.agent.node.JobAgent.stdin_taken>`).
"""

from __future__ import annotations

import asyncio
import functools
import os
from typing import TYPE_CHECKING

from pm.common.output import read_pipe
from pm.proto.plan import STDIN_ALL

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.rank_proc import RankProc


class RankIO:
    """The ranks' pipes of :class:`~pm.agent.ranks.LocalRanks` (see the module docstring);
    its state is made by :class:`~pm.agent.ranks.LocalRanks`."""

    agent: JobAgent
    loop: asyncio.AbstractEventLoop
    ranks: dict[int, RankProc]
    pty: RankProc | None
    gone: set[int]
    _credit: int
    _paused: bool
    _stdin_in: int
    _stdin_acked: int
    _stdin_eof: bool

    if TYPE_CHECKING:  # LocalRanks's (see the module docstring)
        def report(self, proc: RankProc) -> None: ...

    # ------------------------------------------------------------------ output
    def _read_output(self, proc: RankProc, stream: int) -> None:
        fd = proc.fds[stream]
        buf = proc.streams[stream]
        lines, got = read_pipe(fd, buf)
        if got < 0:
            return
        if got:
            # What goes up counts, not what was read: a long line held here while it
            # grows (up to pm.common.output.MAX_LINE) must not use up a small window for ever.
            self._credit -= len(lines)
            if self._credit <= 0 and not self._paused:
                self._pause(True)
        else:
            self.loop.remove_reader(fd)
            os.close(fd)
            del proc.fds[stream]
            if proc.status is not None and not proc.fds:
                self.report(proc)
        if lines:
            self.agent.rank_output(proc.rank, stream, lines)
        if not got and buf.open:  # its last bytes left a line open: it goes on no more
            self.agent.rank_output(proc.rank, stream, b"")

    def output_credit(self, nbytes: int) -> None:
        """The head wrote ``nbytes`` of our output: read the pipes again if they waited."""
        self._credit += nbytes
        if self._paused and self._credit > 0:
            self._pause(False)

    def output_gone(self, stream: int) -> None:
        """Nobody reads the head's ``stream`` any more: close our ends of the ranks' pipes
        of it, so that their writes fail (EPIPE, or SIGPIPE) instead of waiting for credit
        that will not come; what they had written there is dropped."""
        self.gone.add(stream)
        for proc in self.ranks.values():
            fd = proc.fds.pop(stream, None)
            if fd is None:
                continue
            self.loop.remove_reader(fd)
            os.close(fd)
            if proc.status is not None and not proc.fds:
                self.report(proc)

    def _pause(self, pause: bool) -> None:
        self._paused = pause
        for proc in self.ranks.values():
            for stream, fd in proc.fds.items():
                if pause:
                    self.loop.remove_reader(fd)
                else:
                    self.loop.add_reader(fd, self._read_output, proc, stream)

    # ------------------------------------------------------------------ stdin
    @functools.cached_property
    def _stdin_readers(self) -> list[RankProc]:
        """The local ranks that read pmrun's stdin: one, or every one (``--stdin all``)."""
        want = self.agent.plan.stdin_rank
        if want == STDIN_ALL:
            return list(self.ranks.values())
        proc = self.ranks.get(want)
        return [] if proc is None else [proc]

    def stdin(self, data: bytes, eof: bool) -> None:
        """Bytes of pmrun's stdin for the ranks that read it (``eof``: close it after
        them); acknowledged once every one took them (written, or dropped for a rank whose
        stdin is closed: the credit keeps flowing)."""
        self._stdin_in += len(data)
        self._stdin_eof = eof
        for proc in self._stdin_readers:
            if proc.stdin_fd >= 0:
                # The end of pmrun's stdin is the terminal's end-of-file character for a
                # rank on a pseudo-terminal (closing our side would hang it up).
                proc.stdin_buf += data + (b"\x04" if eof and proc is self.pty else b"")
                self._stdin_write(proc)
        self._stdin_took()

    def _stdin_write(self, proc: RankProc, more: bool = False) -> None:
        fd = proc.stdin_fd
        if fd < 0:
            return
        buf = proc.stdin_buf
        try:
            while buf:
                buf = buf[os.write(fd, buf):]
        except BlockingIOError:
            pass
        except OSError:  # the rank closed its stdin: drop the rest
            buf = b""
        proc.stdin_buf = buf
        proc.stdin_taken = self._stdin_in - len(buf)
        self.loop.remove_writer(fd)
        if buf:
            self.loop.add_writer(fd, self._stdin_write, proc, True)
        elif self._stdin_eof:
            os.close(fd)
            proc.stdin_fd = -1
        if more:  # (a writer callback: the pipe took more)
            self._stdin_took()

    def _stdin_took(self) -> None:
        """Say up the tree how much more of pmrun's stdin every reader here took."""
        took = min((p.stdin_taken if p.stdin_fd >= 0 else self._stdin_in
                    for p in self._stdin_readers), default=self._stdin_in)
        if took > self._stdin_acked:
            self.agent.stdin_taken(took - self._stdin_acked)
            self._stdin_acked = took
