"""The PMI-1 commands of :class:`pm.agent.pmi_engine.PmiEngine`, and the checks of a
request's fields that its PMI-2 and native commands share.

Loaded with the engine: PMI-1 is what an MPI library speaks first (a PMI-2 client
opens with a PMI-1 ``init`` too), and a rank's ``MPI_Init`` must not wait for an
import.  Each handler adds its reply to the engine's output or starts a call (one
that waits holds the requests behind it: PMI-1 clients wait for each reply).  A lone
plain get or put is answered before any of this, by the engine's hot path
(:meth:`~pm.agent.pmi_engine.PmiEngine.answer`).  A request's fields are read with
:func:`_need` and :func:`_int` (a field missing or malformed: a
:class:`~pm.proto.errors.ProtocolError`, which gets an error reply), an abort's code
kept to the tree's integers by :func:`_clamp`, and keys and values that are not UTF-8
passed as they are by :func:`_enc` and :func:`_dec`.
"""

from __future__ import annotations

from pm.agent.pmi_actions import FENCE, Collective, NameService, Phase, Spawn, Wire
from pm.proto import pmi1
from pm.proto.errors import PMError, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pm.agent.pmi_actions import Call
    from pm.agent.pmi_engine import PmiEngine, _Finish


def serve(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    """One request, in its turn: answered (an error reply if it cannot be), or a call
    started."""
    handler = _PMI1.get(c.cmd)
    try:
        if handler is None:
            raise ProtocolError(f"unknown PMI-1 command {c.cmd!r}")
        handler(e, c)
    except PMError as exc:
        e._bad(str(exc))
        e._out.append(pmi1.reply_error(pmi1.REPLY_OF.get(c.cmd, c.cmd), str(exc)))


def _wait(e: PmiEngine, call: Call, c: pmi1.Pmi1Command, finish: _Finish) -> None:
    """A PMI-1 request that waits: the ones behind it wait too."""
    reply = pmi1.REPLY_OF.get(c.cmd, c.cmd)

    def on_error(exc: BaseException) -> bytes:
        e._failed(str(exc), exc)
        return pmi1.reply_error(reply, str(exc))

    e._busy = True
    e._call(call, finish, on_error)


# ------------------------------------------------------------------ the commands
# (each adds its reply to e._out, or starts a call)
def _init1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    e._enter(Phase.INITIALIZED)
    e._event("init")
    if c.args.get("pmi_version") == "2":
        # A PMI-2 client: everything after this line is length-framed.
        rest = e._p1.pending if e._p1 is not None else b""
        e._speak2()
        assert e._p2 is not None
        e._out.append(e._v2.INIT_RESPONSE)
        if rest:
            e._queue.extend(e._p2.feed(rest))
        return
    e._out.append(b"cmd=response_to_init rc=0 pmi_version=1 pmi_subversion=1\n")


def _maxes1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    e._out.append(_MAXES)


def _appnum1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    e._out.append(b"cmd=appnum rc=0 appnum=%d\n" % e.store.appnum(e.rank))


def _kvsname1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    e._out.append(b"cmd=my_kvsname rc=0 kvsname=%s\n" % e.store.kvsname.encode())


def _universe1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    e._out.append(b"cmd=universe_size rc=0 size=%d\n" % e.store.universe_size())


def _check_kvsname(e: PmiEngine, args: dict[str, str]) -> None:
    name = args.get("kvsname")
    if name is not None and name != e.store.kvsname:
        raise ProtocolError(f"kvsname {name!r} is not this job's ({e.store.kvsname})")


def _put1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    args = c.args
    _check_kvsname(e, args)
    key = _need(c, "key")
    if key.startswith("PMI_"):
        e._out.append(pmi1.reply_error("put_result", f"key {key} is reserved"))
        return
    e.store.put(e.rank, key.encode(), args.get("value", "").encode())
    e._out.append(b"cmd=put_result rc=0\n")


def _get1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    _check_kvsname(e, c.args)
    key = _need(c, "key")
    store = e.store
    if key.startswith("PMI_"):
        attr = store.job_attr(key)
        if attr is not None:
            e._out.append(b"cmd=get_result rc=0 value=%s\n" % attr.encode())
            return
    raw = store.get_now(key.encode())
    if raw is None:  # answered at once: MPICH probes optional keys
        e._out.append(b"cmd=get_result rc=1 msg=key_not_found\n")
    else:
        e._out.append(b"cmd=get_result rc=0 value=%s\n" % raw)


def _barrier1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    if e._finalized:  # (the others may be gone: it would never complete)
        raise ProtocolError("barrier after finalize")
    _wait(e, Collective(e._token(), FENCE, None), c, lambda _r: b"cmd=barrier_out rc=0\n")


def _finalize1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    e._enter(Phase.FINALIZED)
    e._event("finalize")
    e._out.append(b"cmd=finalize_ack rc=0\n")


def _abort1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    a = c.args
    code = _clamp(_int(a.get("exitcode", "1"), "exitcode"))
    e._event("abort", (code, a.get("message") or a.get("msg") or ""))


def _names1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
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

    _wait(e, NameService(e._token(), action, service, c.args.get("port", "")), c, finish)


def _spawn1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    from pm.proto import spawn

    _wait(e, Spawn(e._token(), spawn.parse_pmi1(c)), c, spawn.reply_pmi1)


def _initack1(e: PmiEngine, c: pmi1.Pmi1Command) -> None:
    # Hydra's -pmi-port (pm.agent.pmi_port): the first line of a client that connected
    # to PMI_PORT, naming its PMI_ID (the port gave us the connection for that rank).
    if not e.by_port or e.phase is not Phase.NEW or e._acked or \
            c.args.get("pmiid") != str(e.rank):
        raise ProtocolError("initack is only the first line of a PMI_PORT client, "
                            "naming its PMI_ID")
    e._acked = True
    size, rank, app = e.store.size, e.rank, e.store.appnum(e.rank)
    e._out.append(pmi1.encode("initack", ("rc", 0), ("rank", rank), ("size", size),
                              ("appnum", app), ("debug", 0))
                  + b"cmd=set size=%d\ncmd=set rank=%d\ncmd=set debug=0\n" % (size, rank))
    if e._p1 is not None and not e._p1.pending and not e._queue:
        # What the client speaks from here on is told by its next bytes, as on an
        # inherited socket (PMI-1's init, PMI-2's, or pmrun's native client).
        e.protocol, e._p1 = Wire.UNKNOWN, None


# ------------------------------------------------------------------ a request's fields
def _need(c: pmi1.Pmi1Command, key: str) -> str:
    try:
        return c.args[key]
    except KeyError:
        raise ProtocolError(f"{c.cmd} without {key}=") from None


def _enc(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _dec(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ProtocolError(f"{what}={text!r} is not an integer") from None


def _clamp(code: int) -> int:
    """An abort code that fits the tree's 64-bit integers (the head maps it to a status)."""
    return max(-(1 << 63), min(code, (1 << 63) - 1))


_MAXES = pmi1.encode("maxes", ("rc", 0), ("kvsname_max", pmi1.KVSNAME_MAX),
                     ("keylen_max", pmi1.KEYLEN_MAX), ("vallen_max", pmi1.VALLEN_MAX))

#: PMI-1 request command -> handler.
_PMI1: dict[str, Callable[[PmiEngine, pmi1.Pmi1Command], None]] = {
    "get": _get1,
    "put": _put1,
    "barrier_in": _barrier1,
    "init": _init1,
    "get_maxes": _maxes1,
    "get_appnum": _appnum1,
    "get_my_kvsname": _kvsname1,
    "get_universe_size": _universe1,
    "finalize": _finalize1,
    "abort": _abort1,
    "publish_name": _names1,
    "unpublish_name": _names1,
    "lookup_name": _names1,
    "spawn": _spawn1,
    "initack": _initack1,
}

