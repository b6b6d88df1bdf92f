"""Spawned jobs on an agent: their part on this node, and this node's ranks' spawn requests.

A job spawned by ``MPI_Comm_spawn`` (or ``pm.client``'s ``spawn``) runs on the
agents of the job that was launched, over the same tree links: on each vertex
that holds some of its ranks, and on the vertices between those and vertex 0,
a second :class:`~pm.agent.node.JobAgent` runs it with its own plan (kvsname,
mapping, KVS, collectives, ranks).  Its messages travel wrapped in
:class:`pm.proto.tree_wire.Sub`; :class:`AgentSpawns`, owned by the launched job's
agent, unwraps them for it.  Spawned jobs are kept flat, by job number: a
spawned job that spawns makes a sibling here, not a nested registry.

Ranks start through the same path as the launched job's
(:meth:`JobAgent.start_ranks`), on the node's topology file, and end with it:
a kill, a signal or the agent's close reach them too.  A one-node job's
spawned jobs that pmrun's quick phase started (:mod:`pm.agent.quick_spawns`)
are adopted instead, ranks and PMI as it leaves them (:meth:`AgentSpawns.adopt`).

:class:`SpawnRequests` is the spawner's side, on whichever agent (launched or
spawned job) serves the rank that asked: a program that cannot be found on
the spawner's node fails its request at once, with per-process error codes;
otherwise the request goes up to the head, which places the children and
answers once every vertex reported them started (an MPI spawner's once they
need it: :func:`pm.agent.node_end.report_when_needed`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from pm.agent.spawn import Guardian, SpawnError, resolve, spawn_dir
from pm.proto import tree_wire as t
from pm.proto.errors import PMError
from pm.proto.spawn import SpawnRequest, SpawnResult

if TYPE_CHECKING:
    from pm.agent.node import JobAgent, Uplink
    from pm.agent.shm_reaper import ShmReaper
    from pm.agent.started import StartedRanks
    from pm.common.kary_tree import Tree
    from pm.proto.plan import JobPlan

log = logging.getLogger("pm.agent")


def members(tree: Tree, node_of_rank: list[int], everywhere: bool = False) -> set[int]:
    """Vertices that take part in a spawned job: those with its ranks, their ancestors
    (which relay its collectives and messages) and vertex 0 (its root); ``everywhere``
    (a PMIx job): every vertex, as PMIx's connect between the job and its parent
    needs each node's server to know both namespaces."""
    if everywhere:
        return set(range(tree.size))
    out = {0}
    for v in set(node_of_rank):
        node: int | None = v
        while node is not None and node not in out:
            out.add(node)
            node = tree.parent(node)
    return out


class _Up:
    """A spawned job's link to its parent: the launched job's, each message wrapped."""

    __slots__ = ("job", "link")

    def __init__(self, job: int, link: Uplink) -> None:
        self.job = job
        self.link = link

    def send(self, msg: t.Msg) -> None:
        self.link.send(t.wrap(self.job, msg))


class _Down:
    """A spawned job's links to its children: the launched job's, each message wrapped."""

    __slots__ = ("job", "top")

    def __init__(self, job: int, top: JobAgent) -> None:
        self.job = job
        self.top = top

    def send(self, vertex: int, msg: t.Msg) -> None:
        if self.top.children_link is not None:
            self.top.children_link.send(vertex, t.wrap(self.job, msg))


