"""What one node asks of other nodes through the tree: direct gets and the name service.

A rank's get of a key another node owns ("direct modex") and its
publish/lookup/unpublish of a service name become a request with an id,
routed through the tree to the owner (or, for names, to vertex 0, which keeps
the job's names), and a response routed back that resolves the asker's
future.  :class:`TreeRequests` is that plumbing for one
:class:`~pm.agent.node.JobAgent`: the requests in flight, the sharing of one
fetch among concurrent askers, keeping a fetched value on the node, serving
the gets and name requests that reach this vertex.  It is apart from the agent
because it is one request/response protocol with its own state; of the agent
it needs only routing (:meth:`JobAgent.route`), the node KVS, shared memory
and profiling marks.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from pm.proto import tree_wire as t
from pm.proto.errors import RankFailed

if TYPE_CHECKING:
    from pm.agent.node import JobAgent


class TreeRequests:
    """The requests ``agent`` sends through the tree and those it serves."""

    def __init__(self, agent: JobAgent) -> None:
        self.agent = agent
        #: The run's name service (on vertex 0 only): its spawned jobs share the launched
        #: job's (pm.agent.spawned_jobs), so a parent and its children find each other's names.
        self.names = NameService()
        self._reqs: dict[int, asyncio.Future[Any]] = {}
        self._next_req = 1
        #: Direct gets in flight, by key: concurrent gets of one key share one request.
        self._fetching: dict[tuple[bytes, int], asyncio.Future[bytes | None]] = {}

    # ------------------------------------------------------------------ direct gets
    def get_from(self, rank: int, src: int, key: bytes) -> asyncio.Future[bytes | None]:
        """Rank ``rank``'s get of ``key`` put by rank ``src``: from the node KVS, or
        fetched from the node that runs ``src``."""
        agent = self.agent
        value = agent.kvs.get(key)
        if value is not None:
            fut: asyncio.Future[bytes | None] = agent.loop.create_future()
            fut.set_result(value)
            return fut
        owner = agent.node_of_rank[src]
        if agent.timeline is not None:
            agent.mark("get", rank, src=src, node=owner)
        threshold = agent.kvs.threshold(rank)
        if owner == agent.vertex:
            return agent.kvs.wait_for(src, key, threshold)
        # Askers at the same threshold share one request to the owner.
        shared = self._fetching.get((key, threshold))
        if shared is None:
            req, shared = self._new_req()
            self._fetching[(key, threshold)] = shared
            shared.add_done_callback(
                functools.partial(_forget, self._fetching, (key, threshold)))
            shared.add_done_callback(functools.partial(self._fetched, key))
            agent.route(owner, t.GetReq(req, agent.vertex, owner, key, src, threshold))
        # Each asker gets its own future: cancelling one must not cancel the others.
        mine: asyncio.Future[bytes | None] = agent.loop.create_future()
        shared.add_done_callback(functools.partial(_copy_result, dst=mine))
        return mine

    def _fetched(self, key: bytes, fut: asyncio.Future[bytes | None]) -> None:
        """Keep a value fetched from another node: the node's next get of it is local
        (and in shared memory, a native rank's is no request at all)."""
        if fut.cancelled() or fut.exception() is not None:
            return
        agent = self.agent
        value = fut.result()
        if value is not None and agent.kvs.get(key) is None:
            agent.kvs.cache(key, value)
            if agent.shm is not None:
                agent.shm_insert([(key, value)])

    def serve_get(self, msg: t.GetReq) -> None:
        """A get for a key of this node's ranks: answered once it is there (or never will be)."""
        agent = self.agent
        if agent.timeline is not None:
            agent.mark("get served", msg.rank, origin=msg.origin)
        got = agent.kvs.wait_for(msg.rank, msg.key, msg.threshold)
        got.add_done_callback(functools.partial(self._answer_get, msg))

    def _answer_get(self, msg: t.GetReq, fut: asyncio.Future[bytes | None]) -> None:
        value = None if fut.cancelled() else fut.result()
        self.agent.route(msg.origin,
                         t.GetResp(msg.req, msg.origin, value is not None, value or b""))

    # ------------------------------------------------------------------ name service
    def name_service(self, action: str, service: str, port: str) -> asyncio.Future[Any]:
        """Publish, look up or unpublish ``service``: ``(ok, port)`` once vertex 0 answers."""
        req, fut = self._new_req()
        self.name_req(t.NameReq(req, self.agent.vertex, action, service, port))
        return fut

    def name_req(self, m: t.NameReq) -> None:
        """A name request of this node or of one below: up to vertex 0, which answers it."""
        agent = self.agent
        if agent.vertex != 0:
            agent.parent.send(m)
            return
        self.names.serve(agent, m)

    # ------------------------------------------------------------------ responses
    def response(self, msg: t.GetResp | t.NameResp) -> None:
        """The answer to a request this node sent: its asker's future is resolved."""
        fut = self._reqs.pop(msg.req, None)
        if fut is None or fut.done():
            return
        if isinstance(msg, t.GetResp):
            if msg.found:
                fut.set_result(msg.value)
            else:
                fut.set_result(None)
        else:
            fut.set_result((msg.ok, msg.port))

    def fail(self, why: str) -> None:
        """Fail every request in flight with :class:`RankFailed` (the job is ending)."""
        for fut in self._reqs.values():
            if not fut.done():
                fut.set_exception(RankFailed(why))
                # Its session may be gone already: nobody else need retrieve it.
                fut.exception()
        self._reqs.clear()

    def _new_req(self) -> tuple[int, asyncio.Future[Any]]:
        req = self._next_req
        self._next_req += 1
        fut: asyncio.Future[Any] = self.agent.loop.create_future()
        self._reqs[req] = fut
        return req, fut


def _forget(table: dict[Any, Any], key: Any, _fut: asyncio.Future[Any]) -> None:
    table.pop(key, None)


def _copy_result(src: asyncio.Future[Any], dst: asyncio.Future[Any]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
        dst.exception()  # the asker may have gone: never "exception never retrieved"
    else:
        dst.set_result(src.result())


class NameService:
    """Names published in a run, served at vertex 0; requests of any of its jobs.

    Actions of :class:`pm.proto.tree.NameReq`: ``publish`` (``port`` is the
    value; a second publish of a name fails), ``publish-once`` (the same,
    the name going with its first lookup: PMIx's ``PMIX_PERSIST_FIRST_READ``),
    ``unpublish``, ``lookup`` (answered at once, found or not), ``lookup-wait``
    (held until the name is published: PMIx's ``PMIX_WAIT``), and ``connect``,
    a rendezvous: ``port`` is ``here/total/hex``, the participants of the asking
    node and of all and its data; every asker is answered, with all the data
    (hex, in the order of arrival), once the counts reach the total; ``group``,
    the same rendezvous whose answer also carries a number unique in the run
    (``ID/hex``: PMIx's group context IDs, from 1).
    """

    def __init__(self) -> None:
        self._names: dict[str, str] = {}
        self._once: set[str] = set()
        self._waiting: dict[str, list[tuple[JobAgent, t.NameReq]]] = {}
        self._connects: dict[str, tuple[int, list[tuple[JobAgent, t.NameReq]]]] = {}
        self._last_id = 0

    def serve(self, agent: JobAgent, m: t.NameReq) -> None:
        ok, port = True, m.port
        if m.action in ("publish", "publish-once"):
            ok = m.service not in self._names
            if ok:
                self._names[m.service] = m.port
                if m.action == "publish-once":
                    self._once.add(m.service)
                for asker, w in self._waiting.pop(m.service, []):
                    self._answer(asker, w)
        elif m.action == "unpublish":
            ok = self._names.pop(m.service, None) is not None
            self._once.discard(m.service)
        elif m.action in ("connect", "group"):
            self._connect(agent, m)
            return
        elif m.action == "lookup-wait" and m.service not in self._names:
            self._waiting.setdefault(m.service, []).append((agent, m))
            return
        else:
            self._answer(agent, m)
            return
        agent.route(m.origin, t.NameResp(m.req, m.origin, ok, port))

    def _answer(self, agent: JobAgent, m: t.NameReq) -> None:
        """A lookup's answer, found or not (a name published once goes with it)."""
        got = self._names.get(m.service)
        if got is not None and m.service in self._once:
            del self._names[m.service]
            self._once.discard(m.service)
        agent.route(m.origin, t.NameResp(m.req, m.origin, got is not None, got or ""))

    def _connect(self, agent: JobAgent, m: t.NameReq) -> None:
        try:
            here, total, _data = m.port.split("/")
            count, askers = self._connects.get(m.service, (0, []))
            count += int(here)
            askers.append((agent, m))
            done = count >= int(total)
        except ValueError:
            agent.route(m.origin, t.NameResp(m.req, m.origin, False, ""))
            return
        if not done:
            self._connects[m.service] = (count, askers)
            return
        self._connects.pop(m.service, None)
        joined = "".join(w.port.split("/")[2] for _a, w in askers)
        if any(w.action == "group" for _a, w in askers):
            self._last_id += 1
        for asker, w in askers:
            answer = f"{self._last_id}/{joined}" if w.action == "group" else joined
            asker.route(w.origin, t.NameResp(w.req, w.origin, True, answer))
