"""One rank's PMI connection: detects the protocol and serves it.

The first bytes tell the protocol: ``cmd=``/``mcmd=`` is PMI-1 (a PMI-2
client also opens with a PMI-1 ``init`` line carrying ``pmi_version=2``), a
6-character length field is PMI-2, :data:`pm.proto.native.MAGIC` is pmrun's
native protocol.  Codecs live in ``pm.proto``; what a request *means* is asked
of the job (:class:`RankHost`).  A malformed request gets an error reply and a
log line naming the rank; the agent goes on serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Protocol

from pm.proto import native, pmi1, pmi2
from pm.proto.errors import PMError, ProtocolError, RankFailed
from pm.proto.tree import ALLGATHER, BARRIER, FENCE, RING

log = logging.getLogger("pm.agent.pmi")


if TYPE_CHECKING:
    # Only for type checking: a Protocol class costs start-up time to build.
    class RankHost(Protocol):
        """What a session needs from the job it belongs to."""

        size: int
        kvsname: str

        def appnum(self, rank: int) -> int: ...
        def universe_size(self) -> int: ...
        def native_info(self, rank: int) -> dict[str, Any]: ...
        def job_attr(self, key: str) -> str | None: ...
        def put(self, rank: int, key: bytes, value: bytes) -> None: ...
        def get_now(self, key: bytes) -> bytes | None: ...
        def get_from(self, rank: int, src: int, key: bytes) -> Awaitable[bytes | None]: ...
        def collective(self, kind: int, rank: int, value: Any) -> Awaitable[Any]: ...
        def node_attr_put(self, key: str, value: str) -> None: ...
        def node_attr_get(self, key: str, wait: bool) -> Awaitable[str | None]: ...
        def name_service(
            self, action: str, service: str, port: str
        ) -> Awaitable[tuple[bool, str]]: ...
        def reserve(self, rank: int, nbytes: int) -> Awaitable[int]: ...
        def release(self, rank: int, ident: int) -> None: ...
        def rank_event(self, rank: int, event: str, detail: Any = None) -> None: ...


class PmiSession(asyncio.Protocol):
    """Serves one rank. Events reported to the host: ``init``, ``finalize``,
    ``abort`` (detail: (code, message)), ``eof`` (detail: finalized?), ``error``."""

    def __init__(self, host: RankHost, rank: int) -> None:
        self.host = host
        self.rank = rank
        self.transport: asyncio.Transport | None = None
        self.protocol = ""
        self.initialized = False
        self.finalized = False
        self._p1: pmi1.Pmi1Decoder | None = None
        self._p2: pmi2.Pmi2Decoder | None = None
        self._nat: native.FrameDecoder | None = None
        self._queue: deque[Any] = deque()
        self._busy = False
        self._head = b""
        self._tasks: set[asyncio.Task[Any]] = set()
        #: Native collectives of each kind in request order, and replies ready out of turn.
        self._coll_order: dict[str, deque[Any]] = {}
        self._coll_ready: dict[Any, bytes] = {}
        self._causes: set[str] = set()
        self._nbad = self._nlogged = 0

    # -- asyncio.Protocol -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            if not self.protocol:
                data = self._detect(data)
                if not self.protocol:
                    return
            self._feed(data)
        except ProtocolError as exc:
            self._fatal(str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._nbad > self._nlogged:
            log.warning("rank %d: %d bad PMI requests in all, %d logged", self.rank,
                        self._nbad, self._nlogged)
        for t in self._tasks:
            t.cancel()
        self.transport = None
        self.host.rank_event(self.rank, "eof", self.finalized or not self.initialized)

    # -- framing ----------------------------------------------------------
    def _detect(self, data: bytes) -> bytes:
        head = self._head + data
        if len(head) < 4:
            self._head = head
            return b""
        self._head = b""
        if head.startswith(native.MAGIC):
            self.protocol = "native"
            self._nat = native.FrameDecoder()
            return head[4:]
        if head.startswith((b"cmd=", b"mcmd")):
            self.protocol = "pmi1"
            self._p1 = pmi1.Pmi1Decoder()
            return head
        if len(head) >= 6 and head[:6].strip().isdigit():
            self.protocol = "pmi2"
            self._p2 = pmi2.Pmi2Decoder()
            return head
        if len(head) < 6:
            self._head = head
            return b""
        raise ProtocolError(f"unknown protocol, first bytes {head[:16]!r}")

    def _feed(self, data: bytes) -> None:
        if self._p2 is not None:
            self._queue.extend(self._p2.feed(data))
        elif self._p1 is not None:
            self._queue.extend(self._p1.feed(data))
        elif self._nat is not None:
            for frame in self._nat.feed(data):
                self._native(frame)
            return
        self._pump()

    def _pump(self) -> None:
        # PMI-1/2 clients wait for each reply: serve requests strictly in order.
        while self._queue and not self._busy:
            req = self._queue.popleft()
            if isinstance(req, ProtocolError):
                self._bad(str(req), pmi1.reply_error("error", str(req)))
                continue
            try:
                out = self._pmi2(req) if isinstance(req, pmi2.Pmi2Command) else self._pmi1(req)
            except PMError as exc:
                if isinstance(req, pmi2.Pmi2Command):
                    self._bad(str(exc), pmi2.response(req, [("errmsg", str(exc))], rc=1))
                else:
                    reply = pmi1.REPLY_OF.get(req.cmd, req.cmd)
                    self._bad(str(exc), pmi1.reply_error(reply, str(exc)))
                continue
            if isinstance(out, bytes):
                self._write(out)
            elif out is not None:
                self._busy = True
                self._spawn(self._finish(req, out))

    async def _finish(self, req: Any, pending: Awaitable[bytes | None]) -> None:
        try:
            reply = await pending
            if reply:
                self._write(reply)
        except PMError as exc:
            # The error reply must use the framing the client is reading.
            if isinstance(req, pmi2.Pmi2Command):
                reply = pmi2.response(req, [("errmsg", str(exc))], rc=1)
            else:
                reply = pmi1.reply_error(pmi1.REPLY_OF.get(req.cmd, req.cmd), str(exc))
            if not isinstance(exc, RankFailed):
                self._bad(str(exc), reply)
            else:  # the job is failing (another rank's fault): not this rank's request
                log.debug("rank %d: PMI %s failed: %s", self.rank, req.cmd, exc)
                self._write(reply)
        finally:
            self._busy = False
        self._pump()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _bad(self, what: str, reply: bytes) -> None:
        self._bad_request(what)
        self._write(reply)

    def _bad_request(self, what: str, label: str = "bad PMI request") -> None:
        """Log a bad request once per cause (its quoted excerpts aside), a few causes per rank:
        a rank sending garbage must not flood the log; the total comes at the end."""
        self._nbad += 1
        cause = _QUOTED.sub("", what)
        if cause in self._causes:
            return
        if len(self._causes) < MAX_CAUSES:
            self._causes.add(cause)
            self._nlogged += 1
            log.warning("rank %d: %s: %s", self.rank, label, what)

    def _fatal(self, what: str) -> None:
        # The stream cannot be followed any more: the rank fails (the host names it).
        self.host.rank_event(self.rank, "error", what)
        if self.transport is not None:
            self.transport.close()

    # -- PMI-1 ------------------------------------------------------------
    def _pmi1(self, c: pmi1.Pmi1Command) -> bytes | Awaitable[bytes | None] | None:
        host, a, enc = self.host, c.args, pmi1.encode
        cmd = c.cmd
        if cmd == "init":
            self.initialized = True
            self.host.rank_event(self.rank, "init")
            if a.get("pmi_version") == "2":
                # A PMI-2 client: everything after this line is length-framed.
                self.protocol = "pmi2"
                rest = self._p1.pending if self._p1 is not None else b""
                self._p1, self._p2 = None, pmi2.Pmi2Decoder()
                if rest:
                    self._queue.extend(self._p2.feed(rest))
                return pmi2.encode_init_response()
            return enc("response_to_init", ("rc", 0), ("pmi_version", 1), ("pmi_subversion", 1))
        if cmd == "get_maxes":
            return enc("maxes", ("rc", 0), ("kvsname_max", pmi1.KVSNAME_MAX),
                       ("keylen_max", pmi1.KEYLEN_MAX), ("vallen_max", pmi1.VALLEN_MAX))
        if cmd == "get_appnum":
            return enc("appnum", ("rc", 0), ("appnum", host.appnum(self.rank)))
        if cmd == "get_my_kvsname":
            return enc("my_kvsname", ("rc", 0), ("kvsname", host.kvsname))
        if cmd == "get_universe_size":
            return enc("universe_size", ("rc", 0), ("size", host.universe_size()))
        if cmd in ("put", "get"):
            self._check_kvsname(c)
        if cmd == "put":
            key = _need(c, "key")
            if key.startswith("PMI_"):
                return pmi1.reply_error("put_result", f"key {key} is reserved")
            host.put(self.rank, key.encode(), a.get("value", "").encode())
            return enc("put_result", ("rc", 0))
        if cmd == "get":
            key = _need(c, "key")
            value = host.job_attr(key) if key.startswith("PMI_") else None
            if value is None:
                raw = host.get_now(key.encode())
                value = None if raw is None else raw.decode("ascii", "replace")
            if value is None:  # answered at once: MPICH probes optional keys
                return enc("get_result", ("rc", 1), ("msg", "key_not_found"))
            return enc("get_result", ("rc", 0), ("value", value))
        if cmd == "barrier_in":
            return self._then(host.collective(FENCE, self.rank, None),
                              enc("barrier_out", ("rc", 0)))
        if cmd == "finalize":
            self.finalized = True
            host.rank_event(self.rank, "finalize")
            return enc("finalize_ack", ("rc", 0))
        if cmd == "abort":
            code = _clamp(_int(a.get("exitcode", "1"), "exitcode"))
            host.rank_event(self.rank, "abort", (code, a.get("message") or a.get("msg") or ""))
            return None
        if cmd in ("publish_name", "unpublish_name", "lookup_name"):
            return self._names1(c)
        if cmd == "spawn":
            return pmi1.reply_error("spawn_result", "MPI_Comm_spawn is not supported by pmrun")
        if cmd == "initack":
            raise ProtocolError("initack is only for PMI_PORT clients")
        raise ProtocolError(f"unknown PMI-1 command {cmd!r}")

    def _check_kvsname(self, c: pmi1.Pmi1Command) -> None:
        name = c.args.get("kvsname")
        if name is not None and name != self.host.kvsname:
            raise ProtocolError(f"kvsname {name} is not this job's ({self.host.kvsname})")

    def _names1(self, c: pmi1.Pmi1Command) -> Awaitable[bytes | None]:
        action = c.cmd.split("_")[0]
        service = _need(c, "service")

        async def run() -> bytes:
            ok, port = await self.host.name_service(action, service, c.args.get("port", ""))
            reply = {"publish": "publish_result", "unpublish": "unpublish_result",
                     "lookup": "lookup_result"}[action]
            if not ok:
                return pmi1.reply_error(reply, f"{action}_failed_for_{service}")
            if action == "lookup":
                return pmi1.encode(reply, ("rc", 0), ("port", port))
            return pmi1.encode(reply, ("rc", 0))

        return run()

    @staticmethod
    def _then(fut: Awaitable[Any], reply: bytes) -> Awaitable[bytes]:
        async def run() -> bytes:
            await fut
            return reply

        return run()

    # -- PMI-2 ------------------------------------------------------------
    def _pmi2(self, c: pmi2.Pmi2Command) -> bytes | Awaitable[bytes | None] | None:
        host, cmd, resp = self.host, c.cmd, pmi2.response
        if cmd == "fullinit":
            self.initialized = True
            host.rank_event(self.rank, "init")
            return resp(c, [("pmi-version", "2"), ("pmi-subversion", "0"),
                            ("rank", str(self.rank)), ("size", str(host.size)),
                            ("appnum", str(host.appnum(self.rank))),
                            ("debugged", "FALSE"), ("pmiverbose", "FALSE")])
        if cmd == "job-getid":
            return resp(c, [("jobid", host.kvsname)])
        if cmd == "kvs-put":
            host.put(self.rank, _enc(c.require("key")), _enc(c.require("value")))
            return resp(c)
        if cmd == "kvs-fence":
            # Slurm's semantics: the reply waits for the whole job, so MPICH's
            # fence + get(-NONEXIST-KEY) barrier holds.
            return self._then(host.collective(FENCE, self.rank, None), resp(c))
        if cmd == "kvs-get":
            raw = host.get_now(_enc(c.require("key")))
            if raw is None:
                return resp(c, [("found", "FALSE")])
            return resp(c, [("found", "TRUE"), ("value", raw.decode("utf-8", "surrogateescape"))])
        if cmd == "info-getjobattr":
            value = host.job_attr(c.require("key"))
            if value is None:
                return resp(c, [("found", "FALSE")])
            return resp(c, [("found", "TRUE"), ("value", value)])
        if cmd == "info-putnodeattr":
            host.node_attr_put(c.require("key"), c.require("value"))
            return resp(c)
        if cmd == "info-getnodeattr":
            wait = c.flag("wait")
            got = host.node_attr_get(c.require("key"), wait)

            async def node_attr() -> bytes:
                value = await got
                if value is None:
                    return resp(c, [("found", "FALSE")])
                return resp(c, [("found", "TRUE"), ("value", value)])

            return node_attr()
        if cmd == "ring":
            value = c.require("ring-left")  # MPICH/Slurm send the same value left and right

            async def ring() -> bytes:
                left, right = await host.collective(RING, self.rank, _enc(value))
                return resp(c, [("ring-count", str(self.rank)), ("ring-left", _dec(left)),
                                ("ring-right", _dec(right))])

            return ring()
        if cmd == "finalize":
            self.finalized = True
            host.rank_event(self.rank, "finalize")
            return resp(c)
        if cmd == "abort":
            code = _clamp(_int(c.get("exitcode", "1") or "1", "exitcode"))
            host.rank_event(self.rank, "abort", (code, c.get("message") or c.get("msg") or ""))
            return None
        if cmd in ("name-publish", "name-unpublish", "name-lookup"):
            action = cmd.split("-")[1]
            svc, port = c.require("name"), c.get("port", "") or ""

            async def names() -> bytes:
                ok, got = await host.name_service(action, svc, port)
                # libpmi2 reads the port from value=, MPICH from port=.
                pairs = [("port", got), ("value", got)] if ok and action == "lookup" else []
                return resp(c, pairs, rc=0 if ok else 1)

            return names()
        if cmd == "spawn":
            return resp(c, [("errmsg", "spawn_not_supported")], rc=1)
        raise ProtocolError(f"unknown PMI-2 command {cmd!r}")

    # -- native -----------------------------------------------------------
    def _native(self, frame: Any) -> None:
        if not isinstance(frame, list) or len(frame) < 2 or not isinstance(frame[1], str):
            raise ProtocolError("native request is not [id, op, ...]")
        req, op, args = frame[0], frame[1], frame[2:]
        if type(req) is not int:
            # Replies are matched (and collectives ordered) by id: it must be hashable.
            self._bad_request(f"request id must be an integer, not {type(req).__name__}")
            self._write(native.pack([req, False, "request id must be an integer, "
                                     f"not {type(req).__name__}"]))
            return
        try:
            result = self._native_op(op, args)
        except (PMError, TypeError, ValueError, IndexError, KeyError) as exc:
            # A bad request fails alone: the rank gets the reason, the agent a log line.
            self._native_error(req, op, exc)
            return
        if isinstance(result, Awaitable):
            if op in _COLLECTIVE_OPS:
                self._coll_order.setdefault(op, deque()).append(req)
            self._spawn(self._native_finish(req, op, result))
        elif op != native.ABORT:
            self._write(native.pack([req, True, result]))

    def _native_error(self, req: Any, op: str, exc: BaseException) -> None:
        self._write(self._error_reply(req, op, exc))

    def _error_reply(self, req: Any, op: str, exc: BaseException) -> bytes:
        what = str(exc) if not isinstance(exc, IndexError) else f"missing arguments to {op}"
        if isinstance(exc, RankFailed):  # the job is failing: not this rank's request
            log.debug("rank %d: native %s failed: %s", self.rank, op, what)
        else:
            self._bad_request(what, f"native {op} failed")
        return native.pack([req, False, what])

    async def _native_finish(self, req: int, op: str, pending: Awaitable[Any]) -> None:
        try:
            reply = native.pack([req, True, await pending])
        except PMError as exc:
            reply = self._error_reply(req, op, exc)
        order = self._coll_order.get(op) if op in _COLLECTIVE_OPS else None
        if order is None:
            self._write(reply)
            return
        # A rank's collectives of one kind complete in the order it started them:
        # the agent completes epochs in order, but the tasks that write the replies
        # need not run in that order, so a reply waits for the earlier ones.
        self._coll_ready[req] = reply
        while order and order[0] in self._coll_ready:
            self._write(self._coll_ready.pop(order.popleft()))

    def _native_op(self, op: str, args: list[Any]) -> Any:
        host, rank = self.host, self.rank
        if op == native.INIT:
            self.initialized = True
            host.rank_event(rank, "init")
            return host.native_info(rank)
        if not self.initialized:
            raise ProtocolError(f"{op} before init")
        if op == native.PUT:
            _nargs(op, args, 2)
            key, value = _key(args[0]), _bytes(args[1], "value")
            if len(value) > native.MAX_VALUE:
                raise ProtocolError(f"value of {len(value)} bytes exceeds {native.MAX_VALUE}")
            host.put(rank, native.rank_key(rank, key), value)
            return None
        if op == native.GET:
            _nargs(op, args, 2)
            key, src = _key(args[0]), args[1]
            if src is None:  # the job-wide namespace of PMI-1/PMI-2 ranks
                return host.get_now(key)
            if type(src) is not int or not 0 <= src < host.size:
                raise ProtocolError(f"get from rank {src!r}: ranks are 0..{host.size - 1}")
            if src == rank:  # a rank's own puts are visible at once: a miss is final
                return host.get_now(native.rank_key(rank, key))
            return host.get_from(rank, src, native.rank_key(src, key))
        if op in (native.FENCE, native.BARRIER):
            return host.collective(FENCE if op == native.FENCE else BARRIER, rank, None)
        if op == native.ALLGATHER:
            _nargs(op, args, 1)
            return host.collective(ALLGATHER, rank, _bytes(args[0], "value"))
        if op == native.RING:
            _nargs(op, args, 1)
            return host.collective(RING, rank, _bytes(args[0], "value"))
        if op == native.FINALIZE:
            self.finalized = True
            host.rank_event(rank, "finalize")
            return None
        if op == native.ABORT:
            code = _clamp(args[0]) if args and type(args[0]) is int else 1
            message = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            host.rank_event(rank, "abort", (code, message))
            return None
        if op == native.RESERVE:
            _nargs(op, args, 1)
            nbytes = args[0]
            if type(nbytes) is not int or nbytes < 0:
                raise ProtocolError(f"reserve needs a byte count >= 0, not {nbytes!r}")
            return host.reserve(rank, nbytes)
        if op == native.RELEASE:
            _nargs(op, args, 1)
            if type(args[0]) is not int:
                raise ProtocolError(f"release needs a reservation id, not {args[0]!r}")
            host.release(rank, args[0])
            return None
        raise ProtocolError(f"unknown native op {op!r}")


#: Distinct causes of bad requests logged per rank (then only counted).
MAX_CAUSES = 8
_QUOTED = re.compile("b?'[^']*'|b?\"[^\"]*\"")

#: Native ops whose replies keep request order per kind.
_COLLECTIVE_OPS = frozenset((native.FENCE, native.BARRIER, native.ALLGATHER, native.RING))


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _need(c: pmi1.Pmi1Command, key: str) -> str:
    try:
        return c.args[key]
    except KeyError:
        raise ProtocolError(f"{c.cmd} without {key}=") from None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"{what}={text!r} is not an integer") from None


def _clamp(code: int) -> int:
    """An abort code that fits the tree's 64-bit integers (the head maps it to a status)."""
    return max(-(1 << 63), min(code, (1 << 63) - 1))


def _nargs(op: str, args: list[Any], n: int) -> None:
    if len(args) != n:
        raise ProtocolError(f"{op} takes {n} argument(s), got {len(args)}")


def _key(v: Any) -> bytes:
    key = _bytes(v, "key")
    if len(key) > native.MAX_KEY:
        raise ProtocolError(f"key of {len(key)} bytes exceeds the limit of {native.MAX_KEY}")
    return key


def _bytes(v: Any, what: str) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        return v.encode()
    raise ProtocolError(f"{what} must be bytes or str, not {type(v).__name__}")
