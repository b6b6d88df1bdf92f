"""Tree links over ZeroMQ: a ROUTER towards an agent's children, a DEALER to its parent.

Every frame is sealed with the job secret (``pm.proto.tree.seal``): a peer that
does not know it cannot join the tree, inject data, start processes or read
output; its frames are dropped and logged, and the link keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from pm.proto import tree as t
from pm.proto.errors import AuthError, ProtocolError, TransportError

log = logging.getLogger("pm.agent.links")

_ctx: zmq.asyncio.Context | None = None


def context() -> zmq.asyncio.Context:
    global _ctx
    if _ctx is None:
        _ctx = zmq.asyncio.Context()
    return _ctx


def _configure(sock: zmq.asyncio.Socket) -> None:
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block a tree message
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, 1 << 31)


class ChildPort:
    """The ROUTER children connect to.  ``on_msg(vertex, msg)`` gets their messages
    once they said a valid :class:`Hello`; ``on_hello(vertex, hello)`` is told first."""

    def __init__(self, secret: bytes, bind: str,
                 on_hello: Callable[[int, t.Hello], None],
                 on_msg: Callable[[int, t.Msg], None]) -> None:
        self.secret = secret
        self.sock = context().socket(zmq.ROUTER)
        _configure(self.sock)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            port = self.sock.bind_to_random_port(bind)
        except zmq.ZMQError as exc:
            raise TransportError(f"cannot listen on {bind}: {exc}") from exc
        self.address = f"{bind}:{port}"
        self._peers: dict[bytes, int] = {}
        self._ids: dict[int, bytes] = {}
        self.on_hello = on_hello
        self.on_msg = on_msg
        self._task = asyncio.get_running_loop().create_task(self._recv())

    async def _recv(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            if len(frames) != 2:
                log.warning("dropped a malformed frame set (%d parts) on the tree port",
                            len(frames))
                continue
            ident, frame = frames[0].bytes, frames[1]
            try:
                msg = t.decode(t.unseal(self.secret, frame.bytes))
            except (AuthError, ProtocolError) as exc:
                peer = ""
                with contextlib.suppress(Exception):
                    peer = frame.get("Peer-Address") or ""
                log.warning("refused a message from %s: %s", peer or "an unknown peer", exc)
                continue
            vertex = self._peers.get(ident)
            if vertex is None:
                if not isinstance(msg, t.Hello):
                    log.warning("refused %s from a peer that did not say hello",
                                type(msg).__name__)
                    continue
                self._peers[ident] = msg.vertex
                self._ids[msg.vertex] = ident
                self.on_hello(msg.vertex, msg)
                continue
            try:
                self.on_msg(vertex, msg)
            except Exception:
                log.exception("agent failed handling %s from vertex %d", type(msg).__name__,
                              vertex)

    def send(self, vertex: int, msg: t.Msg) -> None:
        self.send_raw(vertex, t.seal(self.secret, t.encode(msg)))

    def send_raw(self, vertex: int, frame: bytes) -> None:
        ident = self._ids.get(vertex)
        if ident is None:
            log.debug("no link to vertex %d (yet): dropped a message", vertex)
            return
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send_multipart([ident, frame], copy=False)

    def close(self) -> None:
        self._task.cancel()
        self.sock.close(linger=500)


class ParentLink:
    """The DEALER an agent talks to its parent through."""

    def __init__(self, secret: bytes, address: str, vertex: int,
                 on_msg: Callable[[t.Msg], None]) -> None:
        self.secret = secret
        self.sock = context().socket(zmq.DEALER)
        _configure(self.sock)
        self.sock.setsockopt(zmq.IDENTITY, b"v%d" % vertex)
        self.sock.connect(address)
        self.on_msg = on_msg
        self._task: asyncio.Task[Any] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._recv())

    async def recv(self) -> t.Msg:
        while True:
            frame = await self.sock.recv()
            try:
                return t.decode(t.unseal(self.secret, frame))
            except (AuthError, ProtocolError) as exc:
                log.warning("refused a message from the parent link: %s", exc)

    async def _recv(self) -> None:
        while True:
            msg = await self.recv()
            try:
                self.on_msg(msg)
            except Exception:
                log.exception("agent failed handling %s from its parent", type(msg).__name__)

    def send(self, msg: t.Msg) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self.sock.send(t.seal(self.secret, t.encode(msg)), copy=False)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sock.close(linger=1000)
