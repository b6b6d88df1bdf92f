"""pmrun's native rank protocol (used by pm.client) on the rank's PMI_FD.

The client opens with :data:`MAGIC` (it can be neither a PMI-1 ``cmd=`` line
nor a PMI-2 length field), then both sides exchange frames: a 4-byte
big-endian length and a msgpack array.  Requests are
``[req_id, op, *args]``; replies are ``[req_id, ok, result]`` where ``result``
is the error message when ``ok`` is false.  Several requests may be in
flight; replies can come in any order.  Keys and values are raw bytes.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from pm.proto.errors import ProtocolError

MAGIC = b"\0PMN"
MAX_FRAME = 256 << 20
_LEN = struct.Struct(">I")

# Request ops.
INIT = "init"            # () -> info dict
PUT = "put"              # (key, value) -> None
GET = "get"              # (key, rank | None) -> value | None (None: not found)
FENCE = "fence"          # () -> None
BARRIER = "barrier"      # () -> None
ALLGATHER = "allgather"  # (value) -> list[value] | {"shm": epoch} when the values are in shm
RING = "ring"            # (value) -> [left, right]
FINALIZE = "finalize"    # () -> None
ABORT = "abort"          # (code, message) -> never answered
RESERVE = "reserve"      # (nbytes) -> reservation id, once admitted
RELEASE = "release"      # (reservation id) -> None

#: Limits a client can check before sending.
MAX_KEY = 1024
MAX_VALUE = 64 << 20


def pack(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder of length-prefixed msgpack frames."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out: list[Any] = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = _LEN.unpack_from(buf, pos)
            if n > MAX_FRAME:
                raise ProtocolError(f"native frame of {n} bytes exceeds {MAX_FRAME}")
            if len(buf) - pos - 4 < n:
                break
            try:
                out.append(msgpack.unpackb(buf[pos + 4 : pos + 4 + n], raw=False))
            except Exception as exc:
                raise ProtocolError(f"undecodable native frame: {exc}") from exc
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


def allgather_key(epoch: int, rank: int) -> bytes:
    """Where the agent keeps rank ``rank``'s value of allgather ``epoch`` in the node's shm KVS."""
    return b"\0ag%d\0%d" % (epoch, rank)
