"""One job served over PMIx on one node: its namespace, its ranks' environment, its upcalls.

A :class:`PmixJob` belongs to a :class:`~pm.agent.node.JobAgent` whose plan
asks for PMIx.  It registers the job with the process's server
(:mod:`pm.agent.pmix_server`) as the namespace ``plan.kvsname``
(:mod:`pm.agent.pmix_register`: the keys Open MPI and mpi4py read); each
local rank gets the environment of ``PMIx_server_setup_fork`` beside
``PMI_FD``.  A one-node job that pmrun's quick path started comes registered
already (:meth:`PmixJob.adopt`).

What the library asks of the host maps onto what pmrun already does:

* a fence over a job on this node alone is completed by the library itself
  (it never asks); otherwise it is one contribution per node to the agent's tree collectives
  (an allgather whose only value on each node is the blob the library packed
  for it): one message up and one down per agent, the blobs of all nodes
  concatenated for the library, with or without ``PMIX_COLLECT_DATA``;
* a direct modex is pmrun's direct get, routed to the node that runs the
  rank, whose server hands over that rank's data (``PMIx_server_dmodex_request``);
* connect, finalize and abort are the rank events a PMI-1 session reports,
  so an ``MPI_Abort`` ends the job naming rank, node and code;
* publish, lookup and unpublish go to the job's name service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pm.agent import pmix_lib as L
from pm.agent.pmix_handover import Upcalls
from pm.agent.pmix_register import (  # noqa: F401  (names of this module before)
    Layout,
    add_fork_env,
    cpuset_string,
    fork_env,
    locality_string,
    node_names,
    proc,
    register,
)
from pm.agent.pmix_server import PmixServer, server
from pm.agent.pmix_upcalls import BYTES_MARK
from pm.common.mapping import local_ranks
from pm.proto import tree_wire as t

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.pmix_handover import SpawnApp

log = logging.getLogger("pm.agent.pmix")

#: Key prefix of a direct get that asks another node's server for a rank's PMIx data.
DMODEX_KEY = b"\x00pmix.dmodex."


class PmixJob(Upcalls):
    """``agent``'s job as a PMIx namespace on this node."""

    def __init__(self, agent: JobAgent, srv: PmixServer) -> None:
        self.agent = agent
        self.srv = srv
        self.nspace = agent.plan.kvsname
        self.dir = os.path.join(srv.dir, self.nspace)
        self.closed = False

    @staticmethod
    async def start_server(agent: JobAgent) -> PmixServer:
        """The process's server, started (in a thread: tens of ms) if it has none."""
        from pm.agent.pmix_detect import libpmix_for

        plan, env = agent.plan, agent.base_env()  # (the ranks' PATH finds their libpmix)
        lib = libpmix_for([app.argv for app in plan.apps], env.get("PATH"),
                          env.get("LD_LIBRARY_PATH"))
        srv = await asyncio.to_thread(server, node_names(plan.hosts)[agent.vertex],
                                      agent.extra_env.get("HWLOC_XMLFILE"), True, lib)
        srv.attach(agent.loop)
        return srv

    # ------------------------------------------------------------------ registration
    def register(self, topo: Any = None) -> None:
        """The job with its keys, and each local rank as a client; ``topo`` (the node's
        :class:`~pm.agent.topology.Topology`) gives bound ranks their locality strings."""
        agent, plan = self.agent, self.agent.plan
        by_node = local_ranks(agent.node_of_rank)
        names = node_names(plan.hosts)
        spawned = plan.spawned
        # A spawned job's maps name only its own nodes (the host key may leave some out).
        used = [v for v in range(len(names)) if by_node.get(v)]
        layout = Layout(self.nspace, [names[v] for v in used], [by_node[v] for v in used],
                        used.index(agent.vertex) if agent.vertex in used else -1,
                        [app.n for app in plan.apps], agent.universe_size(),
                        agent.cpusets, topo,
                        (spawned.spawner, spawned.spawner_rank) if spawned else None, used)
        register(self.srv, layout)
        self.srv.jobs[self.nspace] = self

    def adopt(self) -> None:
        """Serve the namespace pmrun's quick path registered (:func:`start_one_node`)
        for this job, whose ranks it started; upcalls that waited are delivered now."""
        self.srv.jobs[self.nspace] = self
        self.srv.attach(self.agent.loop)

    def add_env(self, env: dict[str, str], rank: int) -> None:
        """Local rank ``rank``'s ``env`` with the variables ``PMIx_server_setup_fork`` gives
        it (:func:`~pm.agent.pmix_register.add_fork_env`)."""
        add_fork_env(env, fork_env(self.srv, self.nspace, rank))

    # ------------------------------------------------------------------ upcalls (on the loop)
    def client_event(self, rank: int, event: str, detail: Any = None) -> None:
        log.debug("PMIx %s: rank %d %s", self.nspace, rank, event)
        if rank in self.agent.ranks and not self.closed:
            self.agent.rank_event(rank, event, detail)

    def client_log(self, rank: int, lines: list[tuple[int, str]]) -> None:
        """PMIx_Log's text (Open MPI 5's error explanations): the rank's output."""
        if rank not in self.agent.ranks or self.closed:
            return
        for stream, text in lines:
            self.agent.rank_output(rank, stream, (text if text.endswith("\n")
                                                  else text + "\n").encode(errors="replace"))

    def fence(self, blob: bytes, collect: bool, done: Callable[[int, bytes], None]) -> None:
        agent = self.agent
        log.debug("PMIx %s: fence of %d bytes (collect: %s)", self.nspace, len(blob), collect)
        began = time.perf_counter()
        futs = [agent.coll.collective(t.ALLGATHER, r, blob if i == 0 else None)
                for i, r in enumerate(agent.local)]

        def finished(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                done(L.ERROR, b"")
                return
            values = fut.result()
            data = b"".join(v for v in values if v) if collect else b""
            t1 = time.perf_counter()
            done(L.SUCCESS, data)
            # What bench/ompi.py reports as a fence's cost per agent.
            log.debug("PMIx %s: fence done on node %d: %d bytes in, %d out, %.2f ms in the "
                      "tree, %.3f ms handing the result over", self.nspace, agent.vertex,
                      len(blob), len(data), (t1 - began) * 1e3,
                      (time.perf_counter() - t1) * 1e3)

        futs[0].add_done_callback(finished)

    def direct_modex(self, rank: int, done: Callable[[int, bytes], None]) -> None:
        agent = self.agent
        log.debug("PMIx %s: direct modex of rank %d", self.nspace, rank)
        if not 0 <= rank < agent.size:
            done(L.ERR_BAD_PARAM, b"")
            return
        asker = agent.local[0] if agent.local else 0  # (a node that only knows the job)
        fut = agent.requests.get_from(asker, rank, DMODEX_KEY + str(rank).encode())

        def finished(f: asyncio.Future[bytes | None]) -> None:
            log.debug("PMIx %s: direct modex of rank %d answered", self.nspace, rank)
            if f.cancelled() or f.exception() is not None or f.result() is None:
                done(L.ERR_NOT_FOUND, b"")
            else:
                done(L.SUCCESS, f.result() or b"")

        fut.add_done_callback(finished)

    def serve_get(self, msg: t.GetReq) -> None:
        """A direct get from another node for one of this node's ranks' PMIx data."""
        agent = self.agent

        log.debug("PMIx %s: serving rank %d's data to node %d", self.nspace, msg.rank,
                  msg.origin)

        def answer(status: int, blob: bytes) -> None:
            log.debug("PMIx %s: rank %d's data for node %d: status %d, %d bytes",
                      self.nspace, msg.rank, msg.origin, status, len(blob))
            ok = status == L.SUCCESS
            agent.route(msg.origin, t.GetResp(msg.req, msg.origin, ok, blob if ok else b""))

        self.srv.dmodex_request(self.nspace, msg.rank, answer)

    def publish(self, rank: int, items: dict[str, Any], done: Callable[[int], None],
                once: bool = False) -> None:
        self._names("publish-once" if once else "publish",
                    [(k, BYTES_MARK + v.hex() if isinstance(v, bytes)
                      else "" if v is None else str(v)) for k, v in items.items()],
                    # (a name the service holds already: what a publish is refused for)
                    lambda found, ok: done(L.SUCCESS if ok else L.EXISTS))

    def lookup(self, rank: int, keys: list[str],
               done: Callable[[int, list[tuple[str, str]]], None], wait: bool = False
               ) -> None:
        self._names("lookup-wait" if wait else "lookup", [(k, "") for k in keys],
                    lambda found, ok: done(L.SUCCESS if found else L.ERR_NOT_FOUND, found))

    def unpublish(self, rank: int, keys: list[str], done: Callable[[int], None]) -> None:
        self._names("unpublish", [(k, "") for k in keys],
                    lambda found, ok: done(L.SUCCESS if ok else L.ERR_NOT_FOUND))

    def _names(self, action: str, pairs: list[tuple[str, str]],
               then: Callable[[list[tuple[str, str]], bool], None]) -> None:
        """One name-service request per key; ``then(found, all_ok)`` once all are answered."""
        log.debug("PMIx %s: %s %s", self.nspace, action, [k for k, _v in pairs])
        if not pairs:
            then([], True)
            return
        futs = [self.agent.name_service(action, k, v) for k, v in pairs]

        def finished(_f: Any) -> None:
            found: list[tuple[str, str]] = []
            ok = True
            for (k, _v), f in zip(pairs, futs, strict=True):
                if f.cancelled() or f.exception() is not None or not f.result()[0]:
                    ok = False
                else:
                    found.append((k, f.result()[1]))
            then(found, ok)

        gathered = asyncio.gather(*futs, return_exceptions=True)
        gathered.add_done_callback(finished)

    def spawn(self, rank: int, apps: list[SpawnApp], done: Callable[[int, str], None]
              ) -> None:
        """PMIx_Spawn: a spawn request like a PMI one (:mod:`pm.agent.spawned_jobs`); ``done``
        gets the children's namespace once they are started."""
        from pm.proto.errors import ProtocolError
        from pm.proto.spawn import SpawnCommand, SpawnRequest

        commands = []
        for argv, n, env, cwd, info in apps:
            keys: dict[str, str] = {}
            wdir = info.get("pmix.wdir") or cwd
            if wdir:
                keys["wdir"] = str(wdir)
            for pkey, key in (("pmix.host", "host"), ("pmix.hostfile", "hostfile")):
                if info.get(pkey):
                    keys[key] = str(info[pkey])
            if env:  # one per line: values may hold spaces
                keys["env"] = "\n".join(env) + "\n"
            commands.append(SpawnCommand(argv, n, keys))
        req = SpawnRequest(commands)
        try:
            req.check()
        except ProtocolError as exc:
            log.warning("rank %d of %s: PMIx_Spawn refused: %s", rank, self.nspace, exc)
            done(L.ERR_BAD_PARAM, "")
            return
        fut = self.agent.spawn(rank, req)

        def finished(f: asyncio.Future[Any]) -> None:
            res = None if f.cancelled() or f.exception() is not None else f.result()
            if res is not None and res.ok:
                done(L.SUCCESS, res.kvsname)
                return
            why = res.error if res is not None else "the job is ending"
            if res is None or not res.reported:  # (one line for one refusal)
                log.warning("rank %d of %s: PMIx_Spawn failed: %s", rank, self.nspace, why)
            done(L.ERR_JOB_FAILED_TO_LAUNCH, "")

        fut.add_done_callback(finished)

    def connect(self, procs: list[tuple[str, int]], done: Callable[[int], None]) -> None:
        """PMIx_Connect (Open MPI's connect/accept between a parent and its children)."""
        self._rendezvous("connect", procs, b"",
                         lambda status, _data, _cid: done(status))

    def group_fence(self, procs: list[tuple[str, int]], blob: bytes, collect: bool,
                    done: Callable[[int, bytes], None]) -> None:
        """A fence over some ranks, maybe of several jobs (Open MPI's disconnect)."""
        self._rendezvous("fence", procs, blob,
                         lambda status, data, _cid: done(status, data if collect else b""))

    def group(self, grp: str, construct: bool, procs: list[tuple[str, int]], blob: bytes,
              want_id: bool, done: Callable[[int, int, bytes], None]) -> None:
        """PMIx_Group_construct (``construct``) or _destruct of group ``grp`` over
        ``procs``: ``done(status, context id, every node's data)``."""
        kind = f"group {grp}" if construct else f"ungroup {grp}"
        self._rendezvous(kind, procs, blob, lambda status, data, cid: done(status, cid, data),
                         "group" if want_id else "connect")

    def _rendezvous(self, kind: str, procs: list[tuple[str, int]], blob: bytes,
                    done: Callable[[int, bytes, int], None], action: str = "connect"
                    ) -> None:
        """A rendezvous at vertex 0 (the name service's ``connect`` action, or ``group``
        for one that also assigns a context ID) of every node with participants in
        ``procs``: each node counts its own, the rendezvous is over when the counts reach
        the ranks named, and every node gets all nodes' blobs (and the ID)."""
        srv = self.srv
        total = here = 0
        for ns, rank in procs:
            job = srv.jobs.get(ns)
            if not isinstance(job, PmixJob):
                log.warning("PMIx %s of namespace %s, unknown on node %d", kind, ns,
                            self.agent.vertex)
                done(L.ERR_NOT_FOUND, b"", 0)
                return
            if rank == L.RANK_WILDCARD:
                total += job.agent.size
                here += len(job.agent.local)
            else:
                total += 1
                here += rank in job.agent.ranks
        name = f"\x00{kind}:" + ",".join(f"{ns}.{r}" for ns, r in sorted(procs))
        fut = self.agent.name_service(action, name, f"{here}/{total}/{blob.hex()}")

        def finished(f: asyncio.Future[Any]) -> None:
            if f.cancelled() or f.exception() is not None or not f.result()[0]:
                done(L.ERROR, b"", 0)
                return
            answer: str = f.result()[1]
            cid = 0
            if action == "group":
                head, _, answer = answer.partition("/")
                cid = int(head)
            done(L.SUCCESS, bytes.fromhex(answer), cid)

        fut.add_done_callback(finished)

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Forget the namespace and remove its directory; idempotent."""
        if self.closed:
            return
        self.closed = True
        srv = self.srv
        for r in self.agent.local:
            srv.clients.pop((self.nspace, r), None)
        if srv.jobs.get(self.nspace) is self:
            del srv.jobs[self.nspace]
            ffi, lib = srv.ffi, srv.lib
            for r in self.agent.local:
                lib.PMIx_server_deregister_client(proc(srv, self.nspace, r), ffi.NULL, ffi.NULL)
            lib.PMIx_server_deregister_nspace(self.nspace.encode(), ffi.NULL, ffi.NULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        # The server stays for the process's next job (OpenPMIx cannot start again once
        # finalized); its directory goes with the process (the sweeper).
