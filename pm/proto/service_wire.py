"""Messages between a head and a persistent ``pm-agent serve`` service (msgpack, sans-IO).

They travel over a ZeroMQ DEALER/ROUTER pair secured with CURVE (the service
knows the public keys of the clients it serves), so they carry no MAC of
their own.  Each is a msgpack map with a string ``op``:

head -> service
    ``start`` ``{cfg, listen}``: start the agent of one vertex of a job.
    ``cfg`` is the vertex's agent config (``pm.bootstrap.base.AgentConfig``);
    with ``listen`` the agent opens its port for its children first and the
    service answers with its address.
    ``end`` ``{job}``: the job is over; close what is left of its agents.

service -> head
    ``started`` ``{job, vertex, address}`` (address ``""`` for a leaf),
    ``failed`` ``{job, vertex, why}``, ``exited`` ``{job, vertex, code, signal}``
    (an agent ended: the head names the node if that was early), and
    ``error`` ``{why}`` for a request that could not be read.
"""

from __future__ import annotations

import re
from typing import Any

import msgpack

from pm.proto.errors import ProtocolError

#: A job id as the head makes them (and nothing that could reach a path or a shell).
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SECRET = re.compile(r"^[0-9a-f]{32,128}$")

#: The AgentConfig fields a start request must carry, with their types.
_CFG_FIELDS: dict[str, type | tuple[type, ...]] = {
    "vertex": int, "parent": str, "secret": str, "job_id": str, "host": str,
    "log_level": int, "heartbeat": (int, float),
}


def encode(op: str, **fields: Any) -> bytes:
    return msgpack.packb({"op": op, **fields}, use_bin_type=True)  # type: ignore[no-any-return]


def decode(data: bytes) -> dict[str, Any]:
    """Any service message as a dict with a string ``op``; :class:`ProtocolError` if not."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"undecodable service message: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise ProtocolError("service message is not a map with an op")
    return obj


def check_start(msg: dict[str, Any]) -> dict[str, Any]:
    """The agent config of a ``start`` request, checked field by field (pure)."""
    cfg = msg.get("cfg")
    if not isinstance(cfg, dict):
        raise ProtocolError("start request without a cfg map")
    out: dict[str, Any] = {}
    for name, kind in _CFG_FIELDS.items():
        value = cfg.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError(f"start request: bad or missing cfg field {name!r}")
        out[name] = value
    if out["vertex"] < 0:
        raise ProtocolError("start request: negative vertex")
    if not _JOB_ID.match(out["job_id"]):
        raise ProtocolError("start request: bad job id")
    if not _SECRET.match(out["secret"]):
        raise ProtocolError("start request: the job secret is not hex")
    if not out["parent"].startswith("tcp://") or len(out["parent"]) > 256:
        raise ProtocolError("start request: the parent is not a tcp:// address")
    if len(out["host"]) > 255:
        raise ProtocolError("start request: host name too long")
    out["listen"] = bool(msg.get("listen", False))
    return out


def check_job(msg: dict[str, Any]) -> str:
    job = msg.get("job")
    if not isinstance(job, str) or not _JOB_ID.match(job):
        raise ProtocolError(f"{msg.get('op')} request: bad job id")
    return job
