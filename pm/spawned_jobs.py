"""Spawned jobs at the head: numbering, placement, plan, and one fate with the run.

A spawn request (:class:`pm.proto.tree_wire.SpawnReq`) comes up the tree from the
spawner's agent.  The head gives the new job the next number ``J`` and the
kvsname ``<launched kvsname>_s<J>``, places its ranks on the running job's
agents (:func:`place_spawn`: free slots first, from the spawner's node on, the
``host`` info key narrowing the nodes), and sends the plan down
(:class:`pm.proto.tree_wire.SpawnLaunch`); the agents start the ranks
(:mod:`pm.agent.spawned_jobs`).  Once every vertex taking part reported its
ranks started (for an MPI spawner, once they need it:
:attr:`pm.proto.spawn.SpawnRequest.after_init`), the spawner gets its answer.
Nothing is forked by the head.  A one-node job's quick phase starts its spawned
jobs itself (:mod:`pm.agent.quick_spawns`); if it hands the job over, the head
registers them as it would have placed them (:meth:`HeadSpawns.adopt`).

What the job says comes up wrapped (:class:`pm.proto.tree_wire.Sub`): its output,
labelled ``[J:R]`` under ``-l``; its exits, where a failing rank fails the
whole run named "rank R of spawned job J"; its Done.  The run ends once the
launched job and every spawned job have ended; a kill takes them all.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pm.agent.watch import ExitStatus
from pm.common.mapping import MappingError, process_mapping
from pm.common.mapping import capacities as slot_capacities
from pm.head_base import RunState
from pm.proto import tree_wire as t
from pm.proto.plan import AppPlan, JobPlan, SpawnOrigin
from pm.proto.spawn import ORPHAN_GRACE, SpawnCommand

if TYPE_CHECKING:
    from pm.agent.quick_spawns import QuickJob
    from pm.head import JobRun
    from pm.job_result import RankResult

log = logging.getLogger("pm")


class SpawnRefused(ValueError):
    """A spawn that cannot be placed (a host that is not one of the job's nodes, ...)."""


def place_spawn(n: int, free: list[int], start: int, allowed: list[int]) -> list[int]:
    """Vertex of each of ``n`` new ranks.

    Free slots first, node after node from ``start`` (the spawner's node) on,
    wrapping around; then, when there are not enough, one more rank per node
    in the same order (oversubscribed).  Only ``allowed`` vertices take ranks.
    ``place_spawn(3, [1, 1], 0, [0, 1]) == [0, 1, 0]``.
    """
    if not allowed:
        raise SpawnRefused("no node to place the ranks on")
    count = len(free)
    order = [v for i in range(count) if (v := (start + i) % count) in set(allowed)]
    out: list[int] = []
    for v in order:
        take = min(max(free[v], 0), n - len(out))
        out.extend([v] * take)
    while len(out) < n:
        out.extend(order[: n - len(out)])
    return out


def dense(node_of_rank: list[int]) -> list[int]:
    """Vertices renumbered 0, 1, ... in order of first use (mapping node ids)."""
    ids: dict[int, int] = {}
    return [ids.setdefault(v, len(ids)) for v in node_of_rank]


@dataclass(slots=True)
class SpawnedJob:
    """One spawned job as the head knows it."""

    job: int
    kvsname: str
    argv: list[list[str]]
    placement: list[int]
    #: The job whose rank asked for it (0: the launched job) and where to answer.
    parent: int
    req: int
    origin: int
    members: set[int]
    ranks: dict[int, RankResult] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    requested_at: float = 0.0
    #: When every vertex reported its ranks started and one of them reported them
    #: needing the spawner (pm.agent.spawn_answer; without ``after_init``: at once).
    started_at: float = 0.0
    needed: bool = False
    after_init: bool = False
    ended_at: float = 0.0
    done: bool = False
    #: Ended by pmrun because its parent job ended first: its ranks' ends are no failure.
    orphaned: bool = False
    #: When its parent job's ranks had all ended while it ran, if that was before the
    #: head knew of it (pmrun's quick phase, :meth:`HeadSpawns.adopt`); else 0.
    parent_ended_at: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.placement)

    def summary(self) -> dict[str, Any]:
        """What :class:`pm.job_result.JobResult` reports of it."""
        return {"job": self.job, "kvsname": self.kvsname, "argv": self.argv,
                "parent": self.parent, "size": self.size, "nodes": sorted(set(self.placement)),
                "ranks": dict(sorted(self.ranks.items())),
                "spawn_seconds": max(0.0, self.started_at - self.requested_at)
                if self.started_at else None}


