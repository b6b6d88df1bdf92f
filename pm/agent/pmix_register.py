"""A job's namespace registered with the PMIx server, and its ranks' environment.

What Open MPI and mpi4py read at start-up: the job-level keys (sizes, local
peers, node and process maps, application numbers, temporary directories) and
per-rank data (node id, local and node rank, locality when bound), then each
local rank as a client; :func:`fork_env` is what ``PMIx_server_setup_fork``
gives a rank.  Plain values in (:class:`Layout`), no event loop and no
asyncio: the agent (:class:`pm.agent.pmix_job.PmixJob`) registers its jobs
with it, and so does pmrun's quick path (:func:`start_one_node`) before
anything heavy is imported.
"""

from __future__ import annotations

import os

from pm.agent import pmix_lib as L
from pm.agent.pmix_detect import PREFIX_VARS

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pm.quick)
if TYPE_CHECKING:
    from typing import Any

    from pm.agent.pmix_server import PmixServer


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


class Layout:
    """A job as the registration needs it: ``by_node[v]`` are node ``v``'s ranks in
    order, ``vertex`` is this node, ``app_sizes`` the ranks of each program in order;
    ``cpusets`` (this node's ranks' bindings, by local rank) and ``topo`` (its
    :class:`~pm.agent.topology.Topology`) give bound ranks their locality; ``parent``
    (the spawner's namespace and rank) marks a job made by PMIx_Spawn.  Only nodes
    with ranks of the job are in its maps (PMIx refuses a node with none);
    ``node_ids`` are their numbers in the run (default 0, 1, ...), ``vertex`` is -1
    on a node that only knows the job."""

    __slots__ = ("app_sizes", "by_node", "cpusets", "names", "node_ids", "nspace", "parent",
                 "size", "topo", "universe", "vertex")

    def __init__(self, nspace: str, names: list[str], by_node: list[list[int]], vertex: int,
                 app_sizes: list[int], universe: int = 0,
                 cpusets: list[frozenset[int]] | None = None, topo: Any = None,
                 parent: tuple[str, int] | None = None,
                 node_ids: list[int] | None = None) -> None:
        self.parent = parent
        self.node_ids = list(range(len(by_node))) if node_ids is None else node_ids
        self.nspace = nspace
        self.names = names
        self.by_node = by_node
        self.vertex = vertex
        self.app_sizes = app_sizes
        self.size = sum(app_sizes)
        self.universe = max(universe, self.size)
        self.cpusets = cpusets
        self.topo = topo

    @property
    def local(self) -> list[int]:
        return self.by_node[self.vertex] if self.vertex >= 0 else []


#: Timer slack of a PMIx job's ranks on an oversubscribed node, per rank a CPU runs,
#: and at most (ns): 64 ranks on 2 CPUs get 4 ms, 16 get 1 ms.
SLACK_PER_RANK_A_CPU_NS = 125_000
SLACK_MAX_NS = 4_000_000


def oversubscribed(nlocal: int) -> bool:
    """More ranks on this node than CPUs this process may run on."""
    return nlocal > len(os.sched_getaffinity(0))


