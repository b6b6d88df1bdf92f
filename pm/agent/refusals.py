"""Who knocked on a tree port and was refused: named by address, and not too often.

libzmq's monitor tells of a failed handshake but not whose; :func:`log_refused_handshakes`
pairs it with the connection's accept (whose peer the kernel names) and disconnect.
:class:`RateLimit` keeps a stranger hammering a port from flooding the log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time

import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("pm.agent.links")


def fd_peer(fd: int, local_port: int | None = None) -> str:
    """``ip:port`` of the other end of TCP socket ``fd`` (ours, owned by libzmq), or ''.

    With ``local_port``, '' unless ``fd`` is a connection to that port: by the time the
    monitor's accept is read the connection may be closed and its fd number reused by another
    socket of this process (one connecting to the port, whose peer is the port itself).
    """
    try:
        with socket.socket(fileno=os.dup(fd)) as s:
            host, port = s.getpeername()[:2]
            if local_port is not None and s.getsockname()[1] != local_port:
                return ""
    except (OSError, ValueError):
        return ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RateLimit:
    """At most ``burst`` warnings per ``period`` seconds; the rest are counted and summed up
    in the next warning let through (a stranger flooding a port cannot flood the log)."""

    def __init__(self, burst: int = 5, period: float = 10.0) -> None:
        self.burst = burst
        self.period = period
        self._window = 0.0
        self._said = 0
        self.dropped = 0

    def warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= self.period:
            self._window, self._said = now, 0
        if self._said >= self.burst:
            self.dropped += 1
            return
        self._said += 1
        if self.dropped:
            fmt += " (and %d more refusals not logged)"
            args = (*args, self.dropped)
            self.dropped = 0
        log.warning(fmt, *args)


_FAILED: dict[int, str] = {
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "authentication failed",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "protocol error",
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "handshake failed (a wrong key, or not a "
                                                      "pmrun peer)"}


#: Why a connection that was dropped without a failed handshake was (a tree port's words).
DROPPED = "dropped before joining (a frame over the size bound, or not a tree agent)"


async def log_refused_handshakes(sock: zmq.asyncio.Socket, what: str,
                                 joined: set[int] | None = None,
                                 limit: RateLimit | None = None,
                                 dropped: str = DROPPED) -> None:
    """Log the connections ``sock`` refused, naming the peer's address (rate-limited).

    libzmq reports a failed handshake without saying whose; the connection's
    accept (with its fd, whose peer we ask the kernel for) comes before and its
    disconnect (same fd) right after, on the same I/O thread.  A connection
    dropped after that (a frame over the size bound) is named too unless it
    joined the tree (``joined``: fds of children that said a valid hello).
    A peer that is gone before we could ask the kernel (it failed within
    microseconds of its accept) is "an unknown peer".
    """
    mon = watch_refusals(sock)
    await log_refusals(sock, mon, what, joined, limit, dropped=dropped)


def watch_refusals(sock: zmq.asyncio.Socket) -> zmq.asyncio.Socket:
    """The monitor socket :func:`log_refused_handshakes` reads: made before ``sock`` binds, so
    that not even the first connection's accept is missed."""
    events = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    return sock.get_monitor_socket(events)


def _bound_port(sock: zmq.asyncio.Socket) -> int | None:
    """The TCP port ``sock`` listens on (its one endpoint), or None."""
    try:
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        return int(endpoint.rsplit(":", 1)[1])
    except (zmq.ZMQError, ValueError, IndexError):
        return None


async def log_refusals(sock: zmq.asyncio.Socket, mon: zmq.asyncio.Socket, what: str,
                        joined: set[int] | None = None, limit: RateLimit | None = None,
                        peers: dict[int, str] | None = None, *, dropped: str = DROPPED) -> None:
    limit = limit or RateLimit()
    peers = {} if peers is None else peers
    failed: str | None = None
    own: int | None = None  # the port's number, read at the first accept (it binds later)
    try:
        while True:
            frames = await mon.recv_multipart()
            try:
                ev = parse_monitor_message(frames)
            except Exception:  # a monitor message we do not understand: not worth dying for
                continue
            event, value = int(ev["event"]), int(ev["value"])
            if event == zmq.EVENT_ACCEPTED:
                own = own or _bound_port(sock)
                peers[value] = fd_peer(value, own)
            elif event in _FAILED:
                failed = _FAILED[event]
            elif event == zmq.EVENT_DISCONNECTED:
                peer = peers.pop(value, "") or "an unknown peer"
                if joined is not None and value in joined:
                    joined.discard(value)
                    failed = None
                    continue
                why = failed or dropped
                failed = None
                limit.warn("%s: refused a connection from %s: %s", what, peer, why)
    finally:
        with contextlib.suppress(zmq.ZMQError):
            sock.disable_monitor()
        mon.close(linger=0)
