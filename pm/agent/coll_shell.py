"""A node's collectives as the ranks see them: futures around the pure state machine.

:class:`pm.agent.collectives.Collectives` decides (contributions in, actions
out); :class:`NodeCollectives` is the thin asyncio shell that one
:class:`~pm.agent.node.JobAgent` owns around it: it turns a rank's fence,
barrier, allgather or ring into a contribution and a future, carries the
actions out (the aggregate up to the parent, the result down to the children
once, the fence's puts into the node KVS and shared memory) and resolves each
rank's future.  It is apart from the agent because it is one concept with its
own state (the ranks' futures, ring-over-allgather bookkeeping, the parent's
frame being forwarded) and needs of the agent only its links, KVS, shared
memory and profiling marks.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from pm.agent.collectives import KIND_NAMES, Collectives, Complete, SendUp
from pm.common.mapping import local_ranks
from pm.proto import tree_wire as t
from pm.proto.errors import RankFailed
from pm.proto.tree_frames import seal

if TYPE_CHECKING:
    from pm.agent.node import JobAgent


class NodeCollectives:
    """The collectives of ``agent``'s ranks and subtree (``machine``: the state machine)."""

    def __init__(self, agent: JobAgent) -> None:
        self.agent = agent
        self.machine = Collectives(agent.local, agent.coll_children, agent.size,
                                   agent.vertex == 0)
        self._contiguous = self._ring_order_is_rank_order()
        self._coll_futs: dict[tuple[int, int, int], asyncio.Future[Any]] = {}
        self._ring_ag: dict[tuple[int, int], int] = {}
        self._frame_down: Any = None  # the parent's frame of the CollOut being handled
        #: (Vertex 0.) The job's ranks that ended without finalizing.
        self._gone: list[t.Gone] = []
        self._stuck = False  # said already
        #: Local ranks that finalized and ended, not told as gone (:meth:`rank_finished`).
        self._finished: dict[int, tuple[str, int]] = {}

    def _ring_order_is_rank_order(self) -> bool:
        agent = self.agent
        order: list[int] = []
        locals_of = local_ranks(agent.node_of_rank)
        for v in range(len(agent.plan.hosts)):  # pre-order numbering = tree order
            order.extend(locals_of.get(v, []))
        return order == list(range(agent.size))

    def pending(self, rank: int) -> str:
        """The collective ``rank`` waits in (``fence 2``), '' when none."""
        for (kind, epoch, r), fut in self._coll_futs.items():
            if r == rank and not fut.done():
                return f"{KIND_NAMES.get(kind, 'collective')} {epoch}"
        return ""

    def collective(self, kind: int, rank: int, value: Any) -> asyncio.Future[Any]:
        """Rank ``rank``'s contribution to its next collective of ``kind``: its result."""
        agent = self.agent
        fut: asyncio.Future[Any] = agent.loop.create_future()
        if kind == t.RING and not self._contiguous:
            # Ring order is not rank order on this mapping: ride an allgather.
            kind, value, ring = t.ALLGATHER, value, True
        else:
            ring = False
        if kind == t.FENCE:
            piece: Any = agent.kvs.take_pending(rank)
        elif kind == t.ALLGATHER:
            piece = [rank, value]
        elif kind == t.RING:
            piece = value
        else:
            piece = None
        epoch, actions = self.machine.contribute(kind, rank, piece)
        self._coll_futs[(kind, epoch, rank)] = fut
        if agent.timeline is not None:
            agent.mark(f"{KIND_NAMES[kind]} in", rank, epoch=epoch)
        if ring:
            self._ring_ag[(epoch, rank)] = 1
        self._act(actions)
        self._check_stuck()
        self._finished_awaited()
        return fut

    def rank_finished(self, rank: int, how: str, code: int) -> None:
        """Local ``rank`` finalized and ended (``how``, its status ``code``): a collective
        under way here that it has not joined (a barrier after the others finalized, a
        rank that finalized instead of joining) can never complete: it is gone then."""
        self._finished[rank] = (how, code)
        self._finished_awaited()

    def _finished_awaited(self) -> None:
        pending = self.machine.pending()
        if not self._finished or not pending:
            return
        for rank, (how, code) in list(self._finished.items()):
            if any(self.machine.next_epoch(kind, rank) <= epoch for kind, epoch in pending):
                del self._finished[rank]
                self.rank_gone(rank, how, code)

    def from_parent(self, msg: t.CollOut) -> None:
        """A result that came down the tree."""
        agent = self.agent
        if agent.timeline is not None:
            agent.mark("coll result in", kind=KIND_NAMES[msg.kind], epoch=msg.epoch)
        # The frame as it came, for the children (see _complete); None under the head.
        self._frame_down = getattr(agent.parent, "frame", None)
        try:
            self._act(self.machine.result_in(msg.epoch, msg.kind, msg.data))
        finally:
            self._frame_down = None

    def from_child(self, child: int, msg: t.CollIn) -> None:
        """An aggregate that came up from child agent ``child``."""
        agent = self.agent
        if agent.timeline is not None:
            agent.mark("coll child in", child=child, kind=KIND_NAMES[msg.kind],
                       epoch=msg.epoch)
        self._act(self.machine.child_in(child, msg.epoch, msg.kind, msg.data))
        self._check_stuck()

    def rank_gone(self, rank: int, how: str, code: int) -> None:
        """Local ``rank`` ended without finalizing (``how``, its status ``code``): told to
        vertex 0, which sees every collective of the job begin (:meth:`gone`)."""
        joined = [self.machine.next_epoch(kind, rank) for kind in range(t.RING + 1)]
        msg = t.Gone(self.agent.vertex, rank, how, code, joined)
        # (Behind the flush of its exit, scheduled already: the head hears that first.)
        loop = self.agent.loop
        loop.call_soon(self.gone if self.machine.is_root else self.agent.parent.send, msg)

    def gone(self, msg: t.Gone) -> None:
        """(Vertex 0.) A rank is gone: a collective it has not joined, now or later, can
        never complete."""
        self._gone.append(msg)
        self._check_stuck()

    def _check_stuck(self) -> None:
        """(Vertex 0.) Say once, up to the head, that a collective under way waits for a
        rank that is gone: the job would hang in it for ever."""
        if not self._gone or self._stuck:
            return
        machine = self.machine
        for kind, epoch in machine.pending():
            for msg in self._gone:
                if msg.joined[kind] <= epoch:
                    self._stuck = True
                    waiting = machine.waiting(kind, epoch)
                    self.agent.parent.send(t.Stuck(msg.vertex, msg.rank, msg.how, msg.code,
                                                   kind, epoch, min(waiting, default=-1)))
                    return

    def fail(self, why: str) -> None:
        """Fail every rank's pending collective with :class:`RankFailed` (the job is ending)."""
        for fut in self._coll_futs.values():
            if not fut.done():
                fut.set_exception(RankFailed(why))
                # Its session may be gone already: nobody else need retrieve it.
                fut.exception()
        self._coll_futs.clear()

    def _act(self, actions: list[Any]) -> None:
        agent = self.agent
        for a in actions:
            if isinstance(a, SendUp):
                if agent.timeline is not None:
                    agent.mark("coll up", kind=KIND_NAMES[a.kind], epoch=a.epoch)
                agent.parent.send(t.CollIn(a.epoch, a.kind, a.data))
            elif isinstance(a, Complete):
                self._complete(a)

    def _complete(self, c: Complete) -> None:
        agent = self.agent
        shm_reply = None
        if c.kind == t.FENCE:
            agent.kvs.insert_many(c.data)
            if agent.shm is not None:
                it = iter(c.data)
                agent.shm_insert([(k, v) for k, _r, v in zip(it, it, it, strict=True)],
                                 replace=True)
        elif c.kind == t.ALLGATHER and agent.shm is not None and not self._ring_ag:
            from pm.proto.native import allgather_key

            # Kept once per node: native clients read the values from shared memory.
            if agent.shm_insert([(allgather_key(c.epoch, r), v) for r, v in enumerate(c.data)]):
                shm_reply = ["shm", c.epoch]
        if agent.timeline is not None:
            agent.mark("coll down", kind=KIND_NAMES[c.kind], epoch=c.epoch)
        if agent.children_link is not None and c.children:
            if c.kind == t.RING:
                for child, data in c.children.items():
                    agent.children_link.send(child, t.CollOut(c.epoch, c.kind, data))
            else:
                # Every child gets the same result: encode and seal it once, or
                # forward the parent's frame (a multi-MiB allgather is not re-encoded).
                self._send_same(list(c.children), t.CollOut(c.epoch, c.kind, c.data),
                                self._frame_down)
        tl = agent.timeline
        out_mark = f"{KIND_NAMES[c.kind]} out"
        for rank, result in c.local.items():
            if tl is not None:
                agent.mark(out_mark, rank, epoch=c.epoch)
            fut = self._coll_futs.pop((c.kind, c.epoch, rank), None)
            if fut is None or fut.done():
                continue
            if c.kind == t.ALLGATHER and self._ring_ag.pop((c.epoch, rank), 0):
                n = agent.size
                result = [result[(rank - 1) % n], result[(rank + 1) % n]]
            if shm_reply is not None and c.kind == t.ALLGATHER:
                result = shm_reply
            fut.set_result(result if c.kind in (t.ALLGATHER, t.RING) else None)

    def _send_same(self, children: list[int], msg: t.Msg, frame: Any = None) -> None:
        """Send one message to several children, encoded and sealed once (``frame``:
        ``msg`` as sealed by the parent, forwarded as it is)."""
        link = self.agent.children_link
        from pm.agent.children import Children

        if not isinstance(link, Children):
            for child in children:
                assert link is not None
                link.send(child, msg)
            return
        if frame is None or getattr(self.agent.parent, "secret", None) != link.secret:
            frame = seal(link.secret, t.encode(msg))
        for child in children:
            link.port.send_raw(child, frame)

