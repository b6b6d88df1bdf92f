"""The port children connect to, an agent's or the head's: the ROUTER end of tree links.

A child joins by its :class:`~pm.proto.tree_wire.Hello`, sealed for its own link;
before that, what a peer sends is refused and logged, a few times per 10 s at most, as
is a stranger's failed handshake (:mod:`pm.agent.refusals`).  One sealed body goes to
several children, stamped for each one's link (:meth:`ChildPort.send_raw`).  How the
links are secured, and what a silent child means: :mod:`pm.agent.links`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import zmq

from pm.agent.links import allow_ipv6, buffer_of, configure, context, join_parts, settle
from pm.agent.liveness import Liveness, interval_of
from pm.agent.owned import Owned
from pm.agent.refusals import RateLimit, fd_peer, log_refusals, watch_refusals
from pm.proto import tree_wire as t
from pm.proto.errors import AuthError, ProtocolError, TransportError
from pm.proto.tree_frames import PART_MAX, UP, LinkSeal, seal, split

# (The links' logger: a port's refusals and losses are the links'.)
log = logging.getLogger("pm.agent.links")


def _peer_name(vertex: int | None, frame: zmq.Frame, port: int) -> str:
    """``vertex 3`` for a joined child, else the address the frame came from (the peer's:
    its connection's, if that is still open on our ``port``, else libzmq's note of its IP)."""
    if vertex is not None:
        return f"vertex {vertex}"
    peer = ""
    with contextlib.suppress(Exception):
        peer = fd_peer(int(frame.get(zmq.SRCFD)), port) or str(frame.get("Peer-Address") or "")
    return peer or "an unknown peer"


class ChildPort:
    """The ROUTER children connect to.  ``on_msg(vertex, msg)`` gets their messages
    once they said a valid :class:`Hello`; ``on_hello(vertex, hello)`` is told first.

    ``bind`` is an endpoint without port (``tcp://10.0.0.1``); the port is
    random (within ``ports`` when given).  ``listening``: ``(fd, port)`` of a socket
    already listening on ``bind``, served from now on (pm.bootstrap.early).  With
    ``heartbeat`` > 0, a joined child silent that long is forgotten and reported to
    ``on_lost``.
    """

    def __init__(self, secret: bytes, bind: str,
                 on_hello: Callable[[int, t.Hello], None] | None,
                 on_msg: Callable[[int, t.Msg], None] | None, *,
                 heartbeat: float = 0.0,
                 on_lost: Callable[[int, str], None] | None = None,
                 ports: tuple[int, int] | None = None,
                 listening: tuple[int, int] | None = None) -> None:
        self.secret = secret
        self._seal = LinkSeal(secret, UP)
        self.sock = context().socket(zmq.ROUTER)
        configure(self.sock, secret, server=True)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        loop = asyncio.get_running_loop()
        #: fds of connections whose peer joined (their disconnect is no refusal).
        self._joined_fds: set[int] = set()
        self._refusals = RateLimit()
        #: Peer address of each open connection, by fd (what a refusal names).
        self.connections: dict[int, str] = {}
        self._mon = watch_refusals(self.sock)
        #: The receiving, heartbeat and refusal-logging tasks: ended by close()/aclose().
        self._owned = Owned(loop)
        self._owned.spawn(log_refusals(
            self.sock, self._mon, "tree port", self._joined_fds, self._refusals,
            self.connections))
        try:
            allow_ipv6(self.sock, bind)
            if listening is not None:
                # A socket listening already (fd, port) on ``bind``: zmq serves it (and
                # closes it), with the connections the kernel took for it meanwhile.
                self.sock.setsockopt(zmq.USE_FD, listening[0])
                port = listening[1]
                self.sock.bind(f"{bind}:{port}")
            elif ports is not None:
                port = self.sock.bind_to_random_port(bind, ports[0], ports[1] + 1)
            else:
                port = self.sock.bind_to_random_port(bind)
        except zmq.ZMQError as exc:
            self._owned.cancel()
            self._mon.close(linger=0)
            self.sock.close(linger=0)
            raise TransportError(f"cannot listen on {bind}: {exc}") from exc
        self.address = f"{bind}:{port}"
        self._port = port
        self._peers: dict[bytes, int] = {}
        self._ids: dict[int, bytes] = {}
        #: Connections of children dropped as lost: what they still send is not a stranger's.
        self._dropped: set[bytes] = set()
        self.on_hello = on_hello
        self.on_msg = on_msg
        self.on_lost = on_lost
        self._early: list[tuple[int, t.Hello]] = []
        self.heartbeat = heartbeat
        self._live: Liveness[int] | None = None
        #: Asked, when joined children fall silent, before they are named lost (the head's,
        #: inside a Slurm job: pm.bootstrap.slurm_job.SilenceJudge): True if their silence
        #: is no loss (Slurm holds the job suspended); they are then watched anew, for
        #: another timeout.  What they say meanwhile counts.
        self.vouch: Callable[[list[int]], Awaitable[bool]] | None = None
        self._asking = False
        self._owned.spawn(self._recv())
        if heartbeat > 0:
            self._live = Liveness(heartbeat, interval_of(heartbeat), time.monotonic())
            self._owned.spawn(self._heartbeats())

    async def _recv(self) -> None:
        while True:
            frames = await self.sock.recv_multipart(copy=False)
            if len(frames) < 3:
                self._refusals.warn("refused a malformed frame set (%d parts) from %s",
                                    len(frames), _peer_name(None, frames[-1], self._port))
                continue
            ident, envelope, body = frames[0].bytes, frames[1], join_parts(frames[2:])
            vertex = self._peers.get(ident)
            if vertex is None and ident in self._dropped:
                continue  # a lost child's last words (its exits, while it ends): let go

            try:
                link, seq, payload = self._seal.open(envelope.buffer, buffer_of(body), vertex)
                if vertex is not None:
                    self._seal.accept(link, seq)  # an authentic frame of a known child
                msg = t.decode(payload)  # no copy
            except (AuthError, ProtocolError) as exc:
                self._refusals.warn("refused a message from %s: %s",
                                    _peer_name(vertex, frames[-1], self._port), exc)
                continue
            if vertex is None:
                self._join(ident, link, seq, msg, frames[-1])
                continue
            if self._live is not None and vertex in self._live:
                self._live.seen(vertex, time.monotonic())
            if isinstance(msg, t.Heartbeat) or self.on_msg is None:
                continue
            try:
                self.on_msg(vertex, msg)
            except Exception:
                log.exception("agent failed handling %s from vertex %d", type(msg).__name__,
                              vertex)

    def _join(self, ident: bytes, link: int, seq: int, msg: t.Msg, body: zmq.Frame) -> None:
        """The first frame from ``ident``: a Hello sealed for its own link joins it."""
        if not isinstance(msg, t.Hello):
            self._refusals.warn("refused %s from %s, which did not say hello",
                                type(msg).__name__, _peer_name(None, body, self._port))
            return
        if msg.vertex != link:
            self._refusals.warn("refused a hello of vertex %d from %s: sealed for vertex %d's "
                                "link", msg.vertex, _peer_name(None, body, self._port), link)
            return
        self._seal.accept(link, seq)  # so this hello is never taken again
        with contextlib.suppress(Exception):
            self._joined_fds.add(int(body.get(zmq.SRCFD)))
        self._peers[ident] = msg.vertex
        self._ids[msg.vertex] = ident
        if self._live is not None:
            self._live.seen(msg.vertex, time.monotonic())
        if self.on_hello is None:
            self._early.append((msg.vertex, msg))
        else:
            self.on_hello(msg.vertex, msg)

    async def _heartbeats(self) -> None:
        live = self._live
        assert live is not None
        beat = seal(self.secret, t.encode(t.Heartbeat(-1)))
        while True:
            await asyncio.sleep(live.interval)  # a period, not a wait for an event
            # Every linked child, also one whose subtree is done (not watched any more):
            # it stays until the job is over and takes our silence for our loss.
            for vertex in list(self._ids):
                self.send_raw(vertex, beat)
            now = time.monotonic()
            silent = live.check(now)
            if silent and self.vouch is not None:
                for vertex in silent:
                    live.seen(vertex, now)  # watched on while we ask
                if not self._asking:
                    self._asking = True
                    self._owned.spawn(self._ask(self.vouch, silent, now))
                continue
            for vertex in silent:
                self._silent(vertex)

    async def _ask(self, vouch: Callable[[list[int]], Awaitable[bool]], silent: list[int],
                   asked: float) -> None:
        """Name ``silent`` lost unless ``vouch`` explains their silence, or they spoke since
        ``asked``."""
        try:
            explained = await vouch(silent)
        except Exception:
            log.exception("asking why vertices %s are silent failed", silent)
            explained = False
        finally:
            self._asking = False
        live = self._live
        if explained or live is None:
            return
        for vertex in silent:
            seen = live.last(vertex)
            if seen is not None and seen <= asked:  # (None: done or dropped meanwhile)
                live.forget(vertex)
                self._silent(vertex)

    def _silent(self, vertex: int) -> None:
        timeout = self.heartbeat
        # (Named by on_lost's owner, with its node and host: here only for -v.)
        (log.info if self.on_lost is not None else log.warning)(
            "vertex %d: no sign of life for %g s", vertex, timeout)
        if self.on_lost is not None:
            try:
                self.on_lost(vertex, f"no heartbeat for {timeout:g} s (link down or agent hung)")
            except Exception:
                log.exception("handling the loss of vertex %d failed", vertex)

    def attach(self, on_hello: Callable[[int, t.Hello], None],
               on_msg: Callable[[int, t.Msg], None],
               on_lost: Callable[[int, str], None] | None) -> None:
        """Set the handlers of a port opened before its owner existed."""
        self.on_hello, self.on_msg, self.on_lost = on_hello, on_msg, on_lost

    def take_early(self) -> list[tuple[int, t.Hello]]:
        """Hellos that came while the port had no ``on_hello`` (the caller replays them)."""
        early, self._early = self._early, []
        return early

    def forget(self, vertex: int) -> None:
        """Stop watching ``vertex`` (it is done or known to be gone)."""
        if self._live is not None:
            self._live.forget(vertex)

    def send(self, vertex: int, msg: t.Msg) -> None:
        self.send_raw(vertex, seal(self.secret, t.encode(msg)))

    def send_raw(self, vertex: int, frame: bytes | zmq.Frame) -> None:
        """Send a sealed body (``pm.proto.tree_frames.seal``) to ``vertex``, stamped for its link.

        The same body may go to several children: only its envelope is theirs.
        """
        ident = self._ids.get(vertex)
        if ident is None or self.sock.closed:
            # (On a closed socket pyzmq fails the send's future and then raises itself,
            # leaving that future unread: "Future exception was never retrieved".)
            log.debug("no link to vertex %d (yet, or any more): dropped a message", vertex)
            return
        body = frame.buffer if isinstance(frame, zmq.Frame) else frame
        envelope = self._seal.envelope(vertex, body)
        parts: list[Any] = [frame] if len(body) <= PART_MAX else split(body)
        with contextlib.suppress(zmq.ZMQError):
            settle(self.sock.send_multipart([ident, envelope, *parts], copy=False))

    def drop(self, vertex: int, lost: bool = False) -> None:
        """Forget ``vertex`` altogether: nothing more is sent to it, and what it sends is
        refused as a stranger's; ``lost``: a child we let go, whose last frames (sent while
        it ends) are dropped without a word."""
        self.forget(vertex)
        ident = self._ids.pop(vertex, None)
        if ident is not None:
            self._peers.pop(ident, None)
            if lost:
                self._dropped.add(ident)

    async def aclose(self, linger: int = 500) -> None:
        """:meth:`close`, then wait for our tasks to end."""
        self.close(linger)
        await self._owned.aclose()

    def close(self, linger: int = 500) -> None:
        """Cancel our tasks, close the sockets. Idempotent."""
        self._owned.cancel()
        # The monitor now, not in its task's finally: a loop that ends right after this
        # never runs it, and the monitor's socket would stay open in the shared context.
        with contextlib.suppress(zmq.ZMQError):
            self.sock.disable_monitor()
        self._mon.close(linger=0)
        self.sock.close(linger=linger)
