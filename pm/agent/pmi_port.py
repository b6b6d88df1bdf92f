"""Hydra's ``-pmi-port``: a node's ranks reach its agent at a TCP port, not a socket they inherit.

A program started through something that closes inherited descriptors (sudo, a
wrapper's ``subprocess``) loses ``PMI_FD``; with ``PMI_PORT=127.0.0.1:PORT`` and
``PMI_ID=RANK`` a PMI-1 client connects and says who it is first
(``cmd=initack pmiid=RANK``, MPICH's ``PMII_Set_from_port``), then speaks PMI as
over the inherited socket.  :class:`PmiPort` listens on the node's loopback,
reads (without taking it) the first line of each connection, and hands the
connection to the rank it names; the rank's session answers the initack and
everything after it (:meth:`pm.agent.pmi_engine.PmiEngine`).

Only a process of ours may be a rank: a connection whose peer socket another
user owns is closed (the kernel's socket table says whose it is), as is one that
names no rank of this node, one whose rank is connected already, and one that
says nothing within :data:`HELLO_TIMEOUT`; each is named in one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

__all__ = ["HELLO_TIMEOUT", "PmiPort", "peer_uid"]

log = logging.getLogger("pm.agent.pmi_port")

#: Seconds a connection has to say which rank it is.
HELLO_TIMEOUT = 30.0
#: The longest first line taken (``cmd=initack pmiid=N`` is about 30 bytes).
_HELLO_MAX = 256


def peer_uid(sock: socket.socket) -> int | None:
    """The user owning the other end of ``sock``, a TCP connection on this machine's
    loopback (from /proc/net/tcp: the socket whose local address is our peer's);
    None when it cannot be told."""
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return None
    want = f"{_hex_ip(host)}:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 7 and fields[1] == want:
                    return int(fields[7])
    except (OSError, ValueError):
        return None
    return None


def _hex_ip(host: str) -> str:
    """``127.0.0.1`` as /proc/net/tcp writes it (the address's bytes in host order)."""
    return socket.inet_aton(host)[::-1].hex().upper()


class PmiPort:
    """The node's PMI port: ``connected(rank, sock)`` gets each rank's connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ranks: Callable[[int], bool],
                 connected: Callable[[int, socket.socket], None]) -> None:
        """``ranks(rank)``: whether ``rank`` is one of ours waiting for its connection."""
        self._loop = loop
        self._ranks = ranks
        self._connected = connected
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(socket.SOMAXCONN)
        self._sock.setblocking(False)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}
        self._uid = os.getuid()
        loop.add_reader(self._sock.fileno(), self._accept)

    def env(self, rank: int) -> dict[str, str]:
        """What rank ``rank`` is told instead of ``PMI_FD``."""
        return {"PMI_PORT": self.address, "PMI_ID": str(rank)}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # (out of descriptors: the rank's own connect fails)
                log.warning("-pmi-port: cannot accept a rank's connection: %s", exc.strerror)
                return
            uid = peer_uid(conn)
            if uid != self._uid:
                self._refuse(conn, "a process of another user" if uid is not None
                             else "a process whose owner cannot be told")
                continue
            conn.setblocking(False)
            self._waiting[conn] = self._loop.call_later(
                HELLO_TIMEOUT, self._drop, conn, f"said nothing within {HELLO_TIMEOUT:g} s")
            self._loop.add_reader(conn.fileno(), self._hello, conn)

    def _hello(self, conn: socket.socket) -> None:
        """The connection's first line, left where it is for the rank's session."""
        try:
            head = conn.recv(_HELLO_MAX, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._drop(conn, f"failed: {exc.strerror}")
            return
        line, newline, _ = head.partition(b"\n")
        if not head:
            self._drop(conn, "closed before it said which rank it is", quiet=True)
            return
        if not newline:
            if len(head) >= _HELLO_MAX or not b"cmd=initack pmiid=".startswith(head[:18]):
                self._drop(conn, f"did not start with cmd=initack pmiid=RANK "
                                 f"({_shown(head)})")
            return  # (more to come)
        words = line.decode(errors="replace").split()
        rank_text = words[1].removeprefix("pmiid=") if len(words) == 2 else ""
        if words[:1] != ["cmd=initack"] or not (rank_text.isascii() and rank_text.isdecimal()):
            self._drop(conn, f"did not start with cmd=initack pmiid=RANK ({_shown(line)}): "
                             "the port serves PMI-1 clients given PMI_ID")
            return
        rank = int(rank_text)
        if not self._ranks(rank):
            self._drop(conn, f"named rank {rank}, which is not one of this node's ranks "
                             "waiting for its connection")
            return
        self._forget(conn)
        self._connected(rank, conn)

    def _forget(self, conn: socket.socket) -> None:
        self._loop.remove_reader(conn.fileno())
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()

    def _drop(self, conn: socket.socket, why: str, quiet: bool = False) -> None:
        self._forget(conn)
        self._refuse(conn, None, why, quiet)

    @staticmethod
    def _refuse(conn: socket.socket, who: str | None, why: str = "", quiet: bool = False
                ) -> None:
        if not quiet:
            log.warning("-pmi-port: a connection %s: closed",
                        f"from {who}" if who is not None else why)
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        """Listen no more, and close the connections that never said which rank they are."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        for conn in list(self._waiting):
            self._forget(conn)
            with contextlib.suppress(OSError):
                conn.close()


def _shown(data: bytes) -> str:
    text = data[:40].decode(errors="replace")
    return repr(text) + ("..." if len(data) > 40 else "")
