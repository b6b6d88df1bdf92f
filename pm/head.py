"""The head: root of the tree, writer of the job's output, judge of its exit status.

:class:`JobRun` is the one code path behind ``pmrun`` and ``pm.run``/``pm.Cluster``.
It builds the :class:`JobPlan`, runs vertex 0's agent in its own process (no
extra interpreter start-up for a single-node job), has that agent start the
rest of the tree, and turns what comes up the tree into output and a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import functools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pm.agent.owned import Owned
from pm.agent.watch import ExitStatus
from pm.bootstrap.base import head_relays
from pm.bootstrap.slurm_job import RunTimers
from pm.bootstrap.slurm_job import job_id as slurm_job_id
from pm.common.mapping import (
    deal_slots,
    dealt_placement,
    job_placement,
    local_ranks,
    process_mapping,
    programs_nodes,
)
from pm.common.nodes import Nodes
from pm.common.output import (
    EXIT_OUTPUT_FAILED,
    STDERR,
    STDOUT,
    Writer,
    loss_line,
    loss_status,
    loss_words,
    output_window,
)
from pm.jobenv import kvsname_of, new_job_id
from pm.jobspec import JobSpec, sequence_slots
from pm.proto import tree_wire as t
from pm.proto.errors import rank_at
from pm.proto.plan import STDIN_ALL, AppPlan, JobPlan

if TYPE_CHECKING:
    from pm.agent.children import Children, RootRelay
    from pm.agent.node import JobAgent
    from pm.agent.started import StartedRanks
    from pm.spawned_jobs import HeadSpawns

log = logging.getLogger("pm")

#: Seconds between SIGTERM and SIGKILL when a job is torn down.
KILL_GRACE = 2.0
#: Exit status of pmrun when the job timed out (as timeout(1)) or the launcher itself failed.
EXIT_TIMEOUT = 124
EXIT_LAUNCHER = 255
#: How the cause of a job interrupted while nodes had not joined ends (its words end so).
NOT_JOINED = "had not joined"
STDIN_WINDOW = 1 << 20
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
#: Seconds the head lets a suspend message leave (to child agents) before it stops itself.
SUSPEND_FLUSH = 0.05


@dataclass(frozen=True, slots=True)
class RankResult:
    rank: int
    node: int
    code: int
    signal: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.signal == 0 and not self.reason


def abort_status(code: int) -> int:
    """pmrun's exit status for an abort with ``code``: modulo 256, as exit() takes it,
    and 1 where that leaves 0 (an aborted job never reports success)."""
    return code % 256 or 1


@dataclass(slots=True)
class JobResult:
    """How a job ended: ``returncode`` is what ``pmrun`` exits with."""

    returncode: int
    ranks: dict[int, RankResult] = field(default_factory=dict)
    cause: str | None = None
    stats: dict[str, object] = field(default_factory=dict)
    #: Jobs the ranks spawned (MPI_Comm_spawn), by number: pm.spawned_jobs.SpawnedJob.summary().
    spawned: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: The job's number of ranks, those that never reported included (0: as ``ranks`` says).
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def exit_codes(self) -> list[int]:
        """Each rank's exit status as a shell reports it (128 + signal when killed), rank 0
        first; -1 for a rank that never reported one (never started: the job ended first)."""
        size = self.size or max(self.ranks, default=-1) + 1
        return [
            (128 + r.signal if r.signal else r.code) if (r := self.ranks.get(i)) else -1
            for i in range(size)
        ]


OutputSink = Callable[..., None]


def _cwd() -> str:
    """pmrun's working directory, where the ranks run on every node that has it ("" when
    it was removed)."""
    try:
        return os.getcwd()
    except OSError:
        return ""


def _rlimits(names: list[str]) -> dict[str, int]:
    if not names:
        return {}
    from pm.agent.rlimits import current

    return current(names)


def _mem_bind(value: str) -> str:
    """--mem-bind as the plan spells it (JobSpec.validate checked it)."""
    if not value:
        return ""
    from pm.agent.membind import parse

    return parse(value)[0]


def _task_hook(prog: str) -> str:
    """srun's --task-prolog/--task-epilog as run for the ranks: a relative path from pmrun's
    directory (wherever a rank runs), a bare name through the rank's PATH."""
    return os.path.abspath(prog) if "/" in prog and not prog.startswith("/") else prog


