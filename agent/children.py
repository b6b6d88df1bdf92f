"""An agent's children: start them (tree spawn), link to them, notice when they die."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from pm.agent.links import ChildPort
from pm.agent.spawn import ChildWatch, ExitStatus
from pm.bootstrap.base import AgentConfig, get_bootstrap
from pm.proto import tree as t
from pm.proto.errors import AgentLost, Timeout

if TYPE_CHECKING:
    from pm.agent.node import JobAgent

log = logging.getLogger("pm.agent.children")


class Children:
    """The Downlinks of an agent with children."""

    def __init__(self, agent: JobAgent, secret: bytes, bind: str = "tcp://127.0.0.1") -> None:
        self.agent = agent
        self.secret = secret
        self.port = ChildPort(secret, bind, self._hello, self._msg)
        self._hellos: dict[int, asyncio.Future[t.Hello]] = {
            v: asyncio.get_running_loop().create_future() for v in agent.children
        }
        self._stdin: dict[int, int] = {}
        self._pids: dict[int, int] = {}
        self.watch = ChildWatch()
        self.closing = False
        self.joined: dict[int, float] = {}
        self._exits: list[asyncio.Future[ExitStatus]] = []

    def _hello(self, vertex: int, hello: t.Hello) -> None:
        fut = self._hellos.get(vertex)
        if fut is None:
            log.warning("refused hello from vertex %d: not a child of vertex %d", vertex,
                        self.agent.vertex)
            return
        if not fut.done():
            self.joined[vertex] = time.monotonic()
            fut.set_result(hello)

    def _msg(self, vertex: int, msg: t.Msg) -> None:
        self.agent.from_child(vertex, msg)

    async def start(self, deadline: float) -> None:
        """Bootstrap every child and hand it the plan; raise naming a child that did not join."""
        self.spawn_all()
        await self.join(deadline)

    def spawn_all(self) -> None:
        """Start every child agent process (they join on their own)."""
        plan = self.agent.plan
        boot = get_bootstrap(plan.bootstrap.get("name", "local"), plan.bootstrap)
        level = logging.getLogger("pm").getEffectiveLevel()
        for v in self.agent.children:
            host = plan.hosts[v]
            cfg = AgentConfig(v, self.port.address, self.secret.hex(), plan.job_id, host, level)
            pid, wfd = boot.start(host, cfg)
            self._pids[v] = pid
            self._stdin[v] = wfd
            fut = self.watch.watch(pid)
            self._exits.append(fut)
            fut.add_done_callback(
                lambda f, v=v: self._died(v, f.result()) if not f.cancelled() else None)

    async def join(self, deadline: float) -> None:
        """Wait for each child's hello and send it the plan."""
        plan = self.agent.plan
        launch = t.Launch(plan.to_wire())
        frame = t.seal(self.secret, t.encode(launch))
        for v, fut in self._hellos.items():
            try:
                await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise Timeout(f"node {v} ({plan.hosts[v]}) did not join the tree in time") from None
            self.port.send_raw(v, frame)

    def _died(self, vertex: int, status: ExitStatus) -> None:
        if self.closing:
            return
        host = self.agent.plan.hosts[vertex]
        fut = self._hellos.get(vertex)
        if fut is not None and not fut.done():
            fut.set_exception(AgentLost(f"agent for node {vertex} ({host}) {status.describe()} "
                                        "before joining"))
        text = f"agent {status.describe()}"
        self.agent.parent.send(t.AgentGone(vertex, host, text))

    def send(self, vertex: int, msg: t.Msg) -> None:
        self.port.send(vertex, msg)

    def close(self) -> None:
        """Tell children to go (closing their stdin) and stop listening. Idempotent."""
        self.closing = True
        for wfd in self._stdin.values():
            with contextlib.suppress(OSError):
                os.close(wfd)
        self._stdin.clear()
        self.port.close()

    async def wait_exit(self, timeout: float) -> None:
        """Wait for child agent processes to exit (they do once their stdin closes)."""
        pending = [f for f in self._exits if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        self.watch.close()
