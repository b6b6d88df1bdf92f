"""The failures of a job run judged at the head: which one is the job's cause.

A rank that exits non-zero or by a signal, an abort, a collective that can never complete
(a rank it waits for is gone), a node lost, the job's timeout, srun's ``-W``: the first
failure names the cause and fixes the exit status, and the job is killed (SIGTERM, then
SIGKILL after :data:`KILL_GRACE`); the failures after it are its consequences.  An abort
that comes first while ranks of other nodes run waits :data:`ABORT_GRACE` for a death by a
signal that came before it; a failure after a stream of ours lost its reader is that
loss's.  :class:`Failures` is the part of :class:`~pm.head.JobRun` that does this
(:mod:`pm.head_base`).
"""

from __future__ import annotations

import errno
import logging

from pm.agent.watch import ExitStatus
from pm.common.output_writer import loss_status, loss_words
from pm.head_base import JobRunBase, RunState
from pm.job_result import RankResult, abort_status
from pm.proto import tree_wire as t
from pm.proto.errors import rank_at

log = logging.getLogger("pm")

#: Seconds between SIGTERM and SIGKILL when a job is torn down.
KILL_GRACE = 2.0
#: Exit status of pmrun when the job timed out (as timeout(1)) or the launcher itself failed.
EXIT_TIMEOUT = 124
EXIT_LAUNCHER = 255
#: Seconds an abort that comes first waits, while ranks of other nodes run, for the report of
#: a rank a signal ended before it: a rank often aborts because it saw a peer die (Open MPI's
#: lost-peer abort), and that death, reported by another node's agent, may come second.  An
#: abort with no rank on another node running is named at once (its own node's ranks are
#: looked at by its agent: pm.agent.node_end); no other failure waits.
ABORT_GRACE = 0.05
#: How much later than an abort a rank's failure may have been seen on its node and still
#: count as before it: its agent sees the end when its loop gets to it (clocks of different
#: hosts may differ by as much).
DEATH_SLACK = 0.01


