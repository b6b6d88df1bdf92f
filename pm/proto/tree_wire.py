"""Messages between the head and the node agents (msgpack, sans-IO).

Every message is a typed record (:mod:`pm.proto.record`) with a small integer
``op``; on the wire it is the msgpack array ``[op, field1, field2, ...]``, and the
records it holds (the job plan, output and exit items) their own arrays.  A child's
:class:`Hello` carries its :data:`PROTOCOL_VERSION`; its parent refuses another one,
naming both.  Nothing else in pmrun builds the frames that carry them but
:mod:`pm.proto.tree_frames`, which seals the payload made here (:func:`encode`,
:func:`decode`) with the job's secret and stamps it for its link.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, TypeVar

import msgpack

from pm.proto.errors import ProtocolError
from pm.proto.plan import JobPlan
from pm.proto.record import Message, pack_default

#: 2: frames are [envelope, body]; 3: typed records (plans, items); 4: BLAKE2b MACs;
#: 5: exits and aborts carry the time their agent learned of them; 6: Started says whether
#: a spawned job's ranks need their spawner; 7: plans carry --rank-by and a rankfile's
#: placement and slots; 9: Kill may ask for a report of the ranks' state first (Report);
#: 10: plans carry --gpus-per-task; 11: and --mem-bind; 12: and PMI job attributes;
#: 13: and the programs --bcast copies to the nodes, --pty (and Winsize), and the umask;
#: 14: and -pmi-port; 15: and the binding's option as the user gave it; 16: output comes as
#: the ranks wrote it (no newline added: RankOutput); 17: StepSignal
PROTOCOL_VERSION = 17


class Msg(Message):
    """Base of all tree messages: fields are the class's annotations, in order
    (:class:`pm.proto.record.Record`); on the wire ``[op, *fields]``."""

    _by_op: ClassVar[dict[int, type[Message]]] = {}


class RankOutput(NamedTuple):
    """Bytes of one rank's stream (1 stdout, 2 stderr) as it wrote them: complete lines, a
    piece of a line longer than ``pm.common.output.MAX_LINE``, or its last line without
    newline; empty: the stream ended inside a line (that line goes on no more).

    A tuple (an item of :class:`Output`, sent by the thousand): msgpack packs it as the
    array it is, and reading one back is a single tuple.
    """

    rank: int
    stream: int
    data: bytes

    @classmethod
    def from_wire(cls, values: Any) -> RankOutput:
        return _rows(cls, [values])[0]

    @classmethod
    def many(cls, values: list[Any]) -> list[RankOutput]:
        return _rows(cls, values)


class RankExit(NamedTuple):
    """A rank that ended (an item of :class:`Exits`): ``code`` its exit status (or -1),
    ``signal`` the killing signal (or 0), ``reason`` empty for an ordinary exit, else what
    went wrong first ("exited before PMI finalize", "spawn failed: ..."); ``at`` when its
    agent learned of the end (``time.time()`` on its node; 0 if unknown)."""

    rank: int
    vertex: int
    code: int
    signal: int
    reason: str
    at: float = 0.0

    @classmethod
    def from_wire(cls, values: Any) -> RankExit:
        return _rows(cls, [values])[0]

    @classmethod
    def many(cls, values: list[Any]) -> list[RankExit]:
        return _rows(cls, values)


_Row = TypeVar("_Row", RankOutput, RankExit)


def _rows(cls: type[_Row], values: list[Any]) -> list[_Row]:
    # One pass of tuple.__new__, checked after: Output is read for every line a job writes.
    new = tuple.__new__
    n = len(cls._fields)
    if all(type(v) is list and len(v) == n for v in values):
        return [new(cls, v) for v in values]
    if all(type(v) is cls for v in values):  # handed over in process, not decoded
        return values
    bad = next(v for v in values if type(v) is not list or len(v) != n)
    raise ProtocolError(f"bad fields for {cls.__name__}: {bad!r:.60}")


class Hello(Msg, op=1):
    """First message of an agent on its link to its parent.

    Its first four fields never change: they are how agents of different versions
    meet, and the parent refuses a child whose ``version`` is not its own
    (:data:`PROTOCOL_VERSION`), naming both.  Fields a later version adds go after
    them and are ignored here (``_open``).
    """

    _open = True

    vertex: int
    host: str
    pid: int
    version: int = PROTOCOL_VERSION


class Launch(Msg, op=2):
    """The job plan: start your subtree and your ranks."""

    _nested = {"plan": JobPlan}

    plan: JobPlan


class Started(Msg, op=3):
    """A whole subtree has spawned its ranks (``ranks`` of them, on ``vertices`` agents).

    A spawned job's vertex whose spawner waits for its children to need it
    (:mod:`pm.agent.spawn_answer`) says ``needed`` False once its ranks initialized
    PMI, then again with True once they need it."""

    vertex: int
    vertices: int
    ranks: int
    timeline: list[Any]
    needed: bool = True


class CollIn(Msg, op=4):
    """A subtree's contribution to collective ``epoch`` (one per agent per collective)."""

    epoch: int
    kind: int
    data: Any


