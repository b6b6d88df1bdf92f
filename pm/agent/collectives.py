"""Collective state machines (pure: contributions in, actions out).

A collective of one *kind* (fence, barrier, allgather, ring) has a sequence
number per kind: a rank's k-th fence is fence epoch k.  An agent waits for its
local ranks' contributions and its children's aggregates, then sends *one*
message up; the root turns the whole-job aggregate into a result, which comes
down *once* per agent.  Kinds progress independently, and epochs of one kind
complete in order, so several collectives can be in flight at once.

Pieces are combined in tree order: the agent's own ranks (in rank order) first,
then each child subtree in vertex order (the tree is numbered in pre-order, so
with a block rank mapping this is rank order: what lets the ring move only the
two boundary values of each subtree).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, TextIO

from pm.proto.tree_wire import ALLGATHER, BARRIER, FENCE, RING

KIND_NAMES = {FENCE: "fence", BARRIER: "barrier", ALLGATHER: "allgather", RING: "ring"}


class SendUp:
    """Send this subtree's aggregate of ``epoch`` to the parent."""

    __slots__ = ("data", "epoch", "kind")

    def __init__(self, epoch: int, kind: int, data: Any) -> None:
        self.epoch, self.kind, self.data = epoch, kind, data


class Complete:
    """Epoch done on this agent: ``local`` maps each local rank to its result;
    ``children`` maps each child vertex to the data to send it; ``data`` is the
    whole result as it came down (kept once per node by the agent)."""

    __slots__ = ("children", "data", "epoch", "kind", "local")

    def __init__(self, epoch: int, kind: int, local: dict[int, Any], children: dict[int, Any],
                 data: Any) -> None:
        self.epoch, self.kind, self.local, self.children, self.data = (
            epoch, kind, local, children, data)


Action = SendUp | Complete


class _Epoch:
    __slots__ = ("children", "local", "sent")

    def __init__(self) -> None:
        self.local: dict[int, Any] = {}
        self.children: dict[int, Any] = {}
        self.sent = False


def _merge(kind: int, pieces: Sequence[Any]) -> Any:
    """Combine ordered pieces into one up message."""
    if kind == BARRIER:
        return None
    if kind in (FENCE, ALLGATHER):
        # Flat lists ([key, rank, value, ...] or [rank, value, ...]) concatenate.
        out: list[Any] = []
        for p in pieces:
            out.extend(p)
        return out
    if kind == RING:
        # Each piece is [first_value, last_value] of a contiguous run in ring order.
        present = [p for p in pieces if p is not None]
        if not present:
            return None
        return [present[0][0], present[-1][1]]
    raise ValueError(f"unknown collective kind {kind}")


def _root_result(kind: int, size: int, data: Any) -> Any:
    if kind == ALLGATHER:
        values: list[Any] = [None] * size
        it = iter(data)
        for rank, value in zip(it, it, strict=True):
            values[rank] = value
        return values
    if kind == RING:
        # The ring wraps: the left of the first rank is the last rank's value.
        first, last = data
        return [last, first]
    return data


def ring_follows_ranks(node_of_rank: Sequence[int], nvertices: int) -> bool:
    """Whether tree order (each vertex's ranks, vertices in pre-order) is rank order.

    Only then can the ring move just the boundary values of each subtree; on
    other mappings (cyclic placement) it rides an allgather.
    """
    order: list[int] = []
    by_vertex: list[list[int]] = [[] for _ in range(nvertices)]
    for rank, v in enumerate(node_of_rank):
        by_vertex[v].append(rank)
    for ranks in by_vertex:
        order.extend(ranks)
    return order == list(range(len(node_of_rank)))


def ring_from_allgather(values: Sequence[Any], rank: int) -> list[Any]:
    """``[left, right]`` of ``rank`` (wrapping) from an allgather's values."""
    n = len(values)
    return [values[(rank - 1) % n], values[(rank + 1) % n]]


