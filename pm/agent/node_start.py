"""How a job starts on a node: what its ranks need first, then their processes.

Before a :class:`~pm.agent.node.JobAgent` starts its node's ranks,
:func:`prepare` readies what they need: the node's topology and the job's copy of
its XML (:mod:`pm.agent.topo_share`), their CPU binding (:mod:`pm.agent.binding`,
a rankfile's slots; cpus the node lacks are refused), and the PMIx server with
the job's namespace when the plan asks for PMIx (:mod:`pm.agent.pmix_job`; it
starts in a thread while the topology is discovered).  :func:`start_ranks` then
spawns them (:class:`~pm.agent.ranks.LocalRanks`), after srun's ``--bcast`` copies
of their programs are placed (:mod:`pm.common.bcast`), unless the job was killed
meanwhile; :func:`adopt_ranks` instead takes over the ranks ``pmrun``'s quick path
started and the PMI it served them.  The node's shared-memory KVS is opened here
too, when the first native client asks for it (:func:`open_shm`).

These are the agent's own steps on its own state (cpusets, topology, environment
and attributes for the ranks, what goes on close): functions of the agent, which
its methods (and :mod:`pm.agent.spawned_jobs`, for a spawned job's ranks) call.
What they need only now and then is imported when they need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from typing import TYPE_CHECKING, Any

from pm.agent.node_end import check_done, watch_shm
from pm.agent.shm_reaper import ShmReaper
from pm.common.output import STDERR
from pm.proto import tree_wire as t
from pm.proto.errors import PMError

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.spawn import Guardian, SpawnError
    from pm.agent.started import StartedRanks

log = logging.getLogger("pm.agent")


async def prepare(agent: JobAgent) -> None:
    """What the node's ranks need before they start: topology XML, shared-memory KVS."""
    if not agent.local or agent.plan.sim_ranks:
        return
    plan = agent.plan
    from pm.agent import topo_share

    # The PMIx server starts (in a thread) while the topology is discovered.
    pmix = agent.owned.spawn(start_pmix(agent)) if plan.pmix else None
    topo = None
    binds = plan.bind_to not in ("", "none") or bool(plan.rank_slots)
    xml = None if binds else topo_share.cached_xml()
    if xml is None:
        try:
            topo = await asyncio.to_thread(topo_share.node_topology)
            xml = topo.xml
        except PMError as exc:
            log.info("agent %d: no topology for the ranks: %s", agent.vertex, exc)
    if topo is not None and binds:
        # Before the job's copy of the XML is made: a binding refused leaves no file
        # (the head's own agent is not closed when its start fails).
        _bind_or_refuse(agent, topo)
    if xml and topo_share.sharing_enabled(agent.base_env()):
        # Copies dead agents left are swept when the job ends here (sweep_node), off
        # the ranks' path (a listing of the temporary directory).
        path = topo_share.write_job_xml(xml, plan.job_id, sweep=False)
        agent.on_close.append(lambda: topo_share.remove_job_xml(path))
        agent.extra_env.update(HWLOC_XMLFILE=path, HWLOC_THISSYSTEM="1")
        agent.job_attrs["PMI_hwloc_xmlfile"] = path
    agent.topology = topo
    if pmix is not None:
        open_pmix(agent, await pmix, topo)


def _bind_or_refuse(agent: JobAgent, topo: Any) -> None:
    """:func:`bind` for the launched job; cpus this node lacks, when its one node is
    pmrun's own machine (the head's agent, no other node), are the command line's
    fault, said before any rank or agent started: :class:`UsageError` (exit 2).  On
    other nodes they are the node's refusal (:class:`BindingError`: the node is lost)."""
    from pm.agent.binding import BindingError, as_spelled

    try:
        bind(agent, topo)
    except BindingError as exc:
        said = as_spelled(str(exc), agent.plan.bind_to, agent.plan.bind_spelled)
        if agent.vertex or agent.children or agent.plan.spawned is not None:
            raise BindingError(said) from None
        from pm.bootstrap.base import head_relays

        if head_relays(agent.plan.bootstrap):
            # (vertex 0 on a host the launcher reached: not pmrun's process)
            raise BindingError(said) from None
        from pm.proto.errors import UsageError

        raise UsageError(said) from None


async def start_pmix(agent: JobAgent) -> Any:
    from pm.agent.pmix_job import PmixJob

    try:
        return await PmixJob.start_server(agent)
    except PMError as exc:
        return exc


