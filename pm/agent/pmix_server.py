"""The agent's PMIx server: OpenPMIx's server library, its start and its end.

Open MPI speaks only PMIx.  Rather than the wire protocol, the agent runs
OpenPMIx's own server library (:mod:`pm.agent.pmix_lib`) in its process, one
per process (the library allows no more: :func:`server`); each job served is a
namespace registered with it (:class:`pm.agent.pmix_job.PmixJob`).

The library calls the *upcalls* of a server module from its own progress
thread (:mod:`pm.agent.pmix_upcalls`), which hand what they were given to the
agent's event loop (:mod:`pm.agent.pmix_handover`).  Nothing here blocks the
loop but the short, synchronous registration calls.  The server's rendezvous
files live in a directory of the process's own (:mod:`pm.agent.pmix_dir`).
"""

from __future__ import annotations

import _thread
import os
import time

from pm.agent import pmix_lib as L
from pm.agent.pmix_detect import without_dstore
from pm.agent.pmix_dir import make_dir, remove_dir, sweep_on_exit
from pm.agent.pmix_upcalls import UpcallHandlers

# No asyncio, typing, threading or contextlib at import (about 3 ms): pmrun's quick path
# starts the server (pm.quick) before its ranks.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: mmap(2) and munmap(2) by architecture; MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE|
#: MAP_FIXED_NOREPLACE (PmixServer._hold_topology).
_MMAP = {"x86_64": 9, "aarch64": 222}
_MUNMAP = {9: 11, 222: 215}
_MAP_RESERVE = 0x02 | 0x20 | 0x4000 | 0x100000


class PmixServer(UpcallHandlers):
    """The process's PMIx server (see :func:`server`)."""

    def __init__(self, hostname: str, topology_xml: str | None = None, sweep: bool = True,
                 lib: str | None = None) -> None:
        from pm.agent.pmix_detect import prefix_env

        self.ffi, self.lib = L.load(lib)
        #: What the ranks of the Open MPI that ships ``lib`` need to find its files.
        self.prefix_env = prefix_env(lib)
        super().__init__()
        self.dir = make_dir()
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
            remove_dir(self.dir)
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
        :func:`~pm.agent.pmix_dir.cleanup_stale` removes it."""
        sweep_on_exit(self.dir)

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
    remove_dir(srv.dir)

