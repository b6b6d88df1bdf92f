"""The agent's side of one job: the node's ranks, the PMI they are served, aggregation.

A :class:`JobAgent` is one vertex of the job's tree.  It owns three parts:
its ranks as processes (spawn, pipes, stdin, exits, the kill) in
:class:`pm.agent.ranks.LocalRanks`, collectives in
:class:`pm.agent.coll_shell.NodeCollectives`, and direct gets of other nodes'
keys and the name service in :class:`pm.agent.tree_requests.TreeRequests`.
This module keeps the node's KVS, is the host the ranks' PMI sessions talk
to, and routes the tree messages the parts exchange.  Its *parent* is the
next agent up (or, for vertex 0, the head in the same process); its
*children* are agents it started itself.  Everything it says travels as
``pm.proto.tree_wire`` messages through :class:`Uplink`/:class:`Downlinks`, so
the same code runs in-process under the head and in a separate ``pm-agent``
process.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from pm.agent.coll_shell import NodeCollectives
from pm.agent.collectives import report_counts
from pm.agent.kvs import NodeKVS
from pm.agent.owned import Owned
from pm.agent.pmi_actions import Wire
from pm.agent.ranks import LocalRanks, PmiPhase, RankLife, RankProc
from pm.agent.shm_reaper import ShmReaper, sweep_node
from pm.agent.spawn_answer import SpawnAnswer
from pm.agent.step_signals import PAIRED
from pm.agent.tree_requests import TreeRequests
from pm.common.kary_tree import Tree
from pm.common.mapping import local_ranks
from pm.common.output import STDERR
from pm.jobenv import host_own, ranks_env
from pm.proto import tree_wire as t
from pm.proto.errors import PMError
from pm.proto.plan import STDIN_ALL, JobPlan

log = logging.getLogger("pm.agent")

#: How long a rank may live after closing its PMI connection before finalize.
EOF_GRACE = 1.0
#: Seconds between two looks at which /dev/shm files the ranks map.
SHM_SAMPLE_PERIOD = 2.0
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


class AgentState(enum.Enum):
    """Where a vertex is in its job."""

    RUNNING = "running"
    KILLING = "killing"  # the job is being killed: what ends now is the kill's doing
    DONE = "done"  # every rank of the subtree ended and Done went up


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
        #: (:meth:`_place_bcast`).
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
        #: was told (:meth:`_check_never_init`).
        self._never_init: list[tuple[int, str, int]] = []
        self._told_never_init = False
        self._gone_told: set[int] = set()  # local ranks told gone (_gone)
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
        #: (report_when_needed).
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
        """What the node's ranks need before they start: topology XML, shared-memory KVS."""
        if not self.local or self.plan.sim_ranks:
            return
        plan = self.plan
        from pm.agent import topo_share

        # The PMIx server starts (in a thread) while the topology is discovered.
        pmix = self.owned.spawn(self._start_pmix()) if plan.pmix else None
        topo = None
        binds = plan.bind_to not in ("", "none") or bool(plan.rank_slots)
        xml = None if binds else topo_share.cached_xml()
        if xml is None:
            try:
                topo = await asyncio.to_thread(topo_share.node_topology)
                xml = topo.xml
            except PMError as exc:
                log.info("agent %d: no topology for the ranks: %s", self.vertex, exc)
        if topo is not None and binds:
            # Before the job's copy of the XML is made: a binding refused leaves no file
            # (the head's own agent is not closed when its start fails).
            self._bind_or_refuse(topo)
        if xml and topo_share.sharing_enabled(self.base_env()):
            # Copies dead agents left are swept when the job ends here (sweep_node), off
            # the ranks' path (a listing of the temporary directory).
            path = topo_share.write_job_xml(xml, plan.job_id, sweep=False)
            self.on_close.append(lambda: topo_share.remove_job_xml(path))
            self.extra_env.update(HWLOC_XMLFILE=path, HWLOC_THISSYSTEM="1")
            self.job_attrs["PMI_hwloc_xmlfile"] = path
        self.topology = topo
        if pmix is not None:
            self._open_pmix(await pmix, topo)

    def _bind_or_refuse(self, topo: Any) -> None:
        """:meth:`_bind` for the launched job; cpus this node lacks, when its one node is
        pmrun's own machine (the head's agent, no other node), are the command line's
        fault, said before any rank or agent started: :class:`UsageError` (exit 2).  On
        other nodes they are the node's refusal (:class:`BindingError`: the node is lost)."""
        from pm.agent.binding import BindingError, as_spelled

        try:
            self._bind(topo)
        except BindingError as exc:
            said = as_spelled(str(exc), self.plan.bind_to, self.plan.bind_spelled)
            if self.vertex or self.children or self.plan.spawned is not None:
                raise BindingError(said) from None
            from pm.bootstrap.base import head_relays

            if head_relays(self.plan.bootstrap):
                # (vertex 0 on a host the launcher reached: not pmrun's process)
                raise BindingError(said) from None
            from pm.proto.errors import UsageError

            raise UsageError(said) from None

    async def _start_pmix(self) -> Any:
        from pm.agent.pmix_job import PmixJob

        try:
            return await PmixJob.start_server(self)
        except PMError as exc:
            return exc

    def _open_pmix(self, srv: Any, topo: Any) -> None:
        """The job registered with the PMIx server (or the server's failure reported)."""
        from pm.agent.pmix_job import PmixJob

        try:
            if isinstance(srv, PMError):
                raise srv
            job = PmixJob(self, srv)
            self.on_close.append(job.close)
            job.register(topo)
            self.pmix = job
        except PMError as exc:
            # One line naming the node; the head ends the job (no rank starts here).
            self._pmix_failed = True
            self.parent.send(t.AgentError(self.vertex, self.host, f"cannot serve PMIx: {exc}"))
            return
        early, self._pmix_early = self._pmix_early, []
        for msg in early:
            self.pmix.serve_get(msg)

    def _adopt_pmix(self, nspace: str) -> None:
        """The PMIx namespace the quick path registered for the ranks it started."""
        from pm.agent.pmix_job import PmixJob
        from pm.agent.pmix_server import current

        srv = current()
        assert srv is not None and nspace == self.plan.kvsname
        job = PmixJob(self, srv)
        self.on_close.append(job.close)
        self.pmix = job
        job.adopt()

    def _bind(self, topo: Any, taken: list[frozenset[int]] | None = None) -> None:
        """Each local rank's cpuset; ``taken``: those of the node's ranks already running
        (a spawned job's ranks take the next places, as if launched with them)."""
        from pm.agent.binding import compute_bindings, report_line

        taken = taken or []
        if self.plan.rank_slots:  # Open MPI's rankfile: each rank's own cores
            self.cpusets = [self._slot_cpus(topo, r) for r in self.local]
        else:
            b = compute_bindings(topo, len(taken) + len(self.local), self.plan.bind_to,
                                 self.plan.map_by or "core")
            if b.notice:
                log.warning("node %d: %s", self.vertex, b.notice)
            self.cpusets = None
            if b.cpusets is not None:
                busy = list(taken)
                mine: list[frozenset[int]] = []
                for place in b.cpusets:
                    if place in busy:
                        busy.remove(place)
                    else:
                        mine.append(place)
                self.cpusets = mine[:len(self.local)]
        if self.plan.report_bindings:
            out = []
            for i, r in enumerate(self.local):
                cpus = self.cpusets[i] if self.cpusets else None
                line = (report_line(r, self.host, cpus) + "\n").encode()
                out.append(t.RankOutput(r, STDERR, line))
            self.parent.send(t.Output(out))

    def _slot_cpus(self, topo: Any, rank: int) -> frozenset[int]:
        """A rank's rankfile slot as its CPUs here (all of the node's for no slot)."""
        from pm.agent.binding import BindingError
        from pm.common.rankfile import RankfileError, slot_cpus

        slot = self.plan.rank_slots[rank]
        if not slot:
            return frozenset(topo.pus)
        try:
            return slot_cpus(slot, topo.cores, topo.packages)
        except RankfileError as exc:
            raise BindingError(f"rankfile: rank {rank} on node {self.vertex} "
                               f"({self.host}): {exc}") from None

    def _open_shm(self) -> None:
        """Open the node's shared-memory KVS on the first native client (MPI ranks never use it)."""
        self._shm_tried = True
        from pm.agent.shmkvs import ShmKVSWriter, cleanup_stale

        try:
            cleanup_stale()
            self.shm = ShmKVSWriter(self.plan.job_id, self.vertex)
        except PMError as exc:
            log.warning("node %d: shared-memory KVS unavailable, ranks use the socket: %s",
                        self.vertex, exc)
            return
        shm = self.shm
        self.on_close.append(shm.close)
        # What this node already holds from fences becomes visible in shm too.
        self.shm_insert(list(self.kvs.values.items()))

    def start_ranks(self, guardian: Guardian | None = None, shared: bool = False) -> None:
        """Spawn every local rank (synchronously: posix_spawn is fast); ``guardian``: one
        made beforehand for their process group, ``shared``: another job's, whose group
        they join (:meth:`LocalRanks.start`)."""
        if not self.local:
            self._check_done()
            return
        if self.killing:
            # Killed while it prepared (a Kill during prepare's awaits: the topology, the
            # PMIx server): the job is over, nothing of it starts here.  Its ranks never
            # ran, so none reports an exit ("-" in -print-all-exitcodes, as for a node that
            # joined too late to start any), and a get of their keys misses at once.
            self.procs.never_started()
            for rank in self.ranks:
                self.kvs.settle(rank)
            self._check_done()
            return
        if self.plan.sim_ranks:
            # Ranks emulated in-process (scale studies): everything but processes and sockets.
            from pm.agent.sim import start_sim

            start_sim(self)
            return
        if self._pmix_failed:
            from pm.agent.spawn import EXIT_NOT_STARTED, NOT_STARTED
            from pm.agent.watch import ExitStatus

            for proc in self.ranks.values():  # never started: ended, so the node is done
                proc.status, proc.reason = (ExitStatus(EXIT_NOT_STARTED, 0),
                                             f"{NOT_STARTED}: no PMIx server")
                self.procs.report(proc)
            return
        if self.plan.umask >= 0:  # pmrun's (or -umask's): the ranks', and whatever we make
            os.umask(self.plan.umask)
        base = self.base_env()
        base.update(self.extra_env)
        self._watch_shm(ShmReaper())
        copies = self._place_bcast() if self.plan.bcast else []
        self.procs.start(base, self.cpusets, guardian, shared)
        self._note_xml()
        if copies and self.procs.guardian is not None:
            self.procs.guardian.note(copies)  # gone with the ranks, even if we are killed

    def _place_bcast(self) -> list[str]:
        """srun's --bcast: this node's copies of the programs its ranks run
        (:mod:`pm.common.bcast`), in :attr:`bcast_paths` (a copy that could not be written:
        why, which its ranks fail with); the copies' paths."""
        from pm.agent.spawn import SpawnError
        from pm.common.bcast import dest_path, libs_dir, place

        here = {self.plan.app_of_rank(r) for r in self.ranks}
        made = []
        for f in self.plan.bcast:
            if here.isdisjoint(f.apps):
                continue
            path = dest_path(self.plan.bcast_dest, self.plan.job_id, self.vertex, f.name,
                             self.launch_dir or os.getcwd())
            placed: str | SpawnError = path
            try:
                place(f, path)
            except OSError as exc:
                placed = SpawnError(f"--bcast: {path}: {exc.strerror or exc}")
            else:
                made.append(path)
                self.on_close.append(functools.partial(_remove_quietly, path))
                if f.libs:  # --send-libs: its ranks look there first
                    made.append(libs_dir(path))
                    self.on_close.append(functools.partial(_remove_quietly, libs_dir(path)))
                    for app in f.apps:
                        self.bcast_libs[app] = libs_dir(path)
            for app in f.apps:
                self.bcast_paths[app] = placed
        return made

    def adopt_ranks(self, started: StartedRanks) -> None:
        """Take over the ranks ``pmrun``'s quick path started (:mod:`pm.quick`), their
        topology XML and /dev/shm baseline: what :meth:`prepare` and :meth:`start_ranks`
        would have done; and the PMI it served them (:mod:`pm.agent.pmi_quick`: engines,
        KVS, node attributes, what is left to do).  They are this agent's from now on
        (``started`` lets them go)."""
        path, started.xml_path = started.xml_path, None
        if path:
            from pm.agent import topo_share

            self.on_close.append(lambda: topo_share.remove_job_xml(path))
            self.extra_env.update(HWLOC_XMLFILE=path, HWLOC_THISSYSTEM="1")
            self.job_attrs["PMI_hwloc_xmlfile"] = path
        reaper, started.shm_reaper = started.shm_reaper, None
        self._watch_shm(reaper or ShmReaper())
        if started.cpusets is not None:  # bound by the quick phase, as _bind binds them
            self.topology, self.cpusets = started.topology, started.cpusets
        started.topology = started.cpusets = None
        nspace, started.pmix = started.pmix, None
        if nspace is not None:
            self._adopt_pmix(nspace)
        if started.pmi is not None:
            # The quick phase served their PMI: its KVS and node attributes are the node's.
            self.kvs = started.pmi.kvs
            self._node_attrs.update(started.pmi.node_attrs)
        self.procs.adopt(started)
        self._note_xml()

    def _note_xml(self) -> None:
        """The job's topology copy goes with the ranks' guardian too, if this agent dies.
        A spawned job's ranks read the launched job's copy: its guardian, which goes
        when the spawned job ends, must not remove it (the launched job's does)."""
        path = self.extra_env.get("HWLOC_XMLFILE")
        if path and self.procs.guardian is not None and self.plan.spawned is None:
            self.procs.guardian.note([path])

    def _watch_shm(self, reaper: ShmReaper) -> None:
        self.shm_reaper = reaper
        self._shm_sampler = self.owned.call_later(SHM_SAMPLE_PERIOD, self._sample_shm, True)

    def _live_pids(self) -> list[int]:
        return list(self._live())

    def _live(self) -> Iterator[int]:
        return (p.pid for p in self.ranks.values() if p.pid and p.status is None)

    def _sample_shm(self, again: bool = False, pids: list[int] | None = None) -> None:
        """Note the /dev/shm files the live ranks map (they go when the job ends, and with
        the ranks' guardian if this agent dies first)."""
        if self.shm_reaper is None:
            return
        # (Lazily: the pids are walked only if /dev/shm has new files; a rank's failure
        # samples, and thousands can fail at once.)
        fresh = self.shm_reaper.sample(self._live() if pids is None else pids)
        if fresh and self.procs.guardian is not None:
            self.procs.guardian.note(fresh)
        if again:
            self._shm_sampler = self.owned.call_later(SHM_SAMPLE_PERIOD, self._sample_shm, True)

    def _sample_shm_due(self) -> None:
        self._shm_sample_due = False
        self._sample_shm()

    # ------------------------------------------------------------------ output, exits
    def rank_output(self, rank: int, stream: int, lines: bytes) -> None:
        """Bytes a local rank wrote (pm.agent.ranks: complete lines, a long line's piece,
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
        self._check_done()

    def rank_ended(self, proc: RankProc) -> None:
        """A local rank ended and its pipes are drained (pm.agent.ranks): report it."""
        st = proc.status
        assert st is not None
        if not st.ok and not self._shm_sample_due:
            # What the others map, before the job is killed: once for every rank that
            # failed meanwhile (scheduled before the flush that reports them).
            self._shm_sample_due = True
            self.loop.call_soon(self._sample_shm_due)
        self._exits.append(t.RankExit(proc.rank, self.vertex, st.code, st.signal, proc.reason,
                                      proc.ended_at))
        if self._held_aborts:
            self._release_aborts(proc.rank)
        if self.spawn_answer is not None:
            self.spawn_answer.ended(proc.rank)
        self.kvs.settle(proc.rank)
        if getattr(self, "reservations", None) is not None:
            self.reservations.release_rank(proc.rank)  # a rank that died holds nothing
        self._schedule_flush()
        self._gone(proc)  # (after its exit: the head names what came first)

    def _gone(self, proc: RankProc) -> None:
        """A rank that ended, and whose PMI stream did (all it asked is read), without
        finalizing: the job's collectives it has not joined can never complete."""
        st = proc.status
        if (st is None or not proc.pmi_eof
                or self.plan.spawned is not None  # (a spawned job's: not followed)
                or self.state is AgentState.KILLING  # (pmrun ends them)
                or proc.rank in self._gone_told):
            return
        self._gone_told.add(proc.rank)
        how = f"was killed by {_signal_name(st.signal)}" if st.signal else \
            f"exited with code {st.code}"
        code = 128 + st.signal if st.signal else st.code or 1
        if proc.pmi is PmiPhase.FINALIZED:  # gone only for a collective that waits for it
            self.coll.rank_finished(proc.rank, f"finalized and {how}", code)
            return
        self.coll.rank_gone(proc.rank, how, code)
        if proc.pmi is PmiPhase.NONE:
            self._never_init.append((proc.rank, how, code))
            self._check_never_init()

    def _check_never_init(self) -> None:
        """A rank that ended before PMI init while another of this node's ranks initialized
        (PMI-1, PMI-2 or PMIx: an MPI library's): that one's ``MPI_Init`` waits for it for
        ever (in a fence, or in the node's shared memory, where pmrun sees nothing).
        Open MPI's own launcher fails such a job too.  (pm.client's native protocol is not
        MPI: its ranks need not all take part.)"""
        if not self._never_init or self._told_never_init:
            return
        mpi = next((p.rank for p in self.ranks.values() if p.pmi is not PmiPhase.NONE and (
            p.session is None or p.session.engine is None
            or p.session.engine.protocol is not Wire.NATIVE)), None)
        if mpi is None:
            return
        self._told_never_init = True
        rank, how, code = self._never_init[0]
        self.loop.call_soon(self.parent.send, t.Stuck(self.vertex, rank, how, code, 0, 0, mpi))

    def stdin_taken(self, nbytes: int) -> None:
        """Every local rank that reads pmrun's stdin took ``nbytes`` more of it
        (pm.agent.ranks): the head may send that much again once every node's did."""
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

    def report_when_needed(self, report: Callable[[bool], None]) -> None:
        """Call ``report`` (with False, then True; or True at once) as the local ranks of
        this spawned job initialize and need their spawner (:mod:`pm.agent.spawn_answer`)."""
        waiting = {r for r, p in self.ranks.items()
                   if p.pmi is PmiPhase.NONE and p.life is not RankLife.REPORTED}

        def told(needed: bool) -> None:
            if needed:
                self.spawn_answer = None
            report(needed)

        answer = self.spawn_answer = SpawnAnswer(
            waiting, self.plan.spawned.preput if self.plan.spawned is not None else (),
            told, lambda delay: self.owned.call_later(delay, answer.expire))
        if any(p.life is RankLife.REPORTED for p in self.ranks.values()):
            answer.want()  # (one ended)
        else:
            answer.check()

    def rank_event(self, rank: int, event: str, detail: Any = None) -> None:
        proc = self.ranks[rank]
        if self.timeline is not None:
            self.mark(_EVENT_MARKS.get(event, event), rank)
        if event == "init":
            proc.pmi = PmiPhase.INITIALIZED
            self._check_never_init()
            if self.spawn_answer is not None:
                self.spawn_answer.initialized(rank)
        elif event == "finalize":
            proc.pmi = PmiPhase.FINALIZED
            self.kvs.settle(rank)
        elif event == "abort":
            code, message = detail
            # A local rank a signal ended before the abort (which is most likely what
            # the aborting rank noticed) goes up first, as do the exits not sent yet:
            # the head names the first failure.
            killed = self.procs.killed(rank)
            abort = t.Abort(rank, self.vertex, code, message, time.time())
            if killed:
                self._held_aborts.append((killed, abort))
            elif self._exits:
                self._aborts.append(abort)  # (their flush is scheduled)
            else:
                self.parent.send(abort)
        elif event == "eof":
            proc.pmi_eof = True
            if not detail and proc.status is None:
                self.owned.call_later(EOF_GRACE, self._eof_without_finalize, proc)
            self._gone(proc)
        elif event == "error" and proc.status is None and not self.killing:
            # A PMI stream that cannot be followed: the rank fails, named with the cause.
            proc.reason = f"sent a PMI stream that cannot be served: {detail}"
            self._exits.append(t.RankExit(proc.rank, self.vertex, -1, 0, proc.reason))
            self._schedule_flush()

    def _release_aborts(self, rank: int) -> None:
        """Local ``rank`` is reported: the aborts held for it alone go up after its exit."""
        held = []
        for killed, abort in self._held_aborts:
            killed.discard(rank)
            if killed:
                held.append((killed, abort))
            else:
                self._aborts.append(abort)
        self._held_aborts = held

    def _eof_without_finalize(self, proc: RankProc) -> None:
        if proc.status is None and not self.killing:
            proc.reason = "closed its PMI connection before finalize"
            self._exits.append(t.RankExit(proc.rank, self.vertex, -1, 0, proc.reason))
            self._schedule_flush()

    def _check_done(self) -> None:
        if self.state is AgentState.DONE:
            return
        if all(p.life is RankLife.REPORTED for p in self.ranks.values()) and (
                self._children_done.issuperset(self.children)):
            if self._out or self._exits:
                self._schedule_flush()
                return
            self.state = AgentState.DONE
            report_counts(self.vertex, self.coll.machine)  # only with PM_COUNT_MSGS set
            # Per-node figures of the whole subtree travel up with Done.
            kvs_bytes = {str(self.vertex): [
                self.kvs.bytes, self.shm.bytes_used if self.shm is not None else 0]}
            timeline = list(self.timeline or [])
            for st in self._child_stats:
                kvs_bytes.update(st.get("kvs_bytes", {}))
                timeline.extend(st.get("timeline", []))
            stats: dict[str, Any] = {"kvs_bytes": kvs_bytes}
            if self.plan.sim_ranks:
                from pm.agent.sim import merge_stats

                stats["sim"] = merge_stats(self.sim_stats,
                                           [st.get("sim") for st in self._child_stats])
            if self.timeline is not None:
                timeline.append([time.time(), self.vertex, -1, "done", {}])
                stats["timeline"] = timeline
            self.parent.send(t.Done(self.vertex, stats))
            if not self.done.done():
                self.done.set_result(None)

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
            self._open_shm()
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
                self.loop.call_soon(self.loop.call_soon, self._sample_shm, False, [proc.pid])
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
        """Send ``msg`` on its way to vertex ``dst`` (handled here when it is this one)."""
        if dst == self.vertex:
            self.from_tree(msg)
            return
        hop = self.tree.route(self.vertex, dst)
        if hop == self.tree.parent(self.vertex):
            self.parent.send(msg)
        elif self.children_link is not None:
            self.children_link.send(hop, msg)

    def from_parent(self, msg: t.Msg) -> None:
        """A message that came down the tree."""
        try:
            self._from_parent(msg)
        except Exception as exc:
            self._internal_error(msg, exc)

    def from_child(self, child: int, msg: t.Msg) -> None:
        """A message that came up from child agent ``child``."""
        try:
            self._from_child(child, msg)
        except Exception as exc:
            self._internal_error(msg, exc)

    def _internal_error(self, msg: t.Msg, exc: Exception) -> None:
        # A bug here would leave collectives waiting for ever: end the job instead,
        # naming the node, as for any other fatal agent error.
        log.exception("agent %d failed handling %s", self.vertex, type(msg).__name__)
        self.parent.send(t.AgentError(self.vertex, self.host,
                                      f"internal error handling {type(msg).__name__}: {exc!r}"))

    def _from_parent(self, msg: t.Msg) -> None:
        if isinstance(msg, t.CollOut):
            self.coll.from_parent(msg)
        elif isinstance(msg, (t.Sub, t.SpawnLaunch)):
            from pm.agent.spawned_jobs import on_agent

            spawns = on_agent(self)
            if isinstance(msg, t.Sub):
                spawns.from_parent(msg)
            else:
                spawns.launch(msg)
        elif isinstance(msg, t.Kill):
            self.kill(msg.reason, msg.grace, msg.report)
        elif isinstance(msg, t.OutputGone):
            self._down_all(msg)
            self.procs.output_gone(msg.stream)
            if self.spawns is not None:
                self.spawns.output_gone(msg.stream)
        elif isinstance(msg, t.Signal):
            self._down_all(msg)
            if self.step_signals is None or self.step_signals.from_tree(msg.signum):
                self.deliver_signal(msg.signum)
            if msg.signum in (signal.SIGTSTP, signal.SIGCONT):
                # After a SIGTSTP the head stops itself until SIGCONT: a parent that
                # watches the link for silence (ParentLink) holds that watch meanwhile.
                hold = getattr(self.parent, "hold", None)
                if hold is not None:
                    hold(msg.signum == signal.SIGTSTP)
        else:
            self.from_tree(msg)

    def deliver_signal(self, signum: int) -> None:
        """``signum`` to every local rank, and to the ranks of the jobs they spawned."""
        self.procs.signal(signum)
        if self.spawns is not None:
            self.spawns.signal(signum)

    def slurm_signal(self, signum: int) -> None:
        """Slurm's ``signum`` to this agent's step (pm.agent.step_signals): for the ranks,
        unless Slurm signalled them itself (their guardian tells, within
        :data:`pm.agent.step_signals.PROBE` seconds, the first time it can: until then the
        signals wait, in order)."""
        from pm.agent.spawn import GUARDIAN_BLOCKS

        if signum not in GUARDIAN_BLOCKS or self.slurm_reaches is False:
            self.deliver_signal(signum)
        elif self.slurm_reaches is None:
            self._probing.append(signum)
            if len(self._probing) == 1:
                from pm.agent.step_signals import PROBE

                self._probe(time.monotonic() + PROBE)

    def _probe(self, until: float) -> None:
        guardian = self.procs.guardian
        seen = guardian.got(self._probing[0]) if guardian is not None else None
        if seen is False and time.monotonic() < until:
            self.owned.call_later(0.01, self._probe, until)
            return
        if seen is not None:
            self.slurm_reaches = seen
            log.debug("agent %d: Slurm's signals %s our ranks themselves", self.vertex,
                      "reach" if seen else "do not reach")
        waiting, self._probing = self._probing, []
        if not seen:
            for signum in waiting:
                self.deliver_signal(signum)

    def slurm_term(self) -> None:
        """Slurm's SIGTERM reached this agent: the head asks slurmctld whether Slurm ends the
        job (told before any rank's end that follows)."""
        self._tell_term(t.StepSignal(self.vertex, signal.SIGTERM))

    def _tell_term(self, msg: t.StepSignal) -> None:
        """Up the tree: once from this subtree for the SIGTERMs of PAIRED seconds (a time
        limit's two, every node's)."""
        now = time.monotonic()
        if now - self._term_told >= PAIRED:
            self._term_told = now
            self.parent.send(msg)

    def _from_child(self, child: int, msg: t.Msg) -> None:
        if isinstance(msg, t.CollIn):
            self.coll.from_child(child, msg)
        elif isinstance(msg, t.Done):
            self._children_done.add(child)
            self._child_stats.append(msg.stats)
            self._check_done()
        elif isinstance(msg, t.NameReq):
            self.requests.name_req(msg)
        elif isinstance(msg, t.Sub):
            from pm.agent.spawned_jobs import on_agent

            on_agent(self).from_child(child, msg)
        elif isinstance(msg, t.StdinAck) and self.plan.stdin_rank == STDIN_ALL:
            self._stdin_children[child] = self._stdin_children.get(child, 0) + msg.nbytes
            self._stdin_up()
        elif isinstance(msg, t.Gone) and self.vertex == 0:
            self.coll.gone(msg)
        elif isinstance(msg, t.StepSignal):
            self._tell_term(msg)
        elif isinstance(msg, (t.Output, t.Exits, t.Abort, t.AgentError, t.AgentGone,
                              t.Started, t.StdinAck, t.SpawnReq, t.Stuck, t.Gone,
                              t.Report)):
            self.parent.send(msg)
        else:
            self.from_tree(msg)

    def from_tree(self, msg: t.Msg) -> None:
        """Routed messages, wherever they came from."""
        if isinstance(msg, t.GetReq):
            if msg.dst != self.vertex:
                self.route(msg.dst, msg)
                return
            if self.plan.pmix and msg.key.startswith(b"\x00pmix."):
                # A rank's PMIx data, from the PMIx server (once it runs here).
                if self.pmix is not None:
                    self.pmix.serve_get(msg)
                else:
                    self._pmix_early.append(msg)
                return
            self.requests.serve_get(msg)
        elif isinstance(msg, (t.GetResp, t.NameResp)):
            if msg.dst != self.vertex:
                self.route(msg.dst, msg)
                return
            self.requests.response(msg)
        elif isinstance(msg, t.Winsize):  # srun's --pty: pmrun's terminal, resized
            if msg.dst != self.vertex:
                self.route(msg.dst, msg)
            else:
                self.procs.winsize(msg.rows, msg.cols)
        elif isinstance(msg, t.Stdin):
            if msg.dst == STDIN_ALL:  # --stdin all: to every node, whose ranks all read it
                for child in self.children:
                    self.route(child, msg)
                self.procs.stdin(msg.data, msg.eof)
            elif msg.dst != self.vertex:
                self.route(msg.dst, msg)
            else:
                self.procs.stdin(msg.data, msg.eof)
        elif isinstance(msg, t.OutputAck):
            if msg.dst != self.vertex:
                self.route(msg.dst, msg)
            else:
                self.procs.output_credit(msg.nbytes)
        elif isinstance(msg, t.SpawnResp):
            if msg.dst != self.vertex:
                self.route(msg.dst, msg)
            elif self.spawn_requests is not None:
                self.spawn_requests.response(msg)
        elif isinstance(msg, t.AgentGone):
            # Down the tree: the head heard (from srun) that a node below us is lost.
            if not 0 < msg.vertex < len(self.plan.hosts):
                return
            up = self.tree.parent(msg.vertex)
            if up is not None and up != self.vertex:
                self.route(up, msg)
            elif up == self.vertex:
                forget = getattr(self.children_link, "forget", None)  # (not a spawned job's)
                if forget is not None:
                    forget(msg.vertex, msg.text)
        else:
            log.warning("agent %d: unexpected %s", self.vertex, type(msg).__name__)

    def _down_all(self, msg: t.Msg) -> None:
        if self.children_link is not None:
            for c in self.children:
                self.children_link.send(c, msg)

    # ------------------------------------------------------------------ ending
    def kill(self, reason: str, grace: float, report: int = 0) -> None:
        """SIGTERM every rank of the subtree, SIGKILL after ``grace`` seconds; ``report``
        (a first kill's): say how the ranks still running stand first
        (:mod:`pm.agent.state_report`)."""
        first = self.state is AgentState.RUNNING
        if first:
            self.state = AgentState.KILLING
        self._down_all(t.Kill(reason, grace, report if first else 0))
        if first:
            log.debug("agent %d: killing ranks: %s", self.vertex, reason)
            self._sample_shm()
            if report and (self.local or (self.spawns is not None and self.spawns.jobs)):
                self._reporting = self.owned.spawn(self._report_then_kill(reason, grace, report))
                return
        elif self._reporting is not None and not self._reporting.done():
            # Killed again while reporting (a second Ctrl-C): at once, without the rest.
            self._reporting.cancel()
            first = True  # (the report's kill never began)
        self._kill_ranks(reason, grace, first)

    async def _report_then_kill(self, reason: str, grace: float, report: int) -> None:
        from pm.agent.state_report import report_lines

        try:
            lines = await report_lines(self, report)
        except Exception as exc:  # (a report must never keep the job from its end)
            lines = [f"node {self.vertex} ({self.host}): no report of its ranks: {exc}"]
        if lines:
            self.parent.send(t.Report(self.vertex, lines))
        self._kill_ranks(reason, grace, True)

    def _kill_ranks(self, reason: str, grace: float, first: bool) -> None:
        self.fail_collectives(reason)
        self.procs.kill(grace, first)
        if self.spawns is not None:
            self.spawns.kill(reason, grace)
        if self.spawn_requests is not None:
            self.spawn_requests.fail(reason)

    def close(self) -> None:
        """Release everything; ranks still alive are killed. Idempotent.  Removing the
        job's /dev/shm files may wait up to a second for killed ranks: :meth:`aclose`
        does that in a thread, this in the caller's."""
        if self.spawns is not None:
            self.spawns.close()
        reap, guardian = self._close()
        clean = self._reap_shm(*reap) if reap is not None else False
        if guardian is not None:
            guardian.release(clean=clean)

    async def aclose(self) -> None:
        """:meth:`close` without blocking the loop; returns once our tasks have ended and
        the job's /dev/shm files are gone (a child agent exits right after)."""
        if self.spawns is not None:
            await self.spawns.aclose()
        killed = self._live_pids()  # (killed by _close: ours to collect)
        reap, guardian = self._close()
        clean = False
        if reap is not None:
            if reap[1]:  # ranks just killed: their files may wait up to a second
                clean = await asyncio.to_thread(self._reap_shm, *reap)
            else:  # nothing to wait for (and no thread pool to start, 2 ms of CPU)
                clean = self._reap_shm(*reap)
        if guardian is not None:
            guardian.release(clean=clean)
        if killed:
            from pm.agent.watch import killed_reaped

            await killed_reaped(killed)
        await self.procs.owned.aclose()
        await self.owned.aclose()
        if getattr(self, "reservations", None) is not None:
            await self.reservations.aclose()

    def _close(self) -> tuple[tuple[ShmReaper, list[int]] | None, Guardian | None]:
        """All of closing but the /dev/shm files: the reaper and the ranks just killed, and
        the ranks' guardian, still to be let go (:meth:`_reap_shm` tells it how)."""
        self.owned.cancel()
        self._shm_sampler = None
        if getattr(self, "reservations", None) is not None:
            self.reservations.close()
        live = self._live_pids()
        guardian = self.procs.close(keep_guardian=True)
        reaper, self.shm_reaper = self.shm_reaper, None
        for cb in self.on_close:
            with contextlib.suppress(Exception):
                cb()
        self.on_close.clear()
        return ((reaper, live) if reaper is not None else None), guardian

    def _reap_shm(self, reaper: ShmReaper, dying: list[int]) -> bool:
        """Remove the /dev/shm files the ranks left (``dying``: ranks just killed), and what
        agents killed by SIGKILL left on this node.  True when every rank had ended and no
        MPI segment is left that could be theirs: the guardian need not look for any in
        every process's maps (tens of ms of CPU after each job)."""
        try:
            for name in reaper.reap(dying):
                log.debug("agent %d: removed /dev/shm/%s", self.vertex, name)
            sweep_node()
            return not dying and not reaper.candidates()
        except Exception as exc:  # never worth failing the job's end for
            log.warning("agent %d: cleaning /dev/shm failed: %s", self.vertex, exc)
            return False


#: Profile names of the PMI events a session reports.
_EVENT_MARKS = {"init": "PMI init", "finalize": "finalize", "abort": "abort", "eof": "PMI eof"}


def _remove_quietly(path: str) -> None:
    """Remove the file or folder ``path``, if it is there."""
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        os.unlink(path)


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


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