def open_pmix(agent: JobAgent, srv: Any, topo: Any) -> None:
    """The job registered with the PMIx server (or the server's failure reported)."""
    from pm.agent.pmix_job import PmixJob

    try:
        if isinstance(srv, PMError):
            raise srv
        job = PmixJob(agent, srv)
        agent.on_close.append(job.close)
        job.register(topo)
        agent.pmix = job
    except PMError as exc:
        # One line naming the node; the head ends the job (no rank starts here).
        agent._pmix_failed = True
        agent.parent.send(t.AgentError(agent.vertex, agent.host, f"cannot serve PMIx: {exc}"))
        return
    early, agent._pmix_early = agent._pmix_early, []
    for msg in early:
        agent.pmix.serve_get(msg)


def _adopt_pmix(agent: JobAgent, nspace: str) -> None:
    """The PMIx namespace the quick path registered for the ranks it started."""
    from pm.agent.pmix_job import PmixJob
    from pm.agent.pmix_server import current

    srv = current()
    assert srv is not None and nspace == agent.plan.kvsname
    job = PmixJob(agent, srv)
    agent.on_close.append(job.close)
    agent.pmix = job
    job.adopt()


def bind(agent: JobAgent, topo: Any, taken: list[frozenset[int]] | None = None) -> None:
    """Each local rank's cpuset; ``taken``: those of the node's ranks already running
    (a spawned job's ranks take the next places, as if launched with them)."""
    from pm.agent.binding import compute_bindings, report_line

    taken = taken or []
    if agent.plan.rank_slots:  # Open MPI's rankfile: each rank's own cores
        agent.cpusets = [_slot_cpus(agent, topo, r) for r in agent.local]
    else:
        b = compute_bindings(topo, len(taken) + len(agent.local), agent.plan.bind_to,
                             agent.plan.map_by or "core")
        if b.notice:
            log.warning("node %d: %s", agent.vertex, b.notice)
        agent.cpusets = None
        if b.cpusets is not None:
            busy = list(taken)
            mine: list[frozenset[int]] = []
            for place in b.cpusets:
                if place in busy:
                    busy.remove(place)
                else:
                    mine.append(place)
            agent.cpusets = mine[:len(agent.local)]
    if agent.plan.report_bindings:
        out = []
        for i, r in enumerate(agent.local):
            cpus = agent.cpusets[i] if agent.cpusets else None
            line = (report_line(r, agent.host, cpus) + "\n").encode()
            out.append(t.RankOutput(r, STDERR, line))
        agent.parent.send(t.Output(out))


def _slot_cpus(agent: JobAgent, topo: Any, rank: int) -> frozenset[int]:
    """A rank's rankfile slot as its CPUs here (all of the node's for no slot)."""
    from pm.agent.binding import BindingError
    from pm.common.rankfile import RankfileError, slot_cpus

    slot = agent.plan.rank_slots[rank]
    if not slot:
        return frozenset(topo.pus)
    try:
        return slot_cpus(slot, topo.cores, topo.packages)
    except RankfileError as exc:
        raise BindingError(f"rankfile: rank {rank} on node {agent.vertex} "
                           f"({agent.host}): {exc}") from None


def open_shm(agent: JobAgent) -> None:
    """Open the node's shared-memory KVS on the first native client (MPI ranks never use it)."""
    agent._shm_tried = True
    from pm.agent.shmkvs import ShmKVSWriter, cleanup_stale

    try:
        cleanup_stale()
        agent.shm = ShmKVSWriter(agent.plan.job_id, agent.vertex)
    except PMError as exc:
        log.warning("node %d: shared-memory KVS unavailable, ranks use the socket: %s",
                    agent.vertex, exc)
        return
    shm = agent.shm
    agent.on_close.append(shm.close)
    # What this node already holds from fences becomes visible in shm too.
    agent.shm_insert(list(agent.kvs.values.items()))


