"""Tree links over ZeroMQ: their sockets, and the DEALER an agent talks to its parent through.

The ROUTER towards an agent's children is :class:`~pm.agent.child_port.ChildPort`; the
sockets of both ends are made here (:func:`context`, :func:`configure`, :func:`secure`).

Links are encrypted with CURVE (:func:`secure`), the job's key pairs derived
from its secret (``pm.proto.tree_frames.curve_keys``): a peer that is not one of the
job's agents fails the handshake and is logged with its address, at most a
few times per 10 s per port (:class:`~pm.agent.refusals.RateLimit`).  No zmq frame over
``pm.proto.tree_frames.PART_MAX`` (4 MiB) is taken from anyone (``ZMQ_MAXMSGSIZE``:
libzmq refuses it from the header, before storing it or authenticating its
sender); bodies over it are sent as several parts and joined on arrival.

Every frame is sealed with the job secret (``pm.proto.tree_frames.seal``): a peer that
does not know it cannot join the tree, inject data or start processes; its
frames are dropped and logged, and the link keeps serving.

Nor can a peer that only captured frames replay them.  A frame is two zmq
parts, ``[envelope, body]`` (see :mod:`pm.proto.tree_frames`; the body in several parts
when large).  The body is sealed once per message, whoever it goes to:
:class:`~pm.agent.child_port.ChildPort` ``send_raw`` takes such a body (the same one for
several children, or the parent's body of a collective's result, forwarded as it came)
and stamps it, child by child, with an envelope whose MAC binds the body's MAC to the
child's link, the direction and that direction's next sequence number.  So a body is never
re-sealed or copied per child; each child costs one MAC of 46 bytes and a
29-byte part.  Both ends keep a :class:`~pm.proto.tree_frames.LinkSeal`: a frame
for the other direction (reflected), for another link, or whose sequence
number is not above the last accepted on its link (replayed) is dropped with
a warning naming the peer and the fault, and everything else is served as
before.  Counters are per link and per job (a job has its own secret): the
child's :class:`~pm.proto.tree_wire.Hello` is its link's frame 0, and a port
that has seen it takes no second one for that vertex.  An owner refusing a
hello (not its child) drops the vertex from the port, so a child's frames,
sealed for its own parent's port, are taken nowhere else.  zmq keeps the order of
a socket's sends, so a link's frames arrive in sequence; a frame lost on the
way only leaves a gap, which is allowed.

Both ends send a :class:`~pm.proto.tree_wire.Heartbeat` every ``heartbeat / 4``
seconds (any frame counts as a sign of life: :mod:`pm.agent.liveness`).  A child
silent for ``heartbeat`` seconds is reported through ``on_lost(vertex, why)``; a parent
silent that long through ``on_lost(why)``: the agent then kills its ranks and
leaves, so a cut link never leaves anything running on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from pm.agent.liveness import Liveness, interval_of
from pm.agent.owned import Owned
from pm.proto import tree_wire as t
from pm.proto.errors import AuthError, ProtocolError
from pm.proto.tree_frames import DOWN, PART_MAX, LinkSeal, curve_keys, seal, split

log = logging.getLogger("pm.agent.links")

_ctx: zmq.asyncio.Context | None = None


def context() -> zmq.asyncio.Context:
    global _ctx
    if _ctx is None:
        _ctx = zmq.asyncio.Context()
    return _ctx


def flush(timeout: float = 0.3) -> None:
    """Before the process ends without the interpreter's teardown (``os._exit``): let
    libzmq's I/O thread send what the closed sockets still hold (the head's Shutdown to
    vertex 0, a service's End), which would otherwise die with the process, and a
    persistent service's job agent would wait for its parent's silence instead.  At most
    ``timeout`` seconds: a peer that is gone keeps its messages for the sockets' linger."""
    ctx = _ctx
    if ctx is None or ctx.closed:
        return
    import threading

    ender = threading.Thread(target=ctx.destroy, kwargs={"linger": int(timeout * 1000)},
                             name="pm-zmq-flush", daemon=True)
    ender.start()
    ender.join(timeout)


