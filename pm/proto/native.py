"""pmrun's native rank protocol (used by pm.client) on the rank's PMI_FD.

The client opens with :data:`MAGIC` (it can be neither a PMI-1 ``cmd=`` line
nor a PMI-2 length field), then both sides exchange frames: a 4-byte
big-endian length and a msgpack array.  Requests are
``[req_id, op, *args]``; replies are ``[req_id, ok, result]`` where ``result``
is the error message when ``ok`` is false.  Several requests may be in
flight; replies can come in any order.  Keys and values are raw bytes.

Keys a rank puts are scoped by its rank in the node KVS (:func:`rank_key`),
so a get names the rank whose value it wants.  An allgather's reply is either
the list of values indexed by rank or ``["shm", epoch]``: the values are then
in the node's shared-memory KVS under :func:`allgather_key` (one copy per node
instead of one per rank).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
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
ALLGATHER = "allgather"  # (value) -> list[value] | ["shm", epoch] when the values are in shm
RING = "ring"            # (value) -> [left, right]
FINALIZE = "finalize"    # () -> None
ABORT = "abort"          # (code, message) -> never answered
RESERVE = "reserve"      # (nbytes) -> reservation id, once admitted
RELEASE = "release"      # (reservation id) -> None
SPAWN = "spawn"          # ([[argv, n, info], ...], preput) -> {job, kvsname, ok, error, errcodes}

#: Limits a client can check before sending.
MAX_KEY = 1024
MAX_VALUE = 64 << 20


#: First element of an allgather reply whose values are in shared memory.
SHM_REPLY = "shm"


def rank_key(rank: int, key: bytes) -> bytes:
    """The node-KVS key of ``key`` put by ``rank`` through this protocol.

    It starts with NUL, which no PMI-1/PMI-2 key contains, so the native
    namespace cannot clash with MPI's keys.
    """
    return b"\0%d\0%s" % (rank, key)


def allgather_key(epoch: int, rank: int) -> bytes:
    """The shared-memory key of ``rank``'s value in allgather ``epoch``.

    ``a`` is not a digit, so it never equals a :func:`rank_key`.
    """
    return b"\0ag%d\0%d" % (epoch, rank)


def pack(obj: Any) -> bytes:
    """One frame: 4-byte big-endian length, then the msgpack body."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


def frame_packer() -> Callable[[Any], bytes]:
    """A faster :func:`pack` (one msgpack Packer kept) for one thread's use only."""
    packb = msgpack.Packer(use_bin_type=True).pack
    length = _LEN.pack

    def pack(obj: Any) -> bytes:
        body: bytes = packb(obj)
        return length(len(body)) + body

    return pack


class FrameDecoder:
    """Incremental decoder of length-prefixed msgpack frames.

    :meth:`feed` returns every frame completed by the new bytes; a frame over
    :data:`MAX_FRAME` or an undecodable body raises :class:`ProtocolError`.
    """

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def idle(self) -> bool:
        """Nothing buffered: the next bytes start a frame."""
        return not self._buf

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        if not buf and len(data) >= 4 and _LEN.unpack_from(data)[0] + 4 == len(data):
            # Exactly one frame, the common case: no copy into the buffer.
            try:
                return [msgpack.unpackb(data[4:], raw=False)]
            except Exception as exc:
                raise ProtocolError(f"undecodable native frame: {exc}") from exc
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
