"""What a :class:`~pm.head.JobRun` holds: the :class:`JobPlan` it makes of the job's spec
and nodes (each rank's node, the plan's hosts, what every agent is told), and the run's
state (:class:`JobRunBase`, made from the run's arguments, which
:class:`~pm.head.JobRun` describes).

The head's code is in parts over this state, each a class of its own module that
:class:`~pm.head.JobRun` inherits: the run's phases and control in :mod:`pm.head`, the
failures judged (which one names the cause) in :mod:`pm.head_failures`, what is held
while Slurm says whether it ends the job in :mod:`pm.head_slurm`, the job's output and
stdin in :mod:`pm.head_io`.  What one part calls of another is declared here for the
type checker.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pm.agent.owned import Owned
from pm.common.mapping import (
    deal_slots,
    dealt_placement,
    job_placement,
    process_mapping,
    programs_nodes,
)
from pm.common.nodes import Nodes
from pm.common.output import STDERR, STDOUT, output_window
from pm.common.output_writer import Writer
from pm.jobenv import kvsname_of, new_job_id
from pm.jobspec import JobSpec, sequence_slots
from pm.proto import tree_wire as t
from pm.proto.plan import STDIN_ALL, AppPlan, JobPlan

if TYPE_CHECKING:
    from pm.agent.children import Children
    from pm.agent.node import JobAgent
    from pm.agent.root_relay import RootRelay
    from pm.agent.started import StartedRanks
    from pm.job_result import RankResult
    from pm.spawned_jobs import HeadSpawns

STDIN_WINDOW = 1 << 20

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


def terminal_size() -> list[int]:
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


class JobRunBase:
    """A job run's state (see the module docstring); its arguments are
    :class:`~pm.head.JobRun`'s."""

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
            pty=terminal_size() if spec.pty else [],
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
        #: The abort that came first, held for ABORT_GRACE
        #: (:meth:`~pm.head_failures.Failures._aborted`), and its timer.
        self._held_abort: t.Abort | None = None
        #: Ranks that called abort (their own ends follow it: never a cause before one).
        self._aborting: set[int] = set()
        #: srun's -W: the first rank of the job that ended, whose end starts the wait.
        self._first_end: RankResult | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        #: Slurm ends the job (its word came: :meth:`~pm.head_slurm.SlurmHolds.ended`): pmrun
        #: kills nothing itself.
        self.slurm_ends = False
        #: While the head asks why Slurm sent the agents' step SIGTERM
        #: (:meth:`~pm.head_slurm.SlurmHolds._slurm_term`): what the ranks' ends meant
        #: meanwhile (failures, aborts, collectives that cannot complete), to be judged once
        #: the answer is in; None when not asking.
        self._held_term: list[Callable[[], None]] | None = None
        self._held_term_timer: asyncio.TimerHandle | None = None
        #: slurmctld's word on the job, asked (pm.bootstrap.slurm.ask_why): one question at a time.
        self._asked: asyncio.Task[tuple[bool, tuple[str, int] | None]] | None = None

    if TYPE_CHECKING:  # what the parts call of each other (see the module docstring)
        def signal(self, signum: int) -> None: ...

        def spawned_done(self) -> None: ...

        def _fail(self, cause: str, code: int, grace: float = ..., report: int = 0,
                  kill: bool = True) -> None: ...

        def _hold_term(self, judge: Callable[..., None], *args: Any) -> bool: ...

        def _loss(self) -> tuple[int, int] | None: ...

        def _output_lost(self, stream: int) -> None: ...

        def _where_of(self, job: int, rank: int) -> tuple[str, int]: ...


def _universe(run: JobRunBase) -> int:
    """MPI_UNIVERSE_SIZE by default: the slots of the job's nodes, never below the job's
    size (as pm.spawned_jobs.universe_size; not imported here: spawning is rare)."""
    from pm.common.mapping import capacities

    return max(run.plan.size, sum(capacities(run.nodes.slots, run.node_of_rank,
                                             len(run.plan.hosts))))
