"""Rank placement and MPICH's ``PMI_process_mapping`` string.

The mapping string is ``(vector,(s,n,p),(s,n,p),...)``: each block ``(s,n,p)``
stands for ``n`` nodes numbered from ``s`` holding ``p`` consecutive ranks
each, in rank order.  MPICH's readers also take a shorter string: when the
blocks run out before the last rank, they start again from the first block
whose start node is 0 (``MPL_rankmap`` in 5.x, ``MPIR_NODEMAP`` before), and
newer MPICH reads a bare node id ``k`` for ``(k,1,1)`` and ``[blocks]xK`` for
blocks repeated K times.  Intel MPI's reader does not start again: given a
mapping that relies on it, its ``MPI_Init`` crashes (SIGSEGV in
``build_locality``, or an abort in ``MPIDU_bc_table_create``; Intel MPI
2021.18).  So :func:`process_mapping` writes every rank's block, as both
Hydras do for such a placement (Intel's ``(vector,(0,2,1),(0,1,1))`` for three
ranks on two nodes, one each), and :func:`parse_process_mapping` reads every
form.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from pm.proto.errors import PMError

__all__ = [
    "MAX_MAPPING_LEN",
    "Block",
    "MappingError",
    "deal",
    "deal_slots",
    "job_placement",
    "local_ranks",
    "parse_process_mapping",
    "place",
    "process_mapping",
    "step_counts",
]

# Hydra drops a mapping longer than this, and MPICH then falls back to
# exchanging host names; a PMI-1 value is at most 1024 bytes anyway.
MAX_MAPPING_LEN = 1024


class MappingError(PMError, ValueError):
    """A placement request or a ``PMI_process_mapping`` string that is not valid."""


class Block(NamedTuple):
    """``nnodes`` nodes numbered from ``start``, ``ppn`` consecutive ranks on each."""

    start: int
    nnodes: int
    ppn: int


def place(n: int, slots: Sequence[int], distribution: str = "block") -> list[int]:
    """Node index of each of ``n`` ranks, placed as Hydra does.

    Walk the nodes in order giving node ``i`` the next ``slots[i]`` ranks, and
    wrap around to node 0 until all ranks are placed:
    ``place(5, [2, 2]) == [0, 0, 1, 1, 0]``.  srun's ``distribution`` ``cyclic``
    deals one rank a node instead, round and round, a node whose slots are taken
    left out until every node's are (as srun and Open MPI's ``--map-by node``
    do): ``place(4, [3, 1], "cyclic") == [0, 1, 0, 0]``; ``plane=N`` deals N at a
    time.  ``MappingError`` if ``n < 0``, ``slots`` is empty or a slot count is
    below 1.
    """
    if n < 0:
        raise MappingError(f"number of ranks must be >= 0, got {n}")
    if not slots:
        raise MappingError("no nodes to place ranks on")
    for i, s in enumerate(slots):
        if s < 1:
            raise MappingError(f"node {i} has {s} slots; every node needs at least 1")
    if distribution == "block":
        one_pass = [node for node, s in enumerate(slots) for _ in range(s)]
    else:
        deal = 1 if distribution == "cyclic" else int(distribution.partition("=")[2])
        one_pass = []
        left = list(slots)
        while len(one_pass) < max(n, 1) and any(left):  # (n ranks need no more of a pass)
            for node, s in enumerate(left):
                take = min(deal, s)
                one_pass += [node] * take
                left[node] = s - take
    full, rest = divmod(n, len(one_pass))
    return one_pass * full + one_pass[:rest]


def deal(n: int, entries: Sequence[tuple[int, int]]) -> list[int]:
    """Node index of each of ``n`` ranks dealt to a host list's entries as Hydra deals
    them: entry ``(node, count)`` takes the next ``count`` ranks, entry after entry, round
    and round until every rank has one.  A node may have several entries (Hydra's
    ``-hosts a,b,a,b``: ranks 0 and 2 on a, 1 and 3 on b); one entry a node is
    :func:`place`'s block.  ``deal(5, [(0, 1), (1, 3)]) == [0, 1, 1, 1, 0]``."""
    if not entries:
        raise MappingError("no nodes to place ranks on")
    one_pass = [node for node, count in entries for _ in range(count)]
    if not one_pass:
        raise MappingError("a host list whose entries have no slots")
    full, rest = divmod(n, len(one_pass))
    return one_pass * full + one_pass[:rest]