def start_ranks(agent: JobAgent, guardian: Guardian | None = None, shared: bool = False) -> None:
    """Spawn every local rank (synchronously: posix_spawn is fast); ``guardian``: one
    made beforehand for their process group, ``shared``: another job's, whose group
    they join (:meth:`~pm.agent.ranks.LocalRanks.start`)."""
    if not agent.local:
        check_done(agent)
        return
    if agent.killing:
        # Killed while it prepared (a Kill during prepare's awaits: the topology, the
        # PMIx server): the job is over, nothing of it starts here.  Its ranks never
        # ran, so none reports an exit ("-" in -print-all-exitcodes, as for a node that
        # joined too late to start any), and a get of their keys misses at once.
        agent.procs.never_started()
        for rank in agent.ranks:
            agent.kvs.settle(rank)
        check_done(agent)
        return
    if agent.plan.sim_ranks:
        # Ranks emulated in-process (scale studies): everything but processes and sockets.
        from pm.agent.sim import start_sim

        start_sim(agent)
        return
    if agent._pmix_failed:
        from pm.agent.spawn import EXIT_NOT_STARTED, NOT_STARTED
        from pm.agent.watch import ExitStatus

        for proc in agent.ranks.values():  # never started: ended, so the node is done
            proc.status, proc.reason = (ExitStatus(EXIT_NOT_STARTED, 0),
                                         f"{NOT_STARTED}: no PMIx server")
            agent.procs.report(proc)
        return
    if agent.plan.umask >= 0:  # pmrun's (or -umask's): the ranks', and whatever we make
        os.umask(agent.plan.umask)
    base = agent.base_env()
    base.update(agent.extra_env)
    watch_shm(agent, ShmReaper())
    copies = _place_bcast(agent) if agent.plan.bcast else []
    agent.procs.start(base, agent.cpusets, guardian, shared)
    _note_xml(agent)
    if copies and agent.procs.guardian is not None:
        agent.procs.guardian.note(copies)  # gone with the ranks, even if we are killed


def _place_bcast(agent: JobAgent) -> list[str]:
    """srun's --bcast: this node's copies of the programs its ranks run
    (:mod:`pm.common.bcast`), in :attr:`JobAgent.bcast_paths` (a copy that could not be
    written: why, which its ranks fail with); the copies' paths."""
    from pm.agent.spawn import SpawnError
    from pm.common.bcast import dest_path, libs_dir, place

    here = {agent.plan.app_of_rank(r) for r in agent.ranks}
    made = []
    for f in agent.plan.bcast:
        if here.isdisjoint(f.apps):
            continue
        path = dest_path(agent.plan.bcast_dest, agent.plan.job_id, agent.vertex, f.name,
                         agent.launch_dir or os.getcwd())
        placed: str | SpawnError = path
        try:
            place(f, path)
        except OSError as exc:
            placed = SpawnError(f"--bcast: {path}: {exc.strerror or exc}")
        else:
            made.append(path)
            agent.on_close.append(functools.partial(_remove_quietly, path))
            if f.libs:  # --send-libs: its ranks look there first
                made.append(libs_dir(path))
                agent.on_close.append(functools.partial(_remove_quietly, libs_dir(path)))
                for app in f.apps:
                    agent.bcast_libs[app] = libs_dir(path)
        for app in f.apps:
            agent.bcast_paths[app] = placed
    return made


def adopt_ranks(agent: JobAgent, started: StartedRanks) -> None:
    """Take over the ranks ``pmrun``'s quick path started (:mod:`pm.quick`), their
    topology XML and /dev/shm baseline: what :func:`prepare` and :func:`start_ranks`
    would have done; and the PMI it served them (:mod:`pm.agent.pmi_quick`: engines,
    KVS, node attributes, what is left to do).  They are this agent's from now on
    (``started`` lets them go)."""
    path, started.xml_path = started.xml_path, None
    if path:
        from pm.agent import topo_share

        agent.on_close.append(lambda: topo_share.remove_job_xml(path))
        agent.extra_env.update(HWLOC_XMLFILE=path, HWLOC_THISSYSTEM="1")
        agent.job_attrs["PMI_hwloc_xmlfile"] = path
    reaper, started.shm_reaper = started.shm_reaper, None
    watch_shm(agent, reaper or ShmReaper())
    if started.cpusets is not None:  # bound by the quick phase, as bind binds them
        agent.topology, agent.cpusets = started.topology, started.cpusets
    started.topology = started.cpusets = None
    nspace, started.pmix = started.pmix, None
    if nspace is not None:
        _adopt_pmix(agent, nspace)
    if started.pmi is not None:
        # The quick phase served their PMI: its KVS and node attributes are the node's.
        agent.kvs = started.pmi.kvs
        agent._node_attrs.update(started.pmi.node_attrs)
    agent.procs.adopt(started)
    _note_xml(agent)


def _note_xml(agent: JobAgent) -> None:
    """The job's topology copy goes with the ranks' guardian too, if this agent dies.
    A spawned job's ranks read the launched job's copy: its guardian, which goes
    when the spawned job ends, must not remove it (the launched job's does)."""
    path = agent.extra_env.get("HWLOC_XMLFILE")
    if path and agent.procs.guardian is not None and agent.plan.spawned is None:
        agent.procs.guardian.note([path])


def _remove_quietly(path: str) -> None:
    """Remove the file or folder ``path``, if it is there."""
    import shutil

    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    with contextlib.suppress(OSError):
        os.unlink(path)
