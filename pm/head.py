"""The head: root of the tree, writer of the job's output, judge of its exit status.

:class:`JobRun` is the one code path behind ``pmrun`` and ``pm.run``/``pm.Cluster``.
It builds the :class:`JobPlan`, runs vertex 0's agent in its own process (no
extra interpreter start-up for a single-node job), has that agent start the
rest of the tree, and turns what comes up the tree into output and a result.

Here are the run's phases (start, wait, close), its control (the signals pmrun
forwards, Ctrl-Z, an interrupt) and what comes up from vertex 0, handed to the part it
is for.  The run's state and its plan are :mod:`pm.head_base`'s; its other parts are
:mod:`pm.head_failures` (which failure is the job's cause), :mod:`pm.head_slurm`
(Slurm's SIGTERM) and :mod:`pm.head_io` (output and stdin).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from pm.bootstrap.base import head_relays
from pm.bootstrap.slurm_job import RunTimers
from pm.bootstrap.slurm_job import job_id as slurm_job_id
from pm.common.mapping import local_ranks
from pm.head_base import RunState, terminal_size
from pm.head_failures import EXIT_LAUNCHER, KILL_GRACE, Failures
from pm.head_io import HeadIO
from pm.head_slurm import SlurmHolds
from pm.job_result import JobResult, RankResult
from pm.proto import tree_wire as t
from pm.proto.errors import rank_at

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.root_relay import RootRelay
    from pm.spawned_jobs import HeadSpawns

log = logging.getLogger("pm")

#: How the cause of a job interrupted while nodes had not joined ends (its words end so).
NOT_JOINED = "had not joined"
#: Seconds the head lets a suspend message leave (to child agents) before it stops itself.
SUSPEND_FLUSH = 0.05


class JobRun(Failures, SlurmHolds, HeadIO):
    """One job through the tree. ``start()``, then ``wait()``; ``signal``/``kill`` any time."""

    # ------------------------------------------------------------ lifecycle
    def refusal(self) -> str | None:
        """Why the job cannot start at all on this machine's nodes, in one line (their
        ranks' descriptors: the quick path's check), before a record is made per rank."""
        if head_relays(self.plan.bootstrap) or self._started is not None:
            return None
        from pm.agent.spawn import NOT_STARTED, fd_shortage, raise_fd_limit

        raise_fd_limit()
        busiest, ranks = max(local_ranks(self.node_of_rank).items(), key=lambda kv: len(kv[1]))
        short = fd_shortage(len(ranks))
        if short is None:
            return None
        return f"{rank_at(ranks[0], busiest, self.plan.hosts[busiest])} {NOT_STARTED}: {short}"

    async def start(self) -> None:
        plan = self.plan
        agent: JobAgent | RootRelay
        if head_relays(plan.bootstrap):
            # Nodes are other hosts: vertex 0 runs on hosts[0], the head only relays.
            from pm.agent.root_relay import RootRelay

            agent = RootRelay(plan, self)
        else:
            from pm.agent.node import JobAgent

            agent = JobAgent(plan, 0, self, host=plan.hosts[0])
        self.agent = agent
        if self.writer is not None:
            # A slow reader of our stdout must not stop the loop (heartbeats, PMI): it
            # holds the nodes' output credit instead, which holds the ranks.
            self.writer.write_behind(self.loop.call_soon_threadsafe, self._output_written)
            self.writer.call_later = self.owned.call_later  # (lines held behind a long one)
            self._say_after_output()
        timers = RunTimers(self.owned, slurm_job_id())  # (Slurm's suspensions do not count)
        if self.spec.timeout:
            began = self._started.t0 if self._started is not None else time.monotonic()
            left = self.spec.timeout - (time.monotonic() - began)
            timers.start()
            timers.call_later(left, self._timed_out)
            if self.spec.signal_before_end is not None:  # srun's --signal SIG@TIME
                signum, before = self.spec.signal_before_end
                timers.call_later(left - before, self.signal, signum)
        elif self.spec.signal_before_end is not None and self.spec.slurm_end is not None:
            # srun's --signal in a Slurm job without --timeout: before the job's own end.
            signum, before = self.spec.signal_before_end
            timers.before_end(*self.spec.slurm_end, before, self.signal, signum)
        children = None
        if agent.children:
            from pm.agent.children import Children
            from pm.agent.listen_port import find_listen_endpoint, step_port

            port = step_port(plan, self.secret)  # the early Slurm step's, if any
            if port is not None:
                children = Children(agent, self.secret, port=port)
            else:
                from pm.common.hostlist import is_this_machine

                # (Every host this machine, as a one-node batch job's host file: loopback.)
                bind = "tcp://127.0.0.1" if all(map(is_this_machine, plan.hosts)) and \
                    not plan.bootstrap.get("iface") else await find_listen_endpoint(
                        plan.bootstrap, None, plan.hosts[agent.children[0]])
                children = Children(agent, self.secret, bind=bind)
            agent.children_link = children
            self.children = children
            job = slurm_job_id()
            if job is not None and children.heartbeat > 0:
                from pm.bootstrap.slurm_job import SilenceJudge

                # Silent nodes of a job Slurm holds suspended are not lost.
                children.port.vouch = SilenceJudge(job, children.heartbeat, plan.hosts,
                                                   log.info)
            agent.mark("bootstrap start", children=len(agent.children))
            children.spawn_all()
        if agent.timeline is not None:
            from pm.common.profile import mark_process_start

            mark_process_start(agent, "head start", self._t0)
        if self._started is not None:
            from pm.agent.node import JobAgent  # (loaded: the head runs vertex 0 then)

            assert isinstance(agent, JobAgent) and not agent.children
            agent.adopt_ranks(self._started)
            spawned, self._started.spawned = self._started.spawned, []
            for q in spawned:  # jobs the quick phase spawned, in order
                self._spawner().adopt(q)
        else:
            await agent.prepare()
            agent.start_ranks()
        early, self._early_signals = self._early_signals, []
        for handler, signum in early:  # (before the loop had them: pm.cli_run)
            handler(signum)
        if children is not None:
            try:
                join = float(plan.bootstrap.get("join_timeout", 60))
                await children.join(time.monotonic() + join)
            except Exception as exc:
                self._fail(str(exc), EXIT_LAUNCHER)
            if agent.timeline is not None:
                from pm.common.profile import mark_joined

                mark_joined(agent, children.joined)
        for stream in sorted(self._lost_streams):  # lost in pmrun's quick path
            self.agent.from_parent(t.OutputGone(stream))
        if self.stdin_fd is None and isinstance(self._stdin_dst, int):
            # Nothing to forward: rank 0 reads EOF at once, as from /dev/null.
            self.agent.from_tree(t.Stdin(self._stdin_dst, b"", True))
        self._start_stdin()
        log.info("job %s: %d ranks on %d nodes, fanout %d", plan.job_id, plan.size,
                 len(plan.hosts), plan.fanout)

    async def wait(self) -> JobResult:
        try:
            await self.finished
        finally:
            await self.aclose()
            if self.writer is not None:
                self.writer.end_lines()
                if not self.writer.drained():  # what a slow reader has not read
                    await asyncio.to_thread(self.writer.drain)
                self._say_directly()
                self._output_status()
                self.writer.close()
        if self.spec.profile:
            from pm.common.profile import write_profile

            timeline = self.stats.get("timeline")
            if self.spawns is not None and isinstance(timeline, list):
                timeline = timeline + self.spawns.timeline()
            sys.stderr.write(write_profile(self.spec.profile, timeline,
                                           len(self.plan.hosts), self.plan.fanout))
            if self.spawns is not None:
                from pm.spawned_jobs import profile_lines

                sys.stderr.write(profile_lines(self.spawns))
        code = self.returncode if self.returncode is not None else 0
        spawned = self.spawns.results() if self.spawns is not None else {}
        return JobResult(code, dict(sorted(self.ranks.items())), self.cause, self.stats,
                         spawned, self.plan.size)

    async def aclose(self) -> None:
        """Tear everything down (idempotent): ranks, agents, pipes."""
        self.owned.cancel()
        self._stop_stdin()
        if self.agent is not None:
            if not self.finished.done():
                self.agent.kill("launcher closing", 0)
            await self.agent.aclose()
        children = self.children
        if children is not None:
            for v in children.agent.children:
                children.send(v, t.Shutdown("job over"))
            children.close()
            await children.wait_exit(5.0)
            self.children = None
        await self.owned.aclose()

    # ------------------------------------------------------------ control
    def signal(self, signum: int) -> None:
        """Forward ``signum`` to every rank."""
        if self.agent is None:  # not started: acted on once the launch is under way
            self._early_signals.append((self.signal, signum))
            return
        self.agent.from_parent(t.Signal(signum))

    def resized(self, signum: int = 0) -> None:
        """srun's --pty: pmrun's terminal changed its size (SIGWINCH): so does rank 0's."""
        if self.agent is None or not self.plan.pty:
            return
        size = terminal_size()
        if size[0] > 0 and size[1] > 0:
            self.agent.from_tree(t.Winsize(int(self._stdin_dst or 0), size[0], size[1]))

    def suspend(self, _signum: int) -> None:
        """Ctrl-Z: stop every rank, then the launcher itself; SIGCONT (``fg``, ``bg``) to the
        launcher continues them (:meth:`signal`).  Agents hold their watch on the head
        meanwhile: its silence is no loss."""
        if self.agent is None:
            self._early_signals.append((self.suspend, _signum))
            return
        self.signal(signal.SIGTSTP)
        # The stop goes down the tree through zmq's I/O thread: give it time to leave.
        delay = SUSPEND_FLUSH if self.children is not None else 0.0
        self.owned.call_later(delay, os.kill, os.getpid(), signal.SIGSTOP)

    def interrupt(self, signum: int) -> None:
        """Ctrl-C / SIGTERM to the launcher: forward once, kill at once the second time.
        A SIGTERM once Slurm ends the job is Slurm's (its time limit's, after the agents'
        step had it, say): the ranks have theirs, and Slurm kills what runs after KillWait."""
        if signum == signal.SIGTERM and self.slurm_ends:
            log.info("SIGTERM: Slurm ends the job already")
            return
        if self.agent is None or (self.agent.children and self.children is None):
            # Not started, or its first agents not yet (it looks for its address): acted on
            # once the launch is under way, when the nodes not joined can be named.
            self._early_signals.append((self.interrupt, signum))
            return
        self._interrupts += 1
        if signum == signal.SIGINT and self.spec.quit_on_interrupt:
            self._interrupts += 1  # (srun's --quit-on-interrupt: as a second Ctrl-C)
        name = signal.Signals(signum).name
        if self._interrupts == 1 and self.children is not None and self.children.waiting():
            # Still starting: nodes that have not joined would be waited for until
            # --join-timeout.  The job ends now, the nodes that joined as after a Ctrl-C.
            self._signalled = signum
            self.signal(signum)
            self._fail(f"{name} while the job was starting: {self.children.name_waiting()} "
                       f"{NOT_JOINED}", 128 + signum)
            self.children.cut_join(f"{name} before it joined")
            return
        if self._interrupts == 1 and signum == signal.SIGTERM and os.environ.get(
                "SLURM_JOB_ID") and self.state is RunState.RUNNING:
            # Slurm's SIGTERM, most likely (its time limit, a scancel): the ranks have it
            # at once (Slurm's grace runs: the checkpoint they save), what their ends mean
            # once slurmctld has said whether it ends the job (as in srun's first line).
            self._signalled = signum
            self.signal(signum)
            self._hold_for_slurm()
            self.owned.spawn(self._ask_slurm(signum), name="ask slurm")
        elif self._interrupts == 1:
            self._forward(signum)
        else:
            if self.writer is not None:
                self.writer.abandon()  # nor wait for a reader that does not read
            quit_now = signum == signal.SIGINT and self.spec.quit_on_interrupt
            self._fail(f"{name} (--quit-on-interrupt): killing the job" if quit_now
                       else "interrupted twice: killing the job", 128 + signum, grace=0)

    def _forward(self, signum: int) -> None:
        self._signalled = signum
        if self.state is RunState.RUNNING:  # (else the job's end is named already)
            log.warning("forwarding %s to all ranks (again to kill them)",
                        signal.Signals(signum).name)
        self.signal(signum)
        if self.children is not None:
            # Nodes whose end is held back (pm.bootstrap.slurm) are named now: the
            # same signal most likely ended them (a batch job Slurm cancelled).
            self.children.release()

    # ------------------------------------------------------------ Uplink (from vertex 0)
    def send(self, msg: t.Msg) -> None:
        if isinstance(msg, t.Output):
            node_of_rank = self.node_of_rank
            for out in msg.items:
                if self.sink is not None:
                    if out.data:  # (none: the end of a stream, for the writer's lines)
                        self.sink(out.rank, out.stream, out.data)
                    self._output_written(node_of_rank[out.rank], len(out.data))
                elif self.writer is not None:
                    self.writer.write(out.rank, out.stream, out.data, node_of_rank[out.rank])
        elif isinstance(msg, t.Exits):
            for ex in msg.items:
                self._rank_ended(RankResult(ex.rank, ex.vertex, ex.code, ex.signal, ex.reason),
                                 ex.at)
        elif isinstance(msg, t.Abort):
            self._aborted(msg)
        elif isinstance(msg, t.Stuck):
            self._stuck(msg)
        elif isinstance(msg, t.Report):
            for line in msg.lines:
                log.error("%s", line)
        elif isinstance(msg, t.Done):
            if self._held_abort is not None:
                self._name_abort()
            self.stats.update(msg.stats)
            self._top_done = True
            if self.spawns is not None:
                self.spawns.job_ended(0)
            self.spawned_done()
        elif isinstance(msg, t.Sub):
            if self.spawns is not None:
                self.spawns.from_job(msg.job, t.unwrap(msg))
        elif isinstance(msg, t.SpawnReq):
            self._spawner().request(0, msg)
        elif isinstance(msg, (t.AgentGone, t.AgentError)):
            what = msg.text
            # After pmrun's own SIGTERM (or Ctrl-C) a node lost is most likely that
            # signal's doing too: pmrun's status is the signal's, as a shell's would be.
            code = 128 + self._signalled if self._signalled else EXIT_LAUNCHER
            # srun's --no-kill: named, and the other nodes' ranks run on.
            alone = self.spec.no_kill and not self._signalled
            (self._failed_alone if alone else self._fail)(
                f"node {msg.vertex} ({msg.host}) lost: {what}", code)
            # Ranks of a lost node will never report: the job ends when the rest has.
            self._forget_node(msg.vertex)
        elif isinstance(msg, t.StepSignal):
            if msg.signum == signal.SIGTERM:
                self._slurm_term()
        elif isinstance(msg, t.StdinAck):
            self._stdin_credit += msg.nbytes
            self._start_stdin()
        elif isinstance(msg, t.Started):
            pass
        else:
            log.debug("head: ignored %s", type(msg).__name__)

    def _spawner(self) -> HeadSpawns:
        if self.spawns is None:
            from pm.spawned_jobs import HeadSpawns

            self.spawns = HeadSpawns(self)
        return self.spawns

    def spawned_done(self) -> None:
        """The launched job or a spawned one ended: the run ends once all have (and what
        their ends mean is judged: :meth:`~pm.head_slurm.SlurmHolds._hold_for_slurm`)."""
        if not self._top_done or self.finished.done() or self._held_term is not None:
            return
        if self.spawns is None or self.spawns.all_done():
            self.finished.set_result(None)
        elif self.state is RunState.KILLING:
            # A spawned job on a lost node may never say it is done: do not wait for ever.
            self.owned.call_later(KILL_GRACE + 3.0, self._give_up_spawned)

    def _give_up_spawned(self) -> None:
        if self.spawns is not None and not self.finished.done():
            self.spawns.forget()
            self.finished.set_result(None)