class Collectives:
    """The collective bookkeeping of one agent for one job.

    ``local_ranks`` are this vertex's ranks, ``children`` its child vertices.
    Every vertex of a job holds at least one rank (the head drops nodes past
    the last rank), so every agent takes part in every collective: it hears
    of an epoch from its own ranks or from a child.
    """

    def __init__(self, local_ranks: Sequence[int], children: Sequence[int], size: int,
                 is_root: bool) -> None:
        self.local_ranks = list(local_ranks)
        self._local_set = set(local_ranks)
        self.children = list(children)
        self.size = size
        self.is_root = is_root
        self._open: dict[tuple[int, int], _Epoch] = {}
        self._next: dict[tuple[int, int], int] = {}  # (kind, rank) -> next epoch
        self._child_next: dict[tuple[int, int], int] = {}
        self._last_done: dict[int, int] = {}
        #: Tree messages this agent caused, per kind: one up per epoch (if not
        #: the root), one down per child per epoch; ``epochs`` completed here.
        self.sent_up: Counter[int] = Counter()
        self.sent_down: Counter[int] = Counter()
        self.epochs: Counter[int] = Counter()

    def next_epoch(self, kind: int, rank: int) -> int:
        return self._next.get((kind, rank), 1)

    def pending(self) -> list[tuple[int, int]]:
        """(kind, epoch) of collectives that have started and not completed here."""
        return sorted(self._open)

    def waiting(self, kind: int, epoch: int) -> set[int]:
        """The local ranks that joined ``epoch`` of ``kind`` (under way here)."""
        ep = self._open.get((kind, epoch))
        return set(ep.local) if ep is not None else set()

    def contribute(self, kind: int, rank: int, piece: Any) -> tuple[int, list[Action]]:
        """A local rank joins its next collective of ``kind``; returns (epoch, actions)."""
        if rank not in self._local_set:
            raise ValueError(f"rank {rank} is not local")
        epoch = self._next.get((kind, rank), 1)
        self._next[(kind, rank)] = epoch + 1
        ep = self._open.setdefault((kind, epoch), _Epoch())
        ep.local[rank] = piece
        return epoch, self._progress(kind, epoch)

    def child_in(self, child: int, epoch: int, kind: int, data: Any) -> list[Action]:
        """A child subtree's aggregate arrived."""
        ep = self._open.setdefault((kind, epoch), _Epoch())
        ep.children[child] = data
        return self._progress(kind, epoch)

    def result_in(self, epoch: int, kind: int, data: Any) -> list[Action]:
        """The parent sent the result of ``epoch``."""
        ep = self._open.pop((kind, epoch), None)
        self._last_done[kind] = max(self._last_done.get(kind, 0), epoch)
        done = self._complete(kind, epoch, data, ep or _Epoch())
        self.epochs[kind] += 1
        self.sent_down[kind] += len(done.children)
        return [done]

    def counts(self) -> dict[str, dict[str, int]]:
        """Messages sent and epochs completed so far, by kind name."""
        return {
            name: {"up": self.sent_up[k], "down": self.sent_down[k], "epochs": self.epochs[k]}
            for k, name in KIND_NAMES.items() if self.epochs[k] or self.sent_up[k]
        }

    def _progress(self, kind: int, epoch: int) -> list[Action]:
        ep = self._open[(kind, epoch)]
        if ep.sent or len(ep.local) < len(self.local_ranks) or len(ep.children) < len(
            self.children
        ):
            return []
        ep.sent = True
        pieces: list[Any] = [self._local_piece(kind, ep)]
        pieces.extend(ep.children[c] for c in self.children)
        up = _merge(kind, pieces)
        if not self.is_root:
            self.sent_up[kind] += 1
            return [SendUp(epoch, kind, up)]
        return self.result_in(epoch, kind, _root_result(kind, self.size, up))

    def _local_piece(self, kind: int, ep: _Epoch) -> Any:
        ranks = self.local_ranks
        if kind == RING:
            if not ranks:
                return None
            return [ep.local[ranks[0]], ep.local[ranks[-1]]]
        if kind in (FENCE, ALLGATHER):
            return _merge(kind, [ep.local[r] for r in ranks])
        return None

    def _complete(self, kind: int, epoch: int, data: Any, ep: _Epoch) -> Complete:
        if kind != RING:
            return Complete(epoch, kind, dict.fromkeys(self.local_ranks, data),
                            dict.fromkeys(self.children, data), data)
        left_out, right_out = data if data is not None else (None, None)
        # Walk the pieces in ring order: own ranks, then each child's [first, last].
        seq: list[tuple[str, Any, Any]] = [("r", r, ep.local.get(r)) for r in self.local_ranks]
        seq += [("c", c, ep.children.get(c)) for c in self.children if ep.children.get(c)]
        local: dict[int, Any] = {}
        # A child subtree without ranks gets a result too, so it closes the epoch.
        children: dict[int, Any] = dict.fromkeys(self.children)
        for i, (what, ident, _val) in enumerate(seq):
            prev = seq[i - 1] if i > 0 else None
            nxt = seq[i + 1] if i + 1 < len(seq) else None
            left = left_out if prev is None else (prev[2] if prev[0] == "r" else prev[2][1])
            right = right_out if nxt is None else (nxt[2] if nxt[0] == "r" else nxt[2][0])
            if what == "r":
                local[ident] = [left, right]
            else:
                children[ident] = [left, right]
        return Complete(epoch, kind, local, children, data)


#: Set to make every agent write its collective message counts to stderr at its end.
COUNT_ENV = "PM_COUNT_MSGS"


def report_counts(vertex: int, coll: Collectives, out: TextIO | None = None) -> None:
    """Write ``coll-msgs vertex=<v> <kind>=<up>/<down>/<epochs> ...`` when PM_COUNT_MSGS is set.

    One line per agent, for benchmarks that check the tree's message costs.
    """
    if not os.environ.get(COUNT_ENV) and out is None:
        return
    parts = [f"{name}={c['up']}/{c['down']}/{c['epochs']}" for name, c in coll.counts().items()]
    stream = out if out is not None else sys.stderr
    stream.write(f"coll-msgs vertex={vertex} {' '.join(parts)}\n")
    stream.flush()
