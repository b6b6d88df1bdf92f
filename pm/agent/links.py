"""Tree links over ZeroMQ: a ROUTER towards an agent's children, a DEALER to its parent.

Links are encrypted with CURVE (:func:`secure`), the job's key pairs derived
from its secret (``pm.proto.tree_frames.curve_keys``): a peer that is not one of the
job's agents fails the handshake and is logged with its address, at most a
few times per 10 s per port (:class:`RateLimit`).  No zmq frame over
``pm.proto.tree_frames.PART_MAX`` (4 MiB) is taken from anyone (``ZMQ_MAXMSGSIZE``:
libzmq refuses it from the header, before storing it or authenticating its
sender); bodies over it are sent as several parts and joined on arrival.

Every frame is sealed with the job secret (``pm.proto.tree_frames.seal``): a peer that
does not know it cannot join the tree, inject data or start processes; its
frames are dropped and logged, and the link keeps serving.

Nor can a peer that only captured frames replay them.  A frame is two zmq
parts, ``[envelope, body]`` (see :mod:`pm.proto.tree_frames`; the body in several parts
when large).  The body is sealed
once per message, whoever it goes to: :class:`ChildPort` ``send_raw`` takes
such a body (the same one for several children, or the parent's body of a
collective's result, forwarded as it came) and stamps it, child by child,
with an envelope whose MAC binds the body's MAC to the child's link, the
direction and that direction's next sequence number.  So a body is never
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
seconds (any frame counts as a sign of life).  A child silent for
``heartbeat`` seconds is reported through ``on_lost(vertex, why)``; a parent
silent that long through ``on_lost(why)``: the agent then kills its ranks and
leaves, so a cut link never leaves anything running on either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

import zmq
import zmq.asyncio

from pm.agent.owned import Owned
from pm.agent.refusals import RateLimit, fd_peer, log_refusals, watch_refusals
from pm.proto import tree_wire as t
from pm.proto.errors import AuthError, ProtocolError, TransportError
from pm.proto.tree_frames import DOWN, PART_MAX, UP, LinkSeal, curve_keys, seal, split

log = logging.getLogger("pm.agent.links")

_ctx: zmq.asyncio.Context | None = None

K = TypeVar("K", bound=Hashable)


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


def _configure(sock: zmq.asyncio.Socket, secret: bytes, server: bool) -> None:
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


def _join(parts: list[zmq.Frame]) -> zmq.Frame | bytes:
    """A body that came as ``parts`` (see ``pm.proto.tree_frames.split``): one part is kept
    whole."""
    if len(parts) == 1:
        return parts[0]
    return b"".join(p.buffer for p in parts)


def _buffer(body: zmq.Frame | bytes) -> memoryview | bytes:
    return body.buffer if isinstance(body, zmq.Frame) else body


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.debug("tree send failed: %s", fut.exception())


def _settle(fut: Any) -> None:
    """A send's future may end in an error (peer gone): read it so it is not reported."""
    if isinstance(fut, asyncio.Future):
        fut.add_done_callback(_retrieve)


def _peer_name(vertex: int | None, frame: zmq.Frame) -> str:
    """``vertex 3`` for a joined child, else the address the frame came from (the peer's)."""
    if vertex is not None:
        return f"vertex {vertex}"
    peer = ""
    with contextlib.suppress(Exception):
        peer = fd_peer(int(frame.get(zmq.SRCFD))) or str(frame.get("Peer-Address") or "")
    return peer or "an unknown peer"


def interval_of(timeout: float) -> float:
    """How often a link with ``timeout`` sends heartbeats and checks its peers."""
    return max(0.02, min(1.0, timeout / 4))


class Liveness(Generic[K]):
    """Last-seen times of peers and which of them fell silent (pure; the caller gives ``now``).

    A check that comes much later than planned means our own process stalled
    (a swapped-out or starved agent), not that the peers did: their clocks are
    then restarted instead of declaring them all lost.
    """

    def __init__(self, timeout: float, interval: float, now: float) -> None:
        self.timeout = timeout
        self.interval = interval
        self._seen: dict[K, float] = {}
        self._last_check = now

    def seen(self, key: K, now: float) -> None:
        self._seen[key] = now

    def forget(self, key: K) -> None:
        self._seen.pop(key, None)

    def last(self, key: K) -> float | None:
        """When ``key`` was last seen (None: not watched)."""
        return self._seen.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def check(self, now: float) -> list[K]:
        """Peers silent for longer than the timeout (they are forgotten)."""
        if now - self._last_check > max(3 * self.interval, self.timeout / 2):
            for key in self._seen:
                self._seen[key] = now
        self._last_check = now
        lost = [k for k, at in self._seen.items() if now - at > self.timeout]
        for k in lost:
            del self._seen[k]
        return lost