def rank_timerslack_ns(nlocal: int) -> int:
    """The timer slack ``nlocal`` ranks of a PMIx job start with on this node; 0: the
    kernel's default.  ``PM_RANK_TIMERSLACK_NS`` sets it for any oversubscribed node
    (0 turns it off).  On a node with ``k`` ranks a CPU, a rank runs about once
    every ``k`` time slices anyway: waking it more often only takes CPU from the others."""
    ncpus = len(os.sched_getaffinity(0))
    if nlocal <= ncpus:
        return 0
    env = os.environ.get("PM_RANK_TIMERSLACK_NS", "")
    if env.isdecimal():
        return int(env)
    return min(SLACK_MAX_NS, SLACK_PER_RANK_A_CPU_NS * nlocal // ncpus)


class RankTimerSlack:
    """Around the spawn of a PMIx job's ranks on an oversubscribed node: the timer
    slack they inherit (fork and exec keep the spawning thread's).

    While ``MPI_Init`` waits for a fence, Open MPI's clients poll: progress, then
    ``usleep(100)``, again and again (ompi_rte.h, OMPI_LAZY_WAIT_FOR_COMPLETION).
    With more ranks than CPUs, every early rank wakes 10,000 times a second and
    takes CPU from the ranks still starting, whose arrival all of them wait for:
    at 64 ranks on 2 CPUs, two thirds of the ranks' CPU time in MPI_Init (149 ms
    a rank; 96 with 1 ms of slack, 72 with 4 ms).  The slack lets the kernel
    batch those wake-ups.  Only sleeps and
    timeouts are affected (a sleep may end up to the slack later), never a wake-up
    by I/O; the spawning thread gets its own value back at once.  How much:
    :func:`rank_timerslack_ns`."""

    __slots__ = ("_old", "_slack")

    def __init__(self, nlocal: int) -> None:
        self._slack = rank_timerslack_ns(nlocal)
        self._old = ""

    def __enter__(self) -> RankTimerSlack:
        import _thread

        # /proc/self/timerslack_ns is the main thread's (the one that spawns, here).
        if self._slack and _thread.get_native_id() == os.getpid():
            try:
                with open("/proc/self/timerslack_ns", "r+") as f:
                    self._old = f.read().strip()
                    f.seek(0)
                    f.write(str(self._slack))
            except OSError:  # before Linux 4.6: the ranks keep the default
                self._old = ""
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._old:
            try:
                with open("/proc/self/timerslack_ns", "w") as f:
                    f.write(self._old)
            except OSError:
                pass


def register(srv: PmixServer, job: Layout) -> None:
    """The job with its keys, and each of this node's ranks as a client."""
    ffi, lib = srv.ffi, srv.lib
    tmp = os.path.join(srv.dir, job.nspace)
    os.makedirs(tmp, exist_ok=True)
    raw: list[Any] = []  # strings the library allocated, freed after the call

    def generate(fn: Any, text: str) -> Any:
        out = ffi.new("char **")
        rc = fn(text.encode(), out)
        if rc != L.SUCCESS:
            raise L.PmixError(f"PMIx regex of {text[:60]!r}: {L.status_text(lib, ffi, rc)}")
        raw.append(out[0])
        return out[0]  # passed as it is: a compressed map may hold NUL bytes

    local = job.local
    node_map = generate(lib.PMIx_generate_regex, ",".join(job.names))
    proc_map = generate(lib.PMIx_generate_ppn, ";".join(
        ",".join(map(str, ranks)) for ranks in job.by_node))
    napps = len(job.app_sizes)
    apps: list[tuple[str, L.Value]] = []
    app_first: list[int] = []
    first = 0
    for i, count in enumerate(job.app_sizes):
        app_first.append(first)
        apps.append(("pmix.app.info", (L.INFO, [  # PMIX_APP_INFO
            ("pmix.appnum", (L.UINT32, i)), ("pmix.app.size", (L.UINT32, count)),
            ("pmix.aldr", (L.PROC_RANK, first))])))
        first += count
    items: list[tuple[str, L.Value]] = [
        ("pmix.jobid", (L.STRING, job.nspace)),
        ("pmix.job.size", (L.UINT32, job.size)),
        ("pmix.univ.size", (L.UINT32, job.universe)),
        ("pmix.max.size", (L.UINT32, job.size)),
        ("pmix.num.nodes", (L.UINT32, len(job.names))),
        ("pmix.job.napps", (L.UINT32, napps)),
        ("pmix.nmap", (L.STRING, node_map)),
        ("pmix.pmap", (L.STRING, proc_map)),
        ("pmix.tmpdir", (L.STRING, tmp)),
        ("pmix.nsdir", (L.STRING, tmp)),
        ("pmix.tdir.rmclean", (L.BOOL, True)),
    ]
    if local:  # (a node that only knows the job, for a connect with it, has none)
        items += [("pmix.lpeers", (L.STRING, ",".join(map(str, local)))),
                  ("pmix.local.size", (L.UINT32, len(local))),
                  ("pmix.lldr", (L.PROC_RANK, local[0]))]
        if oversubscribed(len(local)):
            # PMIX_NODE_OVERSUBSCRIBED (as PRRTE marks such a node): Open MPI's ranks then
            # yield the CPU when they have nothing to do (mpi_yield_when_idle).
            items.append(("pmix.ndosub", (L.BOOL, True)))
    if job.parent is not None:  # PMIX_SPAWNED, PMIX_PARENT_ID: whose PMIx_Spawn made it
        items += [("pmix.spawned", (L.BOOL, True)), ("pmix.parent", (L.PROC, job.parent))]
    if napps == 1:
        items.append(("pmix.appnum", (L.UINT32, 0)))
    items += apps
    # Each rank's place: the library derives host names from the maps.
    for v, ranks in enumerate(job.by_node):
        for lr, r in enumerate(ranks):
            appnum = next(i for i in range(napps - 1, -1, -1) if r >= app_first[i])
            pdata: list[tuple[str, L.Value]] = [
                ("pmix.rank", (L.PROC_RANK, r)),
                ("pmix.nodeid", (L.UINT32, job.node_ids[v])),
                ("pmix.lrank", (L.UINT16, lr)),
                ("pmix.nrank", (L.UINT16, lr)),
                ("pmix.appnum", (L.UINT32, appnum)),
                ("pmix.apprank", (L.PROC_RANK, r - app_first[appnum])),
                ("pmix.grank", (L.PROC_RANK, r)),
            ]
            cpus = job.cpusets[lr] if v == job.vertex and job.cpusets else None
            where = locality_string(job.topo, cpus) if job.topo is not None and cpus else None
            if where and cpus:
                pdata.append(("pmix.locstr", (L.STRING, where)))  # PMIX_LOCALITY_STRING
                pdata.append(("pmix.cpuset", (L.STRING, cpuset_string(cpus))))
            items.append(("pmix.pdata", (L.INFO, pdata)))  # PMIX_PROC_DATA
    info = L.InfoArray(ffi, items)
    try:
        rc = lib.PMIx_server_register_nspace(job.nspace.encode(), len(local), info.ptr,
                                             info.n, ffi.NULL, ffi.NULL)
    finally:
        for p in raw:
            lib.free(p)
    if rc not in (L.SUCCESS, L.OPERATION_SUCCEEDED):
        raise L.PmixError(f"PMIx_server_register_nspace: {L.status_text(lib, ffi, rc)}")
    uid, gid = os.getuid(), os.getgid()
    for r in local:
        rc = lib.PMIx_server_register_client(proc(srv, job.nspace, r), uid, gid, ffi.NULL,
                                             ffi.NULL, ffi.NULL)
        if rc not in (L.SUCCESS, L.OPERATION_SUCCEEDED):
            raise L.PmixError(f"PMIx_server_register_client {r}: {L.status_text(lib, ffi, rc)}")


def proc(srv: PmixServer, nspace: str, rank: int) -> Any:
    p = srv.ffi.new("pmix_proc_t *")
    p.nspace = nspace.encode()
    p.rank = rank
    return p


def fork_env(srv: PmixServer, nspace: str, rank: int) -> dict[str, str]:
    """The variables ``PMIx_server_setup_fork`` gives local rank ``rank``."""
    ffi, lib = srv.ffi, srv.lib
    envp = ffi.new("char ***")
    rc = lib.PMIx_server_setup_fork(proc(srv, nspace, rank), envp)
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
    if not srv.port:  # where the ranks connect: pmix_upcalls.UpcallHandlers.nodelay looks for it
        uri = env.get("PMIX_SERVER_URI41") or env.get("PMIX_SERVER_URI4") or ""
        port = uri.rpartition(":")[2]
        srv.port = int(port) if port.isdecimal() else 0
    # Open MPI 4.x (ORTE) decides how it was launched in its "schizo" framework
    # before it looks at PMIx: its ess/pmi component is refused unless a schizo
    # module says "direct launch", and the only modules that can (flux, slurm, alps,
    # jsm) each require their resource manager's variables; else schizo/orte declares
    # a singleton (or, with OMPI_MCA_orte_local_daemon_uri, a child of an orted it
    # would then contact).  No PMIx key or MCA variable alone does it.  Flux's module
    # asks for nothing but FLUX_JOB_ID and only sets ess=pmi, binding policy none and
    # "externally bound": what pmrun does (it binds, or leaves ranks free).  Its opal
    # pmix/flux client (PMI-1 through Flux's library, priority 20) loses to ext3x,
    # priority 100 once PMIX_NAMESPACE is set.  Open MPI 5 ignores the variable.
    env.setdefault("FLUX_JOB_ID", nspace)
    env.update(srv.prefix_env)
    return env


def add_fork_env(env: dict[str, str], more: dict[str, str]) -> None:
    """A rank's ``env`` with its PMIx variables (:func:`fork_env`) added: an installation
    prefix the user gave (``OPAL_PREFIX``, ``PMIX_PREFIX``) is kept."""
    for k, v in more.items():
        if k not in PREFIX_VARS or k not in env:
            env[k] = v


def start_one_node(nspace: str, size: int, host: str, topology_xml: str | None,
                   wake_fd: int = -1, lib: str | None = None,
                   cpusets: list[frozenset[int]] | None = None, topo: Any = None,
                   universe: int = 0) -> tuple[PmixServer, list[dict[str, str]]]:
    """For pmrun's quick path: the process's server (started now), a ``size``-rank job
    on this node alone registered as ``nspace``, and each rank's variables.  Upcalls
    wait for an event loop (:meth:`PmixServer.attach`); those that cannot wait write
    to ``wake_fd``.  ``cpusets`` and ``topo``: bound ranks' (:class:`Layout`).  Raises
    :class:`~pm.agent.pmix_lib.PmixError`."""
    from pm.agent.pmix_server import server

    srv = server(host, topology_xml, sweep=False, lib=lib)  # the caller sweeps after
    srv.wake_fd = wake_fd
    register(srv, Layout(nspace, [host], [list(range(size))], 0, [size], universe=universe,
                         cpusets=cpusets, topo=topo))
    return srv, [fork_env(srv, nspace, r) for r in range(size)]
