"""What the async client and the blocking facade share: environment, requests, replies.

Pure helpers, no I/O except opening the shared-memory reader: turning the
caller's arguments into native requests (:mod:`pm.proto.native`) and the
agent's replies into results or exceptions.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pm.client.shmkvs import ShmKVSReader
from pm.proto import native
from pm.proto.errors import KeyNotFound, PMError, ProtocolError

__all__ = ["Info", "RequestFailed", "Session", "Spawned", "env_fd", "spawn_args"]

#: Anything a key or value may be given as.
Data = str | bytes | bytearray | memoryview


class RequestFailed(PMError):
    """The node agent refused a request; the message says why (it logged the same)."""


@dataclass(frozen=True, slots=True)
class Info:
    """Who this rank is, as the agent told it at init."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    appnum: int
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Spawned:
    """A job this rank spawned: its number (``[job:rank]`` in pmrun's labels), kvsname
    and ranks (0..n-1 of its own world)."""

    job: int
    kvsname: str
    ranks: range


def spawn_args(argv: Any, n: int, env: Any = None, wdir: str | None = None,
               hosts: Any = None, preput: Any = None) -> tuple[list[Any], dict[str, str]]:
    """The native request of a spawn of ``argv`` on ``n`` ranks (``env``: extra variables,
    ``hosts``: the host names it may use, ``preput``: keys in its KVS from the start)."""
    args = [str(a) for a in ([argv] if isinstance(argv, str) else argv)]
    info: dict[str, str] = {}
    if env:
        info["env"] = " ".join(f"{k}={v}" for k, v in dict(env).items())
    if wdir:
        info["wdir"] = str(wdir)
    if hosts:
        info["hosts"] = hosts if isinstance(hosts, str) else ",".join(hosts)
    return [[args, int(n), info]], {str(k): str(v) for k, v in dict(preput or {}).items()}


def spawned(reply: Any) -> Spawned:
    """A spawn's reply as :class:`Spawned`; RequestFailed if the children did not start."""
    if not isinstance(reply, dict) or not reply.get("ok"):
        why = reply.get("error") if isinstance(reply, dict) else repr(reply)
        raise RequestFailed(f"spawn failed: {why}")
    return Spawned(int(reply["job"]), str(reply["kvsname"]), range(len(reply["errcodes"])))


#: The ``$PMI_FD`` a client of this process took (its first connect).
_TAKEN: list[int] = []


def env_fd(fd: int | None) -> int:
    """The fd to talk to the agent on: ``fd``, ``$PMI_FD``, or a connection to ``$PMI_PORT``
    as rank ``$PMI_ID`` (pmrun's ``-pmi-port``); PMError if none, or if a client of this
    process took ``$PMI_FD`` already (a second one there would wait for ever: the agent
    reads its bytes as the first one's)."""
    if fd is not None:
        return fd
    text = os.environ.get("PMI_FD")
    if text is None and os.environ.get("PMI_PORT"):
        return _port_fd(os.environ["PMI_PORT"], os.environ.get("PMI_ID", ""))
    if text is None:
        raise PMError("PMI_FD is not set: this process was not started by pmrun")
    try:
        number = int(text)
    except ValueError:
        raise PMError(f"PMI_FD={text!r} is not a file descriptor number") from None
    if number in _TAKEN:
        raise PMError(f"this process connected to its node agent already (PMI_FD={number}): "
                      "a rank has one connection, use the client it opened")
    _TAKEN.append(number)
    return number


def _port_fd(address: str, rank: str) -> int:
    """A connection to the agent's PMI port (``HOST:PORT``) as rank ``rank``, introduced
    as a PMI-1 client is (``cmd=initack``): its fd, ours to keep."""
    import socket

    host, _, port = address.rpartition(":")
    if not (port.isascii() and port.isdecimal() and rank.isascii() and rank.isdecimal()):
        raise PMError(f"PMI_PORT={address!r} PMI_ID={rank!r}: not HOST:PORT and a rank")
    try:
        sock = socket.create_connection((host, int(port)), timeout=30)
    except OSError as exc:
        raise PMError(f"cannot reach pmrun's agent at PMI_PORT={address}: {exc}") from None
    try:
        sock.sendall(b"cmd=initack pmiid=%s\n" % rank.encode())
        reply = b""
        while reply.count(b"\n") < 4:  # initack, then size, rank and debug
            more = sock.recv(4096)
            if not more:
                break
            reply += more
    except OSError as exc:
        sock.close()
        raise PMError(f"PMI_PORT={address}: {exc}") from None
    if not reply.startswith(b"cmd=initack rc=0 ") or reply.count(b"\n") != 4:
        sock.close()
        raise PMError(f"PMI_PORT={address}: pmrun's agent did not take rank {rank} "
                      f"({reply[:80]!r})")
    sock.settimeout(None)
    return sock.detach()


def abort_code(code: int) -> int:
    """``code`` as the wire's 64-bit integer (pmrun maps it to an exit status modulo 256)."""
    return max(-(1 << 63), min(int(code), (1 << 63) - 1))


def to_bytes(v: Any) -> Any:
    """str as UTF-8, bytes-likes as bytes; anything else unchanged (the agent judges it)."""
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytearray, memoryview)):
        return bytes(v)
    return v


