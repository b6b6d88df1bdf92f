"""The native (msgpack) requests of :class:`pm.agent.pmi_engine.PmiEngine`.

Loaded when a rank opens with :data:`pm.proto.native.MAGIC` (``pm.client``).
Native requests are concurrent: each carries an id, and a rank's collectives
of one kind are answered in the order it started them.  A get of a key on
this node is answered at once, in :func:`serve` itself.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import msgpack

from pm.agent.pmi_actions import (
    ALLGATHER,
    BARRIER,
    FENCE,
    RING,
    Collective,
    GetFrom,
    Phase,
    Reserve,
    Spawn,
)
from pm.agent.pmi_engine_v1 import _clamp
from pm.proto import native
from pm.proto.errors import PMError, ProtocolError

if TYPE_CHECKING:
    from pm.agent.pmi_actions import Call
    from pm.agent.pmi_engine import PmiEngine, _Finish

#: Native ops whose replies keep request order per kind.
_COLLECTIVE_OPS = frozenset((native.FENCE, native.BARRIER, native.ALLGATHER, native.RING))


_unpackb = msgpack.unpackb


def answer(e: PmiEngine, data: bytes) -> bytes | None:
    """The reply if ``data`` is exactly one frame, a get of a key this node has (or of
    the rank's own, a miss then), and the rank is initialized; else None, nothing done."""
    if (len(data) < 5 or int.from_bytes(data[:4], "big") + 4 != len(data)
            or not e._inited or not e._nat.idle):  # type: ignore[union-attr]
        return None
    try:
        frame = _unpackb(data[4:], raw=False)
    except Exception:
        return None  # the general path names it
    if type(frame) is not list or len(frame) != 4 or frame[1] != "get":
        return None
    req, key, src = frame[0], frame[2], frame[3]
    if type(req) is not int or type(key) is not bytes or len(key) > native.MAX_KEY:
        return None
    if src is None:
        value = e.store.get_now(key)
    elif type(src) is int and 0 <= src < e.store.size:
        value = e.store.get_now(b"\0%d\0%s" % (src, key))  # native.rank_key
        if value is None and src != e.rank:
            return None  # it may come: a call
    else:
        return None
    return e._pack([req, True, value])


def serve(e: PmiEngine, frame: Any) -> None:
    """One native request: answered at once, or a call started."""
    if not isinstance(frame, list) or len(frame) < 2 or not isinstance(frame[1], str):
        raise ProtocolError("native request is not [id, op, ...]")
    req, op = frame[0], frame[1]
    if op == "get" and type(req) is int and len(frame) == 4 and e.initialized:
        # The hot path: a get of a key on this node, answered at once.
        key, src = frame[2], frame[3]
        if type(key) is bytes and len(key) <= native.MAX_KEY:
            if src is None:
                e._out.append(e._pack([req, True, e.store.get_now(key)]))
                return
            if type(src) is int and 0 <= src < e.store.size:
                value = e.store.get_now(b"\0%d\0%s" % (src, key))  # native.rank_key
                if value is not None or src == e.rank:
                    e._out.append(e._pack([req, True, value]))
                    return
    if type(req) is not int:
        what = f"request id must be an integer, not {type(req).__name__}"
        e._bad(what)
        e._out.append(e._pack([req, False, what]))
        return
    try:
        _native_op(e, req, op, frame)
    except (PMError, TypeError, ValueError, IndexError, KeyError) as exc:
        # A bad request fails alone: the rank gets the reason, the agent a log line.
        e._out.append(_native_error(e, req, op, exc))


def _native_error(e: PmiEngine, req: int, op: str, exc: BaseException) -> bytes:
    what = str(exc) if not isinstance(exc, IndexError) else f"missing arguments to {op}"
    e._failed(what, exc, f"native {op} failed")
    return e._pack([req, False, what])


def _native_wait(e: PmiEngine, req: int, op: str, call: Call,
                 finish: _Finish | None = None) -> None:
    order = None
    if op in _COLLECTIVE_OPS:
        order = e._coll_order.get(op)
        if order is None:
            order = e._coll_order[op] = deque()
        order.append(call.token)
    reply = finish or (lambda result: e._pack([req, True, result]))

    def done(result: Any) -> bytes:
        frame = reply(result)
        if len(frame) - 4 > native.MAX_FRAME:  # (the client would drop the connection)
            return _native_error(e, req, op, ProtocolError(
                f"{op}: its result of {len(frame) - 4} bytes is over the {native.MAX_FRAME} bytes "
                "a reply carries (pmrun's shared-memory KVS, --kvs shm, has no such bound)"))
        return frame

    e._call(call, done, lambda exc: _native_error(e, req, op, exc), order)


def _native_op(e: PmiEngine, req: int, op: str, frame: list[Any]) -> None:
    store, rank, out = e.store, e.rank, e._out
    if op == native.INIT:
        e._enter(Phase.INITIALIZED)
        e._event("init")
        out.append(e._pack([req, True, store.native_info(rank)]))
        return
    if not e.initialized:
        raise ProtocolError(f"{op} before init")
    if op == native.GET:
        _nargs(op, frame, 2)
        key, src = _key(frame[2]), frame[3]
        if src is None:  # the job-wide namespace of PMI-1/PMI-2 ranks
            out.append(e._pack([req, True, store.get_now(key)]))
            return
        if type(src) is not int or not 0 <= src < store.size:
            raise ProtocolError(f"get from rank {src!r}: ranks are 0..{store.size - 1}")
        full = native.rank_key(src, key)
        value = store.get_now(full)
        # A rank's own puts are visible at once: a miss is final.  Another's may come.
        if value is not None or src == rank:
            out.append(e._pack([req, True, value]))
        else:
            _native_wait(e, req, op, GetFrom(e._token(), src, full))
        return
    if op == native.PUT:
        _nargs(op, frame, 2)
        key, value = _key(frame[2]), _bytes(frame[3], "value")
        if len(value) > native.MAX_VALUE:
            raise ProtocolError(f"value of {len(value)} bytes exceeds {native.MAX_VALUE}")
        store.put(rank, native.rank_key(rank, key), value)
        out.append(e._pack([req, True, None]))
    elif op in (native.FENCE, native.BARRIER):
        kind = FENCE if op == native.FENCE else BARRIER
        _native_wait(e, req, op, Collective(e._token(), kind, None))
    elif op == native.ALLGATHER:
        _nargs(op, frame, 1)
        value = _bytes(frame[2], "value")
        _native_wait(e, req, op, Collective(e._token(), ALLGATHER, value))
    elif op == native.RING:
        _nargs(op, frame, 1)
        value = _bytes(frame[2], "value")
        _native_wait(e, req, op, Collective(e._token(), RING, value))
    elif op == native.FINALIZE:
        e._enter(Phase.FINALIZED)
        e._event("finalize")
        out.append(e._pack([req, True, None]))
    elif op == native.ABORT:
        args = frame[2:]
        code = _clamp(args[0]) if args and type(args[0]) is int else 1
        message = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        e._event("abort", (code, message))
    elif op == native.RESERVE:
        _nargs(op, frame, 1)
        nbytes = frame[2]
        if type(nbytes) is not int or nbytes < 1:
            raise ProtocolError(f"reserve needs a byte count of at least 1, not {nbytes!r}")
        _native_wait(e, req, op, Reserve(e._token(), nbytes))
    elif op == native.SPAWN:
        from pm.proto import spawn  # dataclasses: not loaded until a rank spawns

        _nargs(op, frame, 2)
        commands, preput = frame[2], frame[3]
        if not isinstance(commands, list) or not isinstance(preput, dict):
            raise ProtocolError("spawn takes [[argv, n, info], ...] and {key: value}")
        try:
            request = spawn.SpawnRequest(
                [spawn.SpawnCommand.from_wire(cmd) for cmd in commands],
                {str(k): str(v) for k, v in preput.items()})
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise ProtocolError(f"spawn: bad command list: {exc}") from None
        request.check()
        _native_wait(e, req, op, Spawn(e._token(), request),
                          lambda result: e._pack([req, True, spawn.native_reply(result)]))
    elif op == native.RELEASE:
        _nargs(op, frame, 1)
        if type(frame[2]) is not int:
            raise ProtocolError(f"release needs a reservation id, not {frame[2]!r}")
        store.release(rank, frame[2])
        out.append(e._pack([req, True, None]))
    else:
        raise ProtocolError(f"unknown native op {op!r}")




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
