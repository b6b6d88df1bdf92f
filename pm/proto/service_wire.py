"""Messages between a head and a persistent ``pm-agent serve`` service (msgpack, sans-IO).

They travel over a ZeroMQ DEALER/ROUTER pair secured with CURVE (the service
knows the public keys of the clients it serves), so they carry no MAC of
their own.  Each is a typed message (:class:`pm.proto.record.Message`), on the
wire ``[op, *fields]`` as the tree's are:

head -> service
    :class:`Start`: start the agent of one vertex of a job (its
    :class:`~pm.proto.plan.AgentConfig`); with ``listen`` the agent opens its
    port for its children first and the service answers with its address.
    :class:`End`: the job is over; close what is left of its agents.

service -> head
    :class:`Started` (address ``""`` for a leaf), :class:`Failed`,
    :class:`Exited` (an agent ended: the head names the node if that was
    early), and :class:`Error` for a request that could not be read.
"""

from __future__ import annotations

import re
from typing import ClassVar

import msgpack

from pm.proto.errors import ProtocolError
from pm.proto.plan import AgentConfig
from pm.proto.record import Message, packb

#: A job id as the head makes them (and nothing that could reach a path or a shell).
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SECRET = re.compile(r"^[0-9a-f]{32,128}$")

class ServiceMsg(Message):
    """Base of the service's messages."""

    _by_op: ClassVar[dict[int, type[Message]]] = {}


class Start(ServiceMsg, op=1):
    _nested = {"cfg": AgentConfig}

    cfg: AgentConfig
    listen: bool


class End(ServiceMsg, op=2):
    job: str


class Started(ServiceMsg, op=3):
    job: str
    vertex: int
    address: str


class Failed(ServiceMsg, op=4):
    job: str
    vertex: int
    why: str


class Exited(ServiceMsg, op=5):
    job: str
    vertex: int
    code: int
    signal: int


class Error(ServiceMsg, op=6):
    why: str


def encode(msg: ServiceMsg) -> bytes:
    return packb(msg.to_wire())


def decode(data: bytes) -> ServiceMsg:
    """Any service message; :class:`ProtocolError` if it is none (or a start request's
    config or an end request's job id is not one a head makes)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        why = str(exc) or ("nested too deeply" if type(exc).__name__ == "StackError"
                           else type(exc).__name__)
        raise ProtocolError(f"undecodable service message: {why}") from exc
    msg = ServiceMsg.decode_list(obj, "service message")
    assert isinstance(msg, ServiceMsg)
    if isinstance(msg, Start):
        check_start(msg.cfg)
        msg.listen = bool(msg.listen)
    elif isinstance(msg, End | Started | Failed | Exited) and not (
            isinstance(msg.job, str) and _JOB_ID.match(msg.job)):
        raise ProtocolError(f"{type(msg).__name__.lower()} message: bad job id")
    return msg


def check_start(cfg: AgentConfig) -> None:
    """What a service takes from the network before it starts an agent (pure)."""
    if cfg.vertex < 0:
        raise ProtocolError("start request: negative vertex")
    if not _JOB_ID.match(cfg.job_id):
        raise ProtocolError("start request: bad job id")
    if not _SECRET.match(cfg.secret):
        raise ProtocolError("start request: the job secret is not hex")
    if not cfg.parent.startswith("tcp://") or len(cfg.parent) > 256:
        raise ProtocolError("start request: the parent is not a tcp:// address")
    if len(cfg.host) > 255:
        raise ProtocolError("start request: host name too long")
