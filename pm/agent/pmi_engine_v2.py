"""The PMI-2 commands of :class:`pm.agent.pmi_engine.PmiEngine`.

Loaded when a rank first speaks PMI-2 (a length-framed request, or a PMI-1
``init`` with ``pmi_version=2``).  Each handler adds its reply to the
engine's output or starts a call, as the PMI-1 handlers do.
"""

from __future__ import annotations

from pm.agent.pmi_actions import FENCE, RING, Collective, NameService, NodeAttrGet, Phase, Spawn
from pm.agent.pmi_engine_v1 import _clamp, _dec, _enc, _int
from pm.proto import pmi2
from pm.proto.errors import PMError, ProtocolError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pm.agent.pmi_actions import Call
    from pm.agent.pmi_engine import PmiEngine, _Finish

#: The reply to PMI-1 ``init pmi_version=2``.
INIT_RESPONSE = pmi2.encode_init_response()


def serve(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    """One request, in its turn: answered, or a call started."""
    handler = _PMI2.get(c.cmd)
    try:
        if handler is None:
            raise ProtocolError(f"unknown PMI-2 command {c.cmd!r}")
        handler(e, c)
    except PMError as exc:
        e._bad(str(exc))
        e._out.append(pmi2.response(c, [("errmsg", str(exc))], rc=1))


def _wait(e: PmiEngine, call: Call, c: pmi2.Pmi2Command, finish: _Finish) -> None:
    """A request that waits: the ones behind it wait too."""
    def on_error(exc: BaseException) -> bytes:
        e._failed(str(exc), exc)
        return pmi2.response(c, [("errmsg", str(exc))], rc=1)

    e._busy = True
    e._call(call, finish, on_error)


def _fullinit2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    e._enter(Phase.INITIALIZED)
    e._event("init")
    store = e.store
    # A spawned job's ranks learn they have a parent from spawner-jobid.
    spawner = store.job_attr("spawner-jobid")
    e._out.append(pmi2.response(c, [
        ("pmi-version", "2"), ("pmi-subversion", "0"), ("rank", str(e.rank)),
        ("size", str(store.size)), ("appnum", str(store.appnum(e.rank))),
        *([("spawner-jobid", spawner)] if spawner else []),
        ("debugged", "FALSE"), ("pmiverbose", "FALSE")]))


def _jobid2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    e._out.append(pmi2.response(c, [("jobid", e.store.kvsname)]))


def _put2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    e.store.put(e.rank, _enc(c.require("key")), _enc(c.require("value")))
    e._out.append(pmi2.response(c))


def _fence2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    # Slurm's semantics: the reply waits for the whole job, so MPICH's
    # fence + get(-NONEXIST-KEY) barrier holds.
    _wait(e, Collective(e._token(), FENCE, None), c, lambda _r: pmi2.response(c))


def _get2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    jobid = c.get("jobid")
    if jobid and jobid != e.store.kvsname:
        raise ProtocolError(f"jobid {jobid!r} is not this job's ({e.store.kvsname})")
    raw = e.store.get_now(_enc(c.require("key")))
    if raw is None:
        e._out.append(pmi2.response(c, [("found", "FALSE")]))
    else:
        e._out.append(pmi2.response(c, [("found", "TRUE"), ("value", _dec(raw))]))


def _jobattr2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    value = e.store.job_attr(c.require("key"))
    if value is None:
        e._out.append(pmi2.response(c, [("found", "FALSE")]))
    else:
        e._out.append(pmi2.response(c, [("found", "TRUE"), ("value", value)]))


def _putnode2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    e.store.node_attr_put(c.require("key"), c.require("value"))
    e._out.append(pmi2.response(c))


def _getnode2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    wait = c.flag("wait")

    def finish(value: Any) -> bytes:
        if value is None:
            return pmi2.response(c, [("found", "FALSE")])
        return pmi2.response(c, [("found", "TRUE"), ("value", value)])

    _wait(e, NodeAttrGet(e._token(), c.require("key"), wait), c, finish)


def _ring2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    value = c.require("ring-left")  # MPICH/Slurm send the same value left and right

    def finish(result: Any) -> bytes:
        left, right = result
        return pmi2.response(c, [("ring-count", str(e.rank)), ("ring-left", _dec(left)),
                                 ("ring-right", _dec(right))])

    _wait(e, Collective(e._token(), RING, _enc(value)), c, finish)


def _finalize2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    e._enter(Phase.FINALIZED)
    e._event("finalize")
    e._out.append(pmi2.response(c))


def _abort2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    code = _clamp(_int(c.get("exitcode", "1") or "1", "exitcode"))
    e._event("abort", (code, c.get("message") or c.get("msg") or ""))


def _names2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    action = c.cmd.split("-")[1]

    def finish(result: Any) -> bytes:
        ok, got = result
        # libpmi2 reads the port from value=, MPICH from port=.
        pairs = [("port", got), ("value", got)] if ok and action == "lookup" else []
        return pmi2.response(c, pairs, rc=0 if ok else 1)

    _wait(e, NameService(e._token(), action, c.require("name"),
                            c.get("port", "") or ""), c, finish)


def _spawn2(e: PmiEngine, c: pmi2.Pmi2Command) -> None:
    from pm.proto import spawn

    _wait(e, Spawn(e._token(), spawn.parse_pmi2(c)), c,
          lambda result: spawn.reply_pmi2(c, result))


#: Request command -> handler.
_PMI2: dict[str, Callable[[PmiEngine, pmi2.Pmi2Command], None]] = {
    "kvs-get": _get2,
    "kvs-put": _put2,
    "kvs-fence": _fence2,
    "info-getjobattr": _jobattr2,
    "info-putnodeattr": _putnode2,
    "info-getnodeattr": _getnode2,
    "fullinit": _fullinit2,
    "job-getid": _jobid2,
    "ring": _ring2,
    "finalize": _finalize2,
    "abort": _abort2,
    "name-publish": _names2,
    "name-unpublish": _names2,
    "name-lookup": _names2,
    "spawn": _spawn2,
}
