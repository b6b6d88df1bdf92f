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

The PMI-1 commands are in :mod:`pm.agent.pmi_engine_v1`, loaded with the engine (a
lone plain get or put is answered here: the hot path), with the checks of a request's
fields that every protocol's commands share; PMI-2's are in
:mod:`pm.agent.pmi_engine_v2` and the native ones in :mod:`pm.agent.pmi_engine_native`,
each loaded when a rank first speaks that protocol (pmrun's quick phase,
:mod:`pm.quick`, serves PMI-1 before anything heavy is imported: this module loads no
logging, dataclasses or msgpack).

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

from collections import deque

from pm.agent import pmi_engine_v1
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
from pm.proto import pmi1
from pm.proto.errors import PMError, ProtocolError, RankFailed

__all__ = ["Action", "Call", "Close", "Collective", "Event", "GetFrom", "NameService",
           "NodeAttrGet", "Phase", "PmiEngine", "Reserve", "Send", "Spawn", "Wire"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from pm.proto import native, pmi2

    _Finish = Callable[[Any], bytes]
    _OnError = Callable[[BaseException], bytes]

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
#: What a native client sends first (pm.proto.native.MAGIC; a test holds them equal).
NATIVE_MAGIC = b"\0PMN"


#: Called once before the first log line (pmrun's quick phase sets up logging then).
log_setup: Callable[[], None] | None = None


def _log() -> Any:
    import logging  # only when there is something to say

    global log_setup
    setup, log_setup = log_setup, None
    if setup is not None:
        setup()
    return logging.getLogger("pm.agent.pmi")


def _no_frames(obj: object) -> bytes:
    raise AssertionError("not a native connection")


def _cause(what: str) -> str:
    """A bad request's cause: its text without the quoted excerpts."""
    import re

    return re.sub("b?'[^']*'|b?\"[^\"]*\"", "", what)


def printable(what: str) -> str:
    """``what`` with its control characters escaped (a log line is one line of text)."""
    if what.isprintable():
        return what
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in what)


