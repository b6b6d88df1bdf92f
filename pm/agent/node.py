"""The agent's side of one job: the node's ranks, the PMI they are served, aggregation.

A :class:`JobAgent` is one vertex of the job's tree.  It owns three parts:
its ranks as processes (spawn, pipes, stdin, exits, the kill) in
:class:`pm.agent.ranks.LocalRanks`, collectives in
:class:`pm.agent.coll_shell.NodeCollectives`, and direct gets of other nodes'
keys and the name service in :class:`pm.agent.tree_requests.TreeRequests`.
This module keeps the node's KVS and is the host the ranks' PMI sessions talk
to.  How the job starts here (topology, binding, PMIx server, the ranks spawned
or adopted) is in :mod:`pm.agent.node_start`; how the tree messages the parts
exchange are routed and handed to them, and Slurm's signals, in
:mod:`pm.agent.node_msgs`; how it ends (what becomes of each rank, said up the
tree, Done, the kill and the close) in :mod:`pm.agent.node_end`: functions of
the agent, which its methods call.  Its *parent* is the next agent up (or,
for vertex 0, the head in the same process); its *children* are agents it
started itself.  Everything it says travels as ``pm.proto.tree_wire`` messages
through :class:`Uplink`/:class:`Downlinks`, so the same code runs in-process
under the head and in a separate ``pm-agent`` process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pm.agent import node_end, node_msgs, node_start
from pm.agent.coll_shell import NodeCollectives
from pm.agent.kvs import NodeKVS
from pm.agent.node_end import AgentState
from pm.agent.owned import Owned
from pm.agent.rank_proc import RankProc
from pm.agent.ranks import LocalRanks
from pm.agent.shm_reaper import ShmReaper
from pm.agent.spawn_answer import SpawnAnswer
from pm.agent.step_signals import PAIRED
from pm.agent.tree_requests import TreeRequests
from pm.common.kary_tree import Tree
from pm.common.mapping import local_ranks
from pm.jobenv import host_own, ranks_env
from pm.proto import tree_wire as t
from pm.proto.errors import PMError
from pm.proto.plan import STDIN_ALL, JobPlan

log = logging.getLogger("pm.agent")

#: A rank's first collectives (MPI_Init's) at which its maps are read.
EARLY_SAMPLES = 3


if TYPE_CHECKING:
    from pm.agent.spawn import Guardian, SpawnError
    from pm.agent.spawned_jobs import AgentSpawns, SpawnRequests
    from pm.agent.started import StartedRanks
    from pm.agent.step_signals import StepSignals
    from pm.proto.spawn import SpawnRequest, SpawnResult

    class Uplink(Protocol):
        def send(self, msg: t.Msg) -> None: ...

    class Downlinks(Protocol):
        def send(self, vertex: int, msg: t.Msg) -> None: ...


class JobAgent:
    """Vertex ``vertex`` of the tree running ``plan``."""

    def __init__(self, plan: JobPlan, vertex: int, parent: Uplink, host: str | None = None) -> None:
        self.plan = plan
        self.vertex = vertex
        self.parent = parent
        self.children_link: Downlinks | None = None
        self.host = host or socket.gethostname()
        self.size = plan.size
        self.kvsname = plan.kvsname
        self.tree = Tree(len(plan.hosts), plan.fanout)
        self.children = list(self.tree.children(vertex))
        if plan.spawned:
            # A spawned job (pm.agent.spawned_jobs): placed by the head, and only the
            # subtrees holding its ranks take part.
            from pm.agent.spawned_jobs import members

            self.node_of_rank = list(plan.spawned.placement)
            taking_part = members(self.tree, self.node_of_rank, plan.pmix)
            self.children = [c for c in self.children if c in taking_part]
            # Collectives go through the subtrees holding ranks only (a PMIx job is on
            # every node, where a node without ranks would never contribute).
            holding = members(self.tree, self.node_of_rank)
            self.coll_children = [c for c in self.children if c in holding]
        else:
            self.node_of_rank = plan.node_of_rank()
            self.coll_children = self.children
        self.local = local_ranks(self.node_of_rank).get(vertex, [])
        #: Where programs without a wdir run here: the launcher's directory where it exists
        #: (else the agent's own, the home directory over ssh, as Open MPI and srun do).
        self.launch_dir = _launch_dir(plan.cwd, vertex, self.host) if self.local else None
        #: srun's --bcast: each program's copy on this node, or why it could not be made
        #: (:func:`pm.agent.node_start._place_bcast`).
        self.bcast_paths: dict[int, str | SpawnError] = {}
        #: --send-libs: the folder of each program's libraries here.
        self.bcast_libs: dict[int, str] = {}
        self.kvs = NodeKVS()
        self._node_attrs: dict[str, str] = {}
        self._node_waiters: dict[str, list[asyncio.Future[str | None]]] = {}
        self._out: list[t.RankOutput] = []
        self._exits: list[t.RankExit] = []
        #: Aborts held until the local ranks a signal ended before them are reported
        #: (those ranks, the abort): the death is the job's first failure, the abort its echo.
        self._held_aborts: list[tuple[set[int], t.Abort]] = []
        #: Local ranks that ended before PMI init (rank, how, status), and whether that
        #: was told (:func:`pm.agent.node_end._check_never_init`).
        self._never_init: list[tuple[int, str, int]] = []
        self._told_never_init = False
        self._gone_told: set[int] = set()  # local ranks told gone (node_end._gone)
        #: Aborts whose held-for ranks are reported: they go up after those exits.
        self._aborts: list[t.Abort] = []
        #: A job agent's own signals (Slurm's, to its step's tasks), when it takes them:
        #: pmrun's same signal down the tree is not delivered twice.
        self.step_signals: StepSignals | None = None
        #: Whether Slurm's signals reach our ranks themselves (proctrack/linuxproc, ...:
        #: pm.agent.step_signals), as their guardian told at the first that it could; None
        #: while unknown.
        self.slurm_reaches: bool | None = None
        #: Slurm's signals waiting for the guardian's word (:meth:`slurm_signal`), in order.
        self._probing: list[int] = []
        #: When a StepSignal (SIGTERM) last went up from this subtree: one is enough for
        #: one of Slurm's ends (pm.agent.step_signals.PAIRED seconds).
        self._term_told = -PAIRED
        self._base_env: dict[str, str] | None = None  # (base_env's, once made)
        self._flush_scheduled = False
        #: A sample of /dev/shm is due before the next flush (ranks failed meanwhile).
        self._shm_sample_due = False
        #: --stdin all: bytes of pmrun's stdin our ranks, and each child's subtree, took,
        #: and how many of them we said all took (StdinAck).
        self._stdin_own = 0
        self._stdin_children: dict[int, int] = {}
        self._stdin_said = 0
        self._children_done: set[int] = set()
        self._child_stats: list[dict[str, Any]] = []
        #: Running, killing (exits from then on are the kill's doing), or done (said so up).
        self.state = AgentState.RUNNING
        self.loop = asyncio.get_running_loop()
        #: Our tasks and timers (the ranks' are ``procs.owned``): ended by close()/aclose().
        self.owned = Owned(self.loop)
        self.done = self.loop.create_future()
        #: The ranks' collectives; gets of other nodes' keys and names, through the tree.
        self.coll = NodeCollectives(self)
        self.requests = TreeRequests(self)
        #: The node's ranks as processes; ``ranks`` is theirs, by rank.
        self.procs = LocalRanks(self, self.local)
        self.ranks = self.procs.ranks
        self.job_attrs: dict[str, str] = dict(plan.job_attrs)
        if plan.mapping:
            self.job_attrs["PMI_process_mapping"] = plan.mapping
        self.extra_env: dict[str, str] = {}
        self.cpusets: list[frozenset[int]] | None = None
        self.topology: Any = None  # the node's, when prepare discovered it
        self.shm: Any = None  # pm.agent.shmkvs.ShmKVSWriter when --kvs shm
        self._shm_tried = False
        #: Start-up events (wall time, vertex, rank, name, args) when profiling.
        self.timeline: list[Any] | None = [] if plan.profile else None
        #: Figures of the simulated ranks (pm.agent.sim), merged up with Done.
        self.sim_stats: dict[str, Any] | None = None
        self.on_close: list[Callable[[], None]] = []
        #: The /dev/shm files the node's ranks create, removed with the job (pm.agent.shm_reaper).
        self.shm_reaper: ShmReaper | None = None
        self._shm_sampler: asyncio.TimerHandle | None = None
        self._early_colls: dict[int, int] = {}
        #: A kill's report of the ranks' state, while it is being made (kill).
        self._reporting: asyncio.Task[None] | None = None
        #: The job as a PMIx namespace (pm.agent.pmix_job) when the plan asks for PMIx.
        self.pmix: Any = None
        self._pmix_failed = False
        self._pmix_early: list[t.GetReq] = []  # direct gets that came before the server
        #: Spawned jobs running here too (launched job only), and our ranks' spawns.
        self.spawns: AgentSpawns | None = None
        self.spawn_requests: SpawnRequests | None = None
        #: A spawned job's: when its spawner is answered, while that is to come
        #: (pm.agent.node_end.report_when_needed).
        self.spawn_answer: SpawnAnswer | None = None
        if plan.spawned is not None and plan.spawned.spawner:
            self.job_attrs["spawner-jobid"] = plan.spawned.spawner

    @property
    def killing(self) -> bool:
        """The job is ending here: killed, or done."""
        return self.state is not AgentState.RUNNING

    def base_env(self) -> dict[str, str]:
        """The environment the job's ranks here start from, as Hydra's proxy gives its
        own: this agent's (the host's: what ssh, srun, a service or pmrun gave it, less what
        pmrun set for the agent alone), what pmrun passes them over it (the plan's: all of
        pmrun's environment under -genvall, -genvlist's, -genv's), the host's own X display
        where the agent came over ssh (:func:`pm.jobenv.host_own`).  Made once per job (the
        topology share, the PMIx server, the ranks and their spawns all ask); a copy each."""
        if self._base_env is None:
            base = ranks_env(self.plan.env, self.plan.host_env)
            host_own(base, self.plan.bootstrap.get("name"), os.environ)
            self._base_env = base
        return dict(self._base_env)

    # ------------------------------------------------------------------ launch
    def mark(self, what: str, rank: int = -1, **args: Any) -> None:
        """Record a start-up event for --profile (a no-op otherwise)."""
        if self.timeline is not None:
            self.timeline.append([time.time(), self.vertex, rank, what, args])

    async def prepare(self) -> None:
        """What the node's ranks need before they start: topology XML, CPU binding, the
        PMIx server (:func:`pm.agent.node_start.prepare`)."""
        await node_start.prepare(self)

    def start_ranks(self, guardian: Guardian | None = None, shared: bool = False) -> None:
        """Spawn every local rank; ``guardian``: one made beforehand for their process
        group, ``shared``: another job's, whose group they join
        (:func:`pm.agent.node_start.start_ranks`)."""
        node_start.start_ranks(self, guardian, shared)

    def adopt_ranks(self, started: StartedRanks) -> None:
        """Take over the ranks ``pmrun``'s quick path started, and the PMI it served them
        (:func:`pm.agent.node_start.adopt_ranks`)."""
        node_start.adopt_ranks(self, started)

    # ------------------------------------------------------------------ output, exits
    def rank_output(self, rank: int, stream: int, lines: bytes) -> None:
        """Bytes a local rank wrote (pm.agent.rank_io: complete lines, a long line's piece,
        a last line without newline; none: that stream ended inside a line): up the tree,
        batched."""
        self._out.append(t.RankOutput(rank, stream, lines))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            out, self._out = self._out, []
            self.parent.send(t.Output(out))
        if self._exits:
            exits, self._exits = self._exits, []
            self.parent.send(t.Exits(exits))
        if self._aborts:
            aborts, self._aborts = self._aborts, []
            for abort in aborts:
                self.parent.send(abort)
        node_end.check_done(self)

    def rank_ended(self, proc: RankProc) -> None:
        """A local rank ended and its pipes are drained (pm.agent.ranks): report it
        (:func:`pm.agent.node_end.rank_ended`)."""
        node_end.rank_ended(self, proc)

    def stdin_taken(self, nbytes: int) -> None:
        """Every local rank that reads pmrun's stdin took ``nbytes`` more of it
        (pm.agent.rank_io): the head may send that much again once every node's did."""
        if self.plan.stdin_rank != STDIN_ALL:
            self.parent.send(t.StdinAck(nbytes))
            return
        self._stdin_own += nbytes
        self._stdin_up()

    def _stdin_up(self) -> None:
        """``--stdin all``: what this subtree's ranks all took, said up once."""
        took = min([self._stdin_own, *(self._stdin_children.get(c, 0) for c in self.children)])
        if took > self._stdin_said:
            self.parent.send(t.StdinAck(took - self._stdin_said))
            self._stdin_said = took

    def rank_started(self, rank: int, pid: int) -> None:
        """A local rank runs as ``pid`` (its PMIx connection gets TCP_NODELAY)."""
        if self.pmix is not None:
            self.pmix.srv.pids[self.pmix.nspace, rank] = pid

    def rank_event(self, rank: int, event: str, detail: Any = None) -> None:
        """What a rank's PMI session saw: init, finalize, abort, eof, a stream that cannot
        be served (:func:`pm.agent.node_end.rank_event`)."""
        node_end.rank_event(self, rank, event, detail)

    # ------------------------------------------------------------------ KVS
    def appnum(self, rank: int) -> int:
        return self.plan.app_of_rank(rank)

    def universe_size(self) -> int:
        """-usize when given, else the slots of the job's nodes (pm.spawned_jobs.universe_size)."""
        return self.plan.universe_size or self.size

    def native_info(self, rank: int) -> dict[str, Any]:
        proc = self.ranks[rank]
        if self.spawn_answer is not None:
            self.spawn_answer.want()  # (the pre-put keys come with it)
        if self.plan.kvs == "shm" and not self._shm_tried:
            node_start.open_shm(self)
        return {
            "rank": rank, "size": self.size, "local_rank": proc.local_rank,
            "local_size": len(self.local), "appnum": self.appnum(rank),
            "kvsname": self.kvsname, "node": self.vertex, "nnodes": len(self.plan.hosts),
            "host": self.host, "job_id": self.plan.job_id,
            "shm": self.shm.name if self.shm is not None else None,
            # A spawned job: its number, and the keys its spawner pre-put (pm.client.spawn).
            "spawned": self.plan.spawned.job if self.plan.spawned else 0,
            "preput": self.plan.spawned.preput if self.plan.spawned else {},
        }

    def job_attr(self, key: str) -> str | None:
        if key == "universeSize":
            return str(self.universe_size())
        return self.job_attrs.get(key)

    def put(self, rank: int, key: bytes, value: bytes) -> None:
        if self.timeline is not None:
            self.mark("put", rank, key=key.decode("utf-8", "replace"), size=len(value))
        self.kvs.put(rank, key, value)

    def get_now(self, key: bytes) -> bytes | None:
        if self.spawn_answer is not None:
            self.spawn_answer.looked_up(key)
        return self.kvs.values.get(key)  # NodeKVS.get, one call less on the hot path

    def get_from(self, rank: int, src: int, key: bytes) -> asyncio.Future[bytes | None]:
        return self.requests.get_from(rank, src, key)

    def node_attr_put(self, key: str, value: str) -> None:
        self._node_attrs[key] = value
        for fut in self._node_waiters.pop(key, []):
            if not fut.done():
                fut.set_result(value)

    def node_attr_get(self, key: str, wait: bool) -> asyncio.Future[str | None]:
        fut: asyncio.Future[str | None] = self.loop.create_future()
        value = self._node_attrs.get(key)
        if value is not None or not wait:
            fut.set_result(value)
        else:
            self._node_waiters.setdefault(key, []).append(fut)
        return fut

    def name_service(self, action: str, service: str, port: str) -> asyncio.Future[Any]:
        return self.requests.name_service(action, service, port)

    def spawn(self, rank: int, request: SpawnRequest) -> asyncio.Future[SpawnResult]:
        """A new job for ``rank`` (MPI_Comm_spawn): answered once its ranks are started."""
        from pm.agent.spawned_jobs import requests_of

        return requests_of(self).request(rank, request)

    def reserve(self, rank: int, nbytes: int) -> asyncio.Future[int]:
        """A ``pmi.reserve`` block: the id once the node admits ``nbytes`` for ``rank``
        under the plan's watermarks (one budget for all of this job's ranks here)."""
        if getattr(self, "reservations", None) is None:
            from pm.agent.memory import RankReservations

            self.reservations = RankReservations(
                self.plan.mem_high, self.plan.mem_low,
                self.plan.mem_overrun,  # type: ignore[arg-type]  # checked by JobSpec
                where=f"node {self.vertex} ({self.host})")
        return self.reservations.reserve(rank, self.ranks[rank].pid, nbytes,
                                         pidfd=self.procs.pidfd(rank))

    def release(self, rank: int, ident: int) -> None:
        if getattr(self, "reservations", None) is not None:
            self.reservations.release(rank, ident)

    # ------------------------------------------------------------------ collectives
    def collective(self, kind: int, rank: int, value: Any) -> asyncio.Future[Any]:
        if self.spawn_answer is not None:
            self.spawn_answer.want()
        fut = self.coll.collective(kind, rank, value)
        if self.shm_reaper is not None and self._early_colls.get(rank, 0) < EARLY_SAMPLES:
            # MPI_Init makes the rank's segments before its first collectives: see them,
            # once the replies this collective completes are written (the callbacks of a
            # future done now are queued after this one: the look goes behind them).
            self._early_colls[rank] = self._early_colls.get(rank, 0) + 1
            proc = self.ranks.get(rank)
            if proc is not None and proc.pid:
                self.loop.call_soon(self.loop.call_soon, node_end.sample_shm, self, False,
                                    [proc.pid])
        return fut

    def shm_insert(self, items: list[tuple[bytes, bytes]], replace: bool = False) -> bool:
        """Into the node's shared-memory KVS; False (and served from the socket) when full."""
        try:
            self.shm.insert_many(items, replace=replace)
            return True
        except PMError as exc:
            log.warning("node %d: shared-memory KVS full, serving from the socket: %s",
                        self.vertex, exc)
            # Its values may be out of date now (a key put again): no rank reads it any
            # more, this agent serves every key (and the ranks that connect later).
            self.shm.retire()
            self.shm = None
            return False

    def fail_collectives(self, why: str) -> None:
        self.coll.fail(why)
        self.requests.fail(why)
        self.kvs.fail_waiters()

    # ------------------------------------------------------------------ tree messages
    def route(self, dst: int, msg: t.Msg) -> None:
        """Send ``msg`` on its way to vertex ``dst`` (handled here when it is this one;
        :func:`pm.agent.node_msgs.route`)."""
        node_msgs.route(self, dst, msg)

    def from_parent(self, msg: t.Msg) -> None:
        """A message that came down the tree (:func:`pm.agent.node_msgs.from_parent`)."""
        node_msgs.from_parent(self, msg)

    def from_child(self, child: int, msg: t.Msg) -> None:
        """A message that came up from child agent ``child``
        (:func:`pm.agent.node_msgs.from_child`)."""
        node_msgs.from_child(self, child, msg)

    def from_tree(self, msg: t.Msg) -> None:
        """Routed messages, wherever they came from (:func:`pm.agent.node_msgs.from_tree`)."""
        node_msgs.from_tree(self, msg)

    def _down_all(self, msg: t.Msg) -> None:
        if self.children_link is not None:
            for c in self.children:
                self.children_link.send(c, msg)

    def deliver_signal(self, signum: int) -> None:
        """``signum`` to every local rank, and to the ranks of the jobs they spawned."""
        self.procs.signal(signum)
        if self.spawns is not None:
            self.spawns.signal(signum)

    def slurm_signal(self, signum: int) -> None:
        """Slurm's ``signum`` to this agent's step: for the ranks, unless Slurm signalled
        them itself (:func:`pm.agent.node_msgs.slurm_signal`)."""
        node_msgs.slurm_signal(self, signum)

    def slurm_term(self) -> None:
        """Slurm's SIGTERM reached this agent: the head asks slurmctld whether Slurm ends the
        job (:func:`pm.agent.node_msgs.slurm_term`)."""
        node_msgs.slurm_term(self)

    # ------------------------------------------------------------------ ending
    def kill(self, reason: str, grace: float, report: int = 0) -> None:
        """SIGTERM every rank of the subtree, SIGKILL after ``grace`` seconds; ``report``
        (a first kill's): say how the ranks still running stand first
        (:func:`pm.agent.node_end.kill`)."""
        node_end.kill(self, reason, grace, report)

    def close(self) -> None:
        """Release everything; ranks still alive are killed. Idempotent
        (:func:`pm.agent.node_end.close`)."""
        node_end.close(self)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the loop; returns once our tasks have ended and
        the job's /dev/shm files are gone (:func:`pm.agent.node_end.aclose`)."""
        await node_end.aclose(self)


def _launch_dir(cwd: str, vertex: int, host: str) -> str | None:
    """``cwd`` if it is a directory on this node; None (this process's own) otherwise, said
    once, as srun says it."""
    if not cwd:
        return None
    import os

    if os.path.isdir(cwd):
        return cwd
    try:
        here = os.getcwd()
    except OSError:
        here = "?"
    log.warning("%s, pmrun's working directory, does not exist on node %d (%s): its ranks "
                "start in %s", cwd, vertex, host, here)
    return None