def deal_slots(entries: Sequence[tuple[int, int]], nodes: int) -> list[int]:
    """Slots of each of ``nodes`` nodes: the counts of its entries in a host list
    (:func:`deal`), together."""
    slots = [0] * nodes
    for node, count in entries:
        slots[node] += count
    return slots


def ranked(node_of_rank: Sequence[int], order: str, starts: Sequence[int] = (0,)
           ) -> list[int]:
    """The same number of ranks on each node, numbered as Open MPI's ``--rank-by`` says:
    ``block`` (slot, core, ...: a node's ranks consecutive) or ``cyclic`` (node: one a
    node in turn, a node whose ranks are all numbered left out).  ``starts``: where each
    program's ranks begin (MPMD), each program numbered apart.
    ``ranked([0, 1, 0, 1], "block") == [0, 0, 1, 1]``."""
    out: list[int] = []
    bounds = [*starts, len(node_of_rank)]
    for lo, hi in itertools.pairwise(bounds):
        part = node_of_rank[lo:hi]
        left = [0] * (max(part, default=-1) + 1)
        for node in part:
            left[node] += 1
        if order == "block":
            out += [node for node, count in enumerate(left) for _ in range(count)]
            continue
        while len(out) < hi:
            for node, count in enumerate(left):
                if count:
                    out.append(node)
                    left[node] -= 1
    return out


def step_counts(n: int, slots: Sequence[int | None]) -> list[int]:
    """Ranks per node of ``n`` ranks on nodes with ``slots`` each (None: as many as need
    be), as srun lays out a step's tasks by default (block, without packing): deal one a
    node, round and round, a node whose slots are taken left out, and once every node's
    are, one a node over all of them; node after node, the ranks are then consecutive.
    ``step_counts(4, [4, 1]) == [3, 1]``; on equal nodes as even as can be:
    ``step_counts(7, [4, 4, 4]) == [3, 2, 2]``."""
    counts = [0] * len(slots)
    left, over = n, False
    while left > 0 and counts:
        room = False
        for i, s in enumerate(slots):
            if not left:
                break
            if over or s is None or counts[i] < s:
                counts[i] += 1
                left -= 1
                room = room or s is None or counts[i] < s
        over = over or not room
    return counts


def place_apps(counts: Sequence[int], app_nodes: Sequence[Sequence[int]],
               app_slots: Sequence[Sequence[int]], distribution: str = "block") -> list[int]:
    """Node index of each rank of programs whose ranks have hosts of their own (Open MPI's
    ``--host`` of an app context): program ``i``'s ``counts[i]`` ranks placed on its nodes
    ``app_nodes[i]`` (indices into the job's) by its slots, program after program."""
    out: list[int] = []
    for n, nodes, slots in zip(counts, app_nodes, app_slots, strict=True):
        out += [nodes[i] for i in place(n, slots, distribution)]
    return out


def job_placement(counts: Sequence[int], slots: Sequence[int], distribution: str = "block",
                  app_nodes: Sequence[Sequence[int]] = (),
                  app_slots: Sequence[Sequence[int]] = (), rank_by: str = "",
                  given: Sequence[int] = ()) -> list[int]:
    """The node of each rank of a job whose programs have ``counts[i]`` ranks: placed by
    the nodes' ``slots`` (or each program on its own ``app_nodes``, :func:`place_apps`),
    then numbered as ``rank_by`` says (:func:`ranked`); or as ``given`` says, rank by rank
    (Open MPI's rankfile).  The head and every agent place a job's ranks with this one
    function."""
    if given:
        return list(given)
    if app_nodes:
        nodes = place_apps(counts, app_nodes, app_slots, distribution)
    else:
        nodes = place(sum(counts), slots, distribution)
    if rank_by:
        nodes = ranked(nodes, rank_by, list(itertools.accumulate(counts[:-1], initial=0)))
    return nodes


def dealt_placement(counts: Sequence[int], entries: Sequence[tuple[int, int]] | None,
                    slots: Sequence[int], rank_by: str = "") -> list[int]:
    """The node of each rank of a job whose programs have ``counts[i]`` ranks, dealt to a
    host list's ``entries`` (:func:`deal`), when the nodes' ``slots`` would place them
    otherwise (a host named again after another); else ``[]``: :func:`job_placement` by
    the slots is the same, and a plan need not carry every rank's node.  Numbered as
    ``rank_by`` says (:func:`ranked`)."""
    if entries is None:
        return []
    n = sum(counts)
    dealt = deal(n, entries)
    if dealt == place(n, slots):
        return []
    if rank_by:
        dealt = ranked(dealt, rank_by, list(itertools.accumulate(counts[:-1], initial=0)))
    return dealt