class CollOut(Msg, op=5):
    """The result of collective ``epoch``, sent down once per agent."""

    epoch: int
    kind: int
    data: Any


class Output(Msg, op=6):
    """Output of ranks, in the order it was read."""

    _nested = {"items": [RankOutput]}

    items: list[RankOutput]


class Stdin(Msg, op=7):
    """Bytes of the launcher's stdin for the rank that reads it, routed to vertex ``dst``
    (-1, ``pm.proto.plan.STDIN_ALL``: to every vertex, for all their ranks); ``eof``
    closes it."""

    dst: int
    data: bytes
    eof: bool


class StdinAck(Msg, op=8):
    """The ranks that read stdin took ``nbytes`` more (with ``--stdin all``: every one
    below the sender): the head may send that much again."""

    nbytes: int


class OutputAck(Msg, op=31):
    """The head wrote ``nbytes`` more of vertex ``dst``'s output: its agent may send that
    much again (output credit, routed down the tree; see :func:`pm.common.output.output_window`)."""

    dst: int
    nbytes: int


class OutputGone(Msg, op=32):
    """Nobody reads the head's ``stream`` (1 stdout, 2 stderr) any more: every agent closes
    its ends of the ranks' pipes of that stream, so their writes fail instead of waiting."""

    stream: int


class Exits(Msg, op=9):
    """Ranks that ended."""

    _nested = {"items": [RankExit]}

    items: list[RankExit]


class Abort(Msg, op=10):
    """A rank asked to abort the job (PMI abort / MPI_Abort); ``at`` when its agent got
    the request (``time.time()`` on its node)."""

    rank: int
    vertex: int
    code: int
    message: str
    at: float = 0.0


class Signal(Msg, op=11):
    """Deliver signal ``signum`` to every rank."""

    signum: int


class Kill(Msg, op=12):
    """End the job now: SIGTERM, grace, SIGKILL every rank; ``reason`` is logged.  With
    ``report`` (:data:`REPORT_STATE`, :data:`REPORT_STACKS`) each agent first says how its
    ranks still running stand (:class:`Report`), and then kills them."""

    reason: str
    grace: float
    report: int = 0


class Done(Msg, op=13):
    """Every rank of the subtree rooted at ``vertex`` has ended and been reported."""

    vertex: int
    stats: dict[str, Any]


class GetReq(Msg, op=14):
    """Direct get: ask vertex ``dst`` for the value ``rank`` put under ``key``."""

    req: int
    origin: int
    dst: int
    key: bytes
    rank: int
    #: Fences the asker had entered (at least 1): see :mod:`pm.agent.kvs`.
    threshold: int = 1


class GetResp(Msg, op=15):
    """Answer to :class:`GetReq`: ``found`` False means the rank will never put it."""

    req: int
    dst: int
    found: bool
    value: bytes


class NameReq(Msg, op=16):
    """publish / unpublish / lookup of a service name (served by the root)."""

    req: int
    origin: int
    action: str
    service: str
    port: str


class NameResp(Msg, op=17):
    req: int
    dst: int
    ok: bool
    port: str


class Heartbeat(Msg, op=18):
    vertex: int


class Shutdown(Msg, op=19):
    """The job is over: clean up and exit."""

    reason: str


class AgentError(Msg, op=20):
    """Something an agent could not do (bootstrap a child, bind, ...): fatal for the job."""

    vertex: int
    host: str
    text: str


class AgentGone(Msg, op=21):
    """An agent below reports that its child ``vertex`` (on ``host``) was lost."""

    vertex: int
    host: str
    text: str


class Sub(Msg, op=22):
    """Message ``msg`` (``[op, *fields]`` of a tree message) of spawned job ``job``.

    A spawned job runs on the agents of the job that spawned it, over the same
    links: its agents' messages travel wrapped in this, so each end hands them
    to that job's own agent (:mod:`pm.agent.spawned_jobs`) or, at the head, to
    its record (:mod:`pm.spawned_jobs`).
    """

    job: int
    msg: list[Any]


