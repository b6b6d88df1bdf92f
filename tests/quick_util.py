"""A :class:`pm.agent.pmi_quick.QuickPmi` over socket pairs, without processes.

``Ranks(n)`` makes ``n`` ranks whose PMI sockets are one end of a socket pair
each; the test writes and reads the other end (``send`` writes a request and
lets the quick phase serve it, the way its poll loop does: through the rank's
hot entry when it has one).
"""

from __future__ import annotations

import socket

from pm.agent.pmi_quick import QuickPmi
from pm.agent.started import StartedRank, StartedRanks

KVSNAME = "kvs_7_0"


class Ranks:
    """A QuickPmi over socket pairs: each rank's end is ours to write and read."""

    def __init__(self, n: int, *, native: bool = True) -> None:
        self.started = StartedRanks("7")
        self.peers: list[socket.socket] = []
        for rank in range(n):
            r = StartedRank(rank, rank)
            r.pmi, peer = socket.socketpair()
            self.started.ranks.append(r)
            self.peers.append(peer)
        self.pmi = QuickPmi(self.started, KVSNAME, n, native=native, host="here")

    def send(self, rank: int, data: bytes) -> bool | None:
        self.peers[rank].sendall(data)
        return self.pmi.serve(self.started.ranks[rank])

    def read(self, rank: int) -> bytes:
        self.peers[rank].setblocking(False)
        try:
            return self.peers[rank].recv(65536)
        except BlockingIOError:
            return b""

    def ask(self, rank: int, data: bytes) -> bytes:
        """Send ``data``, which must be served: what came back."""
        assert self.send(rank, data) is True
        return self.read(rank)

    def hot(self, rank: int) -> bool:
        """Whether the rank's requests go through its hot entry now."""
        sock = self.started.ranks[rank].pmi
        return sock is not None and sock.fileno() in self.pmi.hot

    def close(self) -> None:
        for r, peer in zip(self.started.ranks, self.peers, strict=True):
            peer.close()
            if r.pmi is not None:
                r.pmi.close()
