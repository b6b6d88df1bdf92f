"""One job served over PMIx on one node: its namespace, its ranks' environment, its upcalls.

A :class:`PmixJob` belongs to a :class:`~pm.agent.node.JobAgent` whose plan
asks for PMIx.  It registers the job with the process's server
(:mod:`pm.agent.pmix_server`) as the namespace ``plan.kvsname``: the job-level
keys Open MPI and mpi4py read (sizes, local peers, node and process maps,
application numbers, temporary directories) and per-rank data (node id,
local and node rank); each local rank is registered as a client and gets the
environment of ``PMIx_server_setup_fork`` beside ``PMI_FD``.

What the library asks of the host maps onto what pmrun already does:

* a fence is one contribution per node to the agent's tree collectives
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
from pm.agent.pmix_server import PmixServer, Upcalls, server
from pm.common.mapping import local_ranks
from pm.proto import tree_wire as t

if TYPE_CHECKING:
    from pm.agent.node import JobAgent

log = logging.getLogger("pm.agent.pmix")

#: Key prefix of a direct get that asks another node's server for a rank's PMIx data.
DMODEX_KEY = b"\x00pmix.dmodex."


def node_names(hosts: list[str]) -> list[str]:
    """One distinct name per node for the node map (``--local-nodes`` repeats a host)."""
    if len(set(hosts)) == len(hosts):
        return list(hosts)
    return [f"{h}-{i}" for i, h in enumerate(hosts)]


def locality_string(topo: Any, cpus: frozenset[int]) -> str | None:
    """Where a rank bound to ``cpus`` sits, as PMIx's hwloc support writes it
    (``SK0:L30:CR2-3:HT4-7:NM0``: logical indexes of the packages, L3 caches, cores,
    PUs and NUMA nodes it touches); None for a rank free to run anywhere."""
    from pm.agent.topology import format_cpuset

    if not cpus or cpus.issuperset(topo.pus):
        return None
    parts = []
    for tag, objs in (("SK", topo.packages), ("L3", topo.l3caches), ("CR", topo.cores)):
        touched = [i for i, o in enumerate(objs) if o & cpus]
        if touched:
            parts.append(tag + format_cpuset(touched))
    # PUs numbered as hwloc does: in tree order, core after core.
    pus = [pu for core in topo.cores for pu in sorted(core)] or list(topo.pus)
    parts.append("HT" + format_cpuset(i for i, pu in enumerate(pus) if pu in cpus))
    numa = [i for i, o in enumerate(topo.numa_nodes) if o & cpus]
    if numa:
        parts.append("NM" + format_cpuset(numa))
    return ":".join(parts)


def cpuset_string(cpus: frozenset[int]) -> str:
    """PMIX_CPUSET as PMIx's hwloc support writes it: ``hwloc:`` and the bitmap's list."""
    from pm.agent.topology import format_cpuset

    return "hwloc:" + format_cpuset(cpus)


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
        srv = await asyncio.to_thread(server, node_names(agent.plan.hosts)[agent.vertex],
                                      agent.extra_env.get("HWLOC_XMLFILE"))
        srv.loop = agent.loop
        return srv

    # ------------------------------------------------------------------ registration
    def register(self, topo: Any = None) -> None:
        """The job with its keys, and each local rank as a client; ``topo`` (the node's
        :class:`~pm.agent.topology.Topology`) gives bound ranks their locality strings."""
        agent, plan, ffi, lib = self.agent, self.agent.plan, self.srv.ffi, self.srv.lib
        os.makedirs(self.dir, exist_ok=True)
        names = node_names(plan.hosts)
        by_node = local_ranks(agent.node_of_rank)
        raw: list[Any] = []  # strings the library allocated, freed after the call

        def generate(fn: Any, text: str) -> Any:
            out = ffi.new("char **")
            rc = fn(text.encode(), out)
            if rc != L.SUCCESS:
                raise L.PmixError(f"PMIx regex of {text[:60]!r}: {L.status_text(lib, ffi, rc)}")
            raw.append(out[0])
            return out[0]  # passed as it is: a compressed map may hold NUL bytes

        node_map = generate(lib.PMIx_generate_regex, ",".join(names))
        proc_map = generate(lib.PMIx_generate_ppn, ";".join(
            ",".join(map(str, by_node.get(v, []))) for v in range(len(names))))
        local = agent.local
        napps = len(plan.apps)
        first = 0
        apps: list[tuple[str, L.Value]] = []
        app_first: list[int] = []
        for i, app in enumerate(plan.apps):
            count = app.n
            app_first.append(first)
            apps.append(("pmix.app.info", (L.INFO, [  # PMIX_APP_INFO
                ("pmix.appnum", (L.UINT32, i)), ("pmix.app.size", (L.UINT32, count)),
                ("pmix.aldr", (L.PROC_RANK, first))])))
            first += count
        items: list[tuple[str, L.Value]] = [
            ("pmix.jobid", (L.STRING, self.nspace)),
            ("pmix.job.size", (L.UINT32, plan.size)),
            ("pmix.univ.size", (L.UINT32, max(agent.universe_size(), plan.size))),
            ("pmix.max.size", (L.UINT32, plan.size)),
            ("pmix.num.nodes", (L.UINT32, len(names))),
            ("pmix.job.napps", (L.UINT32, napps)),
            ("pmix.nmap", (L.STRING, node_map)),
            ("pmix.pmap", (L.STRING, proc_map)),
            ("pmix.lpeers", (L.STRING, ",".join(map(str, local)))),
            ("pmix.local.size", (L.UINT32, len(local))),
            ("pmix.lldr", (L.PROC_RANK, local[0])),
            ("pmix.tmpdir", (L.STRING, self.dir)),
            ("pmix.nsdir", (L.STRING, self.dir)),
            ("pmix.tdir.rmclean", (L.BOOL, True)),
        ]
        if napps == 1:
            items.append(("pmix.appnum", (L.UINT32, 0)))
        items += apps
        # Each rank's place: the library derives host names from the maps.
        for v in range(len(names)):
            for lr, r in enumerate(by_node.get(v, [])):
                appnum = plan.app_of_rank(r)
                pdata: list[tuple[str, L.Value]] = [
                    ("pmix.rank", (L.PROC_RANK, r)),
                    ("pmix.nodeid", (L.UINT32, v)),
                    ("pmix.lrank", (L.UINT16, lr)),
                    ("pmix.nrank", (L.UINT16, lr)),
                    ("pmix.appnum", (L.UINT32, appnum)),
                    ("pmix.apprank", (L.PROC_RANK, r - app_first[appnum])),
                    ("pmix.grank", (L.PROC_RANK, r)),
                ]
                cpus = agent.cpusets[lr] if v == agent.vertex and agent.cpusets else None
                where = locality_string(topo, cpus) if topo is not None and cpus else None
                if where and cpus:
                    pdata.append(("pmix.locstr", (L.STRING, where)))  # PMIX_LOCALITY_STRING
                    pdata.append(("pmix.cpuset", (L.STRING, cpuset_string(cpus))))
                items.append(("pmix.pdata", (L.INFO, pdata)))  # PMIX_PROC_DATA
        info = L.InfoArray(ffi, items)
        try:
            rc = lib.PMIx_server_register_nspace(self.nspace.encode(), len(local), info.ptr,
                                                 info.n, ffi.NULL, ffi.NULL)
        finally:
            for p in raw:
                lib.free(p)
        if rc not in (L.SUCCESS, L.OPERATION_SUCCEEDED):
            raise L.PmixError(f"PMIx_server_register_nspace: {L.status_text(lib, ffi, rc)}")
        self.srv.jobs[self.nspace] = self
        uid, gid = os.getuid(), os.getgid()
        for r in local:
            rc = lib.PMIx_server_register_client(self._proc(r), uid, gid, ffi.NULL, ffi.NULL,
                                                 ffi.NULL)
            if rc not in (L.SUCCESS, L.OPERATION_SUCCEEDED):
                raise L.PmixError(
                    f"PMIx_server_register_client {r}: {L.status_text(lib, ffi, rc)}")

    def _proc(self, rank: int) -> Any:
        proc = self.srv.ffi.new("pmix_proc_t *")
        proc.nspace = self.nspace.encode()
        proc.rank = rank
        return proc

    def fork_env(self, rank: int) -> dict[str, str]:
        """The variables ``PMIx_server_setup_fork`` gives local rank ``rank``."""
        ffi, lib = self.srv.ffi, self.srv.lib
        envp = ffi.new("char ***")
        rc = lib.PMIx_server_setup_fork(self._proc(rank), envp)
        env: dict[str, str] = {}
        arr = envp[0]
        if arr != ffi.NULL:
            i = 0
            while arr[i] != ffi.NULL:
                k, _, v = ffi.string(arr[i]).decode(errors="replace").partition("=")
                env[k] = v
                lib.free(arr[i])
                i += 1
            lib.free(arr)
        if rc != L.SUCCESS:
            raise L.PmixError(f"PMIx_server_setup_fork {rank}: {L.status_text(lib, ffi, rc)}")
        # Open MPI 4.x takes a PMIx server for a direct launch only when one of the
        # resource managers it knows is named (else it starts as a singleton); its Flux
        # check asks for nothing but this variable and changes nothing else that pmrun
        # does not already do (it leaves binding to the launcher).  Open MPI 5 ignores it.
        env.setdefault("FLUX_JOB_ID", self.nspace)
        return env

    # ------------------------------------------------------------------ upcalls (on the loop)
    def client_event(self, rank: int, event: str, detail: Any = None) -> None:
        log.debug("PMIx %s: rank %d %s", self.nspace, rank, event)
        if rank in self.agent.ranks and not self.closed:
            self.agent.rank_event(rank, event, detail)

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
        fut = agent.requests.get_from(agent.local[0], rank, DMODEX_KEY + str(rank).encode())

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

    def publish(self, rank: int, items: dict[str, Any], done: Callable[[int], None]) -> None:
        self._names("publish", [(k, "" if v is None else str(v)) for k, v in items.items()],
                    lambda found, ok: done(L.SUCCESS if ok else L.ERROR))

    def lookup(self, rank: int, keys: list[str],
               done: Callable[[int, list[tuple[str, str]]], None]) -> None:
        self._names("lookup", [(k, "") for k in keys],
                    lambda found, ok: done(L.SUCCESS if found else L.ERR_NOT_FOUND, found))

    def unpublish(self, rank: int, keys: list[str], done: Callable[[int], None]) -> None:
        self._names("unpublish", [(k, "") for k in keys],
                    lambda found, ok: done(L.SUCCESS if ok else L.ERR_NOT_FOUND))

    def _names(self, action: str, pairs: list[tuple[str, str]],
               then: Callable[[list[tuple[str, str]], bool], None]) -> None:
        """One name-service request per key; ``then(found, all_ok)`` once all are answered."""
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

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Forget the namespace and remove its directory; idempotent."""
        if self.closed:
            return
        self.closed = True
        srv = self.srv
        if srv.jobs.get(self.nspace) is self:
            del srv.jobs[self.nspace]
            ffi, lib = srv.ffi, srv.lib
            for r in self.agent.local:
                lib.PMIx_server_deregister_client(self._proc(r), ffi.NULL, ffi.NULL)
            lib.PMIx_server_deregister_nspace(self.nspace.encode(), ffi.NULL, ffi.NULL)
        shutil.rmtree(self.dir, ignore_errors=True)
        # The server stays for the process's next job (OpenPMIx cannot start again once
        # finalized); its directory goes with the process (the sweeper).
