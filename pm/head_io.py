"""A job's output and stdin at the head.

What the ranks wrote comes up the tree and is written (by the writer's thread, or given
to the caller's sink), each node's output credit given back as it is out, so that a slow
reader holds the ranks and no event loop; pmrun's own lines go after the output before
them.  A stream of ours whose reader went away is the ranks' too (SIGPIPE, then EPIPE),
and what it lost may be the job's status.  Stdin goes to rank 0 (or every rank) with
back-pressure: read as the rank's credit allows.  :class:`HeadIO` is the part of
:class:`~pm.head.JobRun` that does this (:mod:`pm.head_base`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sys

from pm.common.output_writer import EXIT_OUTPUT_FAILED, loss_line, loss_status, loss_words
from pm.head_base import JobRunBase
from pm.proto import tree_wire as t

log = logging.getLogger("pm")


class HeadIO(JobRunBase):
    """A job run's output and stdin (see the module docstring)."""

    # ------------------------------------------------------------ output
    def _output_lost(self, stream: int) -> None:
        """Nobody reads our ``stream`` any more (`pmrun ... | head`): as in a shell
        pipeline, the ranks get SIGPIPE, and their writes to it fail (EPIPE) from now on
        rather than wait for ever (ranks that ignore SIGPIPE, such as Python's, end then)."""
        if stream in self._lost_streams:
            return
        self._lost_streams.add(stream)
        if len(self._lost_streams) == 1:
            self.signal(signal.SIGPIPE)
        if self.agent is not None:
            self.agent.from_parent(t.OutputGone(stream))

    def _loss(self) -> tuple[int, int] | None:
        """The stream of ours whose output was lost first, as the loop learned of it, and
        why (an errno: pm.common.output_writer.Writer.loss); None while none was."""
        if not self._lost_streams or self.writer is None:
            return None
        lost = self.writer.lost
        stream = next((s for s in lost if s in self._lost_streams), min(self._lost_streams))
        return stream, lost.get(stream, errno.EPIPE)

    def _output_status(self) -> None:
        """The job is over and its output out: if some of it could not be written while no
        failure came first, that is the job's status (141 for a reader gone, as a shell
        pipeline's, else 1: pm.common.output_writer.loss_status), named in one line (an error other
        than a reader gone was named as it happened).  Whenever the writer learned of it:
        the ranks' exits and the last writes may come in any order."""
        if self.cause is not None or self.writer is None:
            return
        loss = self.writer.loss()
        if loss is None:
            if self.writer.file_loss is not None:  # (said as it happened)
                self.cause, self.returncode = self.writer.file_loss, EXIT_OUTPUT_FAILED
            return
        self.cause = loss_line(*loss) or f"{loss_words(*loss)}: output was lost"
        self.returncode = loss_status(loss[1])
        if loss_line(*loss) and not self.quiet:
            log.error("%s", self.cause)

    def job_output(self, job: int, rank: int, stream: int, data: bytes, vertex: int) -> None:
        """Lines of rank ``rank`` (on ``vertex``) of spawned job ``job``."""
        tag = -(job << 24 | vertex) - 2  # its node's credit comes back to that job's agent
        if self.sink is not None:
            if data:
                self.sink(rank, stream, data, job)
            self._output_written(tag, len(data))
        elif self.writer is not None:
            self.writer.write(rank, stream, data, tag, job)

    def _where_of(self, job: int, rank: int) -> tuple[str, int]:
        """The host and node number of rank ``rank`` of job ``job`` (0: the launched one)."""
        if job == 0:
            node = self.node_of_rank[rank]
        else:
            spawned = self.spawns.jobs.get(job) if self.spawns is not None else None
            node = spawned.placement[rank] if spawned is not None else 0
        return self.plan.hosts[node], node

    def _say_after_output(self) -> None:
        """pmrun's own lines on stderr (a rank's failure, a node lost) go through the
        writer's thread, after the output it holds: a rank's last lines come before the
        line that says how it ended.  (The handlers ``logging.basicConfig`` gave stderr.)"""
        from pm.common.output_writer import SaidAfterOutput

        assert self.writer is not None
        if self.writer.err_fd != 2:
            return
        for handler in logging.getLogger().handlers:
            if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
                self._said.append((handler, handler.setStream(SaidAfterOutput(self.writer))))

    def _say_directly(self) -> None:
        """The writer's output is out: pmrun's lines go straight to stderr again."""
        while self._said:
            handler, stream = self._said.pop()
            handler.setStream(stream)

    def _output_written(self, vertex: int, nbytes: int) -> None:
        """``nbytes`` of node ``vertex``'s output are out: give the credit back, in
        quarters of its window (a node without credit has a whole window here).
        ``vertex`` below -1 is a spawned job's node (:meth:`job_output`)."""
        if vertex == -1:
            return  # no node's (the writer's default tag)
        done = self._unacked.get(vertex, 0) + nbytes
        if done < self._window // 4 or self.agent is None:
            self._unacked[vertex] = done
            return
        self._unacked[vertex] = 0
        if vertex < -1:
            job, node = divmod(-vertex - 2, 1 << 24)
            self.agent.from_parent(t.wrap(job, t.OutputAck(node, done)))
            return
        self.agent.from_tree(t.OutputAck(vertex, done))

    # ------------------------------------------------------------ stdin to rank 0
    def _start_stdin(self) -> None:
        fd = self.stdin_fd
        if fd is None or self._stdin_reading or self._stdin_credit <= 0 or self.agent is None:
            return
        self._stdin_reading = True
        if self._stdin_polled:
            try:
                self.loop.add_reader(fd, self._read_stdin)
                return
            except (PermissionError, OSError):
                self._stdin_polled = False  # a regular file cannot be polled (nor blocks)
        self._stdin_next = self.loop.call_soon(self._read_stdin)

    def _stop_stdin(self) -> None:
        if self._stdin_reading and self.stdin_fd is not None and self._stdin_polled:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.stdin_fd)
        if self._stdin_next is not None:
            self._stdin_next.cancel()
            self._stdin_next = None
        self._stdin_reading = False

    def _read_stdin(self) -> None:
        """One chunk of stdin for rank 0, as much as the credit allows (never a read of 0
        bytes: that would look like the end of the file)."""
        self._stdin_next = None
        fd = self.stdin_fd
        if fd is None or self.agent is None or self._stdin_credit <= 0:
            self._stop_stdin()
            return
        try:
            data = os.read(fd, min(65536, self._stdin_credit))
        except BlockingIOError:
            return
        except OSError:
            data = b""
        dst = int(self._stdin_dst or 0)
        if not data:
            self._stop_stdin()
            self.stdin_fd = None
            self.agent.from_tree(t.Stdin(dst, b"", True))
            return
        self._stdin_credit -= len(data)
        self.agent.from_tree(t.Stdin(dst, data, False))
        if self._stdin_credit <= 0:
            self._stop_stdin()
        elif not self._stdin_polled and self._stdin_reading:
            self._stdin_next = self.loop.call_soon(self._read_stdin)