class SpawnReq(Msg, op=23):
    """Rank ``rank`` (on vertex ``origin``) asks for a new job: ``request`` is
    :class:`pm.proto.spawn.SpawnRequest` as ``[[argv, n, info], ...], preput, after_init``."""

    req: int
    origin: int
    rank: int
    commands: list[Any]
    preput: dict[str, str]
    after_init: bool = False


class Gone(Msg, op=34):
    """Rank ``rank`` of ``vertex`` ended (``how``; status ``code``) without finalizing, having
    joined the collectives of each kind below ``joined[kind]``: told to vertex 0, which
    sees every collective of the job (:class:`Stuck`)."""

    vertex: int
    rank: int
    how: str
    code: int
    joined: list[int]


class Stuck(Msg, op=33):
    """A collective of the job's ranks can never complete: rank ``rank`` ended (``how``)
    without joining ``epoch`` of ``kind``, in which rank ``waiting`` waits (-1: ranks of
    other nodes); ``kind`` 0: it ended before PMI init, which ``waiting`` called.  Fatal
    for the job: the head names it."""

    vertex: int
    rank: int
    how: str
    code: int
    kind: int
    epoch: int
    waiting: int


#: What an agent says of its ranks before a Kill ends them: their state (PMI), and their stacks.
REPORT_STATE = 1
REPORT_STACKS = 2


class Report(Msg, op=35):
    """Lines about the ranks of ``vertex`` that a Kill with ``report`` found running, said
    before they are killed (``--report-state-on-timeout``, ``--get-stack-traces``)."""

    vertex: int
    lines: list[str]


class StepSignal(Msg, op=37):
    """Slurm sent the agents' step ``signum`` (SIGTERM: its end of the job, most likely):
    ``vertex``'s agent had it first in its subtree (one comes up from a subtree for one of
    Slurm's ends), and passes it to its ranks (pm.agent.step_signals); the head asks why."""

    vertex: int
    signum: int


class Winsize(Msg, op=36):
    """srun's --pty: pmrun's terminal is now ``rows`` x ``cols``; routed to vertex ``dst``,
    whose rank on a pseudo-terminal gets that size (and SIGWINCH)."""

    dst: int
    rows: int
    cols: int


class SpawnLaunch(Msg, op=24):
    """Start spawned job ``job`` (its plan) on the vertices its ``placement`` names and
    their ancestors."""

    _nested = {"plan": JobPlan}

    job: int
    plan: JobPlan


class SpawnResp(Msg, op=25):
    """Answer to :class:`SpawnReq`, routed to vertex ``dst``: the children are started
    (``ok``, their ``job`` and ``kvsname``) or could not be (``error``, ``errcodes``)."""

    req: int
    dst: int
    ok: bool
    job: int
    kvsname: str
    error: str
    errcodes: list[int]


def wrap(job: int, msg: Msg) -> Sub:
    """``msg`` as a message of spawned job ``job``."""
    return Sub(job, [msg.op, *msg.fields()])


def unwrap(sub: Sub) -> Msg:
    """The message a :class:`Sub` carries; ProtocolError if it is not one."""
    inner = sub.msg
    if isinstance(inner, list) and inner and inner[0] == Sub.op:
        raise ProtocolError("a wrapped tree message wraps another")
    msg = Msg.decode_list(inner, "wrapped tree message")
    assert isinstance(msg, Msg)
    return msg


def encode(msg: Msg) -> bytes:
    # Plans inside a message go through the default hook; output and exit items are
    # tuples, which msgpack packs as they are.
    return msgpack.packb([msg.op, *msg.fields()], use_bin_type=True,  # type: ignore[no-any-return]
                         default=pack_default)


def decode(data: bytes | memoryview) -> Msg:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable tree message: {exc}") from exc
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], int):
        raise ProtocolError("tree message is not [op, ...]")
    cls = Msg._by_op.get(obj[0])
    if cls is None:
        raise ProtocolError(f"unknown tree op {obj[0]}")
    if cls._nested or cls._open:
        msg: Msg = cls.from_wire(obj[1:])
        return msg
    try:  # the common case, kept short: collectives and gets are hot
        return cls(*obj[1:])  # type: ignore[return-value]
    except TypeError as exc:
        raise ProtocolError(f"bad fields for {cls.__name__}: {exc}") from exc


# Collective kinds (CollIn/CollOut.kind).
FENCE = 1
BARRIER = 2
ALLGATHER = 3
RING = 4