class AgentSpawns:
    """The spawned jobs the launched job's agent ``top`` runs a part of, by job number."""

    def __init__(self, top: JobAgent) -> None:
        self.top = top
        self.jobs: dict[int, JobAgent] = {}
        self._kill: tuple[str, float] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Of those, the ones removing an ended job's /dev/shm files (they run to their end).
        self._reaps: set[asyncio.Task[None]] = set()
        #: A guardian started ahead for the next spawned job's ranks: its start (a fork
        #: and exec of sh) is then not between a spawn request and the children's start.
        self._spare: Guardian | None = None
        self._spare_soon = False
        #: Guardians let go whose exit is not collected yet.
        self._released: list[Guardian] = []
        self._closed = False

    def launch(self, msg: t.SpawnLaunch) -> None:
        """Start our part of a spawned job, after passing the launch on to the children
        that take part (they start theirs meanwhile)."""
        top = self.top
        if msg.job in self.jobs:
            return
        plan = msg.plan
        agent = self._join(msg.job, plan)
        if agent.children:
            agent.children_link = _Down(msg.job, top)
            if top.children_link is not None:
                for child in agent.children:
                    top.children_link.send(child, msg)
        for key, value in (plan.spawned.preput if plan.spawned else {}).items():
            agent.kvs.cache(key.encode(), value.encode())
        agent.mark("spawned job launch", job=msg.job)
        if plan.pmix or (agent.local and plan.bind_to not in ("", "none")):
            # Binding needs the topology, PMIx a registered namespace (and the node's
            # server, started here if the launched job has no rank on this node): an
            # owned task, cancelled on close.
            task = agent.loop.create_task(self._prepare(agent))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self._start(agent)

    def _join(self, job: int, plan: JobPlan) -> JobAgent:
        """Spawned job ``job``'s agent here, sharing the node's topology file (every job on
        the node reads it) and the run's name service."""
        from pm.agent.node import JobAgent

        top = self.top
        agent = JobAgent(plan, top.vertex, _Up(job, top.parent), host=top.host)
        self.jobs[job] = agent
        agent.extra_env.update(top.extra_env)
        xml = top.job_attrs.get("PMI_hwloc_xmlfile")
        if xml:
            agent.job_attrs["PMI_hwloc_xmlfile"] = xml
        agent.requests.names = top.requests.names
        return agent

    def adopt(self, job: int, plan: JobPlan, started: StartedRanks) -> None:
        """Serve spawned job ``job``'s ranks pmrun's quick phase started here, in the
        launched job's process group, with their PMI as it leaves it (KVS included:
        :meth:`JobAgent.adopt_ranks`); the head knows them started."""
        top = self.top
        agent = self._join(job, plan)
        agent.mark("spawned job adopted", job=job)
        agent.adopt_ranks(started)
        for stream in top.procs.gone:
            agent.procs.output_gone(stream)
        if self._kill is not None:
            agent.kill(*self._kill)
            return
        agent.done.add_done_callback(lambda _: self._retire(agent))

    async def _prepare(self, agent: JobAgent) -> None:
        top, plan = self.top, agent.plan
        topo = top.topology
        if agent.local and plan.bind_to not in ("", "none"):
            if topo is None:
                from pm.agent import topo_share

                try:
                    topo = top.topology = await asyncio.to_thread(topo_share.node_topology)
                except PMError as exc:
                    log.info("agent %d: no topology to bind spawned ranks: %s", top.vertex, exc)
            if topo is not None:
                from pm.agent.node_start import bind

                bind(agent, topo, self._taken(agent))
        if plan.pmix:
            await self._start_pmix(agent, topo)
        self._start(agent)

    def _taken(self, agent: JobAgent) -> list[frozenset[int]]:
        """Cpusets of the node's ranks still running (the launched job's and other
        spawned jobs')."""
        out: list[frozenset[int]] = []
        for job in (self.top, *self.jobs.values()):
            if job is agent or not job.cpusets:
                continue
            for proc in job.ranks.values():
                if proc.status is None and proc.local_rank < len(job.cpusets):
                    out.append(job.cpusets[proc.local_rank])
        return out

    async def _start_pmix(self, agent: JobAgent, topo: Any) -> None:
        from pm.agent import pmix_server
        from pm.agent.node_start import open_pmix, start_pmix

        top = self.top
        srv = pmix_server.current()
        if srv is None or srv.loop is not agent.loop:
            srv = await start_pmix(agent)
        if (not isinstance(srv, Exception) and top.plan.pmix and top.pmix is None
                and not top._pmix_failed):
            open_pmix(top, srv, None)  # the parent's namespace, for the connect
        open_pmix(agent, srv, topo)  # (a failure is reported; the ranks do not start)

    def _start(self, agent: JobAgent) -> None:
        """Start ``agent``'s ranks here and tell the head.  Where the launched job has
        ranks on this node, ours join their guardian's process group (no guardian of our
        own to start and let go: a pool spawns again and again); elsewhere they get one,
        started ahead (:meth:`_make_spare`)."""
        top = self.top
        host = top.procs.guardian if agent.local and not top.procs.shared else None
        if host is not None:
            agent.start_ranks(host, shared=True)
        else:
            spare, self._spare = (self._spare, None) if agent.local else (None, self._spare)
            agent.start_ranks(spare)
            if spare is not None and agent.procs.guardian is not spare:  # (not used after all)
                self._let_go(spare)
        for stream in top.procs.gone:  # the head's stdout went before this job started
            agent.procs.output_gone(stream)
        vertex, nlocal = top.vertex, len(agent.local)
        if agent.plan.spawned is not None and agent.plan.spawned.after_init:
            from pm.agent.node_end import report_when_needed

            # An MPI spawner is answered once its children need it (pm.agent.spawn_answer).
            report_when_needed(
                agent, lambda needed: agent.parent.send(t.Started(vertex, 1, nlocal, [], needed)))
        else:
            agent.parent.send(t.Started(vertex, 1, nlocal, []))
        if self._kill is not None:  # the run is ending: what just started ends with it
            agent.kill(*self._kill)
            return
        agent.done.add_done_callback(lambda _: self._retire(agent))
        if agent.local and host is None and not self._spare_soon:
            # After the answer has gone (callbacks run in order): the next spawn's guardian.
            self._spare_soon = True
            agent.loop.call_soon(self._make_spare)

    def _make_spare(self) -> None:
        self._spare_soon = False
        if self._spare is not None or self._closed or self._kill is not None:
            return
        try:
            self._spare = Guardian()
        except OSError as exc:  # the next spawn makes its own (and reports what fails)
            log.info("agent %d: no spare guardian: %s", self.top.vertex, exc)

    def _retire(self, agent: JobAgent) -> None:
        """Every rank of ``agent`` here ended and was reported: its guardian goes now, and
        its /dev/shm files, not at the end of the run (a pool spawns again and again)."""
        if self._closed:
            return
        procs = agent.procs
        guardian, procs.guardian = procs.guardian, None
        if procs.shared:
            guardian = None  # the launched job's: it stays
        reaper, agent.shm_reaper = agent.shm_reaper, None
        if agent._shm_sampler is not None:
            agent._shm_sampler.cancel()
            agent._shm_sampler = None
        if reaper is None or not reaper.reap_would_look():
            if guardian is not None:
                self._let_go(guardian, clean=reaper is not None)
            return
        task = agent.loop.create_task(self._reap(agent, reaper, guardian))
        self._tasks.add(task)
        self._reaps.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._reaps.discard)

    async def _reap(self, agent: JobAgent, reaper: ShmReaper, guardian: Guardian | None
                    ) -> None:
        """The job's /dev/shm files removed, its guardian goes without looking for any."""
        clean = False
        try:
            for name in await asyncio.to_thread(reaper.reap, (), 1.0, True):
                log.debug("agent %d: removed /dev/shm/%s", agent.vertex, name)
            clean = True
        except OSError as exc:  # never worth failing anything for
            log.warning("agent %d: cleaning /dev/shm failed: %s", agent.vertex, exc)
        finally:
            if guardian is not None:
                self._let_go(guardian, clean=clean)

    def _let_go(self, guardian: Guardian, kill: bool = False, clean: bool = False) -> None:
        """Release ``guardian`` and collect the exits of those released before."""
        if kill:
            guardian.kill_all()
        guardian.release(clean=clean or kill)
        self._released = [g for g in self._released if not g.reaped()]
        self._released.append(guardian)

    def from_parent(self, sub: t.Sub) -> None:
        agent = self.jobs.get(sub.job)
        if agent is None:
            log.warning("agent %d: message for spawned job %d, not running here",
                        self.top.vertex, sub.job)
            return
        agent.from_parent(t.unwrap(sub))

    def from_child(self, child: int, sub: t.Sub) -> None:
        agent = self.jobs.get(sub.job)
        if agent is None:
            log.warning("agent %d: message from vertex %d for spawned job %d, not running here",
                        self.top.vertex, child, sub.job)
            return
        agent.from_child(child, t.unwrap(sub))

    def signal(self, signum: int) -> None:
        for agent in self.jobs.values():
            agent.procs.signal(signum)

    def output_gone(self, stream: int) -> None:
        for agent in self.jobs.values():
            agent.procs.output_gone(stream)

    def kill(self, reason: str, grace: float) -> None:
        self._kill = (reason, grace)
        spare, self._spare = self._spare, None
        if spare is not None:
            self._let_go(spare, kill=True)
        for agent in self.jobs.values():
            agent.kill(reason, grace)

    def close(self) -> None:
        self._closed = True
        for task in self._tasks:
            task.cancel()
        spare, self._spare = self._spare, None
        if spare is not None:
            self._let_go(spare, kill=True)
        for agent in self.jobs.values():
            agent.close()

    async def aclose(self) -> None:
        """:meth:`close`'s work for the spawned jobs, without blocking the loop; returns once
        our own tasks have ended too: a job still being prepared is given up, an ended job's
        /dev/shm files are removed and its guardian let go (that runs to its end)."""
        for agent in list(self.jobs.values()):
            await agent.aclose()
        tasks = list(self._tasks)
        for task in tasks:
            if task not in self._reaps:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