#: Milliseconds between an agent's attempts to reach its parent's port (libzmq's default is
#: 100, with no back-off unless asked).  Inside Slurm every agent starts in the step pmrun
#: launches before its own imports, and so tries its parent's port before the head listens:
#: with 100 ms between tries, the agents of a 4-node `pmrun -n 8 true` joined 50-60 ms
#: after the head had its plan (--profile); with 10, within 10 ms.  (On 2 shared CPUs the
#: head's own start is the longer path, so the wall time did not change there; on nodes of
#: their own the agents are ready first.)  A refused try costs a SYN and a RST.
RECONNECT_MS = 10

#: The address a port listens on when it listens on all of them.
ANY_ADDRESS = "0.0.0.0"


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (an IPv6 one may name its zone, ``%eth0``).

    (What ``ipaddress.ip_address`` takes, without importing it: 1 ms of CPU at the start
    of every agent with children.)"""
    for family, address in ((socket.AF_INET, text), (socket.AF_INET6, text.partition("%")[0])):
        try:
            socket.inet_pton(family, address)
        except (OSError, ValueError):
            continue
        return True
    return False


def iface_address(name_or_addr: str) -> str:
    """The IPv4 address of interface ``name_or_addr``, or the address itself if it is one."""
    if is_ip(name_or_addr):
        return name_or_addr
    siocgifaddr = 0x8915
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            req = struct.pack("256s", name_or_addr.encode()[:15])
            res = fcntl.ioctl(s.fileno(), siocgifaddr, req)
        except OSError as exc:
            raise TransportError(f"interface {name_or_addr!r}: {exc.strerror}") from None
    return socket.inet_ntoa(res[20:24])


def route_source(host: str) -> str | None:
    """Our address on the route to ``host`` (``None`` if it does not resolve).

    A UDP ``connect`` only looks the route up: nothing is sent.
    """
    # An ASCII name as bytes: a str goes through the idna codec (1 ms of CPU to import).
    name = host.encode() if host.isascii() else host
    try:
        infos = socket.getaddrinfo(name, 9, socket.AF_INET, socket.SOCK_DGRAM)
    except OSError:
        return None
    for *_, addr in infos:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect(addr)
                return str(s.getsockname()[0])
            except OSError:
                continue
    return None


def allow_ipv6(sock: zmq.Socket[Any], endpoint: str) -> None:
    """Let ``sock`` use ``endpoint`` if it is an IPv6 literal (``tcp://[::1]:7350``): libzmq
    takes one only from a socket told so (else: "No such device")."""
    if "://[" in endpoint:
        sock.setsockopt(zmq.IPV6, 1)


def endpoint_host(address: str) -> str:
    """``tcp://10.0.0.1:4000`` -> ``10.0.0.1``."""
    rest = address.split("://", 1)[-1]
    host = rest.rsplit(":", 1)[0]
    return host.strip("[]")


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
        _configure(self.sock, secret, server=True)
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
                                    len(frames), _peer_name(None, frames[-1]))
                continue
            ident, envelope, body = frames[0].bytes, frames[1], _join(frames[2:])
            vertex = self._peers.get(ident)
            if vertex is None and ident in self._dropped:
                continue  # a lost child's last words (its exits, while it ends): let go

            try:
                link, seq, payload = self._seal.open(envelope.buffer, _buffer(body), vertex)
                if vertex is not None:
                    self._seal.accept(link, seq)  # an authentic frame of a known child
                msg = t.decode(payload)  # no copy
            except (AuthError, ProtocolError) as exc:
                self._refusals.warn("refused a message from %s: %s",
                                    _peer_name(vertex, frames[-1]), exc)
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
                                type(msg).__name__, _peer_name(None, body))
            return
        if msg.vertex != link:
            self._refusals.warn("refused a hello of vertex %d from %s: sealed for vertex %d's "
                                "link", msg.vertex, _peer_name(None, body), link)
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
            _settle(self.sock.send_multipart([ident, envelope, *parts], copy=False))

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
        _configure(self.sock, secret, server=False)
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
            envelope, body = frames[0], _join(frames[1:])
            try:
                _, seq, payload = self._seal.open(envelope.buffer, _buffer(body), self.vertex)
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
            _settle(self.sock.send_multipart([self._envelope(body), *split(body)],
                                             copy=False))

    async def aclose(self, linger: int = 1000) -> None:
        """:meth:`close`, then wait for our tasks to end."""
        self.close(linger)
        await self._owned.aclose()

    def close(self, linger: int = 1000) -> None:
        """Cancel our tasks, close the socket. Idempotent."""
        self._owned.cancel()
        self.sock.close(linger=linger)