class Failures(JobRunBase):
    """A job run's failures judged (see the module docstring)."""

    def kill(self, reason: str = "killed by the user") -> None:
        self._fail(reason, EXIT_LAUNCHER)

    def _timed_out(self) -> None:
        self._fail(f"job timed out after {self.spec.timeout:g} s", EXIT_TIMEOUT,
                   report=self.spec.timeout_report)

    def _fail(self, cause: str, code: int, grace: float = KILL_GRACE, report: int = 0,
              kill: bool = True) -> None:
        """The first failure names the cause and fixes the exit code; all fail the job.
        ``report``: the agents say how the ranks still running stand before they kill
        them (``--report-state-on-timeout``, ``--get-stack-traces``).  ``kill`` False: the
        job ends without our kill (Slurm ends it: :meth:`~pm.head_slurm.SlurmHolds.ended`)."""
        if self._held_abort is not None:
            self._name_abort()  # it came first
        if self.cause is None:
            self.cause = cause
            self.returncode = code
            if not self.quiet:
                log.error("%s", cause)
        if grace <= 0 or self.state is RunState.RUNNING:
            self.state = RunState.KILLING
            if self.agent is None or not kill:
                return
            if self._signalled and grace > 0:
                # Every rank has the user's signal already (Ctrl-C, SIGTERM): a rank that
                # died of it first must not cut the others' own ends short (the traceback
                # a Python rank prints, a handler that saves its state).  The rest get
                # SIGTERM after KILL_GRACE; a second interrupt kills at once.
                self.owned.call_later(KILL_GRACE, self.agent.kill, cause, grace)
            else:
                self.agent.kill(cause, grace, report)

    def _aborted(self, msg: t.Abort) -> None:
        """A rank called abort: named at once, unless it is the first failure and ranks of
        other nodes run, which may yet report a death by a signal that came before it (then
        the abort waits up to ABORT_GRACE; :meth:`_rank_ended`), or Slurm's SIGTERM came
        (:meth:`~pm.head_slurm.SlurmHolds._slurm_term`)."""
        if self.state is RunState.RUNNING and self._hold_term(self._aborted, msg):
            return
        self._aborting.add(msg.rank)
        if self._held_abort is not None:
            return  # the same failure's echo, most likely: the first abort is named
        if self.cause is None and self.state is RunState.RUNNING and any(
                node != msg.vertex and rank not in self.ranks
                for rank, node in enumerate(self.node_of_rank)):
            self._held_abort = msg
            self._abort_timer = self.owned.call_later(ABORT_GRACE, self._name_abort)
        else:
            self._fail_abort(msg)

    def _stuck(self, msg: t.Stuck) -> None:
        """A collective can never complete (a rank it waits for is gone): the job would
        hang in it; it fails, named by that rank (a failure of its own, if it was one, is
        named first: then this one is its consequence)."""
        from pm.agent.collectives import KIND_NAMES

        if self._signalled:
            return  # (the user's signal ended that rank: the job ends by it, as it is)
        if self.state is RunState.RUNNING and self._hold_term(self._stuck, msg):
            return
        gone = rank_at(msg.rank, msg.vertex, self.plan.hosts[msg.vertex])
        who = f"rank {msg.waiting} waits" if msg.waiting >= 0 else "other ranks wait"
        if not msg.kind:  # (before PMI init, which a rank of its node called)
            text = (f"{gone} {msg.how} before PMI init, which rank {msg.waiting} called: its "
                    "MPI_Init would wait for it for ever")
        else:
            text = (f"{gone} {msg.how} without joining the ranks' PMI "
                    f"{KIND_NAMES.get(msg.kind, 'collective')} {msg.epoch}, in which {who}: "
                    "it can never complete")
        if self.cause is not None and self.state is RunState.RUNNING and not self.quiet:
            log.error("%s", text)  # (the job went on after that failure: why it ends now)
        self._fail(text, msg.code)

    def _fail_abort(self, msg: t.Abort) -> None:
        host = self.plan.hosts[msg.vertex]
        # (Open MPI 4's MPI_Abort says "N/A" when it has no message: nothing to show)
        text = f" ({msg.message})" if msg.message and msg.message != "N/A" else ""
        self._fail(f"{rank_at(msg.rank, msg.vertex, host)} called abort with "
                   f"code {msg.code}{text}", abort_status(msg.code))

    def _name_abort(self) -> None:
        """The held abort's grace is over (or another failure came): name it."""
        msg = self._drop_abort()
        if msg is not None:
            self._fail_abort(msg)

    def _drop_abort(self) -> t.Abort | None:
        msg, self._held_abort = self._held_abort, None
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        return msg

    def _forget_node(self, vertex: int) -> None:
        agent = self.agent
        if agent is None:
            return
        for v in agent.tree.subtree(vertex):
            for rank, node in enumerate(agent.node_of_rank):
                if node == v and rank not in self.ranks:
                    self.ranks[rank] = RankResult(rank, v, -1, 0, "node lost")
        # The agent that lost the node counts its subtree as done (pm/agent/children.py).

    def _rank_ended(self, r: RankResult, at: float = 0.0) -> None:
        """Rank ``r`` ended (its agent learned of it at ``at``, its node's ``time.time()``)."""
        # (Spawned jobs' ranks: pm.spawned_jobs.HeadSpawns._rank_ended.)
        self.ranks[r.rank] = r
        if (self.spec.wait_after_first and self._first_end is None
                and self.state is RunState.RUNNING):
            self._first_end = r
            self.owned.call_later(self.spec.wait_after_first, self._waited_after_first)
        if r.ok or self.state is RunState.KILLING:
            return
        if self._hold_term(self._rank_failed, r, at):
            return
        self._rank_failed(r, at)

    def _rank_failed(self, r: RankResult, at: float) -> None:
        """Rank ``r`` failed (its agent learned of it at ``at``): the job's cause, perhaps."""
        if self.state is RunState.KILLING:
            return  # (judged after a hold: the job's end is named already)
        held = self._held_abort
        if held is not None:
            if r.rank in self._aborting or at > held.at + DEATH_SLACK:
                return  # after the abort, or the aborting rank's own end: the abort is first
            # A failure the abort followed (a death by a signal, an exit before finalize:
            # Open MPI 5's ranks abort when a peer is gone): that failure is the cause.
            self._drop_abort()
        host = self.plan.hosts[r.node]
        where = rank_at(r.rank, r.node, host)
        fail = self._fail if self.spec.kill_on_bad_exit else self._failed_alone
        loss = self._loss()
        if loss is not None:
            # Most likely its writes to our lost stdout failed (or the SIGPIPE it got then):
            # as in a shell pipeline whose reader went away, pmrun's status is SIGPIPE's;
            # after another error (a full disk) 1.
            what = r.reason or ExitStatus(r.code, r.signal).describe()
            text = f"{where} {what} after {loss_words(*loss)}"
            if loss[1] != errno.EPIPE and self.cause is None:
                # The error was named as it happened (pm.common.output_writer.write_out): that is
                # the job's one line, this one only with -v.
                log.info("%s", text)
                self.cause, self.returncode = text, loss_status(loss[1])
            fail(text, loss_status(loss[1]))
        elif r.reason and r.code in (-1, 1) and not r.signal:
            fail(f"{where} {r.reason}", 1)
        elif r.reason:
            fail(f"{where} {r.reason}", r.code if r.code > 0 else 1)
        else:
            status = ExitStatus(r.code, r.signal)
            fail(f"{where} {status.describe()}", status.shell_code)

    def _waited_after_first(self) -> None:
        """srun's -W: the job's first rank ended that long ago; the others still running
        are ended, the job's status a time limit's."""
        r = self._first_end
        left = len(self.node_of_rank) - len(self.ranks)
        if r is None or left <= 0 or self.state is not RunState.RUNNING:
            return
        where = rank_at(r.rank, r.node, self.plan.hosts[r.node])
        self._fail(f"{where} ended {self.spec.wait_after_first:g} s ago and {left} "
                   f"rank{'s' if left > 1 else ''} still ran: ended them (-W, srun's --wait)",
                   EXIT_TIMEOUT)

    def _failed_alone(self, cause: str, code: int) -> None:
        """-disable-auto-cleanup: a rank failed, named; the others run on (the first such
        failure fixes the exit status)."""
        if self.cause is None:
            self.cause, self.returncode = cause, code
        if not self.quiet:
            log.error("%s", cause)