class SpawnRequests:
    """Spawn requests of ``agent``'s ranks waiting for the head's answer."""

    def __init__(self, agent: JobAgent) -> None:
        self.agent = agent
        self._next = 0
        self._waiting: dict[int, asyncio.Future[SpawnResult]] = {}

    def request(self, rank: int, req: SpawnRequest) -> asyncio.Future[SpawnResult]:
        agent = self.agent
        fut: asyncio.Future[SpawnResult] = agent.loop.create_future()
        problem = self._programs(req)
        if problem is not None:
            # Said here too: an MPI library tells the spawner only that the spawn failed.
            log.warning("rank %d: spawn refused: %s", rank, problem.error)
            problem.reported = True  # (said: its PMIx server says no more)
            fut.set_result(problem)
            return fut
        if agent.killing:
            fut.set_result(SpawnResult(False, error="the job is ending",
                                       errcodes=[1] * req.size))
            return fut
        self._next += 1
        self._waiting[self._next] = fut
        agent.mark("spawn request", rank, procs=req.size)
        agent.parent.send(t.SpawnReq(self._next, agent.vertex, rank,
                                     [c.to_wire() for c in req.commands], dict(req.preput),
                                     req.after_init))
        return fut

    def _programs(self, req: SpawnRequest) -> SpawnResult | None:
        """Each command's program, found as its ranks will look for it (``path`` info key:
        the program is in that folder); the first that cannot be, as the answer."""
        plan = self.agent.plan
        codes: list[int] = []
        first = ""
        for c in req.commands:
            c.argv[0] = c.program
            env = self.agent.base_env()  # (as the ranks will look: pm.agent.rank_starts)
            env.update(c.env)
            wdir = c.wdir or (plan.apps[0].wdir if plan.apps else None) or self.agent.launch_dir
            try:
                spawn_dir(c.wdir, c.argv[0])
                resolve(c.argv[0], env, wdir)
                codes.extend([0] * c.n)
            except SpawnError as exc:
                codes.extend([1] * c.n)
                first = first or str(exc)
        if not first:
            return None
        return SpawnResult(False, error=f"cannot spawn {first}", errcodes=codes)

    def response(self, msg: t.SpawnResp) -> None:
        fut = self._waiting.pop(msg.req, None)
        if fut is not None and not fut.done():
            # (The head logs each refusal it answers.)
            fut.set_result(SpawnResult(msg.ok, msg.job, msg.kvsname, msg.error,
                                       list(msg.errcodes), reported=not msg.ok))

    def fail(self, why: str) -> None:
        """The job is ending: every waiting spawn fails."""
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_result(SpawnResult(False, error=why))
        self._waiting.clear()


def on_agent(agent: JobAgent) -> AgentSpawns:
    """``agent``'s registry of spawned jobs (made on first use)."""
    if agent.spawns is None:
        agent.spawns = AgentSpawns(agent)
    return agent.spawns


def requests_of(agent: JobAgent) -> SpawnRequests:
    """``agent``'s ranks' pending spawn requests (made on first use)."""
    if agent.spawn_requests is None:
        agent.spawn_requests = SpawnRequests(agent)
    return agent.spawn_requests
