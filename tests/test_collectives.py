"""The collective state machines, many agents and ranks simulated in one process.

A small harness plays the agents' part (pm.agent.coll_shell does the same with
sockets): it feeds contributions into one :class:`Collectives` per tree
vertex, carries SendUp / Complete.children as messages over FIFO links
between parent and child, delivers them in a random interleaving, and
records what every rank gets.
"""

from __future__ import annotations

import io
import random
from collections import Counter, deque
from typing import Any

import pytest

from pm.agent.collectives import (
    Collectives,
    Complete,
    SendUp,
    report_counts,
    ring_follows_ranks,
    ring_from_allgather,
)
from pm.common.kary_tree import Tree
from pm.common.mapping import local_ranks
from pm.proto.tree_wire import ALLGATHER, BARRIER, FENCE, RING

pytestmark = pytest.mark.timeout(30)


def block(n: int, nodes: int) -> list[int]:
    per = -(-n // nodes)
    return [r // per for r in range(n)]


def cyclic(n: int, nodes: int) -> list[int]:
    return [r % nodes for r in range(n)]


class Sim:
    """A job of ``len(node_of_rank)`` ranks on a tree of ``nodes`` agents."""

    def __init__(self, node_of_rank: list[int], nodes: int, fanout: int, seed: int = 0) -> None:
        # Like the head: nodes past the last one holding a rank are not part of the job,
        # and every node of the job holds at least one rank.
        nodes = min(nodes, max(node_of_rank) + 1)
        assert set(node_of_rank) == set(range(nodes))
        self.size = len(node_of_rank)
        self.tree = Tree(nodes, fanout)
        self.local = local_ranks(node_of_rank)
        self.agents = {
            v: Collectives(self.local.get(v, []), self.tree.children(v), self.size, v == 0)
            for v in range(nodes)
        }
        self.ring_direct = ring_follows_ranks(node_of_rank, nodes)
        self.node_of_rank = node_of_rank
        self.links: dict[tuple[int, int], deque[tuple[int, int, Any]]] = {}
        #: rank -> [(kind, epoch, result), ...] in the order the rank got them
        self.got: dict[int, list[tuple[int, int, Any]]] = {r: [] for r in range(self.size)}
        self.sent: Counter[int] = Counter()  # messages sent per vertex
        self.rng = random.Random(seed)
        self._ring_ag: set[tuple[int, int]] = set()

    # -- what a rank does ---------------------------------------------------
    def contribute(self, kind: int, rank: int, value: Any = None) -> int:
        """Like JobAgent.collective: the piece each kind carries up."""
        ring_ag = kind == RING and not self.ring_direct
        if ring_ag:
            kind = ALLGATHER
        piece: Any
        if kind == FENCE:
            piece = [] if value is None else [f"k{rank}", rank, value]
        elif kind == ALLGATHER:
            piece = [rank, value]
        elif kind == RING:
            piece = value
        else:
            piece = None
        v = self.node_of_rank[rank]
        epoch, actions = self.agents[v].contribute(kind, rank, piece)
        if ring_ag:
            self._ring_ag.add((epoch, rank))
        self._act(v, actions)
        return epoch

    # -- the agents' side ---------------------------------------------------
    def _act(self, v: int, actions: list[Any]) -> None:
        for a in actions:
            if isinstance(a, SendUp):
                parent = self.tree.parent(v)
                assert parent is not None, "the root never sends up"
                self.links.setdefault((v, parent), deque()).append((a.epoch, a.kind, a.data))
                self.sent[v] += 1
            else:
                assert isinstance(a, Complete)
                assert set(a.children) == set(self.tree.children(v)), "one result per child"
                for child, data in a.children.items():
                    self.links.setdefault((v, child), deque()).append((a.epoch, a.kind, data))
                    self.sent[v] += 1
                for rank, result in a.local.items():
                    if a.kind == ALLGATHER and (a.epoch, rank) in self._ring_ag:
                        self._ring_ag.discard((a.epoch, rank))
                        self.got[rank].append((RING, a.epoch, ring_from_allgather(result, rank)))
                    else:
                        self.got[rank].append((a.kind, a.epoch, result))

    def run(self) -> int:
        """Deliver every message (random link each step, FIFO per link); return how many."""
        n = 0
        while True:
            busy = [k for k, q in self.links.items() if q]
            if not busy:
                return n
            src, dst = self.rng.choice(busy)
            epoch, kind, data = self.links[(src, dst)].popleft()
            n += 1
            if self.tree.parent(src) == dst:
                self._act(dst, self.agents[dst].child_in(src, epoch, kind, data))
            else:
                self._act(dst, self.agents[dst].result_in(epoch, kind, data))

    def results(self, kind: int) -> dict[int, list[Any]]:
        return {r: [res for k, _e, res in got if k == kind] for r, got in self.got.items()}


CONFIGS = [  # (ranks, nodes, fanout)
    (1, 1, 2), (4, 1, 32), (5, 3, 2), (8, 4, 2), (13, 7, 2), (16, 8, 3), (3, 5, 2), (64, 8, 2),
]


@pytest.mark.parametrize(("n", "nodes", "fanout"), CONFIGS)
@pytest.mark.parametrize("place", [block, cyclic])
def test_every_kind_gives_every_rank_the_right_result(n: int, nodes: int, fanout: int,
                                                       place: Any) -> None:
    sim = Sim(place(n, nodes), nodes, fanout, seed=n * 31 + nodes)
    order = list(range(n))
    for kind in (FENCE, BARRIER, ALLGATHER, RING):
        sim.rng.shuffle(order)
        for r in order:
            sim.contribute(kind, r, f"{kind}-{r}")
        sim.run()
    fence = {f"k{r}": f"{FENCE}-{r}" for r in range(n)}
    for r in range(n):
        [(fk, _, fdata), (bk, _, bdata), (ak, _, adata), (rk, _, rdata)] = sim.got[r]
        assert (fk, bk, ak, rk) == (FENCE, BARRIER, ALLGATHER, RING)
        it = iter(fdata)
        assert {k: v for k, rank, v in zip(it, it, it, strict=True)
                if k == f"k{rank}"} == fence
        assert bdata is None
        assert adata == [f"{ALLGATHER}-{i}" for i in range(n)]
        assert rdata == [f"{RING}-{(r - 1) % n}", f"{RING}-{(r + 1) % n}"]
    # Every agent has closed every epoch, including agents without ranks.
    assert all(a.pending() == [] for a in sim.agents.values())


@pytest.mark.parametrize(("n", "nodes"), [(1, 1), (2, 1), (2, 2), (7, 1), (7, 3), (7, 7)])
@pytest.mark.parametrize("place", [block, cyclic])
def test_ring_on_1_2_7_ranks(n: int, nodes: int, place: Any) -> None:
    node_of = place(n, nodes)
    sim = Sim(node_of, nodes, 2, seed=n + nodes)
    for r in reversed(range(n)):
        sim.contribute(RING, r, b"v%d" % r)
    sim.run()
    for r in range(n):
        assert sim.results(RING)[r] == [[b"v%d" % ((r - 1) % n), b"v%d" % ((r + 1) % n)]]
    if n == 1:
        assert sim.results(RING)[0] == [[b"v0", b"v0"]]


def test_ring_order_decision() -> None:
    # Block placement numbers ranks in tree pre-order; cyclic does not.
    assert ring_follows_ranks(block(7, 3), 3)
    assert not ring_follows_ranks(cyclic(7, 3), 3)
    assert ring_follows_ranks(cyclic(3, 5), 5)  # one rank per node is both
    assert ring_from_allgather(["a", "b", "c"], 0) == ["c", "b"]
    assert ring_from_allgather(["a"], 0) == ["a", "a"]


def test_cyclic_ring_rides_an_allgather_but_block_ring_moves_boundaries_only() -> None:
    n, nodes = 12, 4
    b = Sim(block(n, nodes), nodes, 2)
    for r in range(n):
        b.contribute(RING, r, b"x" * 10)
    b.run()
    # A subtree sends up [first, last]: two values whatever its size.
    up = b.agents[1].counts()["ring"]
    assert up == {"up": 1, "down": len(b.tree.children(1)), "epochs": 1}
    c = Sim(cyclic(n, nodes), nodes, 2)
    for r in range(n):
        c.contribute(RING, r, b"x")
    c.run()
    assert "ring" not in c.agents[1].counts() and c.agents[1].counts()["allgather"]["epochs"] == 1
    for r in range(n):
        assert b.results(RING)[r] == [[b"x" * 10, b"x" * 10]]
        assert c.results(RING)[r] == [[b"x", b"x"]]


@pytest.mark.parametrize(("n", "nodes", "fanout"), [(6, 3, 2), (20, 7, 2), (9, 9, 3)])
def test_several_epochs_in_flight_complete_in_order(n: int, nodes: int, fanout: int) -> None:
    sim = Sim(block(n, nodes), nodes, fanout, seed=7)
    epochs = 4
    # Every rank starts all its allgathers and fences before any message moves.
    for e in range(1, epochs + 1):
        order = list(range(n))
        sim.rng.shuffle(order)
        for r in order:
            assert sim.contribute(ALLGATHER, r, (e, r)) == e
            assert sim.contribute(FENCE, r, f"{e}/{r}") == e
    assert sorted(sim.agents[0].pending()) == sorted(
        [(ALLGATHER, e) for e in range(1, epochs + 1)] + [(FENCE, e) for e in range(1, epochs + 1)]
    )
    sim.run()
    for r in range(n):
        ag = [(e, res) for k, e, res in sim.got[r] if k == ALLGATHER]
        assert [e for e, _ in ag] == list(range(1, epochs + 1)), "epochs complete in order"
        for e, res in ag:
            assert res == [(e, i) for i in range(n)]
        fences = [e for k, e, _ in sim.got[r] if k == FENCE]
        assert fences == list(range(1, epochs + 1))
    assert all(a.pending() == [] for a in sim.agents.values())


def test_epochs_wait_for_the_slowest_rank_and_kinds_are_independent() -> None:
    n, nodes = 6, 3
    sim = Sim(block(n, nodes), nodes, 2)
    for r in range(n - 1):
        sim.contribute(ALLGATHER, r, r)
        sim.contribute(BARRIER, r)
    for r in range(n):
        sim.contribute(FENCE, r)
    sim.run()
    # The fence completed although the allgather and barrier still wait for rank 5.
    assert all([k for k, _, _ in sim.got[r]] == [FENCE] for r in range(n))
    sim.contribute(BARRIER, n - 1)
    sim.run()
    assert all([k for k, _, _ in sim.got[r]] == [FENCE, BARRIER] for r in range(n))
    sim.contribute(ALLGATHER, n - 1, n - 1)
    sim.run()
    assert sim.results(ALLGATHER)[0] == [list(range(n))]


@pytest.mark.parametrize(("n", "nodes", "fanout"), [(8, 1, 2), (16, 4, 2), (64, 8, 2), (64, 8, 8),
                                                   (30, 15, 2)])
def test_message_count_is_constant_per_agent_per_collective(n: int, nodes: int,
                                                           fanout: int) -> None:
    sim = Sim(block(n, nodes), nodes, fanout, seed=3)
    rounds = 3
    total = 0
    for _ in range(rounds):
        for kind in (FENCE, BARRIER, ALLGATHER, RING):
            for r in range(n):
                sim.contribute(kind, r, b"v")
            total += sim.run()
    collectives = rounds * 4
    # Exactly one message up and one down per tree edge per collective.
    assert total == collectives * 2 * (nodes - 1)
    for v, agent in sim.agents.items():
        children = len(sim.tree.children(v))
        assert sim.sent[v] == collectives * ((v != 0) + children)
        for name, c in agent.counts().items():
            assert c == {"up": rounds * (v != 0), "down": rounds * children, "epochs": rounds}, name
    assert max(sim.sent.values(), default=0) / collectives <= 1 + fanout


def test_contribution_from_a_rank_of_another_node_is_refused() -> None:
    coll = Collectives([0, 1], [1], 4, True)
    with pytest.raises(ValueError, match="not local"):
        coll.contribute(FENCE, 3, [])


def test_report_counts_line() -> None:
    sim = Sim(block(4, 2), 2, 2)
    for r in range(4):
        sim.contribute(ALLGATHER, r, b"a")
    sim.run()
    out = io.StringIO()
    report_counts(1, sim.agents[1], out)
    assert out.getvalue() == "coll-msgs vertex=1 allgather=1/0/1\n"
    out = io.StringIO()
    report_counts(0, sim.agents[0], out)
    assert out.getvalue() == "coll-msgs vertex=0 allgather=0/1/1\n"