#: Whether tree links are encrypted (CURVE): whenever libzmq can (pyzmq's wheels can), unless
#: ``PM_TREE_CURVE=0`` is in the environment of pmrun and of every agent (a site setting, for
#: measurements: both ends of a link must agree).
CURVE = zmq.has("curve") and os.environ.get("PM_TREE_CURVE", "1") != "0"


def configure(sock: zmq.asyncio.Socket, secret: bytes, server: bool) -> None:
    """What every tree socket is: unbounded queues, a frame bound, CURVE (:func:`secure`)."""
    sock.setsockopt(zmq.LINGER, 2000)
    sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block a tree message
    sock.setsockopt(zmq.RCVHWM, 0)
    # Before authentication too: a stranger's frame over the bound is refused by libzmq
    # before it is stored (our own large bodies travel as several parts).
    # (CURVE adds its box and nonce to each frame on the wire: the bound leaves room for it.)
    sock.setsockopt(zmq.MAXMSGSIZE, PART_MAX + 1024)
    secure(sock, secret, server)


def secure(sock: zmq.Socket[Any], secret: bytes, server: bool) -> None:
    """Encrypt ``sock``'s links with the job's CURVE keys (``pm.proto.tree_frames.curve_keys``):
    as a tree port (``server``) or as a child's link to one.  A no-op without CURVE."""
    if not CURVE:
        return
    server_pub, server_sec, client_pub, client_sec = curve_keys(secret)
    if server:
        sock.curve_server = True
        sock.curve_secretkey = server_sec
        sock.curve_publickey = server_pub
    else:
        sock.curve_serverkey = server_pub
        sock.curve_secretkey = client_sec
        sock.curve_publickey = client_pub


def join_parts(parts: list[zmq.Frame]) -> zmq.Frame | bytes:
    """A body that came as ``parts`` (see ``pm.proto.tree_frames.split``): one part is kept
    whole."""
    if len(parts) == 1:
        return parts[0]
    return b"".join(p.buffer for p in parts)


def buffer_of(body: zmq.Frame | bytes) -> memoryview | bytes:
    """The bytes of a body as it came (a zmq frame's buffer: not copied)."""
    return body.buffer if isinstance(body, zmq.Frame) else body


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("tree send failed: %s", fut.exception())


def settle(fut: Any) -> None:
    """A send's future may end in an error (peer gone): read it so it is not reported."""
    if isinstance(fut, asyncio.Future):
        fut.add_done_callback(_retrieve)


def allow_ipv6(sock: zmq.Socket[Any], endpoint: str) -> None:
    """Let ``sock`` use ``endpoint`` if it is an IPv6 literal (``tcp://[::1]:7350``): libzmq
    takes one only from a socket told so (else: "No such device")."""
    if "://[" in endpoint:
        sock.setsockopt(zmq.IPV6, 1)


#: Milliseconds between an agent's attempts to reach its parent's port (libzmq's default is
#: 100, with no back-off unless asked).  Inside Slurm every agent starts in the step pmrun
#: launches before its own imports, and so tries its parent's port before the head listens:
#: with 100 ms between tries, the agents of a 4-node `pmrun -n 8 true` joined 50-60 ms
#: after the head had its plan (--profile); with 10, within 10 ms.  (On 2 shared CPUs the
#: head's own start is the longer path, so the wall time did not change there; on nodes of
#: their own the agents are ready first.)  A refused try costs a SYN and a RST.
RECONNECT_MS = 10