class PmiEngine:
    """Serves rank ``rank`` of the job ``store`` holds."""

    def __init__(self, store: Store, rank: int) -> None:
        self.store = store
        self.rank = rank
        self.protocol = Wire.UNKNOWN
        self.phase = Phase.NEW
        #: Whether the rank ever initialized / finalized (CLOSED keeps what came before).
        self._inited = self._finalized = False
        #: Hydra's -pmi-port: the rank connected to the node's port (its first line is its
        #: initack), and whether it was answered.
        self.by_port = self._acked = False
        self._kvsname = store.kvsname.encode()
        self._get_head = b"cmd=get kvsname=%s key=" % self._kvsname
        self._head = b""
        self._p1: pmi1.Pmi1Decoder | None = None
        self._p2: pmi2.Pmi2Decoder | None = None
        self._nat: native.FrameDecoder | None = None
        #: pm.agent.pmi_engine_v2 / pm.agent.pmi_engine_native once the rank speaks them.
        self._v2: Any = None
        self._native: Any = None
        self._pack: Callable[[Any], bytes] = _no_frames
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
    def feed(self, data: bytes, fast: bool = True) -> list[Action]:
        """Bytes the rank sent: the actions they call for.  ``fast=False``: the caller
        tried :meth:`answer` on these bytes already (it is not tried again)."""
        if self.closed:
            return []
        try:
            if self.protocol is Wire.UNKNOWN:
                data = self._detect(data)
                if self.protocol is Wire.UNKNOWN:
                    return []
            nat = self._nat
            if nat is not None:
                serve = self._native.serve
                for frame in nat.feed(data):
                    serve(self, frame)
            elif self._p1 is not None:
                reply = self._fast1(data) if fast and self._p1.idle and not self._busy else None
                if reply is None:
                    self._queue.extend(self._p1.feed(data))
                    self._pump()
                else:
                    self._out.append(reply)
            elif self._p2 is not None:
                self._queue.extend(self._p2.feed(data))
                self._pump()
        except ProtocolError as exc:
            self._fatal(str(exc))
        return self._flush()

    def answer(self, data: bytes) -> bytes | None:
        """The reply if ``data`` is exactly one get (or a PMI-1 put) the rank may send now
        and the store answers at once; else None, with nothing done (:meth:`feed` takes
        the bytes).  A shell's hot path: one call, the reply to write, no action list."""
        if self._busy or self.phase is Phase.CLOSED:
            return None
        p1 = self._p1
        if p1 is not None:
            return self._fast1(data) if p1.idle else None
        if self._nat is not None:
            reply: bytes | None = self._native.answer(self, data)
            return reply
        return None

    def ready(self) -> bool:
        """Whether the next request, if it is one complete get, is answered the way it
        would be alone: nothing buffered, nothing waiting, not closed (and initialized, for
        a native rank).  A shell may then answer it from a cache of earlier replies."""
        if self._busy or self._queue or self.phase is Phase.CLOSED:
            return False
        if self._p1 is not None:
            return self._p1.idle
        if self._p2 is not None:
            return not self._p2.buffered
        if self._nat is not None:
            return self._inited and self._nat.idle
        return False

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
            _log().warning("rank %d: %d bad PMI requests in all, %d logged", self.rank,
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
        cause = _cause(what)
        if cause in self._causes:
            return
        if len(self._causes) < MAX_CAUSES:
            self._causes.add(cause)
            self._nlogged += 1
            _log().warning("rank %d: %s: %s", self.rank, label, printable(what))

    def _failed(self, what: str, exc: BaseException, label: str = "bad PMI request") -> None:
        if isinstance(exc, RankFailed):  # the job is failing: not this rank's request
            _log().debug("rank %d: %s: %s", self.rank, label, what)
        else:
            self._bad(what, label)

    def _detect(self, data: bytes) -> bytes:
        head = self._head + data
        if len(head) < 4:
            self._head = head
            return b""
        self._head = b""
        if head.startswith(NATIVE_MAGIC):
            from pm.agent import pmi_engine_native
            from pm.proto import native

            self.protocol = Wire.NATIVE
            self._native = pmi_engine_native
            self._nat = native.FrameDecoder()
            self._pack = native.frame_packer()
            return head[4:]
        if head.startswith((b"cmd=", b"mcmd")):
            self.protocol = Wire.PMI1
            self._p1 = pmi1.Pmi1Decoder()
            return head
        if len(head) >= 6 and head[:6].strip().isdigit():
            self._speak2()
            return head
        if len(head) < 6:
            self._head = head
            return b""
        raise ProtocolError(f"unknown protocol, first bytes {head[:16]!r}")

    def _speak2(self) -> None:
        """The rank speaks PMI-2 from here on (its commands: pm.agent.pmi_engine_v2)."""
        from pm.agent import pmi_engine_v2
        from pm.proto import pmi2

        self.protocol = Wire.PMI2
        self._v2 = pmi_engine_v2
        self._p1, self._p2 = None, pmi2.Pmi2Decoder()

    # ------------------------------------------------------------------ PMI-1 and PMI-2
    def _pump(self) -> None:
        queue = self._queue
        while queue and not self._busy and not self.closed:
            req = queue.popleft()
            if type(req) is pmi1.Pmi1Command:
                pmi_engine_v1.serve(self, req)
            elif isinstance(req, ProtocolError):  # a malformed line: answered, it goes on
                self._bad(str(req))
                self._out.append(pmi1.reply_error("error", str(req)))
            else:
                self._v2.serve(self, req)

    def _fast1(self, data: bytes) -> bytes | None:
        """The reply to a lone plain get or put line, answered without building a command;
        None (nothing done) for anything else, which takes the general path."""
        head = self._get_head
        if data.startswith(head) and data[-1:] == b"\n":
            # MPICH's get, exactly: "cmd=get kvsname=<ours> key=<key>\n".
            key = data[len(head):-1]
            if (key.isalnum() or (key.isascii() and key.split() == [key])) and (
                    not key.startswith(b"PMI_")):  # (a job attribute: the general path)
                raw = self.store.get_now(key)
                return (b"cmd=get_result rc=1 msg=key_not_found\n" if raw is None
                        else b"cmd=get_result rc=0 value=%s\n" % raw)
        if data[-1:] != b"\n" or data.find(b"\n") != len(data) - 1 or not data.isascii():
            return None
        return self._fast1_tokens(data)

    def _fast1_tokens(self, data: bytes) -> bytes | None:
        toks = data.split()
        cmd = toks[0] if toks else b""
        if cmd != b"cmd=get" and cmd != b"cmd=put":
            return None
        kvs = key = None
        value = b""
        for tok in toks[1:]:
            k, sep, v = tok.partition(b"=")
            if not sep or not k:
                return None
            if k == b"key":
                key = v
            elif k == b"kvsname":
                kvs = v
            elif k == b"value":
                value = v
        if key is None or key.startswith(b"PMI_") or (
                kvs is not None and kvs != self._kvsname):
            return None
        if cmd == b"cmd=get":
            raw = self.store.get_now(key)
            return (b"cmd=get_result rc=1 msg=key_not_found\n" if raw is None
                    else b"cmd=get_result rc=0 value=%s\n" % raw)
        self.store.put(self.rank, key, value)
        return b"cmd=put_result rc=0\n"
