"""The agent's PMIx server: OpenPMIx's server library, its upcalls handed to the event loop.

Open MPI speaks only PMIx.  Rather than the wire protocol, the agent runs
OpenPMIx's own server library (:mod:`pm.agent.pmix_lib`) in its process, one
per process (the library allows no more); each job served is a namespace
registered with it (:class:`pm.agent.pmix_job.PmixJob`).

The library answers clients from its own progress thread and calls the
*upcalls* of a server module there.  Each upcall here only copies what it was
given into Python values and hands it to the agent's event loop with
``call_soon_threadsafe``; it returns at once and the library waits for the
completion callback, which the loop calls later (the library's callbacks
may be called from any thread: they shift themselves to its progress
thread).  Nothing here blocks the loop but the short, synchronous
registration calls.

The server's rendezvous files and directories live in one directory per
process, ``pm-pmix-<pid>-*`` in the temporary directory, whose ``.lock`` the
process holds with ``flock``: :func:`cleanup_stale` (run by the next agent
and by ``pm-agent --cleanup``) removes the directories of processes that died
without removing theirs (SIGKILL).
"""

from __future__ import annotations

import _thread
import fcntl
import os
import time

from pm.agent import pmix_lib as L
from pm.agent import topo_share
from pm.agent.pmix_detect import without_dstore

# No asyncio, typing, threading or contextlib at import (about 3 ms): pmrun's quick path
# starts the server (pm.quick) before its ranks.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from typing import Any

    #: One application of a PMIx_Spawn: argv (program first), process count, environment
    #: (``NAME=value`` strings), working directory (or ""), and its info keys.
    SpawnApp = tuple[list[str], int, list[str], str, dict[str, Any]]