def programs_nodes(counts: Sequence[int], ppn: int | None, distribution: str,
                   app_nodes: Sequence[tuple[Sequence[int], Sequence[int | None]]]
                   ) -> tuple[list[int], list[int], list[list[int]], list[list[int]]]:
    """Programs with hosts of their own (``counts[i]`` ranks each, on its nodes and their
    given slots, ``app_nodes[i]``; node indices into the job's host list): the nodes that
    get ranks (the others left out, the rest renumbered in order), the ranks each gets,
    and each program's nodes and slots there (what :func:`place_apps` deals by).  Pure and
    light: it also runs before pmrun's heavy imports, to start the first agents early."""
    total = 1 + max((i for mine, _ in app_nodes for i in mine), default=-1)
    ranks = [0] * total
    per_app: list[list[int]] = []
    for n, (mine, given) in zip(counts, app_nodes, strict=True):
        per = slots_per_node(n, ppn, len(mine), given)
        per_app.append(per)
        for i in place(n, per, distribution):
            ranks[mine[i]] += 1
    # A program's nodes without ranks come last in its list (ranks are dealt in its
    # order): left out, its placement stays the same.
    new = {old: k for k, old in enumerate(i for i, c in enumerate(ranks) if c)}
    nodes, slots = [], []
    for (mine, _), per in zip(app_nodes, per_app, strict=True):
        nodes.append([new[i] for i in mine if i in new])
        slots.append([s for i, s in zip(mine, per, strict=True) if i in new])
    return list(new), [c for c in ranks if c], nodes, slots


def slots_per_node(n: int, ppn: int | None, nodes: int, given: Sequence[int | None]
                   ) -> list[int]:
    """Slots per node for ``n`` ranks: ``ppn`` wins, then the host list's slots, else an
    even block split (where the host list gives none).  Pure and light: it also runs
    before pmrun's heavy imports (:func:`pm.bootstrap.early.step_hosts`)."""
    if ppn is not None:
        return [ppn] * nodes
    if given and all(s is not None for s in given):
        return [int(s) for s in given]  # type: ignore[arg-type]
    per = -(-n // nodes)  # ceil: block distribution over the nodes
    return [int(s) if s is not None else per for s in (given or [None] * nodes)]


def _runs(nodes: Sequence[int]) -> list[tuple[int, int]]:
    """Run-length form of ``nodes``: (node, count) for each maximal run."""
    out: list[tuple[int, int]] = []
    for node in nodes:
        if out and out[-1][0] == node:
            out[-1] = (node, out[-1][1] + 1)
        else:
            out.append((node, 1))
    return out


def _blocks(nodes: Sequence[int]) -> list[Block]:
    """Greedy block form of ``nodes``: runs joined while nodes and counts line up."""
    out: list[Block] = []
    for node, count in _runs(nodes):
        if out and out[-1].ppn == count and out[-1].start + out[-1].nnodes == node:
            out[-1] = out[-1]._replace(nnodes=out[-1].nnodes + 1)
        else:
            out.append(Block(node, 1, count))
    return out


def _format(blocks: Sequence[Block]) -> str:
    return "(vector," + ",".join(f"({b.start},{b.nnodes},{b.ppn})" for b in blocks) + ")"


def process_mapping(node_of_rank: Sequence[int]) -> str:
    """MPICH's ``PMI_process_mapping`` value for ranks placed on ``node_of_rank``.

    Every rank is in a block (no repetition: see the module docstring), and runs
    of ranks join a block while their nodes and counts line up:
    ``[0,0,1,1] -> "(vector,(0,2,2))"``, ``[0,1,0,1] -> "(vector,(0,2,1),(0,2,1))"``,
    ``[0,0,1] -> "(vector,(0,1,2),(1,1,1))"``.  Returns ``""`` (no mapping: the
    clients find their nodes themselves, as under Hydra) for no ranks or when the
    value would exceed ``MAX_MAPPING_LEN`` characters.  ``MappingError`` for a
    negative node.
    """
    if not node_of_rank:
        return ""
    if min(node_of_rank) < 0:
        raise MappingError(f"negative node index {min(node_of_rank)} in a placement")
    text = _format(_blocks(node_of_rank))
    return text if len(text) <= MAX_MAPPING_LEN else ""


def _fail(s: str, why: str) -> MappingError:
    return MappingError(f"bad process mapping {s!r}: {why}")


class _Item(NamedTuple):
    """One element of the vector: blocks repeated ``times`` (1 for a plain block)."""

    blocks: tuple[Block, ...]
    times: int
    group: bool  # written as [..]xK


class _Reader:
    """A cursor over a mapping string that ignores white space."""

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def peek(self) -> str:
        while self.i < len(self.s) and self.s[self.i].isspace():
            self.i += 1
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self, ch: str) -> None:
        if self.peek() != ch:
            raise _fail(self.s, f"expected {ch!r} at offset {self.i}")
        self.i += 1

    def number(self) -> int:
        self.peek()
        j = self.i
        while j < len(self.s) and self.s[j].isdecimal():
            j += 1
        if j == self.i:
            raise _fail(self.s, f"expected a number at offset {self.i}")
        value = int(self.s[self.i : j])
        self.i = j
        return value

    def block(self) -> Block:
        if self.peek() != "(":
            return Block(self.number(), 1, 1)
        self.take("(")
        start = self.number()
        self.take(",")
        nnodes = self.number()
        self.take(",")
        ppn = self.number()
        self.take(")")
        return Block(start, nnodes, ppn)