class ParentLink:
    """The DEALER an agent talks to its parent through.

    With ``heartbeat`` > 0 it sends heartbeats from the start and calls
    ``on_lost(why)`` once if the parent stays silent for that long.
    """

    def __init__(self, secret: bytes, address: str, vertex: int,
                 on_msg: Callable[[t.Msg], None], *,
                 heartbeat: float = 0.0,
                 on_lost: Callable[[str], None] | None = None) -> None:
        self.secret = secret
        self.vertex = vertex
        self._seal = LinkSeal(secret, DOWN)
        self.sock = context().socket(zmq.DEALER)
        configure(self.sock, secret, server=False)
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        self.sock.setsockopt(zmq.IDENTITY, b"v%d" % vertex)
        allow_ipv6(self.sock, address)
        self.sock.connect(address)
        self.on_msg = on_msg
        self.on_lost = on_lost
        #: The receiving and heartbeat tasks: ended by close()/aclose().
        self._owned = Owned(asyncio.get_running_loop())
        self._live: Liveness[str] | None = None
        #: The body of the message being handled: an agent forwards a collective's
        #: result to its children as it came (same secret, same bytes, no re-encoding;
        #: the children's port stamps it for their links).
        self.frame: zmq.Frame | bytes | None = None
        if heartbeat > 0:
            self._live = Liveness(heartbeat, interval_of(heartbeat), time.monotonic())
            self._live.seen("parent", time.monotonic())
            self._owned.spawn(self._heartbeats())

    def start(self) -> None:
        self._owned.spawn(self._recv())

    def hold(self, held: bool) -> None:
        """While ``held`` the parent's silence is no loss: the job is suspended (Ctrl-Z)
        and the head has stopped itself until SIGCONT, which releases the hold."""
        if self._live is None:
            return
        if held:
            self._live.forget("parent")
        else:
            self._live.seen("parent", time.monotonic())

    async def recv(self) -> t.Msg:
        """The next message from the parent (heartbeats are consumed here)."""
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            if len(frames) < 2:
                log.warning("agent %d: dropped a malformed frame set (%d parts) from the parent",
                            self.vertex, len(frames))
                continue
            envelope, body = frames[0], join_parts(frames[1:])
            try:
                _, seq, payload = self._seal.open(envelope.buffer, buffer_of(body), self.vertex)
                self._seal.accept(self.vertex, seq)
                msg = t.decode(payload)  # no copy
            except (AuthError, ProtocolError) as exc:
                log.warning("agent %d: refused a message from the parent: %s", self.vertex, exc)
                continue
            if self._live is not None and "parent" in self._live:
                self._live.seen("parent", time.monotonic())
            if not isinstance(msg, t.Heartbeat):
                self.frame = body
                return msg

    async def _recv(self) -> None:
        while True:
            msg = await self.recv()
            try:
                self.on_msg(msg)
            except Exception:
                log.exception("agent failed handling %s from its parent", type(msg).__name__)
            finally:
                self.frame = None

    async def _heartbeats(self) -> None:
        live = self._live
        assert live is not None
        beat = seal(self.secret, t.encode(t.Heartbeat(self.vertex)))
        while True:
            await asyncio.sleep(live.interval)  # a period, not a wait for an event
            with contextlib.suppress(zmq.ZMQError):
                await self.sock.send_multipart([self._envelope(beat), beat], flags=zmq.NOBLOCK)
            if live.check(time.monotonic()):
                log.warning("agent %d: no sign of life from the parent for %g s", self.vertex,
                            live.timeout)
                if self.on_lost is not None:
                    self.on_lost(f"no heartbeat from the parent for {live.timeout:g} s")
                return

    def _envelope(self, body: bytes) -> bytes:
        return self._seal.envelope(self.vertex, body)

    def send(self, msg: t.Msg) -> None:
        if self.sock.closed:
            return  # the link is closed: nothing more goes up (see ChildPort.send_raw)
        body = seal(self.secret, t.encode(msg))
        with contextlib.suppress(zmq.ZMQError):
            settle(self.sock.send_multipart([self._envelope(body), *split(body)],
                                             copy=False))

    async def aclose(self, linger: int = 1000) -> None:
        """:meth:`close`, then wait for our tasks to end."""
        self.close(linger)
        await self._owned.aclose()

    def close(self, linger: int = 1000) -> None:
        """Cancel our tasks, close the socket. Idempotent."""
        self._owned.cancel()
        self.sock.close(linger=linger)