class _Log:
    """``logging.getLogger("pm.agent.pmix")``, imported on the first message (logging costs
    pmrun's quick path 10 ms, and it logs nothing)."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("pm.agent.pmix"), name)


log = _Log()

_PREFIX = "pm-pmix-"
_PIDFD_GETFD = 438  # x86-64 and aarch64 alike (the generic syscall table)
#: mmap(2) and munmap(2) by architecture; MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE|
#: MAP_FIXED_NOREPLACE (PmixServer._hold_topology).
_MMAP = {"x86_64": 9, "aarch64": 222}
_MUNMAP = {9: 11, 222: 215}
_MAP_RESERVE = 0x02 | 0x20 | 0x4000 | 0x100000
_LOCK = ".lock"
#: PMIx_Log's keys for a client's output (PMIX_LOG_STDERR, PMIX_LOG_STDOUT): its stream
#: (pm.common.output's STDERR, STDOUT).
_LOG_STREAMS = {"pmix.log.stderr": 2, "pmix.log.stdout": 1}


class Upcalls:
    """What a served namespace is told (implemented by :class:`pm.agent.pmix_job.PmixJob`);
    every method runs on the event loop."""

    def client_event(self, rank: int, event: str, detail: Any = None) -> None: ...
    def client_log(self, rank: int, lines: list[tuple[int, str]]) -> None: ...
    def fence(self, blob: bytes, collect: bool, done: Callable[[int, bytes], None]) -> None: ...
    def direct_modex(self, rank: int, done: Callable[[int, bytes], None]) -> None: ...
    def publish(self, rank: int, items: dict[str, Any], done: Callable[[int], None],
                once: bool = False) -> None: ...
    def lookup(self, rank: int, keys: list[str],
               done: Callable[[int, list[tuple[str, str]]], None], wait: bool = False
               ) -> None: ...
    def unpublish(self, rank: int, keys: list[str], done: Callable[[int], None]) -> None: ...
    def spawn(self, rank: int, apps: list[SpawnApp], done: Callable[[int, str], None]
              ) -> None: ...
    def connect(self, procs: list[tuple[str, int]], done: Callable[[int], None]) -> None: ...
    def group_fence(self, procs: list[tuple[str, int]], blob: bytes, collect: bool,
                    done: Callable[[int, bytes], None]) -> None: ...
    def group(self, grp: str, construct: bool, procs: list[tuple[str, int]], blob: bytes,
              want_id: bool, done: Callable[[int, int, bytes], None]) -> None: ...


#: PMIx's group keys and operations (pmix_common.h).
GROUP_CONSTRUCT = 0
GROUP_ASSIGN_CONTEXT_ID = "pmix.grp.actxid"
GROUP_CONTEXT_ID = "pmix.grp.ctxid"
GROUP_LOCAL_ONLY = "pmix.grp.lcl"
GROUP_ENDPT_DATA = "pmix.grp.endpt"
GROUP_MEMBERSHIP = "pmix.grp.mbrs"

#: How a value published as bytes (Open MPI's connect/accept publishes byte objects) is
#: kept in the name service, whose values are strings: this, then the bytes in hex.
BYTES_MARK = "\x00pmix-bytes:"



class PmixServer:
    """The process's PMIx server (see :func:`server`)."""

    def __init__(self, hostname: str, topology_xml: str | None = None, sweep: bool = True,
                 lib: str | None = None) -> None:
        self.ffi, self.lib = L.load(lib)
        self.jobs: dict[str, Upcalls] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Upcalls that came before an event loop was attached (pmrun's quick path
        #: serves a one-node job without one), delivered by :meth:`attach`.
        self._pending: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = []
        self._post_lock = _thread.allocate_lock()
        #: Written to (one byte) when an upcall that needs the loop waits for it.
        self.wake_fd = -1
        #: A client's init wakes :attr:`wake_fd` too (pm.quick: a rank ended before its
        #: init, so this one's MPI_Init would wait for it in vain).
        self.wake_on_init = False
        #: ``(nspace, rank)`` -> "init" or "finalize": the last of a client's two events
        #: (pmrun's quick path asks whether a rank that exited had finalized).
        self.clients: dict[tuple[str, int], str] = {}
        #: ``(nspace, rank)`` -> pid, noted by whoever starts the ranks (:meth:`nodelay`).
        self.pids: dict[tuple[str, int], int] = {}
        #: The port clients connect to (from the URI ``setup_fork`` gives them).
        self.port = 0
        self._keep: dict[int, Any] = {}  # buffers handed to the library, until released
        self._next = 1
        self.dir = _make_dir()
        if sweep:
            self.sweep()
        self.hostname = hostname
        self.init_ms = 0.0
        ffi = self.ffi
        mod = ffi.new("pmix_server_module_t *")
        # The callbacks must live as long as the library may call them: for ever.
        self._cbs = [
            ffi.callback("pmix_server_client_connected_fn_t", self._connected,
                         error=L.ERROR),
            ffi.callback("pmix_server_client_finalized_fn_t", self._finalized,
                         error=L.ERROR),
            ffi.callback("pmix_server_abort_fn_t", self._abort, error=L.ERROR),
            ffi.callback("pmix_server_fencenb_fn_t", self._fence, error=L.ERROR),
            ffi.callback("pmix_server_dmodex_req_fn_t", self._dmodex, error=L.ERROR),
            ffi.callback("pmix_server_publish_fn_t", self._publish, error=L.ERROR),
            ffi.callback("pmix_server_lookup_fn_t", self._lookup, error=L.ERROR),
            ffi.callback("pmix_server_unpublish_fn_t", self._unpublish, error=L.ERROR),
            ffi.callback("pmix_server_spawn_fn_t", self._spawn, error=L.ERROR),
            ffi.callback("pmix_server_connect_fn_t", self._connect, error=L.ERROR),
            ffi.callback("pmix_server_connect_fn_t", self._disconnect, error=L.ERROR),
            ffi.callback("pmix_server_job_control_fn_t", self._job_control,
                         error=L.ERR_NOT_SUPPORTED),
            ffi.callback("pmix_release_cbfunc_t", self._release),
            ffi.callback("pmix_dmodex_response_fn_t", self._dmodex_answer),
            ffi.callback("pmix_server_grp_fn_t", self._group_op, error=L.ERROR),
            ffi.callback("pmix_server_log_fn_t", self._log),
        ]
        (mod.client_connected, mod.client_finalized, mod.abort, mod.fence_nb,
         mod.direct_modex, mod.publish, mod.lookup, mod.unpublish, mod.spawn, mod.connect,
         mod.disconnect, mod.job_control) = self._cbs[:12]
        self._release_cb, self._dmodex_cb = self._cbs[12], self._cbs[13]
        mod.group, mod.log = self._cbs[14], self._cbs[15]
        self._module = mod
        info = L.InfoArray(ffi, [
            ("pmix.srvr.tmpdir", (L.STRING, self.dir)),  # PMIX_SERVER_TMPDIR
            ("pmix.sys.tmpdir", (L.STRING, self.dir)),  # PMIX_SYSTEM_TMPDIR
            ("pmix.srv.nspace", (L.STRING, f"pmrun-agent-{os.getpid()}")),
            ("pmix.srv.rank", (L.PROC_RANK, 0)),
            ("pmix.hname", (L.STRING, hostname)),  # PMIX_HOSTNAME: the node map's name
            # PMIX_SERVER_SHARE_TOPOLOGY: the node's topology in shared memory (and as XML)
            # for the clients, which adopt it instead of loading their own (as under PRRTE).
            ("pmix.srvr.share", (L.BOOL, True)),
        ])
        t0 = time.perf_counter()
        meanwhile = _init_env(topology_xml, L.major_version(ffi, self.lib) >= 5
                              or bool(lib and without_dstore(lib)))
        os.environ.update(meanwhile)
        try:
            rc = self.lib.PMIx_server_init(mod, info.ptr, info.n)
        finally:
            for name in meanwhile:
                os.environ.pop(name, None)
        self.init_ms = (time.perf_counter() - t0) * 1e3
        if rc != L.SUCCESS:
            _remove_dir(self.dir)
            raise L.PmixError(f"PMIx_server_init: {L.status_text(self.lib, ffi, rc)}")
        self.version = ffi.string(self.lib.PMIx_Get_version()).decode(errors="replace")
        self._hold_topology()

    def _hold_topology(self) -> None:
        """Keep the address range of the shared topology (``hwloc.sm``) taken here.

        The library maps the segment at the middle of this process's largest
        address-space hole, writes it and unmaps it; the job data segments it maps
        later (gds/shmem2, mapped at the same addresses in the clients) would then
        take that very range, and every client would find it taken and fall back to
        parsing the XML copy.  A reservation (no memory, PROT_NONE) keeps it free."""
        mmap_nr = _MMAP.get(os.uname().machine)
        try:
            with open(os.path.join(self.dir, "hwloc.sm"), "rb") as f:
                head = f.read(24)  # hwloc's shmem header: version, length, address, size
        except OSError:
            return  # not shared (no hwloc shmem support, no hole): nothing to keep
        if mmap_nr is None or len(head) < 24:
            return
        addr = int.from_bytes(head[8:16], "little")
        size = int.from_bytes(head[16:24], "little")
        c = self.ffi.cast
        got = self.lib.syscall(c("long", mmap_nr), c("long", addr), c("long", size),
                               c("long", 0), c("long", _MAP_RESERVE), c("long", -1),
                               c("long", 0))
        if got != addr and got != -1:  # a kernel without MAP_FIXED_NOREPLACE put it elsewhere
            self.lib.syscall(c("long", _MUNMAP[mmap_nr]), c("long", got), c("long", size))

    def sweep(self) -> None:
        """Start the process that removes the server's directory when this process ends
        (SIGKILL included); idempotent.  Until then, the next agent's
        :func:`cleanup_stale` removes it."""
        if self.dir not in _pipes:
            _sweep_on_exit(self.dir)

    # ------------------------------------------------------------------ helpers for jobs
    def keep(self, obj: Any) -> Any:
        """A handle (``void *``) for ``obj``, held until the library calls the release."""
        ident = self._next
        self._next += 1
        self._keep[ident] = obj
        return self.ffi.cast("void *", ident)

    def modex_done(self, cbfunc: Any, cbdata: Any) -> Callable[[int, bytes], None]:
        """A ``done(status, data)`` that completes a fence or direct modex (on the loop)."""
        ffi = self.ffi

        def done(status: int, data: bytes) -> None:
            if data:
                buf = ffi.new("char[]", data)
                cbfunc(status, buf, len(data), cbdata, self._release_cb, self.keep(buf))
            else:
                cbfunc(status, ffi.NULL, 0, cbdata, ffi.NULL, ffi.NULL)

        return done

    def _release(self, handle: Any) -> None:
        self._keep.pop(int(self.ffi.cast("uintptr_t", handle)), None)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve upcalls on ``loop`` from now on, those that waited for it first."""
        with self._post_lock:
            self.loop = loop
            pending, self._pending = self._pending, []
            for nspace, fn, args in pending:
                loop.call_soon_threadsafe(self._deliver, nspace, fn, args)

    def _post(self, nspace: str, fn: Callable[..., None], *args: Any, urgent: bool = True
              ) -> int:
        """Run ``fn(job, *args)`` on the loop (once there is one: ``urgent`` ones wake
        whoever waits on :attr:`wake_fd`); PMIx status of the hand-over."""
        with self._post_lock:
            loop = self.loop
            if loop is None:
                self._pending.append((nspace, fn, args))
                if urgent and self.wake_fd >= 0:
                    try:  # noqa: SIM105 (contextlib is not imported on pmrun's quick path)
                        os.write(self.wake_fd, b"!")
                    except OSError:
                        pass
                return L.SUCCESS
        if loop.is_closed():
            return L.ERR_NOT_FOUND
        try:
            loop.call_soon_threadsafe(self._deliver, nspace, fn, args)
        except RuntimeError:  # the loop closed meanwhile
            return L.ERROR
        return L.SUCCESS

    def _deliver(self, nspace: str, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        job = self.jobs.get(nspace)
        if job is None:
            log.debug("PMIx upcall for unknown namespace %s", nspace)
            return
        try:
            fn(job, *args)
        except Exception:
            log.exception("PMIx upcall for %s failed", nspace)

    def _proc(self, proc: Any) -> tuple[str, int]:
        return self.ffi.string(proc.nspace).decode(errors="replace"), int(proc.rank)

    # ------------------------------------------------------------------ upcalls (PMIx thread)
    def _connected(self, proc: Any, _obj: Any, _cbfunc: Any, _cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        self.clients[ns, rank] = "init"
        pid = self.pids.get((ns, rank))
        if pid and self.port:
            self.nodelay(pid)
        rc = self._post(ns, lambda job: job.client_event(rank, "init"),
                        urgent=self.wake_on_init)
        return L.OPERATION_SUCCEEDED if rc == L.SUCCESS else rc

    def _finalized(self, proc: Any, _obj: Any, _cbfunc: Any, _cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        self.clients[ns, rank] = "finalize"
        rc = self._post(ns, lambda job: job.client_event(rank, "finalize"), urgent=False)
        return L.OPERATION_SUCCEEDED if rc == L.SUCCESS else rc

    def _abort(self, proc: Any, _obj: Any, status: int, msg: Any, _procs: Any, _n: int,
               cbfunc: Any, cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        text = self.ffi.string(msg).decode(errors="replace") if msg else ""

        def deliver(job: Upcalls) -> None:
            job.client_event(rank, "abort", (int(status), text))
            if cbfunc:
                cbfunc(L.SUCCESS, cbdata)

        return self._post(ns, deliver)

    def _log(self, proc: Any, data: Any, ndata: int, _dirs: Any, _ndirs: int, cbfunc: Any,
             cbdata: Any) -> None:
        """PMIx_Log of a client: what it asks to be written on stderr or stdout (Open MPI 5
        sends its error explanations so, as under its own launcher), as the rank's output."""
        ffi = self.ffi
        ns, rank = self._proc(proc)
        lines: list[tuple[int, str]] = []
        for i in range(ndata):
            stream = _LOG_STREAMS.get(ffi.string(data[i].key).decode(errors="replace"))
            text = L.read_value(ffi, data[i].value)
            if stream is not None and isinstance(text, str) and text:
                lines.append((stream, text))
        if not lines:
            if cbfunc:
                cbfunc(L.ERR_NOT_SUPPORTED, cbdata)
            return

        def deliver(job: Upcalls) -> None:
            job.client_log(rank, lines)
            if cbfunc:
                cbfunc(L.SUCCESS, cbdata)

        rc = self._post(ns, deliver)
        if rc != L.SUCCESS and cbfunc:
            cbfunc(rc, cbdata)

    def _fence(self, procs: Any, nprocs: int, info: Any, ninfo: int, data: Any, ndata: int,
               cbfunc: Any, cbdata: Any) -> int:
        ffi = self.ffi
        if nprocs < 1:
            return L.ERR_BAD_PARAM
        ns = ffi.string(procs[0].nspace).decode(errors="replace")
        directives = L.read_infos(ffi, info, ninfo)
        collect = bool(directives.get("pmix.collect"))
        blob = bytes(ffi.buffer(data, ndata)) if ndata else b""
        done = self.modex_done(cbfunc, cbdata)
        if nprocs != 1 or procs[0].rank != L.RANK_WILDCARD:
            # Some ranks, maybe of several jobs (Open MPI's disconnect fences parents and
            # children): a rendezvous like a connect's, carrying the blobs.
            members = [self._proc(procs[i]) for i in range(nprocs)]
            return self._group(members, lambda job: job.group_fence(members, blob, collect,
                                                                    done))
        return self._post(ns, lambda job: job.fence(blob, collect, done))

    def _dmodex(self, proc: Any, _info: Any, _ninfo: int, cbfunc: Any, cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        done = self.modex_done(cbfunc, cbdata)
        return self._post(ns, lambda job: job.direct_modex(rank, done))

    def _publish(self, proc: Any, info: Any, ninfo: int, cbfunc: Any, cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        given = L.read_infos(self.ffi, info, ninfo)
        items = {k: v for k, v in given.items()
                 if not k.startswith("pmix.")}  # directives (range, persistence) aside
        once = given.get("pmix.persist") == L.PERSIST_FIRST_READ

        def done(status: int) -> None:
            cbfunc(status, cbdata)

        return self._post(ns, lambda job: job.publish(rank, items, done, once=once))

    def _keys(self, keys: Any) -> list[str]:
        out: list[str] = []
        i = 0
        while keys and keys[i] != self.ffi.NULL:
            out.append(self.ffi.string(keys[i]).decode(errors="replace"))
            i += 1
        return out

    def _lookup(self, proc: Any, keys: Any, info: Any, ninfo: int, cbfunc: Any,
                cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        names = self._keys(keys)
        # PMIX_WAIT: held until the names are published (MPI_Comm_spawn's connect/accept).
        wait = "pmix.wait" in L.read_infos(self.ffi, info, ninfo)
        ffi = self.ffi

        def done(status: int, found: list[tuple[str, str]]) -> None:
            if not found:
                cbfunc(status if status != L.SUCCESS else L.ERR_NOT_FOUND, ffi.NULL, 0, cbdata)
                return
            arr = ffi.new("pmix_pdata_t[]", len(found))
            strings = []
            for i, (key, value) in enumerate(found):
                arr[i].proc.nspace = ns.encode()
                arr[i].proc.rank = L.RANK_UNDEF
                arr[i].key = key.encode()
                if value.startswith(BYTES_MARK):  # published as bytes: handed back as bytes
                    blob = bytes.fromhex(value[len(BYTES_MARK):])
                    s = ffi.new("char[]", blob or b"\0")
                    strings.append(s)
                    arr[i].value.type = L.BYTE_OBJECT
                    arr[i].value.data.bo.bytes = s
                    arr[i].value.data.bo.size = len(blob)
                    continue
                s = ffi.new("char[]", value.encode())
                strings.append(s)
                arr[i].value.type = L.STRING
                arr[i].value.data.string = s
            cbfunc(L.SUCCESS, arr, len(found), cbdata)  # the library copies what it keeps

        return self._post(ns, lambda job: job.lookup(rank, names, done, wait=wait))

    def _unpublish(self, proc: Any, keys: Any, _info: Any, _ninfo: int, cbfunc: Any,
                   cbdata: Any) -> int:
        ns, rank = self._proc(proc)
        names = self._keys(keys)

        def done(status: int) -> None:
            cbfunc(status, cbdata)

        return self._post(ns, lambda job: job.unpublish(rank, names, done))

    def _strings(self, arr: Any) -> list[str]:
        """A NULL-terminated ``char **`` as a list."""
        out: list[str] = []
        i = 0
        while arr and arr[i] != self.ffi.NULL:
            out.append(self.ffi.string(arr[i]).decode(errors="replace"))
            i += 1
        return out

    def _spawn(self, proc: Any, _job_info: Any, _ninfo: int, apps: Any, napps: int,
               cbfunc: Any, cbdata: Any) -> int:
        """PMIx_Spawn (MPI_Comm_spawn): the same placement as a PMI spawn; the callback
        gets the children's namespace once they are started."""
        ffi = self.ffi
        ns, rank = self._proc(proc)
        todo: list[SpawnApp] = []
        for i in range(napps):
            app = apps[i]
            cmd = ffi.string(app.cmd).decode(errors="replace") if app.cmd else ""
            argv = self._strings(app.argv)
            if cmd and (not argv or argv[0] != cmd):  # argv[0] may be the bare name
                argv = [cmd, *argv[1:]] if argv else [cmd]
            cwd = ffi.string(app.cwd).decode(errors="replace") if app.cwd else ""
            todo.append((argv, int(app.maxprocs), self._strings(app.env), cwd,
                         L.read_infos(ffi, app.info, app.ninfo)))

        def done(status: int, nspace: str) -> None:
            cbfunc(status, nspace.encode() if nspace else ffi.NULL, cbdata)

        return self._post(ns, lambda job: job.spawn(rank, todo, done))

    def _connect(self, procs: Any, nprocs: int, _info: Any, _ninfo: int, cbfunc: Any,
                 cbdata: Any) -> int:
        """PMIx_Connect of ranks of several namespaces (MPI_Comm_spawn's connect/accept):
        completed once every node taking part got to it (:meth:`PmixJob.connect`)."""
        members = [self._proc(procs[i]) for i in range(nprocs)]
        if not members:
            return L.ERR_BAD_PARAM

        def done(status: int) -> None:
            cbfunc(status, cbdata)

        return self._group(members, lambda job: job.connect(members, done))

    def _group_op(self, op: int, grp: Any, procs: Any, nprocs: int, info: Any, ninfo: int,
                  cbfunc: Any, cbdata: Any) -> int:
        """PMIx_Group_construct and _destruct (Open MPI's ``MPI_Comm_create_from_group``,
        ``MPI_Intercomm_create_from_groups``): the library asks once per node, when all its
        local members came, with their endpoint data.  A rendezvous of every node with
        members (:meth:`PmixJob.group`) completes it: a construct gets every node's data,
        which the library stores for its clients, and the context ID asked for, unique in
        the run (the name service's counter)."""
        ffi = self.ffi
        members = [self._proc(procs[i]) for i in range(nprocs)]
        if not members:
            return L.ERR_BAD_PARAM
        given = L.read_infos(ffi, info, ninfo)
        construct = op == GROUP_CONSTRUCT
        want_id = construct and bool(given.get(GROUP_ASSIGN_CONTEXT_ID))
        if given.get(GROUP_LOCAL_ONLY) and not want_id:
            return L.OPERATION_SUCCEEDED  # its members are all here: the library is done
        blob = (given.get(GROUP_ENDPT_DATA) or b"") if construct else b""
        name = ffi.string(grp).decode(errors="replace") if grp else ""

        def done(status: int, ctxid: int, data: bytes) -> None:
            items: list[tuple[str, L.Value]] = []
            if status == L.SUCCESS and construct:
                items.append((GROUP_MEMBERSHIP, (L.DATA_ARRAY, members)))
            if status == L.SUCCESS and want_id:
                items.append((GROUP_CONTEXT_ID, (L.SIZE, ctxid)))
            if status == L.SUCCESS and data:
                items.append((GROUP_ENDPT_DATA, (L.BYTE_OBJECT, b"")))
            if not items:
                cbfunc(status, ffi.NULL, 0, cbdata, ffi.NULL, ffi.NULL)
                return
            arr = L.InfoArray(ffi, items)  # (held until the library releases it)
            if status == L.SUCCESS and data:
                # The library takes the data's buffer over (and frees it): malloc'd.
                bo = arr.ptr[arr.n - 1].value.data.bo
                bo.bytes = self.lib.malloc(len(data))
                if bo.bytes == ffi.NULL:
                    cbfunc(L.ERR_NOMEM, ffi.NULL, 0, cbdata, ffi.NULL, ffi.NULL)
                    return
                ffi.memmove(bo.bytes, data, len(data))
                bo.size = len(data)
            cbfunc(status, arr.ptr, arr.n, cbdata, self._release_cb, self.keep(arr))

        return self._group(members, lambda job: job.group(name, construct, members,
                                                          bytes(blob), want_id, done))

    def _group(self, members: list[tuple[str, int]], fn: Callable[[Upcalls], None]) -> int:
        """Run ``fn(job)`` on the loop for an operation over ``members`` (ranks of one or
        more namespaces): the library asks once per node, for its local participants,
        and any of their namespaces served here handles it.  Before there is a loop
        (pmrun's quick path) it waits for one, and wakes the quick path to hand over."""
        loop = self.loop
        if loop is None:
            here = next((ns for ns, _ in members if ns in self.jobs), members[0][0])
            return self._post(here, fn)
        if loop.is_closed():
            return L.ERR_NOT_FOUND
        try:
            loop.call_soon_threadsafe(self._deliver_group, members, fn)
        except RuntimeError:
            return L.ERROR
        return L.SUCCESS

    def _deliver_group(self, members: list[tuple[str, int]],
                       fn: Callable[[Upcalls], None]) -> None:
        for ns, _rank in members:
            job = self.jobs.get(ns)
            if job is not None:
                try:
                    fn(job)
                except Exception:
                    log.exception("PMIx operation over %d ranks of %s failed", len(members), ns)
                return
        log.warning("PMIx operation over namespaces this node does not serve: %s",
                    sorted({ns for ns, _ in members}))

    def _disconnect(self, _procs: Any, _nprocs: int, _info: Any, _ninfo: int, cbfunc: Any,
                    cbdata: Any) -> int:
        # Nothing to undo (pmrun's connect leaves no state behind): done at once, from the
        # loop (the library's versions differ on an answer given inside the upcall).
        loop = self.loop
        if loop is None or loop.is_closed():
            return L.ERR_NOT_FOUND
        try:
            loop.call_soon_threadsafe(cbfunc, L.SUCCESS, cbdata)
        except RuntimeError:
            return L.ERROR
        return L.SUCCESS

    def _job_control(self, _requestor: Any, _targets: Any, _ntargets: int, _dirs: Any,
                     _ndirs: int, _cbfunc: Any, _cbdata: Any) -> int:
        """PMIx_Job_control: what reaches us is refused.  The slot is filled for what the
        library does itself before it asks the host: the files a client registers for
        removal at its end (``PMIX_REGISTER_CLEANUP``: Open MPI's shared-memory segments in
        /dev/shm), which it takes only from a server that has the slot."""
        return L.ERR_NOT_SUPPORTED

    def nodelay(self, pid: int) -> bool:
        """Turn Nagle's algorithm off on process ``pid``'s connection to this server.

        Neither end of a PMIx connection sets TCP_NODELAY (OpenPMIx 4 and 5 have
        the call and never make it), and a client's ``PMIx_Finalize`` sends a
        request the server does not answer (deregistering its event handlers)
        right before the one it waits for: that second small segment waits for the
        first one's delayed ACK, 40 ms on Linux, in every rank's ``MPI_Finalize``.
        The rank is our child: ``pidfd_getfd`` lends us its socket for the
        ``setsockopt``.  Best effort (False when the kernel or a sandbox refuses).
        """
        import _socket

        try:
            names = os.listdir(f"/proc/{pid}/fd")
            pidfd = os.pidfd_open(pid)
        except OSError:
            return False
        done = False
        try:
            # Newest first: the connection being made is the rank's highest socket so far
            # (one readlink or two instead of one per descriptor an MPI library opened).
            for name in sorted(names, key=int, reverse=True):
                try:
                    if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                        continue
                except OSError:
                    continue
                fd = int(self.lib.syscall(self.ffi.cast("long", _PIDFD_GETFD),
                                          self.ffi.cast("int", pidfd),
                                          self.ffi.cast("int", int(name)),
                                          self.ffi.cast("unsigned int", 0)))
                if fd < 0:
                    if self.ffi.errno in (1, 38):  # EPERM, ENOSYS: never will
                        return False
                    continue
                sock = _socket.socket(fileno=fd)
                try:
                    if (sock.family in (_socket.AF_INET, _socket.AF_INET6)
                            and sock.type == _socket.SOCK_STREAM
                            and sock.getpeername()[1] == self.port):
                        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                        done = True
                except OSError:
                    pass
                finally:
                    sock.close()
                if done:
                    break  # one connection per client
        finally:
            os.close(pidfd)
        return done

    # ------------------------------------------------------------------ direct modex (owner)
    def dmodex_request(self, nspace: str, rank: int, done: Callable[[int, bytes], None]) -> None:
        """Ask the library for the data of local rank ``rank``: ``done(status, blob)`` on
        the loop once it is there."""
        proc = self.ffi.new("pmix_proc_t *")
        proc.nspace = nspace.encode()
        proc.rank = rank
        handle = self.keep(done)
        rc = self.lib.PMIx_server_dmodex_request(proc, self._dmodex_cb, handle)
        if rc != L.SUCCESS:
            self._keep.pop(int(self.ffi.cast("uintptr_t", handle)), None)
            done(rc, b"")

    def _dmodex_answer(self, status: int, data: Any, size: int, handle: Any) -> None:
        done = self._keep.pop(int(self.ffi.cast("uintptr_t", handle)), None)
        if done is None or self.loop is None:
            return
        blob = bytes(self.ffi.buffer(data, size)) if size else b""
        try:  # noqa: SIM105 (the same)
            self.loop.call_soon_threadsafe(done, int(status), blob)
        except RuntimeError:  # the loop closed meanwhile
            pass


#: hwloc plugins the library's start loads for nothing when it reads the topology from
#: XML: I/O device discovery (GL and X11, OpenCL, PCI) and libxml2 (with ICU and
#: libstdc++; hwloc's own parser reads the file).  About 10 ms of dlopen.
_HWLOC_SKIP = "hwloc_gl,hwloc_opencl,hwloc_pci,hwloc_xml_libxml"


def _init_env(xml: str | None, hash_only: bool) -> dict[str, str]:
    """Variables set in our environment while the library starts (only then: the ranks'
    environment is the plan's, not ours); a user's own settings are kept.

    * The library discovers the node's topology as it starts (tens of ms); hwloc reads
      the agent's XML of it instead (``xml``) when told so by ``HWLOC_XMLFILE``.
    * PMIx 5 hands the job's data to its own clients in shared memory (gds/shmem2),
      which here costs each client about 4 ms more CPU in ``MPI_Init`` than receiving
      it in the connection handshake (gds/hash), as PMIx 4.2 serves PMIx 5 clients:
      at 64 ranks on 2 CPUs that is the launch's critical path.  The server picks hash
      when told so at its start (``PMIX_MCA_gds``).
    * PMIx 4's shared-memory dstore (gds/ds21, ds12), which PMIx 5 clients cannot use,
      stores each job's data as the job is registered (about 1 ms of the server thread
      at 16 ranks, before the ranks may start) and sets up its segments at the start:
      for ranks whose own libpmix is PMIx 5 (``hash_only``) the server offers hash
      alone, as a PMIx 5 server does."""
    extra: dict[str, str] = {}
    if xml and "HWLOC_XMLFILE" not in os.environ:
        extra.update(HWLOC_XMLFILE=xml, HWLOC_THISSYSTEM="1")
        if "HWLOC_PLUGINS_BLACKLIST" not in os.environ:
            extra["HWLOC_PLUGINS_BLACKLIST"] = _HWLOC_SKIP
    if hash_only and "PMIX_MCA_gds" not in os.environ:
        extra["PMIX_MCA_gds"] = "hash"
    return extra


_server: PmixServer | None = None
_server_lock = _thread.allocate_lock()


def server(hostname: str, topology_xml: str | None = None, sweep: bool = True,
           lib: str | None = None) -> PmixServer:
    """The process's server, started on the first call (in a thread: it takes tens of ms);
    ``topology_xml``: the node's hwloc XML, which spares the library its own discovery;
    ``sweep``: start its directory's sweeper now (else :meth:`PmixServer.sweep`);
    ``lib``: the ranks' own libpmix, loaded before the system's
    (:func:`pm.agent.pmix_detect.libpmix_for`, :func:`pm.agent.pmix_lib.load`)."""
    global _server
    with _server_lock:
        if _server is None:
            try:
                _server = PmixServer(hostname, topology_xml, sweep, lib)
            except L.PmixError:
                raise
            except Exception as exc:  # cffi callbacks refused (W^X), no temporary directory
                raise L.PmixError(f"cannot start a PMIx server: {exc}") from exc
        return _server


def current() -> PmixServer | None:
    return _server


def prestart(mode: str, commands: list[list[str]]) -> None:
    """Start the server now, in a thread, for a job on this machine alone that needs PMIx:
    the library's start (tens of ms, in C) overlaps pmrun's own imports.  A failure is
    left for the job's own start to report."""
    from pm.agent.pmix_detect import libpmix_for, wants_pmix

    if not wants_pmix(mode, commands):
        return
    import contextlib
    import socket
    import threading

    def start() -> None:
        with contextlib.suppress(Exception):
            server(socket.gethostname(), lib=libpmix_for(commands, None,
                                                         os.environ.get("LD_LIBRARY_PATH")))

    threading.Thread(target=start, name="pm-pmix-start", daemon=True).start()


def shutdown() -> None:
    """Finalize the process's server once it serves no job, and remove its directory.
    For a process that serves no more PMIx jobs (benchmarks): OpenPMIx cannot start a
    server again in the same process."""
    global _server
    with _server_lock:
        srv = _server
        if srv is None or srv.jobs:
            return
        _server = None
    srv.lib.PMIx_server_finalize()
    srv.loop = None
    _remove_dir(srv.dir)


# -------------------------------------------------------------------------- the directory
_held: dict[str, int] = {}


#: Removes the directory once the pipe's write end (held by this process) closes,
#: however the process ends; detached, so nobody need reap it.
_SWEEPER = '(read _; rm -rf -- "$0") <&3 >/dev/null 2>&1 &'


def _make_dir() -> str:
    while True:
        path = os.path.join(topo_share.temp_dir(), f"{_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    fd = os.open(os.path.join(path, _LOCK), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held[path] = fd
    return path


def _sweep_on_exit(path: str) -> None:
    """Start the sweeper of ``path`` (SIGKILL included); on failure the flock'ed ``.lock``
    still lets :func:`cleanup_stale` tell the directory is orphaned."""
    from pm.agent.spawn import SpawnError, spawn

    rfd, wfd = os.pipe2(os.O_CLOEXEC)
    # Not our stdout or stderr: whoever reads pmrun's output would wait for the sweeper.
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        pid = spawn("/bin/sh", ["pm-pmix-sweep", "-c", _SWEEPER, path], {"PATH": os.defpath},
                    fds={0: null, 1: null, 2: null, 3: rfd}, pgid=0)
    except (SpawnError, OSError) as exc:
        log.info("no sweeper for %s: %s", path, exc)
        os.close(wfd)
        return
    finally:
        os.close(rfd)
        os.close(null)
    _pipes[path] = wfd
    # Off the start's path: reap the shell (it exits at once, its background part lives
    # on) and sweep what dead processes left.
    _thread.start_new_thread(_reap_and_sweep, (pid,))


def _reap_and_sweep(pid: int) -> None:
    try:  # noqa: SIM105 (the same)
        os.waitpid(pid, 0)
    except OSError:
        pass
    cleanup_stale()


_pipes: dict[str, int] = {}


def _remove_dir(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    for table in (_held, _pipes):
        fd = table.pop(path, None)
        if fd is not None:
            os.close(fd)


def cleanup_stale(directory: str | None = None) -> list[str]:
    """Remove the PMIx directories of processes that are gone (their lock is free)."""
    return topo_share.sweep_unlocked(directory or topo_share.temp_dir(),
                                     lambda name: name.startswith(_PREFIX),
                                     lambda path: os.path.join(path, _LOCK), _rmtree, _held)


def _rmtree(path: str) -> bool:
    import shutil  # (here: pmrun's quick path runs this, and rarely removes)

    shutil.rmtree(path, ignore_errors=True)
    return True