def _parse_items(s: str) -> list[_Item]:
    r = _Reader(s)
    r.take("(")
    r.peek()  # skip white space
    if not r.s.startswith("vector", r.i):
        raise _fail(s, "it does not start with '(vector'")
    r.i += len("vector")
    items: list[_Item] = []
    while r.peek() == ",":
        r.take(",")
        if r.peek() == "[":
            r.take("[")
            group = [r.block()]
            while r.peek() == ",":
                r.take(",")
                group.append(r.block())
            r.take("]")
            r.take("x")
            items.append(_Item(tuple(group), r.number(), True))
        else:
            items.append(_Item((r.block(),), 1, False))
    r.take(")")
    if r.peek():
        raise _fail(s, f"text after the closing ')' at offset {r.i}")
    if not items:
        raise _fail(s, "no blocks")
    return items


def _nodes(items: Sequence[_Item]) -> Iterator[int]:
    for item in items:
        if not any(b.nnodes and b.ppn for b in item.blocks):
            continue  # no ranks, however many times it repeats
        for _ in range(item.times):
            for b in item.blocks:
                for node in range(b.start, b.start + b.nnodes):
                    for _ in range(b.ppn):
                        yield node


def parse_process_mapping(s: str, n: int) -> list[int]:
    """Node index of each of ``n`` ranks from a ``PMI_process_mapping`` value.

    Reads what MPICH reads: ``(s,n,p)`` blocks, bare node ids and
    ``[blocks]xK`` groups, stopping as soon as ``n`` ranks have a node.  When
    the vector runs out first, it starts again, as MPICH does, from the last
    group if there is one, else from the first block on node 0.
    ``MappingError`` for a malformed (or empty) value, or one that runs out
    with nowhere to start again.
    """
    if n < 0:
        raise MappingError(f"number of ranks must be >= 0, got {n}")
    items = _parse_items(s)
    groups = [i for i, item in enumerate(items) if item.group]
    on_zero = [i for i, item in enumerate(items) if item.blocks[0].start == 0]
    restart = groups[-1] if groups else on_zero[0] if on_zero else None
    out: list[int] = []
    source = _nodes(items)
    while len(out) < n:
        node = next(source, None)
        if node is not None:
            out.append(node)
            continue
        if restart is None:
            raise _fail(s, f"it covers {len(out)} of {n} ranks and has no part to repeat")
        source = _nodes(items[restart:])
        node = next(source, None)
        if node is None:
            raise _fail(s, "its repeated part holds no ranks")
        out.append(node)
    return out


def local_ranks(node_of_rank: Sequence[int]) -> dict[int, list[int]]:
    """Each node's ranks in increasing order, keyed by node in increasing order."""
    out: dict[int, list[int]] = {}
    for rank, node in enumerate(node_of_rank):
        out.setdefault(node, []).append(rank)
    return dict(sorted(out.items()))


def capacities(given: list[int | None], node_of_rank: Sequence[int], nodes: int
               ) -> list[int]:
    """Slots of each of ``nodes`` vertices: as the host list gave them (``given``), else the
    launched job's ranks there (``node_of_rank``: a plain ``-n N`` has room for N; children
    beyond it oversubscribe)."""
    used = [0] * nodes
    for v in node_of_rank:
        used[v] += 1
    return [int(g) if (g := given[v] if v < len(given) else None) is not None else used[v]
            for v in range(nodes)]
