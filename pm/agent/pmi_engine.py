"""The PMI engine of one rank's connection, sans-IO: bytes in, actions out.

:meth:`PmiEngine.feed` takes what the rank sent and returns what to do, as
:data:`Action` records (all defined in :mod:`pm.agent.pmi_actions`, re-exported here):

* :class:`Send` -- bytes to write to the rank: every reply a read produced,
  batched into one write;
* :class:`Event` -- news for the job: ``init``, ``finalize``, ``abort``
  (detail ``(code, message)``), ``error`` (detail: why the stream cannot be
  served), ``eof`` (detail: whether the close was clean);
* :class:`Close` -- close the connection (after the Send before it);
* a *call* (:class:`Collective`, :class:`GetFrom`, :class:`NodeAttrGet`,
  :class:`NameService`, :class:`Reserve`) -- something that waits on other
  ranks or nodes.  Its ``token`` comes back with the outcome through
  :meth:`PmiEngine.complete` or :meth:`PmiEngine.fail`, which return the
  next actions in turn.

What never waits -- gets, puts, job and node attributes, who the rank is --
is answered inside :meth:`~PmiEngine.feed` from the node's store
(:class:`Store`: plain method calls on in-memory data, no I/O), so the hot
path makes no task, no future and one write per read.

Protocols (detected from the first bytes): PMI-1 lines (``cmd=``/``mcmd=``;
a PMI-2 client opens with a PMI-1 ``init`` carrying ``pmi_version=2``), PMI-2
length-prefixed frames, and pmrun's native msgpack frames
(:data:`pm.proto.native.MAGIC`).  PMI-1 and PMI-2 clients wait for each
reply, so their requests are served strictly in order (a pending call holds
the ones behind it); native requests are concurrent, and a rank's
collectives of one kind are answered in the order it started them.

A bad request gets an error reply in the client's framing and one log line
per cause (a few causes per rank, then only counted); a stream that cannot
be followed any more (a runaway line, a broken frame) gives ``error`` and
``Close``.  A spawn (``mcmd=spawn``, PMI-2 ``spawn``, native ``spawn``) is a
:class:`Spawn` call, completed with a :class:`pm.proto.spawn.SpawnResult`.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pm.agent.pmi_actions import (  # re-exported: the engine's vocabulary
    Action,
    Call,
    Close,
    Collective,
    Event,
    GetFrom,
    NameService,
    NodeAttrGet,
    Phase,
    Reserve,
    Send,
    Spawn,
    Wire,
)
from pm.proto import native, pmi1, pmi2, spawn
from pm.proto.errors import PMError, ProtocolError, RankFailed
from pm.proto.tree_wire import ALLGATHER, BARRIER, FENCE, RING

__all__ = ["Action", "Call", "Close", "Collective", "Event", "GetFrom", "NameService",
           "NodeAttrGet", "Phase", "PmiEngine", "Reserve", "Send", "Spawn", "Wire"]

log = logging.getLogger("pm.agent.pmi")

if TYPE_CHECKING:
    from typing import Protocol

    class Store(Protocol):
        """What the engine reads and writes synchronously: the job and its node KVS."""

        size: int
        kvsname: str

        def appnum(self, rank: int) -> int: ...
        def universe_size(self) -> int: ...
        def native_info(self, rank: int) -> dict[str, Any]: ...
        def job_attr(self, key: str) -> str | None: ...
        def put(self, rank: int, key: bytes, value: bytes) -> None: ...
        def get_now(self, key: bytes) -> bytes | None: ...
        def node_attr_put(self, key: str, value: str) -> None: ...
        def release(self, rank: int, ident: int) -> None: ...


#: Distinct causes of bad requests logged per rank (then only counted).
MAX_CAUSES = 8
_QUOTED = re.compile("b?'[^']*'|b?\"[^\"]*\"")

#: Native ops whose replies keep request order per kind.
_COLLECTIVE_OPS = frozenset((native.FENCE, native.BARRIER, native.ALLGATHER, native.RING))

_Finish = Callable[[Any], bytes]
_OnError = Callable[[BaseException], bytes]


class PmiEngine:
    """Serves rank ``rank`` of the job ``store`` holds."""

    def __init__(self, store: Store, rank: int) -> None:
        self.store = store
        self.rank = rank
        self.protocol = Wire.UNKNOWN
        self.phase = Phase.NEW
        #: Whether the rank ever initialized / finalized (CLOSED keeps what came before).
        self._inited = self._finalized = False
        self._kvsname = store.kvsname.encode()
        self._head = b""
        self._p1: pmi1.Pmi1Decoder | None = None
        self._p2: pmi2.Pmi2Decoder | None = None
        self._nat: native.FrameDecoder | None = None
        self._pack: Callable[[Any], bytes] = native.pack
        self._out: list[bytes] = []
        self._acts: list[Action] = []
        # PMI-1/2: requests behind a pending call, served in order.
        self._queue: deque[pmi1.Pmi1Command | pmi2.Pmi2Command | ProtocolError] = deque()
        self._busy = False
        self._next_token = 1
        #: token -> (reply on success, reply on error, native collective order or None)
        self._calls: dict[int, tuple[_Finish, _OnError, deque[int] | None]] = {}
        self._coll_order: dict[str, deque[int]] = {}
        self._coll_ready: dict[int, bytes] = {}
        self._causes: set[str] = set()
        self._nbad = self._nlogged = 0

    @property
    def initialized(self) -> bool:
        return self._inited

    @property
    def finalized(self) -> bool:
        return self._finalized

    @property
    def closed(self) -> bool:
        return self.phase is Phase.CLOSED

    def _enter(self, phase: Phase) -> None:
        if phase is Phase.INITIALIZED:
            self._inited = True
        elif phase is Phase.FINALIZED:
            self._finalized = True
        self.phase = phase

    # ------------------------------------------------------------------ driving
    def feed(self, data: bytes) -> list[Action]:
        """Bytes the rank sent: the actions they call for."""
        if self.closed:
            return []
        try:
            if self.protocol is Wire.UNKNOWN:
                data = self._detect(data)
                if self.protocol is Wire.UNKNOWN:
                    return []
            nat = self._nat
            if nat is not None:
                for frame in nat.feed(data):
                    self._native(frame)
            elif self._p1 is not None:
                if not (self._p1.idle and not self._busy and self._fast1(data)):
                    self._queue.extend(self._p1.feed(data))
                    self._pump()
            elif self._p2 is not None:
                self._queue.extend(self._p2.feed(data))
                self._pump()
        except ProtocolError as exc:
            self._fatal(str(exc))
        return self._flush()

    def complete(self, token: int, result: Any) -> list[Action]:
        """The call ``token`` finished with ``result``."""
        entry = self._calls.pop(token, None)
        if entry is None or self.closed:
            return []
        finish, on_error, order = entry
        try:
            reply = finish(result)
        except PMError as exc:
            reply = on_error(exc)
        self._answered(token, reply, order)
        return self._flush()

    def fail(self, token: int, exc: BaseException) -> list[Action]:
        """The call ``token`` failed with ``exc``."""
        entry = self._calls.pop(token, None)
        if entry is None or self.closed:
            return []
        _finish, on_error, order = entry
        self._answered(token, on_error(exc), order)
        return self._flush()

    def eof(self) -> list[Action]:
        """The rank closed its end: the last event (clean if finalized or never initialized)."""
        self._enter(Phase.CLOSED)
        self._calls.clear()
        if self._nbad > self._nlogged:
            log.warning("rank %d: %d bad PMI requests in all, %d logged", self.rank,
                        self._nbad, self._nlogged)
        return [Event("eof", self.finalized or not self.initialized)]

    # ------------------------------------------------------------------ internals
    def _flush(self) -> list[Action]:
        acts = self._acts
        if self._out:
            data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out = []
            acts.insert(0, Send(data))
        elif not acts:
            return acts
        self._acts = []
        if self.closed:  # the replies and events first, then the close
            acts.sort(key=lambda a: isinstance(a, Close))
        return acts

    def _answered(self, token: int, reply: bytes, order: deque[int] | None) -> None:
        if order is None:
            if reply:
                self._out.append(reply)
            if self._busy:
                self._busy = False
                self._pump()
            return
        # A rank's collectives of one kind complete in the order it started them.
        self._coll_ready[token] = reply
        while order and order[0] in self._coll_ready:
            self._out.append(self._coll_ready.pop(order.popleft()))

    def _call(self, call: Call, finish: _Finish, on_error: _OnError,
              order: deque[int] | None = None) -> None:
        self._calls[call.token] = (finish, on_error, order)
        self._acts.append(call)

    def _token(self) -> int:
        token = self._next_token
        self._next_token += 1
        return token

    def _event(self, name: str, detail: Any = None) -> None:
        self._acts.append(Event(name, detail))

    def _fatal(self, why: str) -> None:
        # The stream cannot be followed any more: the rank fails (the job names it).
        self._event("error", why)
        self._acts.append(Close(why))
        self._enter(Phase.CLOSED)
        self._queue.clear()

    def _bad(self, what: str, label: str = "bad PMI request") -> None:
        """Log a bad request once per cause (its quoted excerpts aside), a few causes per
        rank: a rank sending garbage must not flood the log; the total comes at the end."""
        self._nbad += 1
        cause = _QUOTED.sub("", what)
        if cause in self._causes:
            return
        if len(self._causes) < MAX_CAUSES:
            self._causes.add(cause)
            self._nlogged += 1
            log.warning("rank %d: %s: %s", self.rank, label, what)

    def _failed(self, what: str, exc: BaseException, label: str = "bad PMI request") -> None:
        if isinstance(exc, RankFailed):  # the job is failing: not this rank's request
            log.debug("rank %d: %s: %s", self.rank, label, what)
        else:
            self._bad(what, label)

    def _detect(self, data: bytes) -> bytes:
        head = self._head + data
        if len(head) < 4:
            self._head = head
            return b""
        self._head = b""
        if head.startswith(native.MAGIC):
            self.protocol = Wire.NATIVE
            self._nat = native.FrameDecoder()
            self._pack = native.frame_packer()
            return head[4:]
        if head.startswith((b"cmd=", b"mcmd")):
            self.protocol = Wire.PMI1
            self._p1 = pmi1.Pmi1Decoder()
            return head
        if len(head) >= 6 and head[:6].strip().isdigit():
            self.protocol = Wire.PMI2
            self._p2 = pmi2.Pmi2Decoder()
            return head
        if len(head) < 6:
            self._head = head
            return b""
        raise ProtocolError(f"unknown protocol, first bytes {head[:16]!r}")

    # ------------------------------------------------------------------ PMI-1 and PMI-2
    def _pump(self) -> None:
        queue = self._queue
        while queue and not self._busy and not self.closed:
            req = queue.popleft()
            if isinstance(req, pmi1.Pmi1Command):
                handler = _PMI1.get(req.cmd)
                try:
                    if handler is None:
                        raise ProtocolError(f"unknown PMI-1 command {req.cmd!r}")
                    handler(self, req)
                except PMError as exc:
                    self._bad(str(exc))
                    self._out.append(pmi1.reply_error(pmi1.REPLY_OF.get(req.cmd, req.cmd),
                                                      str(exc)))
            elif isinstance(req, pmi2.Pmi2Command):
                handler2 = _PMI2.get(req.cmd)
                try:
                    if handler2 is None:
                        raise ProtocolError(f"unknown PMI-2 command {req.cmd!r}")
                    handler2(self, req)
                except PMError as exc:
                    self._bad(str(exc))
                    self._out.append(pmi2.response(req, [("errmsg", str(exc))], rc=1))
            else:  # a malformed line: answered, the stream goes on
                self._bad(str(req))
                self._out.append(pmi1.reply_error("error", str(req)))

    def _wait1(self, call: Call, c: pmi1.Pmi1Command, finish: _Finish) -> None:
        """A PMI-1 request that waits: the ones behind it wait too."""
        reply = pmi1.REPLY_OF.get(c.cmd, c.cmd)

        def on_error(exc: BaseException) -> bytes:
            self._failed(str(exc), exc)
            return pmi1.reply_error(reply, str(exc))

        self._busy = True
        self._call(call, finish, on_error)

    def _wait2(self, call: Call, c: pmi2.Pmi2Command, finish: _Finish) -> None:
        def on_error(exc: BaseException) -> bytes:
            self._failed(str(exc), exc)
            return pmi2.response(c, [("errmsg", str(exc))], rc=1)

        self._busy = True
        self._call(call, finish, on_error)

    def _fast1(self, data: bytes) -> bool:
        """A lone plain get or put line, answered without building a command; False
        (nothing done) for anything else, which takes the general path."""
        if data[-1:] != b"\n" or data.find(b"\n") != len(data) - 1 or not data.isascii():
            return False
        toks = data.split()
        cmd = toks[0] if toks else b""
        if cmd != b"cmd=get" and cmd != b"cmd=put":
            return False
        kvs = key = None
        value = b""
        for tok in toks[1:]:
            k, sep, v = tok.partition(b"=")
            if not sep or not k:
                return False
            if k == b"key":
                key = v
            elif k == b"kvsname":
                kvs = v
            elif k == b"value":
                value = v
        if key is None or key.startswith(b"PMI_") or (
                kvs is not None and kvs != self._kvsname):
            return False
        if cmd == b"cmd=get":
            raw = self.store.get_now(key)
            self._out.append(b"cmd=get_result rc=1 msg=key_not_found\n" if raw is None
                             else b"cmd=get_result rc=0 value=%s\n" % raw)
        else:
            self.store.put(self.rank, key, value)
            self._out.append(b"cmd=put_result rc=0\n")
        return True

    # -- PMI-1 commands (each adds its reply to _out, or starts a call)
    def _init1(self, c: pmi1.Pmi1Command) -> None:
        self._enter(Phase.INITIALIZED)
        self._event("init")
        if c.args.get("pmi_version") == "2":
            # A PMI-2 client: everything after this line is length-framed.
            self.protocol = Wire.PMI2
            rest = self._p1.pending if self._p1 is not None else b""
            self._p1, self._p2 = None, pmi2.Pmi2Decoder()
            self._out.append(pmi2.encode_init_response())
            if rest:
                self._queue.extend(self._p2.feed(rest))
            return
        self._out.append(b"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1\n")

    def _maxes1(self, c: pmi1.Pmi1Command) -> None:
        self._out.append(_MAXES)

    def _appnum1(self, c: pmi1.Pmi1Command) -> None:
        self._out.append(b"cmd=appnum rc=0 appnum=%d\n" % self.store.appnum(self.rank))

    def _kvsname1(self, c: pmi1.Pmi1Command) -> None:
        self._out.append(b"cmd=my_kvsname rc=0 kvsname=%s\n" % self.store.kvsname.encode())

    def _universe1(self, c: pmi1.Pmi1Command) -> None:
        self._out.append(b"cmd=universe_size rc=0 size=%d\n" % self.store.universe_size())

    def _check_kvsname(self, args: dict[str, str]) -> None:
        name = args.get("kvsname")
        if name is not None and name != self.store.kvsname:
            raise ProtocolError(f"kvsname {name} is not this job's ({self.store.kvsname})")

    def _put1(self, c: pmi1.Pmi1Command) -> None:
        args = c.args
        self._check_kvsname(args)
        key = _need(c, "key")
        if key.startswith("PMI_"):
            self._out.append(pmi1.reply_error("put_result", f"key {key} is reserved"))
            return
        self.store.put(self.rank, key.encode(), args.get("value", "").encode())
        self._out.append(b"cmd=put_result rc=0\n")

    def _get1(self, c: pmi1.Pmi1Command) -> None:
        self._check_kvsname(c.args)
        key = _need(c, "key")
        store = self.store
        if key.startswith("PMI_"):
            attr = store.job_attr(key)
            if attr is not None:
                self._out.append(b"cmd=get_result rc=0 value=%s\n" % attr.encode())
                return
        raw = store.get_now(key.encode())
        if raw is None:  # answered at once: MPICH probes optional keys
            self._out.append(b"cmd=get_result rc=1 msg=key_not_found\n")
        else:
            self._out.append(b"cmd=get_result rc=0 value=%s\n" % raw)

    def _barrier1(self, c: pmi1.Pmi1Command) -> None:
        self._wait1(Collective(self._token(), FENCE, None), c,
                    lambda _r: b"cmd=barrier_out rc=0\n")

    def _finalize1(self, c: pmi1.Pmi1Command) -> None:
        self._enter(Phase.FINALIZED)
        self._event("finalize")
        self._out.append(b"cmd=finalize_ack rc=0\n")

    def _abort1(self, c: pmi1.Pmi1Command) -> None:
        a = c.args
        code = _clamp(_int(a.get("exitcode", "1"), "exitcode"))
        self._event("abort", (code, a.get("message") or a.get("msg") or ""))

    def _names1(self, c: pmi1.Pmi1Command) -> None:
        action = c.cmd.split("_")[0]
        service = _need(c, "service")
        reply = pmi1.REPLY_OF[c.cmd]

        def finish(result: Any) -> bytes:
            ok, port = result
            if not ok:
                return pmi1.reply_error(reply, f"{action}_failed_for_{service}")
            if action == "lookup":
                return pmi1.encode(reply, ("rc", 0), ("port", port))
            return pmi1.encode(reply, ("rc", 0))

        self._wait1(NameService(self._token(), action, service, c.args.get("port", "")), c,
                    finish)

    def _spawn1(self, c: pmi1.Pmi1Command) -> None:
        self._wait1(Spawn(self._token(), spawn.parse_pmi1(c)), c, spawn.reply_pmi1)

    def _initack1(self, c: pmi1.Pmi1Command) -> None:
        raise ProtocolError("initack is only for PMI_PORT clients")

    # -- PMI-2 commands
    def _fullinit2(self, c: pmi2.Pmi2Command) -> None:
        self._enter(Phase.INITIALIZED)
        self._event("init")
        store = self.store
        # A spawned job's ranks learn they have a parent from spawner-jobid.
        spawner = store.job_attr("spawner-jobid")
        self._out.append(pmi2.response(c, [
            ("pmi-version", "2"), ("pmi-subversion", "0"), ("rank", str(self.rank)),
            ("size", str(store.size)), ("appnum", str(store.appnum(self.rank))),
            *([("spawner-jobid", spawner)] if spawner else []),
            ("debugged", "FALSE"), ("pmiverbose", "FALSE")]))

    def _jobid2(self, c: pmi2.Pmi2Command) -> None:
        self._out.append(pmi2.response(c, [("jobid", self.store.kvsname)]))

    def _put2(self, c: pmi2.Pmi2Command) -> None:
        self.store.put(self.rank, _enc(c.require("key")), _enc(c.require("value")))
        self._out.append(pmi2.response(c))

    def _fence2(self, c: pmi2.Pmi2Command) -> None:
        # Slurm's semantics: the reply waits for the whole job, so MPICH's
        # fence + get(-NONEXIST-KEY) barrier holds.
        self._wait2(Collective(self._token(), FENCE, None), c, lambda _r: pmi2.response(c))

    def _get2(self, c: pmi2.Pmi2Command) -> None:
        jobid = c.get("jobid")
        if jobid and jobid != self.store.kvsname:
            raise ProtocolError(f"jobid {jobid} is not this job's ({self.store.kvsname})")
        raw = self.store.get_now(_enc(c.require("key")))
        if raw is None:
            self._out.append(pmi2.response(c, [("found", "FALSE")]))
        else:
            self._out.append(pmi2.response(c, [("found", "TRUE"), ("value", _dec(raw))]))

    def _jobattr2(self, c: pmi2.Pmi2Command) -> None:
        value = self.store.job_attr(c.require("key"))
        if value is None:
            self._out.append(pmi2.response(c, [("found", "FALSE")]))
        else:
            self._out.append(pmi2.response(c, [("found", "TRUE"), ("value", value)]))

    def _putnode2(self, c: pmi2.Pmi2Command) -> None:
        self.store.node_attr_put(c.require("key"), c.require("value"))
        self._out.append(pmi2.response(c))

    def _getnode2(self, c: pmi2.Pmi2Command) -> None:
        wait = c.flag("wait")

        def finish(value: Any) -> bytes:
            if value is None:
                return pmi2.response(c, [("found", "FALSE")])
            return pmi2.response(c, [("found", "TRUE"), ("value", value)])

        self._wait2(NodeAttrGet(self._token(), c.require("key"), wait), c, finish)

    def _ring2(self, c: pmi2.Pmi2Command) -> None:
        value = c.require("ring-left")  # MPICH/Slurm send the same value left and right

        def finish(result: Any) -> bytes:
            left, right = result
            return pmi2.response(c, [("ring-count", str(self.rank)), ("ring-left", _dec(left)),
                                     ("ring-right", _dec(right))])

        self._wait2(Collective(self._token(), RING, _enc(value)), c, finish)

    def _finalize2(self, c: pmi2.Pmi2Command) -> None:
        self._enter(Phase.FINALIZED)
        self._event("finalize")
        self._out.append(pmi2.response(c))

    def _abort2(self, c: pmi2.Pmi2Command) -> None:
        code = _clamp(_int(c.get("exitcode", "1") or "1", "exitcode"))
        self._event("abort", (code, c.get("message") or c.get("msg") or ""))

    def _names2(self, c: pmi2.Pmi2Command) -> None:
        action = c.cmd.split("-")[1]

        def finish(result: Any) -> bytes:
            ok, got = result
            # libpmi2 reads the port from value=, MPICH from port=.
            pairs = [("port", got), ("value", got)] if ok and action == "lookup" else []
            return pmi2.response(c, pairs, rc=0 if ok else 1)

        self._wait2(NameService(self._token(), action, c.require("name"),
                                c.get("port", "") or ""), c, finish)

    def _spawn2(self, c: pmi2.Pmi2Command) -> None:
        self._wait2(Spawn(self._token(), spawn.parse_pmi2(c)), c,
                    lambda result: spawn.reply_pmi2(c, result))

    # ------------------------------------------------------------------ native
    def _native(self, frame: Any) -> None:
        if not isinstance(frame, list) or len(frame) < 2 or not isinstance(frame[1], str):
            raise ProtocolError("native request is not [id, op, ...]")
        req, op = frame[0], frame[1]
        if op == "get" and type(req) is int and len(frame) == 4 and self.initialized:
            # The hot path: a get of a key on this node, answered at once.
            key, src = frame[2], frame[3]
            if type(key) is bytes and len(key) <= native.MAX_KEY:
                if src is None:
                    self._out.append(self._pack([req, True, self.store.get_now(key)]))
                    return
                if type(src) is int and 0 <= src < self.store.size:
                    value = self.store.get_now(b"\0%d\0%s" % (src, key))  # native.rank_key
                    if value is not None or src == self.rank:
                        self._out.append(self._pack([req, True, value]))
                        return
        if type(req) is not int:
            what = f"request id must be an integer, not {type(req).__name__}"
            self._bad(what)
            self._out.append(self._pack([req, False, what]))
            return
        try:
            self._native_op(req, op, frame)
        except (PMError, TypeError, ValueError, IndexError, KeyError) as exc:
            # A bad request fails alone: the rank gets the reason, the agent a log line.
            self._out.append(self._native_error(req, op, exc))

    def _native_error(self, req: int, op: str, exc: BaseException) -> bytes:
        what = str(exc) if not isinstance(exc, IndexError) else f"missing arguments to {op}"
        self._failed(what, exc, f"native {op} failed")
        return self._pack([req, False, what])

    def _native_wait(self, req: int, op: str, call: Call,
                     finish: _Finish | None = None) -> None:
        order = None
        if op in _COLLECTIVE_OPS:
            order = self._coll_order.get(op)
            if order is None:
                order = self._coll_order[op] = deque()
            order.append(call.token)
        self._call(call, finish or (lambda result: self._pack([req, True, result])),
                   lambda exc: self._native_error(req, op, exc), order)

    def _native_op(self, req: int, op: str, frame: list[Any]) -> None:
        store, rank, out = self.store, self.rank, self._out
        if op == native.INIT:
            self._enter(Phase.INITIALIZED)
            self._event("init")
            out.append(self._pack([req, True, store.native_info(rank)]))
            return
        if not self.initialized:
            raise ProtocolError(f"{op} before init")
        if op == native.GET:
            _nargs(op, frame, 2)
            key, src = _key(frame[2]), frame[3]
            if src is None:  # the job-wide namespace of PMI-1/PMI-2 ranks
                out.append(self._pack([req, True, store.get_now(key)]))
                return
            if type(src) is not int or not 0 <= src < store.size:
                raise ProtocolError(f"get from rank {src!r}: ranks are 0..{store.size - 1}")
            full = native.rank_key(src, key)
            value = store.get_now(full)
            # A rank's own puts are visible at once: a miss is final.  Another's may come.
            if value is not None or src == rank:
                out.append(self._pack([req, True, value]))
            else:
                self._native_wait(req, op, GetFrom(self._token(), src, full))
            return
        if op == native.PUT:
            _nargs(op, frame, 2)
            key, value = _key(frame[2]), _bytes(frame[3], "value")
            if len(value) > native.MAX_VALUE:
                raise ProtocolError(f"value of {len(value)} bytes exceeds {native.MAX_VALUE}")
            store.put(rank, native.rank_key(rank, key), value)
            out.append(self._pack([req, True, None]))
        elif op in (native.FENCE, native.BARRIER):
            kind = FENCE if op == native.FENCE else BARRIER
            self._native_wait(req, op, Collective(self._token(), kind, None))
        elif op == native.ALLGATHER:
            _nargs(op, frame, 1)
            value = _bytes(frame[2], "value")
            self._native_wait(req, op, Collective(self._token(), ALLGATHER, value))
        elif op == native.RING:
            _nargs(op, frame, 1)
            value = _bytes(frame[2], "value")
            self._native_wait(req, op, Collective(self._token(), RING, value))
        elif op == native.FINALIZE:
            self._enter(Phase.FINALIZED)
            self._event("finalize")
            out.append(self._pack([req, True, None]))
        elif op == native.ABORT:
            args = frame[2:]
            code = _clamp(args[0]) if args and type(args[0]) is int else 1
            message = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            self._event("abort", (code, message))
        elif op == native.RESERVE:
            _nargs(op, frame, 1)
            nbytes = frame[2]
            if type(nbytes) is not int or nbytes < 0:
                raise ProtocolError(f"reserve needs a byte count >= 0, not {nbytes!r}")
            self._native_wait(req, op, Reserve(self._token(), nbytes))
        elif op == native.SPAWN:
            _nargs(op, frame, 2)
            commands, preput = frame[2], frame[3]
            if not isinstance(commands, list) or not isinstance(preput, dict):
                raise ProtocolError("spawn takes [[argv, n, info], ...] and {key: value}")
            try:
                request = spawn.SpawnRequest(
                    [spawn.SpawnCommand.from_wire(cmd) for cmd in commands],
                    {str(k): str(v) for k, v in preput.items()})
            except (TypeError, ValueError, AttributeError) as exc:
                raise ProtocolError(f"spawn: bad command list: {exc}") from None
            request.check()
            self._native_wait(req, op, Spawn(self._token(), request),
                              lambda result: self._pack([req, True, spawn.native_reply(result)]))
        elif op == native.RELEASE:
            _nargs(op, frame, 1)
            if type(frame[2]) is not int:
                raise ProtocolError(f"release needs a reservation id, not {frame[2]!r}")
            store.release(rank, frame[2])
            out.append(self._pack([req, True, None]))
        else:
            raise ProtocolError(f"unknown native op {op!r}")


_MAXES = pmi1.encode("maxes", ("rc", 0), ("kvsname_max", pmi1.KVSNAME_MAX),
                     ("keylen_max", pmi1.KEYLEN_MAX), ("vallen_max", pmi1.VALLEN_MAX))

#: Request command -> handler.
_PMI1: dict[str, Callable[[PmiEngine, pmi1.Pmi1Command], None]] = {
    "get": PmiEngine._get1,
    "put": PmiEngine._put1,
    "barrier_in": PmiEngine._barrier1,
    "init": PmiEngine._init1,
    "get_maxes": PmiEngine._maxes1,
    "get_appnum": PmiEngine._appnum1,
    "get_my_kvsname": PmiEngine._kvsname1,
    "get_universe_size": PmiEngine._universe1,
    "finalize": PmiEngine._finalize1,
    "abort": PmiEngine._abort1,
    "publish_name": PmiEngine._names1,
    "unpublish_name": PmiEngine._names1,
    "lookup_name": PmiEngine._names1,
    "spawn": PmiEngine._spawn1,
    "initack": PmiEngine._initack1,
}
_PMI2: dict[str, Callable[[PmiEngine, pmi2.Pmi2Command], None]] = {
    "kvs-get": PmiEngine._get2,
    "kvs-put": PmiEngine._put2,
    "kvs-fence": PmiEngine._fence2,
    "info-getjobattr": PmiEngine._jobattr2,
    "info-putnodeattr": PmiEngine._putnode2,
    "info-getnodeattr": PmiEngine._getnode2,
    "fullinit": PmiEngine._fullinit2,
    "job-getid": PmiEngine._jobid2,
    "ring": PmiEngine._ring2,
    "finalize": PmiEngine._finalize2,
    "abort": PmiEngine._abort2,
    "name-publish": PmiEngine._names2,
    "name-unpublish": PmiEngine._names2,
    "name-lookup": PmiEngine._names2,
    "spawn": PmiEngine._spawn2,
}


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


def _nargs(op: str, frame: list[Any], n: int) -> None:
    if len(frame) - 2 != n:
        raise ProtocolError(f"{op} takes {n} argument(s), got {len(frame) - 2}")


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