def _own_umask() -> int:
    """pmrun's umask, which its ranks get on every host (as srun's tasks do)."""
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _terminal_size() -> list[int]:
    """srun's --pty: the size of pmrun's terminal (rows, columns), 0 0 if it has none."""
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            return [size.lines, size.columns]
    return [0, 0]


def _prefix(pattern: str, hosts: list[str], node_of_rank: list[int], rank: int) -> bytes:
    from pm.options import prepend_prefix

    node = node_of_rank[rank] if rank < len(node_of_rank) else 0
    return prepend_prefix(pattern, rank, hosts[node] if node < len(hosts) else "", node)


class RunState(enum.Enum):
    """Where a job run is, as the head sees it."""

    RUNNING = "running"
    KILLING = "killing"  # failed or killed: the first cause is named, the rest go


class JobRun:
    """One job through the tree. ``start()``, then ``wait()``; ``signal``/``kill`` any time."""

    def __init__(self, spec: JobSpec, nodes: Nodes, *, sink: OutputSink | None = None,
                 stdin: int | None = None, verbose: bool = False,
                 sim: dict[str, Any] | None = None, started: StartedRanks | None = None,
                 quiet: bool = False) -> None:
        self._t0 = time.time()  # the head's start, for --profile
        #: The cause of a failure is kept (:attr:`cause`) but not logged: whoever runs
        #: the job says what it means (a task ensemble's run of one task).
        self.quiet = quiet
        spec.validate()
        self.spec = spec
        self.nodes = nodes
        self.sink = sink
        self.stdin_fd = stdin
        self.verbose = verbose
        self.loop = asyncio.get_running_loop()
        #: Ranks pmrun's quick path already started (pm.quick): vertex 0 adopts them.
        self._started = started
        from pm.bootstrap.early import take_identity

        told = take_identity() if sink is None else None  # the early Slurm step's
        self.secret = told[0] if told is not None else os.urandom(32)
        job_id = started.job_id if started is not None else (
            told[1] if told is not None else new_job_id())
        self.writer: Writer | None = None
        #: Log handlers writing through the writer, and the stream each had (_say_after_output).
        self._said: list[tuple[logging.StreamHandler[Any], Any]] = []
        if sink is None and started is not None:
            # The quick path's writer, with the files it opened (and truncated) already.
            self.writer, started.writer = started.writer, None
        elif sink is None:
            self.writer = Writer(spec.label, files={STDOUT: spec.output or "",
                                                    STDERR: spec.error or ""}, job_id=job_id)
            self.writer.timestamp = spec.timestamp
            self.writer.append = spec.output_append
            self.writer.raw = spec.unbuffered  # (srun's -u, --pty: as it comes)
            if spec.output_from or spec.pty:  # Hydra's -output-from; srun's --pty: rank 0's
                from pm.common.output import rank_ranges

                self.writer.only = rank_ranges(spec.output_from or str(spec.stdin_rank))
        #: Our stdout / stderr whose reader went away (the ranks' writes to it fail);
        #: perhaps already in pmrun's quick path, which told the ranks then.
        self._lost_streams: set[int] = set()
        if self.writer is not None:
            self._lost_streams.update(self.writer.broken)
            self.writer.on_broken = self._output_lost
        hosts = nodes.hosts
        app_nodes: list[list[int]] = []
        app_slots: list[list[int]] = []
        if nodes.app_nodes is not None:  # programs with hosts of their own
            kept, slots, app_nodes, app_slots = programs_nodes(
                [a.n for a in spec.apps], spec.ppn, spec.distribution, nodes.app_nodes)
            hosts = [nodes.hosts[i] for i in kept]
            # (The hosts that got no rank left out: the slots given, as the plan's hosts;
            # each program's nodes are the plan's to say from now on.)
            self.nodes = Nodes(hosts, [nodes.slots[i] for i in kept], nodes.fanout,
                               nodes.bootstrap)
        elif nodes.deal is not None:  # Hydra's host list: the ranks dealt to its entries
            slots = deal_slots(nodes.deal, len(hosts))
        else:
            slots = sequence_slots(spec, len(hosts), nodes.slots)
        placement = list(spec.placement) or dealt_placement(
            [a.n for a in spec.apps], nodes.deal, slots, spec.rank_by)
        # (Open MPI's --rank-by: each program's ranks numbered anew on their nodes.)
        node_of_rank = job_placement([a.n for a in spec.apps], slots, spec.distribution,
                                     app_nodes, app_slots, spec.rank_by, placement)
        #: The node of each rank (its place in the plan's hosts).
        self.node_of_rank = node_of_rank
        used = max(node_of_rank) + 1
        env, app_envs = spec.plan_env()
        if spec.bcast is not None and not spec.bcast_files:  # (pm.run's; pmrun read them)
            from pm.common.bcast import programs_of

            spec.bcast_files = programs_of(spec)
        self.plan = JobPlan(
            job_id=job_id, kvsname=kvsname_of(job_id), size=spec.size,
            hosts=hosts[:used], slots=slots[:used], fanout=max(1, nodes.fanout),
            apps=[AppPlan(a.argv, a.n, e, a.wdir or spec.wdir)
                  for a, e in zip(spec.apps, app_envs, strict=True)],
            env=env, mapping=process_mapping(node_of_rank),
            label=spec.label, kvs=spec.kvs, bind_to=spec.bind_to, map_by=spec.map_by,
            bind_spelled=spec.bind_spelled, report_bindings=spec.report_bindings,
            merge_stderr=spec.merge_stderr,
            unbuffered=spec.unbuffered,
            timeout=spec.timeout,
            profile=spec.profile is not None, bootstrap=dict(nodes.bootstrap),
            mem_high=spec.mem_high, mem_low=spec.mem_low, mem_overrun=spec.mem_overrun,
            universe_size=spec.universe_size, stdin_rank=spec.stdin_rank,
            stdin_file=spec.stdin_file or "", distribution=spec.distribution,
            app_nodes=app_nodes, app_slots=app_slots, cwd=_cwd(), rank_by=spec.rank_by,
            placement=placement, rank_slots=list(spec.rank_slots),
            task_prolog=_task_hook(spec.task_prolog), task_epilog=_task_hook(spec.task_epilog),
            rlimits=_rlimits(spec.propagate), gpus_per_task=spec.gpus_per_task,
            mem_bind=_mem_bind(spec.mem_bind),
            job_attrs=({"PMI_mpi_memory_alloc_kinds": spec.memory_alloc_kinds}
                       if spec.memory_alloc_kinds else {}),
            bcast=list(spec.bcast_files), bcast_dest=spec.bcast or "",
            pty=_terminal_size() if spec.pty else [],
            umask=spec.umask if spec.umask is not None else _own_umask(),
            pmi_port=spec.pmi_port, host_env=spec.env_mode != "only",
        )
        if self.plan.bootstrap.get("exact"):  # srun's --exact
            from pm.bootstrap.base import step_cpus

            self.plan.bootstrap["cpus"] = step_cpus(node_of_rank, spec.bind_to)
        if not sim:
            from pm.agent.pmix_detect import wants_pmix

            self.plan.pmix = wants_pmix(spec.mpi, [a.argv for a in spec.apps],
                                        self.plan.env.get("PATH"))
        if self.writer is not None and spec.prepend is not None:
            self.writer.prefix = functools.partial(_prefix, spec.prepend, self.plan.hosts,
                                                   node_of_rank)
        if self.writer is not None:
            self.writer.where = self._where_of  # (%h, %n in --output patterns)
        self.plan.universe_size = spec.universe_size or _universe(self)
        if sim:  # simulated ranks (pm.agent.sim): the app is a placeholder, never started
            self.plan.sim_ranks = int(sim["ranks_per_node"])
            self.plan.sim = dict(sim)
        self.ranks: dict[int, RankResult] = {}
        self.cause: str | None = None
        self.returncode: int | None = None
        self.finished = self.loop.create_future()
        self.agent: JobAgent | RootRelay | None = None
        self.children: Children | None = None
        self._interrupts = 0
        #: Signals before start() (handler, signum): acted on once the launch is under way.
        self._early_signals: list[tuple[Callable[[int], None], int]] = []
        #: The first signal that told pmrun to stop (SIGINT, SIGTERM, SIGHUP), or 0.
        self._signalled = 0
        #: Running, or killing: ranks that fail from then on do not name the cause.
        self.state = RunState.RUNNING
        self._stdin_credit = STDIN_WINDOW
        self._stdin_dst = (STDIN_ALL if spec.stdin_rank == STDIN_ALL else
                           self.plan.hosts and node_of_rank[spec.stdin_rank])
        self._stdin_reading = False
        #: False once stdin proved a regular file: read by one chain of call_soon then.
        self._stdin_polled = True
        self._stdin_next: asyncio.Handle | None = None
        #: Our timers (and tasks): cancelled by aclose().
        self.owned = Owned(self.loop)
        #: Output credit: what the head wrote of each node's output and has not acked yet.
        self._window = output_window(len(self.plan.hosts))
        self._unacked: dict[int, int] = {}
        self.started_at = time.monotonic()
        self.stats: dict[str, object] = {}
        #: Jobs spawned by the ranks (pm.spawned_jobs), made on the first spawn.
        self.spawns: HeadSpawns | None = None
        self._top_done = False
        #: The abort that came first, held for ABORT_GRACE (:meth:`_aborted`), and its timer.
        self._held_abort: t.Abort | None = None
        #: Ranks that called abort (their own ends follow it: never a cause before one).
        self._aborting: set[int] = set()
        #: srun's -W: the first rank of the job that ended, whose end starts the wait.
        self._first_end: RankResult | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        #: Slurm ends the job (its word came: :meth:`ended`): pmrun kills nothing itself.
        self.slurm_ends = False
        #: While the head asks why Slurm sent the agents' step SIGTERM (:meth:`_slurm_term`):
        #: what the ranks' ends meant meanwhile (failures, aborts, collectives that cannot
        #: complete), to be judged once the answer is in; None when not asking.
        self._held_term: list[Callable[[], None]] | None = None
        self._held_term_timer: asyncio.TimerHandle | None = None
        #: slurmctld's word on the job, asked (pm.bootstrap.slurm.ask_why): one question at a time.
        self._asked: asyncio.Task[tuple[bool, tuple[str, int] | None]] | None = None

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
            from pm.agent.children import RootRelay

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
            from pm.agent.children import Children, find_listen_endpoint, step_port

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
        for handler, signum in early:  # (before the loop had them: pm.cli)
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
        size = _terminal_size()
        if size[0] > 0 and size[1] > 0:
            self.agent.from_tree(t.Winsize(int(self._stdin_dst or 0), size[0], size[1]))

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
        why (an errno: pm.common.output.Writer.loss); None while none was."""
        if not self._lost_streams or self.writer is None:
            return None
        lost = self.writer.lost
        stream = next((s for s in lost if s in self._lost_streams), min(self._lost_streams))
        return stream, lost.get(stream, errno.EPIPE)

    def _output_status(self) -> None:
        """The job is over and its output out: if some of it could not be written while no
        failure came first, that is the job's status (141 for a reader gone, as a shell
        pipeline's, else 1: pm.common.output.loss_status), named in one line (an error other
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

    async def _ask_slurm(self, signum: int) -> None:
        """pmrun's own SIGTERM in a Slurm job, passed on: Slurm's end of the job, or not."""
        answered, why = await self._ask()
        if self._interrupts > 1:
            return  # (killed already)
        if why is None and self.state is RunState.RUNNING:
            log.warning("forwarded %s to all ranks (again to kill them)",
                        signal.Signals(signum).name)
        self._slurm_word(answered, why)
        if self.children is not None:
            # Nodes whose end is held back (pm.bootstrap.slurm) are named now: the
            # same signal most likely ended them (a batch job Slurm cancelled).
            self.children.release()

    def _ask(self) -> asyncio.Task[tuple[bool, tuple[str, int] | None]]:
        """slurmctld's word on whether Slurm ends the job (one question for all who ask)."""
        if self._asked is None or self._asked.done():
            from pm.bootstrap.slurm import ask_why

            self._asked = self.owned.spawn(ask_why(), name="ask slurm")
        return self._asked

    def _hold_for_slurm(self) -> bool:
        """Slurm's SIGTERM reached the ranks (through their agents, or pmrun's own, which it
        passed on): Slurm's end of the job, most likely.  Until slurmctld says whether it is
        (or slurmstepd's line does, through srun: pm.bootstrap.slurm), for SIGNAL_GRACE
        seconds at most, what the ranks' ends mean is held: nothing if Slurm ends the job,
        else what it meant (``scancel --signal=TERM``, someone's kill of an agent or of
        pmrun), judged then, in order.  False when nothing is to be held (held already, or
        the job's end is named)."""
        if self._held_term is not None or self.slurm_ends or self.state is not RunState.RUNNING:
            return False
        from pm.bootstrap.slurm import SIGNAL_GRACE

        self._held_term = []
        self._held_term_timer = self.owned.call_later(SIGNAL_GRACE, self._judge_held_term)
        return True

    def _slurm_term(self) -> None:
        """Slurm sent the agents' step SIGTERM (an agent said so, :class:`t.StepSignal`),
        which they pass to the ranks (pm.agent.step_signals): held (:meth:`_hold_for_slurm`)
        until Slurm's word; slurmctld is asked if slurmstepd's line did not come first
        (pm.bootstrap.slurm.LINE_FIRST: its words are srun's)."""
        if self._hold_for_slurm():
            from pm.bootstrap.slurm import LINE_FIRST

            self.owned.spawn(self._slurm_says(LINE_FIRST), name="Slurm's SIGTERM")

    async def _slurm_says(self, first: float) -> None:
        await asyncio.sleep(first)
        if self._held_term is None:
            return  # (Slurm's word came, or the hold is over)
        # (No answer: slurmstepd's line may come, until the hold is over.)
        self._slurm_word(*await self._ask())

    def _slurm_word(self, answered: bool, why: tuple[str, int] | None) -> None:
        """slurmctld's answer (:meth:`_ask`): Slurm's end of the job, named; or the job runs
        on, and what was held is what it was."""
        if why is not None:
            self.ended(*why)
        elif answered:
            self._judge_held_term()

    def _hold_term(self, judge: Callable[..., None], *args: Any) -> bool:
        """Hold ``judge(*args)`` while the head asks why Slurm sent SIGTERM; False when it
        does not (then judge now)."""
        if self._held_term is None:
            return False
        self._held_term.append(functools.partial(judge, *args))
        return True

    def _judge_held_term(self) -> None:
        """Slurm does not end the job (or said nothing in time): what was held is judged."""
        for judge in self._end_hold() or ():
            judge()
        self.spawned_done()  # (if every rank ended meanwhile)

    def _end_hold(self) -> list[Callable[[], None]] | None:
        """The hold is over: what it held (None: there was none)."""
        held, self._held_term = self._held_term, None
        if self._held_term_timer is not None:
            self._held_term_timer.cancel()
            self._held_term_timer = None
        return held

    def ended(self, why: str, code: int) -> None:
        """The resource manager ended the job (scancel, time limit): ``code`` is our status.

        Under Slurm every rank has its SIGTERM (from Slurm, through its agent or from pmrun:
        pm.agent.step_signals), and Slurm kills what still runs after KillWait (through the
        agents it kills, their ranks' guardians): pmrun kills nothing itself, so that the
        ranks' handlers have that grace (to save a checkpoint), as srun's tasks have, and
        ends once every rank has ended or its node is gone.  What the ranks' ends meant
        while this was asked is the end's doing (dropped)."""
        self.slurm_ends = True
        self._end_hold()
        self._fail(why, code, kill=False)
        self.spawned_done()  # (if every rank ended meanwhile)

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
        job ends without our kill (Slurm ends it: :meth:`ended`)."""
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

    def _aborted(self, msg: t.Abort) -> None:
        """A rank called abort: named at once, unless it is the first failure and ranks of
        other nodes run, which may yet report a death by a signal that came before it (then
        the abort waits up to ABORT_GRACE; :meth:`_rank_ended`), or Slurm's SIGTERM came
        (:meth:`_slurm_term`)."""
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

    def _spawner(self) -> HeadSpawns:
        if self.spawns is None:
            from pm.spawned_jobs import HeadSpawns

            self.spawns = HeadSpawns(self)
        return self.spawns

    def spawned_done(self) -> None:
        """The launched job or a spawned one ended: the run ends once all have (and what
        their ends mean is judged: :meth:`_hold_for_slurm`)."""
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

    def job_output(self, job: int, rank: int, stream: int, data: bytes, vertex: int) -> None:
        """Lines of rank ``rank`` (on ``vertex``) of spawned job ``job``."""
        tag = -(job << 24 | vertex) - 2  # its node's credit comes back to that job's agent
        if self.sink is not None:
            if data:
                self.sink(rank, stream, data, job)
            self._output_written(tag, len(data))
        elif self.writer is not None:
            self.writer.write(rank, stream, data, tag, job)

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
                # The error was named as it happened (pm.common.output.write_out): that is
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
        from pm.common.output import SaidAfterOutput

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


def _universe(run: JobRun) -> int:
    """MPI_UNIVERSE_SIZE by default: the slots of the job's nodes, never below the job's
    size (as pm.spawned_jobs.universe_size; not imported here: spawning is rare)."""
    from pm.common.mapping import capacities

    return max(run.plan.size, sum(capacities(run.nodes.slots, run.node_of_rank,
                                             len(run.plan.hosts))))