def check_info(info: Any) -> Info:
    """The init reply as :class:`Info`, checked against ``PMI_RANK``/``PMI_SIZE`` if set."""
    if not isinstance(info, dict):
        raise ProtocolError(f"init reply is not a dict: {info!r}")
    try:
        got = Info(int(info["rank"]), int(info["size"]), int(info["local_rank"]),
                   int(info["local_size"]), int(info["appnum"]), info)
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"init reply lacks a field: {exc}") from exc
    for var, value in (("PMI_RANK", got.rank), ("PMI_SIZE", got.size)):
        text = os.environ.get(var)
        if text is not None and text.strip() != str(value):
            raise ProtocolError(f"the agent says {var.lower()[4:]} {value}, {var} says {text}")
    return got


class Identity:
    """Who the rank is, once connected: the part both clients share."""

    _info: Info | None = None

    @property
    def rank(self) -> int:
        return self._me.rank

    @property
    def size(self) -> int:
        return self._me.size

    @property
    def local_rank(self) -> int:
        return self._me.local_rank

    @property
    def local_size(self) -> int:
        return self._me.local_size

    @property
    def appnum(self) -> int:
        return self._me.appnum

    @property
    def info(self) -> dict[str, Any]:
        return dict(self._me.raw)

    @property
    def _me(self) -> Info:
        if self._info is None:
            raise PMError("not connected")
        return self._info


class Session:
    """Request ids, the shared-memory view and reply decoding for one connection."""

    def __init__(self) -> None:
        self._next = 0
        self._pack = native.frame_packer()  # one msgpack Packer: a client is one thread's
        self.info: Info | None = None
        self.shm: ShmKVSReader | None = None
        #: Keys this rank put since its last fence request, then those of each fence
        #: under way (oldest first): the agent has their latest values, shared memory
        #: only once that fence is over.
        self.mine: set[bytes] = set()
        self._fencing: list[set[bytes]] = []

    def blocking_get(self, key: bytes, rank: int | None) -> bytes:
        """The frame of a get whose reply is awaited before anything else is asked: always
        request id 0, which no other request takes (ids count from 1), so asking for the
        same value twice sends the same bytes (the agent answers those from a cache)."""
        try:
            return self._pack([0, native.GET, key, rank])
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"get: arguments cannot be sent: {exc}") from exc

    def request(self, op: str, *args: Any) -> tuple[int, bytes]:
        """A new request id and the frame carrying ``[id, op, *args]``."""
        self._next += 1
        try:
            frame = self._pack([self._next, op, *args])
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"{op}: arguments cannot be sent: {exc}") from exc
        if op == native.PUT:
            self.mine.add(args[0])
        elif op == native.FENCE:
            self._fencing.append(self.mine)
            self.mine = set()
        return self._next, frame

    def fenced(self, result: Any) -> Any:
        """Decoder of a fence reply: the keys it carried are in shared memory now."""
        if self._fencing:
            self._fencing.pop(0)
        return result

    def opened(self, info: Any) -> Info:
        """Take the init reply; open the node's shared-memory KVS if the agent offers one."""
        self.info = check_info(info)
        name = info.get("shm")
        if name:
            try:
                self.shm = ShmKVSReader(str(name))
            except PMError:
                self.shm = None  # the socket serves everything
        return self.info

    def close(self) -> None:
        if self.shm is not None:
            self.shm.close()
            self.shm = None

    # -- per-op reply decoding -------------------------------------------
    @staticmethod
    def result(op: str, ok: Any, result: Any) -> Any:
        if ok is not True:
            raise RequestFailed(f"{op} refused by the node agent: {result}")
        return result

    def shm_get(self, key: Any, rank: int | None) -> bytes | None:
        """A value another rank published, straight from shared memory (None: ask the agent)."""
        if self.shm is None or rank is None or not isinstance(key, bytes) or self.shm.retired:
            return None
        if self.info is not None and rank == self.info.rank and (
                key in self.mine or any(key in keys for keys in self._fencing)):
            return None  # (put again since the last fence: not in shared memory yet)
        try:
            return self.shm.get(native.rank_key(rank, key))
        except PMError:
            return None

    @staticmethod
    def got(key: Any, rank: int | None) -> Callable[[Any], bytes]:
        """Decoder of a get reply: None means nobody put it (and nobody will)."""

        def decode(value: Any) -> bytes:
            if value is None:
                src = "" if rank is None else f" by rank {rank}"
                raise KeyNotFound(f"key {key!r} was not put{src}")
            if not isinstance(value, bytes):
                raise ProtocolError(f"get reply is not bytes: {type(value).__name__}")
            return value

        return decode

    def gathered(self, reply: Any) -> list[bytes]:
        """An allgather reply: the values, or ``["shm", epoch]`` to read them from shm."""
        size = self.info.size if self.info is not None else 0
        if isinstance(reply, list) and len(reply) == 2 and reply[0] == native.SHM_REPLY:
            epoch = reply[1]
            if self.shm is None:
                raise ProtocolError("allgather answered through shared memory, which is not open")
            out: list[bytes] = []
            for r in range(size):
                value = self.shm.get(native.allgather_key(epoch, r))
                if value is None:
                    raise ProtocolError(f"allgather {epoch}: rank {r}'s value is not in shm")
                out.append(value)
            return out
        if not isinstance(reply, list) or len(reply) != size:
            raise ProtocolError(f"allgather reply is not {size} values")
        return reply

    @staticmethod
    def ringed(reply: Any) -> tuple[bytes, bytes]:
        if not isinstance(reply, list) or len(reply) != 2:
            raise ProtocolError(f"ring reply is not [left, right]: {reply!r}")
        return reply[0], reply[1]
