"""The PMIx server's upcalls: what OpenPMIx asks of the host, on the library's thread.

The library answers clients from its own progress thread and calls the
*upcalls* of a server module there (:class:`UpcallHandlers`, the slots
:class:`pm.agent.pmix_server.PmixServer` fills).  Each upcall here only copies
what it was given into Python values and hands it to the agent's event loop
(:mod:`pm.agent.pmix_handover`); it returns at once and the library waits for
the completion callback, which the loop calls later (the library's callbacks
may be called from any thread: they shift themselves to its progress thread).
"""

from __future__ import annotations

import os

from pm.agent import pmix_lib as L
from pm.agent.pmix_handover import Handover

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pm.agent.pmix_handover import SpawnApp, Upcalls

_PIDFD_GETFD = 438  # x86-64 and aarch64 alike (the generic syscall table)
#: PMIx_Log's keys for a client's output (PMIX_LOG_STDERR, PMIX_LOG_STDOUT): its stream
#: (pm.common.output's STDERR, STDOUT).
_LOG_STREAMS = {"pmix.log.stderr": 2, "pmix.log.stdout": 1}

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


class UpcallHandlers(Handover):
    """The server module's upcalls (run on the library's thread) and the answers they
    hand back to the library; the library itself (:attr:`ffi`, :attr:`lib`) and the
    release callback are :class:`~pm.agent.pmix_server.PmixServer`'s."""

    ffi: Any
    lib: Any
    _release_cb: Any

    def __init__(self) -> None:
        super().__init__()
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

    # ------------------------------------------------------------------ answers to the library
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