def universe_size(run: JobRun) -> int:
    """MPI_UNIVERSE_SIZE by default: the slots of the job's nodes (:func:`capacities`),
    never below the job's size."""
    return max(run.plan.size, sum(capacities(run)))


def capacities(run: JobRun) -> list[int]:
    """Slots of each vertex (:func:`pm.common.mapping.capacities`)."""
    return slot_capacities(run.nodes.slots, run.node_of_rank, len(run.plan.hosts))


def info_hosts(info: dict[str, str]) -> list[str] | None:
    """Host names a command's ``host``/``hosts`` (a host list: ``h1,h[2-3]``) or
    ``hostfile`` info key allows (Hydra's keys; read here, as mpiexec does), or None."""
    from pm.common.hostlist import HostlistError, parse_hostfile, parse_hosts_option

    try:
        if info.get("host") or info.get("hosts"):
            return [h.host for h in parse_hosts_option(info.get("host") or info["hosts"])]
        if info.get("hostfile"):
            with open(info["hostfile"]) as f:
                return [h.host for h in parse_hostfile(f.read())]
    except HostlistError as exc:
        raise SpawnRefused(f"bad host info key: {exc}") from None
    except OSError as exc:
        raise SpawnRefused(f"hostfile {info['hostfile']}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise SpawnRefused(f"hostfile {info['hostfile']}: not text ({exc.reason})") from None
    return None


def nodes_named(name: str, hosts: list[str]) -> set[int]:
    """Vertices a ``host`` info key's ``name`` means: those of that host, or, where nodes
    share a host name (``--local-nodes``), node N alone as ``<host>-<N>`` (its name in
    the PMIx node map).  :class:`SpawnRefused` when there is none."""
    from pm.agent.pmix_register import node_names

    own = node_names(hosts)
    found = {v for v, h in enumerate(hosts) if name in (h, own[v])}
    if found:
        return found
    known = list(dict.fromkeys(hosts))
    sep = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
    if len(known) < len(hosts):
        sep += f"; one node: {own[0]} to {own[-1]}"
    raise SpawnRefused(f"host {name} is not one of the job's nodes ({sep})")


class HeadSpawns:
    """Every spawned job of ``run`` (all levels of nesting), by number."""

    def __init__(self, run: JobRun) -> None:
        self.run = run
        self.jobs: dict[int, SpawnedJob] = {}
        self._capacity = capacities(run)

    # ------------------------------------------------------------ requests
    def request(self, parent: int, msg: t.SpawnReq) -> None:
        """Rank ``msg.rank`` of job ``parent`` asks for a new job."""
        try:
            if self.run.state is RunState.KILLING:
                raise SpawnRefused("the run is ending")
            self._launch(parent, msg)
        except (SpawnRefused, MappingError, ValueError, TypeError, KeyError) as exc:
            n = sum(int(c[1]) for c in msg.commands if isinstance(c, list) and len(c) == 3)
            log.warning("spawn by rank %d of job %d refused: %s", msg.rank, parent, exc)
            self._answer(parent, t.SpawnResp(msg.req, msg.origin, False, 0, "", str(exc),
                                             [1] * n))

    def _launch(self, parent: int, msg: t.SpawnReq) -> None:
        record, plan = self._new_job(parent, msg)
        log.info("spawned job %d: %d ranks of %s on nodes %s", record.job, record.size,
                 " + ".join(a[0] for a in record.argv), sorted(set(record.placement)))
        assert self.run.agent is not None
        self.run.agent.from_parent(t.SpawnLaunch(record.job, plan))

    def adopt(self, q: QuickJob) -> None:
        """A job pmrun's quick phase spawned, and started on vertex 0 (:mod:`pm.quick`,
        :mod:`pm.agent.quick_spawns`), handed over with its ranks: registered as if placed
        here, its spawner answered already; the launched job's agent adopts its ranks."""
        msg = t.SpawnReq(0, 0, q.rank, [c.to_wire() for c in q.commands], q.preput,
                         q.after_init)
        record, plan = self._new_job(q.parent, msg)
        assert record.job == q.job and record.kvsname == q.kvsname
        record.requested_at, record.started_at = q.requested_at, q.started_at
        record.started = set(record.members)
        record.parent_ended_at = q.parent_ended_at
        log.info("spawned job %d: %d ranks of %s on node 0", record.job, record.size,
                 " + ".join(a[0] for a in record.argv))
        from pm.agent.node import JobAgent
        from pm.agent.spawned_jobs import on_agent

        agent = self.run.agent
        assert isinstance(agent, JobAgent)  # (the quick phase's job runs on vertex 0 here)
        on_agent(agent).adopt(record.job, plan, q.started)

    def _new_job(self, parent: int, msg: t.SpawnReq) -> tuple[SpawnedJob, JobPlan]:
        """The next job, placed, and its plan, for ``msg`` of a rank of job ``parent``."""
        run = self.run
        commands = [SpawnCommand.from_wire(c) for c in msg.commands]
        hosts = run.plan.hosts
        start = msg.origin if 0 <= msg.origin < len(hosts) else 0  # the spawner's node
        # Each command on its own nodes (spawn_multiple: one host key per command), the
        # slots the earlier commands took no longer free.
        free = self._free()
        placement: list[int] = []
        for c in commands:
            names = info_hosts(c.info)
            allowed = (range(len(hosts)) if names is None
                       else sorted(set().union(*(nodes_named(h, hosts) for h in names))))
            mine = place_spawn(c.n, free, start, list(allowed))
            for v in mine:
                free[v] -= 1
            placement += mine
        n = len(placement)
        job = len(self.jobs) + 1
        kvsname = f"{run.plan.kvsname}_s{job}"
        top = run.plan
        base_wdir = top.apps[0].wdir if top.apps else None
        apps = []
        for c in commands:
            env = dict(c.env)
            env["PMI_SPAWNED"] = "1"
            apps.append(AppPlan(c.argv, c.n, env, c.wdir or base_wdir))
        spawner = self._kvsname(parent)
        plan = JobPlan(
            job_id=f"{top.job_id}s{job}", kvsname=kvsname, size=n, hosts=top.hosts,
            slots=top.slots, fanout=top.fanout, apps=apps, env=dict(top.env),
            mapping=process_mapping(dense(placement)), label=top.label, kvs=top.kvs,
            profile=top.profile, bootstrap=top.bootstrap, mem_high=top.mem_high,
            mem_low=top.mem_low, mem_overrun=top.mem_overrun,
            universe_size=top.universe_size, pmix=top.pmix,
            # Its ranks are bound as the launched job's are (pm.agent.binding).
            bind_to=top.bind_to, map_by=top.map_by, report_bindings=top.report_bindings,
            mem_bind=top.mem_bind, job_attrs=dict(top.job_attrs),
            merge_stderr=top.merge_stderr, unbuffered=top.unbuffered, cwd=top.cwd,
            host_env=top.host_env,
            spawned=SpawnOrigin(job, placement, dict(msg.preput), spawner, msg.rank,
                                bool(msg.after_init)))
        from pm.agent.spawned_jobs import members
        from pm.common.kary_tree import Tree

        record = SpawnedJob(job, kvsname, [c.argv for c in commands], placement, parent,
                            msg.req, msg.origin,
                            members(Tree(len(top.hosts), top.fanout), placement,
                                    top.pmix),
                            requested_at=time.monotonic(), after_init=bool(msg.after_init))
        self.jobs[job] = record
        return record, plan

    def _kvsname(self, job: int) -> str:
        return self.run.plan.kvsname if job == 0 else self.jobs[job].kvsname

    def _free(self) -> list[int]:
        """Slots of each vertex not taken by a rank still running."""
        run = self.run
        free = list(self._capacity)
        agent = run.agent
        node_of_rank = getattr(agent, "node_of_rank", [])
        for rank, v in enumerate(node_of_rank):
            if rank not in run.ranks:
                free[v] -= 1
        for job in self.jobs.values():
            for rank, v in enumerate(job.placement):
                if rank not in job.ranks:
                    free[v] -= 1
        return free

    def _answer(self, parent: int, resp: t.SpawnResp) -> None:
        agent = self.run.agent
        if agent is None:
            return
        if parent == 0:
            agent.from_tree(resp)
        else:
            agent.from_parent(t.wrap(parent, resp))

    # ------------------------------------------------------------ what jobs say
    def from_job(self, job: int, msg: t.Msg) -> None:
        rec = self.jobs.get(job)
        if rec is None:
            log.debug("head: message for unknown spawned job %d", job)
            return
        run = self.run
        if isinstance(msg, t.Output):
            placement = rec.placement
            for out in msg.items:
                run.job_output(job, out.rank, out.stream, out.data, placement[out.rank])
        elif isinstance(msg, t.Exits):
            from pm.job_result import RankResult

            for ex in msg.items:
                self._rank_ended(rec, RankResult(ex.rank, ex.vertex, ex.code, ex.signal,
                                                 ex.reason))
        elif isinstance(msg, t.Started):
            rec.started.add(msg.vertex)
            rec.needed = rec.needed or msg.needed
            if rec.started >= rec.members and rec.needed and not rec.started_at:
                rec.started_at = time.monotonic()
                self._answer(rec.parent, t.SpawnResp(rec.req, rec.origin, True, job,
                                                     rec.kvsname, "", [0] * rec.size))
        elif isinstance(msg, t.SpawnReq):
            self.request(job, msg)
        elif isinstance(msg, t.Abort):
            host = run.plan.hosts[msg.vertex] if 0 <= msg.vertex < len(run.plan.hosts) else "?"
            text = f" ({msg.message})" if msg.message else ""
            from pm.job_result import abort_status

            run._fail(f"rank {msg.rank} of spawned job {job} (node {msg.vertex}, {host}) "
                      f"called abort with code {msg.code}{text}", abort_status(msg.code))
        elif isinstance(msg, t.Done):
            rec.done = True
            rec.ended_at = time.monotonic()
            rec.stats = dict(msg.stats)
            self.job_ended(job)
            run.spawned_done()
        else:
            log.debug("head: ignored %s of spawned job %d", type(msg).__name__, job)

    def _rank_ended(self, rec: SpawnedJob, r: RankResult) -> None:
        rec.ranks[r.rank] = r
        run = self.run
        if r.ok or run.state is RunState.KILLING or rec.orphaned:
            return
        host = run.plan.hosts[r.node] if 0 <= r.node < len(run.plan.hosts) else "?"
        where = f"rank {r.rank} of spawned job {rec.job} (node {r.node}, {host})"
        if r.reason:
            run._fail(f"{where} {r.reason}", r.code if r.code > 1 else 1)
        else:
            status = ExitStatus(r.code, r.signal)
            run._fail(f"{where} {status.describe()}", status.shell_code)

    # ------------------------------------------------------------ the end
    def job_ended(self, job: int) -> None:
        """Every rank of ``job`` (0: the launched job) ended: the jobs it spawned that
        still run get :data:`ORPHAN_GRACE` seconds to end, then are ended."""
        for rec in self.jobs.values():
            if rec.parent == job and not rec.done:
                since = rec.parent_ended_at or time.monotonic()
                left = max(0.0, since + ORPHAN_GRACE - time.monotonic())
                self.run.owned.call_later(left, self._end_orphan, rec.job)

    def _end_orphan(self, job: int) -> None:
        rec = self.jobs[job]
        agent = self.run.agent
        if rec.done or rec.orphaned or agent is None:
            return
        rec.orphaned = True
        who = "the launched job" if rec.parent == 0 else f"spawned job {rec.parent}"
        why = f"spawned job {job} outlived {who} by {ORPHAN_GRACE:g} s: ending it"
        log.warning("%s", why)
        from pm.head_failures import KILL_GRACE

        agent.from_parent(t.wrap(job, t.Kill(why, KILL_GRACE)))

    def all_done(self) -> bool:
        return all(j.done for j in self.jobs.values())

    def forget(self) -> None:
        """The run is over without them (lost nodes, a kill that did not finish)."""
        for j in self.jobs.values():
            j.done = True

    def results(self) -> dict[int, dict[str, Any]]:
        return {j: rec.summary() for j, rec in sorted(self.jobs.items())}

    def timeline(self) -> list[Any]:
        """Start-up events of every spawned job, each named with its job number."""
        out: list[Any] = []
        for job, rec in sorted(self.jobs.items()):
            for ev in rec.stats.get("timeline", []):
                ev = list(ev)
                ev[3] = f"job {job}: {ev[3]}"
                out.append(ev)
        return out


def profile_lines(spawns: HeadSpawns) -> str:
    """The ``--profile`` lines of the spawned jobs: size, nodes, spawn time, lifetime."""
    lines = []
    for job, rec in sorted(spawns.jobs.items()):
        what = "to start and need their spawner" if rec.after_init else "to start"
        took = (f"{(rec.started_at - rec.requested_at) * 1e3:.1f} ms {what}"
                if rec.started_at else "never started")
        lived = (f", ended {rec.ended_at - rec.requested_at:.3f} s after the request"
                 if rec.ended_at else "")
        nodes = ",".join(map(str, sorted(set(rec.placement))))
        who = "the launched job" if rec.parent == 0 else f"spawned job {rec.parent}"
        lines.append(f"spawned job {job} (by {who}): {rec.size} ranks of "
                     f"{' + '.join(a[0] for a in rec.argv)} on nodes {nodes}, {took}{lived}\n")
    return "".join(lines)
