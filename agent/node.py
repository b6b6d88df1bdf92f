"""The agent's side of one job: spawn the node's ranks, serve PMI, aggregate.

A :class:`JobAgent` is one vertex of the job's tree.  Its *parent* is the next
agent up (or, for vertex 0, the head in the same process); its *children* are
agents it started itself.  Everything it says travels as ``pm.proto.tree``
messages through :class:`Uplink`/:class:`Downlinks`, so the same code runs
in-process under the head and in a separate ``pm-agent`` process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from pm.agent.collectives import KIND_NAMES, Collectives, Complete, SendUp, report_counts
from pm.agent.kvs import NodeKVS
from pm.agent.pmi_server import PmiSession
from pm.agent.spawn import PMI_FD, Guardian, SpawnError, rank_env, resolve, spawn
from pm.agent.watch import ChildWatch, ExitStatus
from pm.proto import tree as t
from pm.proto.errors import PMError, RankFailed

from pm.jobspec import JobPlan
from pm.mapping import local_ranks, place
from pm.output import STDERR, STDOUT, LineBuffer
from pm.tree import Tree

log = logging.getLogger("pm.agent")

#: How long a rank's pipes may stay open after it exited before its exit is reported anyway.
DRAIN_AFTER_EXIT = 1.0
#: How long a rank may live after closing its PMI connection before finalize.
EOF_GRACE = 1.0


if TYPE_CHECKING:
    from pm.quick import QuickStart

    class Uplink(Protocol):
        def send(self, msg: t.Msg) -> None: ...

    class Downlinks(Protocol):
        def send(self, vertex: int, msg: t.Msg) -> None: ...


class RankProc:
    """One local rank: its process, PMI session, pipes and how it ended."""

    __slots__ = ("fds", "finalized", "initialized", "local_rank", "pid", "pmi_eof", "rank",
                 "reason", "reported", "session", "status", "stdin_fd", "streams")

    def __init__(self, rank: int, local_rank: int) -> None:
        self.rank = rank
        self.local_rank = local_rank
        self.pid = 0
        self.session: PmiSession | None = None
        self.streams: dict[int, LineBuffer] = {}
        self.fds: dict[int, int] = {}
        self.status: ExitStatus | None = None
        self.reason = ""
        self.initialized = False
        self.finalized = False
        self.pmi_eof = False
        self.reported = False
        self.stdin_fd = -1


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
        self.node_of_rank = place(plan.size, plan.slots)
        self.local = local_ranks(self.node_of_rank).get(vertex, [])
        self.ranks: dict[int, RankProc] = {
            r: RankProc(r, i) for i, r in enumerate(self.local)
        }
        self.kvs = NodeKVS()
        self.coll = Collectives(self.local, self.children, plan.size, vertex == 0)
        self._contiguous = self._ring_order_is_rank_order()
        self._coll_futs: dict[tuple[int, int, int], asyncio.Future[Any]] = {}
        self._ring_ag: dict[tuple[int, int], int] = {}
        self._node_attrs: dict[str, str] = {}
        self._node_waiters: dict[str, list[asyncio.Future[str | None]]] = {}
        self._names: dict[str, str] = {}
        self._reqs: dict[int, asyncio.Future[Any]] = {}
        self._next_req = 1
        self._out: list[Any] = []
        self._exits: list[Any] = []
        self._flush_scheduled = False
        self._children_done: set[int] = set()
        self._child_stats: list[dict[str, Any]] = []
        self._done_sent = False
        self._killing = False
        self.guardian: Guardian | None = None
        self.watch: ChildWatch | None = None
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.job_attrs: dict[str, str] = {}
        if plan.mapping:
            self.job_attrs["PMI_process_mapping"] = plan.mapping
        self.extra_env: dict[str, str] = {}
        self.cpusets: list[frozenset[int]] | None = None
        self.shm: Any = None  # pm.agent.shmkvs.ShmKVSWriter when --kvs shm
        self._shm_tried = False
        #: Start-up events (wall time, vertex, rank, name, args) when profiling.
        self.timeline: list[Any] | None = [] if plan.profile else None
        #: Figures of the simulated ranks (pm.agent.sim), merged up with Done.
        self.sim_stats: dict[str, Any] | None = None
        #: Direct gets in flight, by key: concurrent gets of one key share one request.
        self._fetching: dict[tuple[bytes, int], asyncio.Future[bytes | None]] = {}
        self._frame_down: Any = None  # the parent's frame of the CollOut being handled
        self.on_close: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ launch
    def _ring_order_is_rank_order(self) -> bool:
        order: list[int] = []
        locals_of = local_ranks(self.node_of_rank)
        for v in range(len(self.plan.hosts)):  # pre-order numbering = tree order
            order.extend(locals_of.get(v, []))
        return order == list(range(self.size))

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

        topo = None
        xml = None if plan.bind_to not in ("", "none") else topo_share.cached_xml()
        if xml is None:
            try:
                topo = await asyncio.to_thread(topo_share.discover_and_cache)
                xml = topo.xml
            except PMError as exc:
                log.info("agent %d: no topology for the ranks: %s", self.vertex, exc)
        if xml and topo_share.sharing_enabled(plan.env):
            path = topo_share.write_job_xml(xml, plan.job_id)
            self.on_close.append(lambda: topo_share.remove_job_xml(path))
            self.extra_env.update(HWLOC_XMLFILE=path, HWLOC_THISSYSTEM="1")
            self.job_attrs["PMI_hwloc_xmlfile"] = path
        if topo is not None and plan.bind_to not in ("", "none"):
            self._bind(topo)

    def _bind(self, topo: Any) -> None:
        from pm.agent.binding import compute_bindings, report_line

        b = compute_bindings(topo, len(self.local), self.plan.bind_to, self.plan.map_by or "core")
        if b.notice:
            log.warning("node %d: %s", self.vertex, b.notice)
        self.cpusets = list(b.cpusets) if b.cpusets is not None else None
        if self.plan.report_bindings:
            out = []
            for i, r in enumerate(self.local):
                cpus = self.cpusets[i] if self.cpusets else None
                out.append([r, STDERR, (report_line(r, self.host, cpus) + "\n").encode()])
            self.parent.send(t.Output(out))

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
        self._shm_insert(list(self.kvs.values.items()))

    def start_ranks(self) -> None:
        """Spawn every local rank (synchronously: posix_spawn is fast)."""
        if not self.local:
            self._check_done()
            return
        if self.plan.sim_ranks:
            # Ranks emulated in-process (scale studies): everything but processes and sockets.
            from pm.agent.sim import start_sim

            start_sim(self)
            return
        self.mark("spawn start", ranks=len(self.local))
        self.watch = ChildWatch()
        self.guardian = Guardian()
        plan = self.plan
        base = dict(plan.env)
        base.update(self.extra_env)
        resolved: dict[int, str | SpawnError] = {}
        for rank in self.local:
            proc = self.ranks[rank]
            appnum = plan.app_of_rank(rank)
            argv, _n, app_env, wdir = plan.apps[appnum]
            env = rank_env(base, app_env, rank, self.size, self.host, proc.local_rank,
                           len(self.local))
            if appnum not in resolved:
                try:
                    resolved[appnum] = resolve(argv[0], env, wdir)
                except SpawnError as exc:
                    resolved[appnum] = exc
            path = resolved[appnum]
            if isinstance(path, SpawnError):
                self._spawn_failed(proc, str(path))
                continue
            cpus = self.cpusets[proc.local_rank] if self.cpusets else None
            self._spawn_one(proc, path, argv, env, wdir, cpus)
        self.mark("ranks spawned")

    def _spawn_one(self, proc: RankProc, path: str, argv: list[str], env: dict[str, str],
                   wdir: str | None, cpus: frozenset[int] | None = None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if proc.rank == 0:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
        assert self.guardian is not None and self.watch is not None
        try:
            proc.pid = spawn(path, argv, env, cwd=wdir,
                             fds={0: in_r, 1: out_w, 2: err_w, PMI_FD: theirs.fileno()},
                             pgid=self.guardian.pgid, cpus=cpus)
        except SpawnError as exc:
            for fd in (out_r, err_r, in_w):
                if fd >= 0:
                    os.close(fd)
            ours.close()
            self._spawn_failed(proc, str(exc))
            return
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
            theirs.close()
        if self.timeline is not None:
            self.mark("rank spawned", proc.rank, pid=proc.pid)
        self._attach(proc, ours, out_r, err_r, in_w)

    def _attach(self, proc: RankProc, sock: socket.socket, out_r: int, err_r: int, in_w: int,
                partial: tuple[LineBuffer, LineBuffer] | None = None) -> None:
        """Serve a started rank: its PMI socket, output pipes, stdin pipe and exit."""
        assert self.watch is not None
        proc.stdin_fd = in_w
        if in_w >= 0:
            os.set_blocking(in_w, False)
        session = PmiSession(self, proc.rank)
        proc.session = session
        self._own(self.loop.create_task(self._serve(session, sock)))
        buffers = partial or (LineBuffer(), LineBuffer())
        for stream, fd, buf in ((STDOUT, out_r, buffers[0]), (STDERR, err_r, buffers[1])):
            if fd < 0:
                continue  # already at EOF
            proc.streams[stream] = buf
            proc.fds[stream] = fd
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._read_output, proc, stream)
        self.watch.watch(proc.pid).add_done_callback(functools.partial(self._on_exit, proc))

    def adopt_ranks(self, started: QuickStart) -> None:
        """Take over the ranks ``pmrun``'s quick path started (:mod:`pm.quick`).

        They run with the same environment and fds :meth:`start_ranks` gives;
        what they already printed has been written, except partial lines,
        which ``started`` hands over with the pipes.  A rank that has exited
        is still a zombie: its watch reports it at once.
        """
        self.mark("spawn start", ranks=len(self.local))
        self.watch = ChildWatch()
        self.guardian = started.guardian
        if started.xml_path:
            from pm.agent import topo_share

            path = started.xml_path
            self.on_close.append(lambda: topo_share.remove_job_xml(path))
            self.extra_env.update(HWLOC_XMLFILE=path, HWLOC_THISSYSTEM="1")
            self.job_attrs["PMI_hwloc_xmlfile"] = path
        for r in started.ranks:
            proc = self.ranks[r.rank]
            if r.pid == 0:
                self._spawn_failed(proc, r.failure)
                continue
            proc.pid = r.pid
            sock = socket.socket(fileno=r.take_pmi_fd())
            self._attach(proc, sock, r.out_fd, r.err_fd, r.stdin_fd, (r.out, r.err))
        self.mark("ranks spawned")

    def _on_exit(self, proc: RankProc, fut: asyncio.Future[ExitStatus]) -> None:
        if not fut.cancelled():
            self._exited(proc, fut.result())

    async def _serve(self, session: PmiSession, sock: socket.socket) -> None:
        await self.loop.connect_accepted_socket(lambda: session, sock)

    def _spawn_failed(self, proc: RankProc, why: str) -> None:
        log.error("rank %d: %s", proc.rank, why)
        proc.status = ExitStatus(127, 0)
        proc.reason = f"could not start: {why}"
        self._report(proc)

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ output
    def _read_output(self, proc: RankProc, stream: int) -> None:
        fd = proc.fds[stream]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        buf = proc.streams[stream]
        if data:
            lines = buf.feed(data)
        else:
            lines = buf.flush()
            self.loop.remove_reader(fd)
            os.close(fd)
            del proc.fds[stream]
            if proc.status is not None and not proc.fds:
                self._report(proc)
        if lines:
            self._out.append([proc.rank, stream, lines])
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
        self._check_done()

    # ------------------------------------------------------------------ exits
    def _exited(self, proc: RankProc, status: ExitStatus) -> None:
        proc.status = status
        if self.timeline is not None:
            self.mark("rank exit", proc.rank, code=status.code, signal=status.signal)
        if proc.stdin_fd >= 0:
            self.loop.remove_writer(proc.stdin_fd)
            os.close(proc.stdin_fd)
            proc.stdin_fd = -1
        if status.ok and proc.initialized and not proc.finalized and not self._killing:
            proc.reason = "exited without calling PMI finalize"
            proc.status = ExitStatus(1, 0)
        if not proc.fds:
            self._report(proc)
        else:
            # Let the pipes drain (a rank's last lines come before its exit report).
            self.loop.call_later(DRAIN_AFTER_EXIT, self._report, proc)

    def _report(self, proc: RankProc) -> None:
        if proc.reported or proc.status is None:
            return
        proc.reported = True
        for stream in list(proc.fds):
            self._read_output(proc, stream)  # whatever is left
        st = proc.status
        self._exits.append([proc.rank, self.vertex, st.code, st.signal, proc.reason])
        self.kvs.settle(proc.rank)
        if getattr(self, "reservations", None) is not None:
            self.reservations.release_rank(proc.rank)  # a rank that died holds nothing
        self._schedule_flush()

    def rank_event(self, rank: int, event: str, detail: Any = None) -> None:
        proc = self.ranks[rank]
        if self.timeline is not None:
            self.mark(_EVENT_MARKS.get(event, event), rank)
        if event == "init":
            proc.initialized = True
        elif event == "finalize":
            proc.finalized = True
            self.kvs.settle(rank)
        elif event == "abort":
            code, message = detail
            self.parent.send(t.Abort(rank, self.vertex, code, message))
        elif event == "eof":
            proc.pmi_eof = True
            if not detail and proc.status is None:
                self.loop.call_later(EOF_GRACE, self._eof_without_finalize, proc)
        elif event == "error":
            log.error("rank %d: %s", rank, detail)

    def _eof_without_finalize(self, proc: RankProc) -> None:
        if proc.status is None and not self._killing:
            proc.reason = "closed its PMI connection before finalize"
            self._exits.append([proc.rank, self.vertex, -1, 0, proc.reason])
            self._schedule_flush()

    def _check_done(self) -> None:
        if self._done_sent:
            return
        if all(p.reported for p in self.ranks.values()) and self._children_done.issuperset(
            self.children
        ):
            if self._out or self._exits:
                self._schedule_flush()
                return
            self._done_sent = True
            report_counts(self.vertex, self.coll)  # only with PM_COUNT_MSGS set
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
        return self.size

    def native_info(self, rank: int) -> dict[str, Any]:
        proc = self.ranks[rank]
        if self.plan.kvs == "shm" and not self._shm_tried:
            self._open_shm()
        return {
            "rank": rank, "size": self.size, "local_rank": proc.local_rank,
            "local_size": len(self.local), "appnum": self.appnum(rank),
            "kvsname": self.kvsname, "node": self.vertex, "nnodes": len(self.plan.hosts),
            "host": self.host, "job_id": self.plan.job_id,
            "shm": self.shm.name if self.shm is not None else None,
        }

    def job_attr(self, key: str) -> str | None:
        if key == "universeSize":
            return str(self.size)
        return self.job_attrs.get(key)

    def put(self, rank: int, key: bytes, value: bytes) -> None:
        if self.timeline is not None:
            self.mark("put", rank, key=key.decode("utf-8", "replace"), size=len(value))
        self.kvs.put(rank, key, value)

    def get_now(self, key: bytes) -> bytes | None:
        return self.kvs.get(key)

    def get_from(self, rank: int, src: int, key: bytes) -> asyncio.Future[bytes | None]:
        value = self.kvs.get(key)
        if value is not None:
            fut: asyncio.Future[bytes | None] = self.loop.create_future()
            fut.set_result(value)
            return fut
        owner = self.node_of_rank[src]
        if self.timeline is not None:
            self.mark("get", rank, src=src, node=owner)
        threshold = self.kvs.threshold(rank)
        if owner == self.vertex:
            return self.kvs.wait_for(src, key, threshold)
        # Askers at the same threshold share one request to the owner.
        shared = self._fetching.get((key, threshold))
        if shared is None:
            req, shared = self._new_req()
            self._fetching[(key, threshold)] = shared
            shared.add_done_callback(
                functools.partial(_forget, self._fetching, (key, threshold)))
            shared.add_done_callback(functools.partial(self._fetched, key))
            self._route(owner, t.GetReq(req, self.vertex, owner, key, src, threshold))
        # Each asker gets its own future: cancelling one must not cancel the others.
        mine: asyncio.Future[bytes | None] = self.loop.create_future()
        shared.add_done_callback(functools.partial(_copy_result, dst=mine))
        return mine

    def _fetched(self, key: bytes, fut: asyncio.Future[bytes | None]) -> None:
        """Keep a value fetched from another node: the node's next get of it is local
        (and in shared memory, a native rank's is no request at all)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        value = fut.result()
        if value is not None and self.kvs.get(key) is None:
            self.kvs.cache(key, value)
            if self.shm is not None:
                self._shm_insert([(key, value)])

    def _new_req(self) -> tuple[int, asyncio.Future[Any]]:
        req = self._next_req
        self._next_req += 1
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._reqs[req] = fut
        return req, fut

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
        req, fut = self._new_req()
        self._name_req(t.NameReq(req, self.vertex, action, service, port))
        return fut

    def _name_req(self, m: t.NameReq) -> None:
        if self.vertex != 0:
            self.parent.send(m)
            return
        ok, port = True, m.port
        if m.action == "publish":
            ok = m.service not in self._names
            if ok:
                self._names[m.service] = m.port
        elif m.action == "unpublish":
            ok = self._names.pop(m.service, None) is not None
        else:
            got = self._names.get(m.service)
            ok, port = got is not None, got or ""
        self._route(m.origin, t.NameResp(m.req, m.origin, ok, port))

    def reserve(self, rank: int, nbytes: int) -> asyncio.Future[int]:
        """A ``pmi.reserve`` block: the id once the node admits ``nbytes`` for ``rank``
        under the plan's watermarks (one budget for all of this job's ranks here)."""
        if getattr(self, "reservations", None) is None:
            from pm.agent.memory import RankReservations

            self.reservations = RankReservations(
                self.plan.mem_high, self.plan.mem_low,
                self.plan.mem_overrun,  # type: ignore[arg-type]  # checked by JobSpec
                where=f"node {self.vertex} ({self.host})")
        return self.reservations.reserve(rank, self.ranks[rank].pid, nbytes)

    def release(self, rank: int, ident: int) -> None:
        if getattr(self, "reservations", None) is not None:
            self.reservations.release(rank, ident)

    # ------------------------------------------------------------------ collectives
    def collective(self, kind: int, rank: int, value: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.loop.create_future()
        if kind == t.RING and not self._contiguous:
            # Ring order is not rank order on this mapping: ride an allgather.
            kind, value, ring = t.ALLGATHER, value, True
        else:
            ring = False
        if kind == t.FENCE:
            piece: Any = self.kvs.take_pending(rank)
        elif kind == t.ALLGATHER:
            piece = [rank, value]
        elif kind == t.RING:
            piece = value
        else:
            piece = None
        epoch, actions = self.coll.contribute(kind, rank, piece)
        self._coll_futs[(kind, epoch, rank)] = fut
        if self.timeline is not None:
            self.mark(f"{KIND_NAMES[kind]} in", rank, epoch=epoch)
        if ring:
            self._ring_ag[(epoch, rank)] = 1
        self._act(actions)
        return fut

    def _act(self, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, SendUp):
                if self.timeline is not None:
                    self.mark("coll up", kind=KIND_NAMES[a.kind], epoch=a.epoch)
                self.parent.send(t.CollIn(a.epoch, a.kind, a.data))
            elif isinstance(a, Complete):
                self._complete(a)

    def _complete(self, c: Complete) -> None:
        shm_reply = None
        if c.kind == t.FENCE:
            self.kvs.insert_many(c.data)
            if self.shm is not None:
                it = iter(c.data)
                self._shm_insert([(k, v) for k, _r, v in zip(it, it, it, strict=True)],
                                 replace=True)
        elif c.kind == t.ALLGATHER and self.shm is not None and not self._ring_ag:
            from pm.proto.native import allgather_key

            # Kept once per node: native clients read the values from shared memory.
            if self._shm_insert([(allgather_key(c.epoch, r), v) for r, v in enumerate(c.data)]):
                shm_reply = ["shm", c.epoch]
        if self.timeline is not None:
            self.mark("coll down", kind=KIND_NAMES[c.kind], epoch=c.epoch)
        if self.children_link is not None and c.children:
            if c.kind == t.RING:
                for child, data in c.children.items():
                    self.children_link.send(child, t.CollOut(c.epoch, c.kind, data))
            else:
                # Every child gets the same result: encode and seal it once, or
                # forward the parent's frame (a multi-MiB allgather is not re-encoded).
                self._send_same(list(c.children), t.CollOut(c.epoch, c.kind, c.data),
                                self._frame_down)
        tl = self.timeline
        out_mark = f"{KIND_NAMES[c.kind]} out"
        for rank, result in c.local.items():
            if tl is not None:
                self.mark(out_mark, rank, epoch=c.epoch)
            fut = self._coll_futs.pop((c.kind, c.epoch, rank), None)
            if fut is None or fut.done():
                continue
            if c.kind == t.ALLGATHER and self._ring_ag.pop((c.epoch, rank), 0):
                n = self.size
                result = [result[(rank - 1) % n], result[(rank + 1) % n]]
            if shm_reply is not None and c.kind == t.ALLGATHER:
                result = shm_reply
            fut.set_result(result if c.kind in (t.ALLGATHER, t.RING) else None)

    def _send_same(self, children: list[int], msg: t.Msg, frame: Any = None) -> None:
        """Send one message to several children, encoded and sealed once (``frame``:
        ``msg`` as sealed by the parent, forwarded as it is)."""
        link = self.children_link
        from pm.agent.children import Children

        if not isinstance(link, Children):
            for child in children:
                assert link is not None
                link.send(child, msg)
            return
        if frame is None or getattr(self.parent, "secret", None) != link.secret:
            frame = t.seal(link.secret, t.encode(msg))
        for child in children:
            link.port.send_raw(child, frame)

    def _shm_insert(self, items: list[tuple[bytes, bytes]], replace: bool = False) -> bool:
        try:
            self.shm.insert_many(items, replace=replace)
            return True
        except PMError as exc:
            log.warning("node %d: shared-memory KVS full, serving from the socket: %s",
                        self.vertex, exc)
            return False

    def fail_collectives(self, why: str) -> None:
        for fut in [*self._coll_futs.values(), *self._reqs.values()]:
            if not fut.done():
                fut.set_exception(RankFailed(why))
                # Its session may be gone already: nobody else need retrieve it.
                fut.exception()
        self._coll_futs.clear()
        self._reqs.clear()
        self.kvs.fail_waiters()

    # ------------------------------------------------------------------ tree messages
    def _route(self, dst: int, msg: t.Msg) -> None:
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
            if self.timeline is not None:
                self.mark("coll result in", kind=KIND_NAMES[msg.kind], epoch=msg.epoch)
            # The frame as it came, for the children (see _complete); None under the head.
            self._frame_down = getattr(self.parent, "frame", None)
            try:
                self._act(self.coll.result_in(msg.epoch, msg.kind, msg.data))
            finally:
                self._frame_down = None
        elif isinstance(msg, t.Kill):
            self.kill(msg.reason, msg.grace)
        elif isinstance(msg, t.Signal):
            self._down_all(msg)
            if self.guardian is not None:
                self.guardian.signal(msg.signum)
        else:
            self.from_tree(msg)

    def _from_child(self, child: int, msg: t.Msg) -> None:
        if isinstance(msg, t.CollIn):
            if self.timeline is not None:
                self.mark("coll child in", child=child, kind=KIND_NAMES[msg.kind],
                          epoch=msg.epoch)
            self._act(self.coll.child_in(child, msg.epoch, msg.kind, msg.data))
        elif isinstance(msg, t.Done):
            self._children_done.add(child)
            self._child_stats.append(msg.stats)
            self._check_done()
        elif isinstance(msg, t.NameReq):
            self._name_req(msg)
        elif isinstance(msg, (t.Output, t.Exits, t.Abort, t.AgentError, t.AgentGone,
                              t.Started, t.StdinAck)):
            self.parent.send(msg)
        else:
            self.from_tree(msg)

    def from_tree(self, msg: t.Msg) -> None:
        """Routed messages, wherever they came from."""
        if isinstance(msg, t.GetReq):
            if msg.dst != self.vertex:
                self._route(msg.dst, msg)
                return
            if self.timeline is not None:
                self.mark("get served", msg.rank, origin=msg.origin)
            got = self.kvs.wait_for(msg.rank, msg.key, msg.threshold)
            got.add_done_callback(functools.partial(self._answer_get, msg))
        elif isinstance(msg, (t.GetResp, t.NameResp)):
            if msg.dst != self.vertex:
                self._route(msg.dst, msg)
                return
            fut = self._reqs.pop(msg.req, None)
            if fut is None or fut.done():
                return
            if isinstance(msg, t.GetResp):
                if msg.found:
                    fut.set_result(msg.value)
                else:
                    fut.set_result(None)
            else:
                fut.set_result((msg.ok, msg.port))
        elif isinstance(msg, t.Stdin):
            if msg.dst != self.vertex:
                self._route(msg.dst, msg)
            else:
                self._stdin(msg.data, msg.eof)
        else:
            log.warning("agent %d: unexpected %s", self.vertex, type(msg).__name__)

    def _answer_get(self, msg: t.GetReq, fut: asyncio.Future[bytes | None]) -> None:
        value = None if fut.cancelled() else fut.result()
        self._route(msg.origin, t.GetResp(msg.req, msg.origin, value is not None, value or b""))

    def _down_all(self, msg: t.Msg) -> None:
        if self.children_link is not None:
            for c in self.children:
                self.children_link.send(c, msg)

    # ------------------------------------------------------------------ stdin
    def _stdin(self, data: bytes, eof: bool) -> None:
        proc = self.ranks.get(0)
        if proc is None or proc.stdin_fd < 0:
            if data:
                # Nobody reads it: drop it, but keep the credit flowing.
                self.parent.send(t.StdinAck(len(data)))
            return
        self._stdin_buf = getattr(self, "_stdin_buf", b"") + data
        self._stdin_eof = eof
        self._stdin_write(proc)

    def _stdin_write(self, proc: RankProc) -> None:
        fd = proc.stdin_fd
        if fd < 0:
            return
        buf: bytes = self._stdin_buf
        written = 0
        try:
            while buf:
                n = os.write(fd, buf)
                written += n
                buf = buf[n:]
        except BlockingIOError:
            pass
        except OSError:  # rank 0 closed its stdin: drop the rest
            written += len(buf)
            buf = b""
        self._stdin_buf = buf
        if written:
            self.parent.send(t.StdinAck(written))
        self.loop.remove_writer(fd)
        if buf:
            self.loop.add_writer(fd, self._stdin_write, proc)
        elif self._stdin_eof:
            os.close(fd)
            proc.stdin_fd = -1

    # ------------------------------------------------------------------ ending
    def kill(self, reason: str, grace: float) -> None:
        """SIGTERM every rank of the subtree, SIGKILL after ``grace`` seconds."""
        first = not self._killing
        self._killing = True
        self._down_all(t.Kill(reason, grace))
        if first:
            log.debug("agent %d: killing ranks: %s", self.vertex, reason)
        self.fail_collectives(reason)
        if self.guardian is None:
            return
        if grace <= 0:
            self.guardian.kill_all()
            return
        self.guardian.signal(signal.SIGTERM)
        if first:
            self.loop.call_later(grace, self._kill_hard)

    def _kill_hard(self) -> None:
        if self.guardian is not None and any(p.status is None for p in self.ranks.values()
                                             if p.pid):
            self.guardian.kill_all()

    def close(self) -> None:
        """Release everything; ranks still alive are killed. Idempotent."""
        for t_ in list(self._tasks):
            t_.cancel()
        if getattr(self, "reservations", None) is not None:
            self.reservations.close()
        for proc in self.ranks.values():
            for fd in proc.fds.values():
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_reader(fd)
                with contextlib.suppress(OSError):
                    os.close(fd)
            proc.fds.clear()
            if proc.stdin_fd >= 0:
                with contextlib.suppress(ValueError, OSError):
                    self.loop.remove_writer(proc.stdin_fd)
                os.close(proc.stdin_fd)
                proc.stdin_fd = -1
            if proc.session is not None and proc.session.transport is not None:
                proc.session.transport.abort()
        if self.guardian is not None:
            if any(p.status is None and p.pid for p in self.ranks.values()):
                self.guardian.kill_all()
            self.guardian.release()
            self.guardian = None
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        for cb in self.on_close:
            with contextlib.suppress(Exception):
                cb()
        self.on_close.clear()


#: Profile names of the PMI events a session reports.
_EVENT_MARKS = {"init": "PMI init", "finalize": "finalize", "abort": "abort", "eof": "PMI eof"}


def _forget(table: dict[Any, Any], key: Any, _fut: asyncio.Future[Any]) -> None:
    table.pop(key, None)


def _copy_result(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
        dst.exception()  # the asker may have gone: never "exception never retrieved"
    else:
        dst.set_result(src.result())


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def now() -> float:
    return time.monotonic()
