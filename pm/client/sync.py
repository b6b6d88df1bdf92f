"""Blocking facade of :mod:`pm.client.pmi` for code that has no event loop.

::

    from pm.client.sync import connect

    with connect() as pmi:
        pmi.put("addr", my_address)
        req = pmi.iallgather(my_address)   # sent now
        ...                                # other start-up work
        addresses = req.wait()

Same verbs and errors as the async client, on a plain blocking socket.  The
``i`` variants write the request at once and return a :class:`Request`
whose :meth:`Request.wait` reads the reply later; replies to other requests
read meanwhile are kept for their own ``wait``.  Not thread-safe: use one
client from one thread.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar

import msgpack

from pm.client._core import (
    Identity,
    Info,
    RequestFailed,
    Session,
    Spawned,
    abort_code,
    env_fd,
    spawn_args,
    spawned,
    to_bytes,
)
from pm.proto import native
from pm.proto.errors import PMError, ProtocolError, Timeout, TransportError

__all__ = ["Request", "RequestFailed", "SyncPMIClient", "connect"]

T = TypeVar("T")

#: A blocking get's reply, found: [0, true, ...] (msgpack: array of 3, fixint 0, true).
_FOUND = b"\x93\x00\xc3"
#: Blocking gets' frames kept (a rank asks the same few keys of the same ranks again).
_GET_FRAMES = 4096
_unpackb = functools.partial(msgpack.unpackb, raw=False)


class Request(Generic[T]):
    """A request already sent; :meth:`wait` returns its result (or raises its error)."""

    def __init__(self, client: SyncPMIClient, rid: int, op: str,
                 decode: Callable[[Any], T] | None) -> None:
        self._client = client
        self._rid = rid
        self._op = op
        self._decode = decode
        self._result: tuple[bool, Any] | None = None

    def done(self) -> bool:
        """Whether the reply is here (reads what has arrived, never blocks)."""
        if self._result is None:
            self._client._pump(0.0)
            self._take()
        return self._result is not None

    def wait(self, timeout: float | None = None) -> T:
        """Block until the reply comes (:class:`~pm.proto.errors.Timeout` after ``timeout`` s)."""
        if self._result is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._take():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise Timeout(f"{self._op}: no reply within {timeout} s")
                self._client._pump(left)
        assert self._result is not None
        ok, value = self._result
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def _take(self) -> bool:
        if self._result is not None:
            return True
        got = self._client._replies.pop(self._rid, None)
        if got is None:
            return False
        ok, result = got
        try:
            value = Session.result(self._op, ok, result)
            self._result = (True, self._decode(value) if self._decode is not None else value)
        except PMError as exc:
            self._result = (False, exc)
        return True


class SyncPMIClient(Identity):
    """A rank's blocking connection to its node agent (create it with :func:`connect`).

    Same attributes, methods and errors as :class:`pm.client.pmi.PMIClient`,
    without ``await``; ``ifence``/``ibarrier``/``iallgather``/``iring``
    return a :class:`Request`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._session = Session()
        self._decoder = native.FrameDecoder()
        self._replies: dict[int, tuple[Any, Any]] = {}
        self._error: PMError | None = None
        self._finalized = False
        self._info: Info | None = None
        self._closed = False
        #: (key, rank) -> the frame of a blocking get of it (Session.blocking_get).
        self._get_frames: dict[tuple[bytes, int | None], bytes] = {}

    @classmethod
    def open(cls, fd: int | None = None) -> SyncPMIClient:
        """Connect on ``fd`` (default ``$PMI_FD``) and run init."""
        fd = env_fd(fd)
        try:
            sock = socket.socket(fileno=fd)
            os.set_inheritable(fd, False)
            sock.setblocking(True)
        except OSError as exc:
            raise TransportError(f"PMI_FD={fd} is not a socket: {exc}") from exc
        self = cls(sock)
        try:
            self._write(native.MAGIC)
            self._info = self._session.opened(self._call(native.INIT).wait())
        except BaseException:
            self._closed = True
            sock.close()
            raise
        return self

    # -- KVS --------------------------------------------------------------
    def put(self, key: str | bytes, value: str | bytes) -> None:
        """Publish ``value`` under ``key`` for this rank."""
        self._call(native.PUT, to_bytes(key), to_bytes(value)).wait()

    def get(self, key: str | bytes, rank: int | None = None) -> bytes:
        """The value ``rank`` (default: this rank) put under ``key``; see PMIClient.get."""
        src = self.rank if rank is None else rank
        k = key if type(key) is bytes else to_bytes(key)
        session = self._session
        if session.shm is not None:
            value = session.shm_get(k, src)
            if value is not None:
                return value
        # A Request's work, inline: a get is the call a rank makes most (with 32 ranks on
        # a core each Python step of it counts several times over: keep them few).
        if self._error is not None:
            raise self._error
        if self._closed:
            raise TransportError("the connection to the node agent is closed")
        frames = self._get_frames
        frame = frames.get((k, src))
        if frame is None:
            # (One get at a time: this client is one thread's, and waits here for the reply.)
            frame = session.blocking_get(k, src)
            if len(frames) < _GET_FRAMES and type(k) is bytes:
                frames[k, src] = frame
        self._write(frame)
        if not self._replies and self._decoder.idle:
            # Nothing else on its way here: the reply comes alone, mostly in one read.
            data = self._recv()
            if data[4:7] == _FOUND and int.from_bytes(data[:4], "big") + 4 == len(data):
                try:
                    value = _unpackb(data[7:])  # [0, true, VALUE]: VALUE
                except Exception:  # the general path names it
                    value = None
                if type(value) is bytes:
                    return value
            self._take(data)
        replies = self._replies
        while (reply := replies.pop(0, None)) is None:
            self._pump(None)
        value = Session.result(native.GET, *reply)
        if type(value) is bytes:
            return value
        got: bytes = Session.got(key, src)(value)
        return got

    # -- collectives ------------------------------------------------------
    def ifence(self) -> Request[None]:
        return self._call(native.FENCE, decode=self._session.fenced)

    def fence(self) -> None:
        self.ifence().wait()

    def ibarrier(self) -> Request[None]:
        return self._call(native.BARRIER)

    def barrier(self) -> None:
        self.ibarrier().wait()

    def iallgather(self, value: str | bytes) -> Request[list[bytes]]:
        return self._call(native.ALLGATHER, to_bytes(value), decode=self._session.gathered)

    def allgather(self, value: str | bytes) -> list[bytes]:
        return self.iallgather(value).wait()

    def iring(self, value: str | bytes) -> Request[tuple[bytes, bytes]]:
        return self._call(native.RING, to_bytes(value), decode=Session.ringed)

    def ring(self, value: str | bytes) -> tuple[bytes, bytes]:
        return self.iring(value).wait()

    # -- new jobs ---------------------------------------------------------
    def spawn(self, argv: str | list[str], n: int = 1, *, env: dict[str, str] | None = None,
              wdir: str | None = None, hosts: list[str] | str | None = None,
              preput: dict[str, str] | None = None) -> Spawned:
        """Start ``argv`` on ``n`` new ranks and wait until they are started; see
        :meth:`pm.client.pmi.PMIClient.spawn`."""
        commands, pre = spawn_args(argv, n, env, wdir, hosts, preput)
        got: Spawned = self._call(native.SPAWN, commands, pre, decode=spawned).wait()
        return got

    # -- memory -----------------------------------------------------------
    @contextlib.contextmanager
    def reserve(self, nbytes: int) -> Iterator[int]:
        """Hold a reservation of ``nbytes`` of node memory; yields its id, releases on exit."""
        ident: int = self._call(native.RESERVE, nbytes).wait()
        try:
            yield ident
        finally:
            self._call(native.RELEASE, ident).wait()

    # -- ending -----------------------------------------------------------
    def finalize(self) -> None:
        if not self._finalized:
            self._call(native.FINALIZE).wait()
            self._finalized = True

    def abort(self, code: int = 1, message: str = "") -> None:
        """Ask pmrun to end the whole job with exit status ``code`` (no reply comes)."""
        if not self._closed and self._error is None:
            _rid, frame = self._session.request(native.ABORT, abort_code(code), str(message))
            self._write(frame)

    def close(self) -> None:
        """Finalize (if still connected) and close. Idempotent."""
        if self._closed:
            return
        try:
            if self._error is None and self._info is not None:
                self.finalize()
        finally:
            self._closed = True
            self._sock.close()
            self._session.close()

    def __enter__(self) -> SyncPMIClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------
    def _call(self, op: str, *args: Any, decode: Callable[[Any], Any] | None = None
              ) -> Request[Any]:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise TransportError("the connection to the node agent is closed")
        rid, frame = self._session.request(op, *args)
        self._write(frame)
        return Request(self, rid, op, decode)

    def _write(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            self._fail(TransportError(f"the connection to the node agent broke: {exc}"))

    def _pump(self, timeout: float | None) -> None:
        """Read what the agent sent (waiting up to ``timeout`` s for something)."""
        if self._error is not None:
            raise self._error
        if timeout is not None:
            ready, _, _ = select.select([self._sock], [], [], max(0.0, timeout))
            if not ready:
                return
        self._take(self._recv())

    def _recv(self) -> bytes:
        try:
            # 64 KiB: a bigger buffer is an mmap, mremap and munmap per reply (glibc)
            data = self._sock.recv(65536)
        except OSError as exc:
            self._fail(TransportError(f"the connection to the node agent broke: {exc}"))
        if not data:
            self._fail(TransportError("the connection to the node agent was lost"))
        return data

    def _take(self, data: bytes) -> None:
        """Keep the replies ``data`` completes, by request id."""
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self._fail(exc)
        for frame in frames:
            if not isinstance(frame, list) or len(frame) != 3:
                self._fail(ProtocolError(f"bad reply from the node agent: {frame!r:.80}"))
            self._replies[frame[0]] = (frame[1], frame[2])

    def _fail(self, exc: PMError) -> NoReturn:
        self._error = exc
        raise exc


def connect(fd: int | None = None) -> SyncPMIClient:
    """Connect to the node agent (``fd`` defaults to ``$PMI_FD``); use it with ``with``."""
    return SyncPMIClient.open(fd)
