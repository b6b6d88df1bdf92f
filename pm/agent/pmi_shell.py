"""One rank's PMI connection on the event loop: the thin shell of :mod:`pm.agent.pmi_engine`.

The engine turns the rank's bytes into actions; this :class:`asyncio.Protocol`
carries them out: writes, events for the job (:class:`RankHost`), and the
calls that wait, each a future of the host whose outcome goes back to the
engine by a done callback (no task per request).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from pm.agent.pmi_engine import (
    Action,
    Close,
    Collective,
    Event,
    GetFrom,
    NameService,
    NodeAttrGet,
    PmiEngine,
    Reserve,
    Send,
    Spawn,
    Wire,
)

if TYPE_CHECKING:
    from typing import Protocol

    from pm.agent.pmi_engine import Call, Store
    from pm.proto.spawn import SpawnRequest, SpawnResult

    class RankHost(Store, Protocol):
        """What a session needs from the job it belongs to."""

        def get_from(self, rank: int, src: int, key: bytes) -> asyncio.Future[bytes | None]: ...
        def collective(self, kind: int, rank: int, value: Any) -> asyncio.Future[Any]: ...
        def node_attr_get(self, key: str, wait: bool) -> asyncio.Future[str | None]: ...
        def name_service(self, action: str, service: str,
                         port: str) -> asyncio.Future[tuple[bool, str]]: ...
        def reserve(self, rank: int, nbytes: int) -> asyncio.Future[int]: ...
        def spawn(self, rank: int, request: SpawnRequest) -> asyncio.Future[SpawnResult]: ...
        def rank_event(self, rank: int, event: str, detail: Any = None) -> None: ...


class PmiSession(asyncio.Protocol):
    """Serves one rank. Events reported to the host: ``init``, ``finalize``,
    ``abort`` (detail: (code, message)), ``eof`` (detail: finalized?), ``error``."""

    def __init__(self, host: RankHost, rank: int, engine: PmiEngine | None = None,
                 todo: list[Action] | None = None) -> None:
        self.host = host
        self.rank = rank
        if engine is None:
            engine = PmiEngine(host, rank)
        else:  # served so far by pmrun's quick phase (pm.agent.pmi_quick): ours now
            engine.store = host
        self.engine = engine
        #: What the quick phase left to carry out, run once connected.
        self._todo = todo or []
        self.transport: asyncio.Transport | None = None
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        #: token -> the call it is, while it waits (for a report of the rank's state).
        self._calls: dict[int, Call] = {}
        #: Calls answered as they were made (a spawn served by an in-process head, a
        #: fence of one rank): completed at the end of the :meth:`_run` that made them,
        #: not one loop iteration later.
        self._ready: list[tuple[int, asyncio.Future[Any]]] = []

    @property
    def protocol(self) -> Wire:
        return self.engine.protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        todo, self._todo = self._todo, []
        if todo:
            self._run(todo)

    def data_received(self, data: bytes) -> None:
        # The hot path: a get answered from the store, one write.
        reply = self.engine.answer(data)
        if reply is not None:
            if self.transport is not None:
                self.transport.write(reply)
            return
        acts = self.engine.feed(data, fast=False)
        if acts:
            # Every reply of one read is batched into one Send.
            if len(acts) == 1 and type(acts[0]) is Send and self.transport is not None:
                self.transport.write(acts[0].data)
            else:
                self._run(acts)

    def connection_lost(self, exc: Exception | None) -> None:
        waiting, self._waiting = self._waiting, {}
        self._calls.clear()
        for fut in waiting.values():
            fut.cancel()
        self.transport = None
        self._run(self.engine.eof())

    def _run(self, acts: list[Action]) -> None:
        for act in acts:
            if type(act) is Send:
                if self.transport is not None:
                    self.transport.write(act.data)
            elif type(act) is Event:
                self.host.rank_event(self.rank, act.name, act.detail)
            elif type(act) is Close:
                if self.transport is not None:
                    self.transport.close()
            else:
                self._start(act)  # type: ignore[arg-type]
        ready = self._ready
        while ready:
            token, fut = ready.pop(0)
            self._done(token, fut)

    def _start(self, call: Call) -> None:
        host, rank = self.host, self.rank
        fut: asyncio.Future[Any]
        if type(call) is Collective:
            fut = host.collective(call.kind, rank, call.value)
        elif type(call) is GetFrom:
            fut = host.get_from(rank, call.src, call.key)
        elif type(call) is NodeAttrGet:
            fut = host.node_attr_get(call.key, call.wait)
        elif type(call) is NameService:
            fut = host.name_service(call.action, call.service, call.port)
        elif type(call) is Reserve:
            fut = host.reserve(rank, call.nbytes)
        elif type(call) is Spawn:
            fut = host.spawn(rank, call.request)
        else:
            raise TypeError(f"unknown PMI engine call {call!r}")
        self._waiting[call.token] = fut
        if fut.done():
            self._ready.append((call.token, fut))
            return
        self._calls[call.token] = call
        fut.add_done_callback(functools.partial(self._done, call.token))

    def waits(self) -> str:
        """What the rank waits for besides a collective ("": nothing), for a report."""
        for call in self._calls.values():
            if type(call) is GetFrom:
                key = call.key.removeprefix(b"\0%d\0" % call.src)  # (pm.client's namespace)
                return f"in a get of rank {call.src}'s key {key.decode(errors='replace')!r}"
            if type(call) is NodeAttrGet:
                return f"in a get of the node attribute {call.key!r}"
            if type(call) is Reserve:
                return f"waiting for {call.nbytes} bytes of memory (reserve)"
            if type(call) is Spawn:
                return "in a spawn"
            if type(call) is NameService:
                return f"in a {call.action} of the name {call.service!r}"
        return ""

    def _done(self, token: int, fut: asyncio.Future[Any]) -> None:
        self._calls.pop(token, None)
        if self._waiting.pop(token, None) is None or fut.cancelled():
            return
        exc = fut.exception()
        self._run(self.engine.fail(token, exc) if exc is not None
                  else self.engine.complete(token, fut.result()))
