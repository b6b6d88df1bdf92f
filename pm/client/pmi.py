"""Async client of pmrun's native protocol, for Python ranks started by pmrun.

::

    from pm.client import connect

    async with connect() as pmi:            # PMI_FD, PMI_RANK, PMI_SIZE from pmrun
        await pmi.put("addr", my_address)
        fut = pmi.iallgather(my_address)    # sent now; progresses in the agents
        ...                                 # other start-up work
        addresses = await fut               # indexed by rank

Every request is written to the socket when the method is called (not when
it is awaited), so the agents work on a collective while the rank does
something else, even something that does not yield to the event loop.
Several requests may be in flight; each gets its own reply.

Gets of values that came with a fence are served from the node's
shared-memory KVS when the agent offers one (no round trip); anything else
goes to the agent.  One connection per process: the fd is the rank's only
link to its agent, and closing it finalizes the rank.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Generator
from types import TracebackType
from typing import Any

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
from pm.proto.errors import PMError, ProtocolError, TransportError

__all__ = ["PMIClient", "RequestFailed", "connect"]

_Pending = tuple["asyncio.Future[Any]", str, Callable[[Any], Any] | None]


class _Link(asyncio.Protocol):
    """Feeds the agent's frames to the client; reports the end of the connection."""

    def __init__(self, client: PMIClient) -> None:
        self.client = client
        self.decoder = native.FrameDecoder()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.decoder.feed(data)
        except ProtocolError as exc:
            self.client._broken(exc)
            return
        for frame in frames:
            self.client._reply(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._broken(TransportError("the connection to the node agent was lost"))


class PMIClient(Identity):
    """One rank's connection to its node agent (create it with :func:`connect`).

    ``rank``, ``size``, ``local_rank``, ``local_size``, ``appnum`` describe the
    rank; ``info`` is everything the agent said at init.  Keys and values are
    ``str`` (sent as UTF-8) or bytes; values come back as bytes.  Errors: a
    request the agent refuses raises :class:`RequestFailed` (and leaves the
    connection usable), a get of a key that was not put raises
    :class:`pm.proto.errors.KeyNotFound`, a lost connection
    :class:`pm.proto.errors.TransportError`.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = Session()
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, _Pending] = {}
        self._error: PMError | None = None
        self._finalized = False
        self._info: Info | None = None

    @classmethod
    async def open(cls, fd: int | None = None) -> PMIClient:
        """Connect on ``fd`` (default ``$PMI_FD``) and run init."""
        self = cls()
        fd = env_fd(fd)
        try:
            sock = socket.socket(fileno=fd)
            os.set_inheritable(fd, False)  # children of the rank must not hold the link open
        except OSError as exc:
            raise TransportError(f"PMI_FD={fd} is not a socket: {exc}") from exc
        try:
            transport, _ = await self._loop.connect_accepted_socket(lambda: _Link(self), sock)
        except OSError as exc:
            sock.close()
            raise TransportError(f"cannot use PMI_FD={fd}: {exc}") from exc
        self._transport = transport
        try:
            transport.write(native.MAGIC)
            info = await self._call(native.INIT)
            self._info = self._session.opened(info)
        except BaseException:
            transport.close()
            self._transport = None
            raise
        return self

    # -- KVS --------------------------------------------------------------
    async def put(self, key: str | bytes, value: str | bytes) -> None:
        """Publish ``value`` under ``key`` for this rank (replaces an earlier put)."""
        await self._call(native.PUT, to_bytes(key), to_bytes(value))

    async def get(self, key: str | bytes, rank: int | None = None) -> bytes:
        """The value ``rank`` (default: this rank) put under ``key``.

        Without a fence in between, the value is fetched from that rank's node;
        if the rank has not put it yet the get waits until it does, or until
        it enters a fence or finalizes without having put it: then
        :class:`~pm.proto.errors.KeyNotFound`.
        """
        src = self.rank if rank is None else rank
        k = to_bytes(key)
        value = self._session.shm_get(k, src)
        if value is not None:
            return value
        result: bytes = await self._call(native.GET, k, src, decode=Session.got(key, src))
        return result

    # -- collectives ------------------------------------------------------
    def ifence(self) -> asyncio.Future[None]:
        """Start a fence (every rank's puts so far become visible everywhere); await later."""
        return self._call(native.FENCE, decode=self._session.fenced)

    async def fence(self) -> None:
        await self.ifence()

    def ibarrier(self) -> asyncio.Future[None]:
        """Start a barrier without data; await it later."""
        return self._call(native.BARRIER)

    async def barrier(self) -> None:
        await self.ibarrier()

    def iallgather(self, value: str | bytes) -> asyncio.Future[list[bytes]]:
        """Start an allgather of ``value``; the future gives every rank's value, by rank."""
        return self._call(native.ALLGATHER, to_bytes(value), decode=self._session.gathered)

    async def allgather(self, value: str | bytes) -> list[bytes]:
        return await self.iallgather(value)

    def iring(self, value: str | bytes) -> asyncio.Future[tuple[bytes, bytes]]:
        """Start a ring exchange; the future gives the values of rank-1 and rank+1 (wrapping)."""
        return self._call(native.RING, to_bytes(value), decode=Session.ringed)

    async def ring(self, value: str | bytes) -> tuple[bytes, bytes]:
        return await self.iring(value)

    # -- new jobs ---------------------------------------------------------
    async def spawn(self, argv: str | list[str], n: int = 1, *,
                    env: dict[str, str] | None = None, wdir: str | None = None,
                    hosts: list[str] | str | None = None,
                    preput: dict[str, str] | None = None) -> Spawned:
        """Start ``argv`` on ``n`` new ranks, a job of their own (as MPI_Comm_spawn does):
        returns once they are started.  ``env`` adds to their environment, ``hosts``
        limits the job's nodes they may run on, ``preput`` are keys they can get at once.
        Raises :class:`RequestFailed` if they could not be started (program not found)."""
        commands, pre = spawn_args(argv, n, env, wdir, hosts, preput)
        return await self._call(native.SPAWN, commands, pre, decode=spawned)  # type: ignore[no-any-return]

    # -- memory -----------------------------------------------------------
    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[int]:
        """Hold a reservation of ``nbytes`` of node memory (waits until admitted).

        Yields the reservation id; the reservation is released on exit.
        """
        ident = await self._call(native.RESERVE, nbytes)
        try:
            yield ident
        finally:
            await self._call(native.RELEASE, ident)

    # -- ending -----------------------------------------------------------
    async def finalize(self) -> None:
        """Tell the agent this rank is done with PMI (it may then exit 0)."""
        if not self._finalized:
            await self._call(native.FINALIZE)
            self._finalized = True

    def abort(self, code: int = 1, message: str = "") -> None:
        """Ask pmrun to end the whole job with exit status ``code`` (no reply comes)."""
        if self._transport is not None and self._error is None:
            _rid, frame = self._session.request(native.ABORT, abort_code(code), str(message))
            self._transport.write(frame)

    async def close(self) -> None:
        """Finalize (if still connected) and close the connection. Idempotent."""
        try:
            if self._transport is not None and self._error is None and self._info is not None:
                await self.finalize()
        finally:
            if self._transport is not None:
                self._transport.close()
                self._transport = None
            self._session.close()

    async def __aenter__(self) -> PMIClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- plumbing ---------------------------------------------------------
    def _call(self, op: str, *args: Any,
              decode: Callable[[Any], Any] | None = None) -> asyncio.Future[Any]:
        """Write the request now; the future completes with its (decoded) reply."""
        if self._error is not None:
            raise self._error
        if self._transport is None:
            raise TransportError("the connection to the node agent is closed")
        rid, frame = self._session.request(op, *args)
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._pending[rid] = (fut, op, decode)
        self._transport.write(frame)
        return fut

    def _reply(self, frame: Any) -> None:
        if not isinstance(frame, list) or len(frame) != 3:
            self._broken(ProtocolError(f"bad reply from the node agent: {frame!r:.80}"))
            return
        rid, ok, result = frame
        entry = self._pending.pop(rid, None)
        if entry is None:
            return
        fut, op, decode = entry
        if fut.done():  # the caller cancelled it
            return
        try:
            value = Session.result(op, ok, result)
            fut.set_result(decode(value) if decode is not None else value)
        except PMError as exc:
            fut.set_exception(exc)

    def _broken(self, exc: PMError) -> None:
        if self._error is None:
            self._error = exc
        pending, self._pending = self._pending, {}
        for fut, op, _ in pending.values():
            if not fut.done():
                fut.set_exception(type(exc)(f"{op}: {exc}"))
        if self._transport is not None:
            self._transport.close()


class _Connect:
    """What :func:`connect` returns: await it, or use it with ``async with``."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd
        self._client: PMIClient | None = None

    def __await__(self) -> Generator[Any, None, PMIClient]:
        return PMIClient.open(self._fd).__await__()

    async def __aenter__(self) -> PMIClient:
        self._client = await PMIClient.open(self._fd)
        return self._client

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._client is not None:
            await self._client.close()


def connect(fd: int | None = None) -> _Connect:
    """Connect to the node agent pmrun started this rank under.

    ``async with connect() as pmi:`` finalizes and closes at the end;
    ``pmi = await connect()`` leaves that to ``await pmi.close()``.
    ``fd`` defaults to ``$PMI_FD``.
    """
    return _Connect(fd)
