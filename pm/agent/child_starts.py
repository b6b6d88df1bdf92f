"""Starting an agent's children through the bootstrap, each with its config line.

:class:`ChildStarts` is the part of :class:`~pm.agent.children.Children` that starts
the child agents (tree spawn: each agent starts its own children) through the job's
bootstrap (:mod:`pm.bootstrap`): at most the bootstrap's limit starting at once, more
as others join; vertex 0 and its children at once when the head starts both levels
(``start == "first"``, adopting the commands :mod:`pm.bootstrap.early` started);
every agent with one command when the bootstrap can (``start == "step"``: one Slurm
step).  It watches the commands' processes, passes each agent's reported address to
those waiting for it and hears the resource manager end the job; a command that
cannot start is a lost node (:class:`~pm.agent.children.Children`'s losses).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from typing import TYPE_CHECKING, Any

from pm.agent.listen_port import plan_step_config
from pm.bootstrap import get_bootstrap
from pm.bootstrap.early import abandon_all as abandon_early
from pm.bootstrap.early import take as take_early
from pm.common.kary_tree import Tree
from pm.proto import tree_wire as t
from pm.proto.plan import AgentConfig

if TYPE_CHECKING:
    from pm.agent.child_port import ChildPort
    from pm.agent.children import Vertex
    from pm.agent.watch import ChildWatch, ExitStatus
    from pm.bootstrap.base import Bootstrap


class ChildStarts:
    """How :class:`~pm.agent.children.Children` starts its children (see the module
    docstring); its state is made by :class:`~pm.agent.children.Children`."""

    agent: Vertex
    secret: bytes
    heartbeat: float
    port: ChildPort
    watch: ChildWatch
    closing: bool
    _hellos: dict[int, asyncio.Future[bool]]
    _stdin: dict[int, int]
    _pids: dict[int, int]
    _exits: list[asyncio.Future[ExitStatus]]
    _held: dict[int, tuple[asyncio.TimerHandle, str]]
    _todo: list[int]
    _fosters: set[int]
    _boot: Bootstrap | None
    _spawned: float | None
    _level: int

    if TYPE_CHECKING:  # Children's (see the module docstring)
        def _lost(self, vertex: int, why: str) -> None: ...

        def _exited(self, vertex: int, fut: asyncio.Future[ExitStatus]) -> None: ...

        def _held_over(self, vertex: int) -> None: ...

        def _boot_failed(self, vertex: int, host: str, why: str) -> None: ...

    def spawn_all(self) -> None:
        """Start child agent processes (they join on their own); at most ``limit`` at once."""
        plan = self.agent.plan
        self._spawned = time.monotonic()
        mode = plan.bootstrap.get("start")
        vertex = self.agent.vertex
        if vertex >= 0 and (mode == "step" or (mode == "first" and vertex == 0)):
            return  # the head starts our children for us; they come to our port
        boot = get_bootstrap(str(plan.bootstrap.get("name", "local")), plan.bootstrap)
        boot.on_failure = self._boot_failed
        boot.on_report = self._reported
        boot.on_ended = self._ended
        boot.prepare(plan.hosts, plan.fanout)
        self._boot = boot
        if vertex >= 0 and boot.head_driven:
            return  # (the same: the head reaches every service itself)
        self._todo = list(self.agent.children)
        if vertex < 0 and mode == "step" and self._start_step(boot):
            abandon_early()
            return
        if vertex < 0 and mode == "first":
            # One hop to two levels: vertex 0's children start with vertex 0.
            self._fosters = set(Tree(len(plan.hosts), plan.fanout).children(0))
            self._todo += sorted(self._fosters)
        prefetch = getattr(boot, "prefetch", None)
        if prefetch is not None:  # ssh -G for every child at once, not one by one
            prefetch([plan.hosts[v] for v in self._todo])
        self._start_more()
        if vertex < 0:
            abandon_early()  # started early for a plan that turned out otherwise

    def _config(self, vertex: int, host: str, **extra: Any) -> AgentConfig:
        plan = self.agent.plan
        extra.setdefault("parent", self.port.address)
        return AgentConfig(vertex, secret=self.secret.hex(), job_id=plan.job_id, host=host,
                           log_level=self._level, heartbeat=self.heartbeat,
                           head=self.port.address,
                           iface=str(plan.bootstrap.get("iface") or ""), **extra)

    def _start_step(self, boot: Bootstrap) -> bool:
        """Start every agent with one command; False when the bootstrap cannot."""
        plan = self.agent.plan
        cfg = plan_step_config(plan, self.secret, self.port.address, self._level)
        try:
            started = boot.start_tree(plan.hosts, plan.fanout, cfg)
        except Exception as exc:  # a missing srun, ...: the nodes are lost
            self._todo = []
            self._lost(0, f"could not start the agents: {exc}")
            return True
        if started is None:
            return False
        self._todo = []
        self._track(0, *started)
        return True

    def _track(self, vertex: int, pid: int, wfd: int) -> None:
        self._stdin[vertex] = wfd
        if pid > 0:
            self._pids[vertex] = pid
            fut = self.watch.watch(pid)
            self._exits.append(fut)
            fut.add_done_callback(functools.partial(self._exited, vertex))

    def _ended(self, why: str, code: int) -> None:
        """The resource manager ended the job: the head says so and exits with ``code``."""
        ended = getattr(self.agent.parent, "ended", None)
        if callable(ended):
            ended(why, code)
        elif not self.closing:
            self.agent.parent.send(t.AgentError(self.agent.vertex, "", why))
        for vertex in list(self._held):  # named: what was held only counts as done now
            self._held_over(vertex)

    def _reported(self, vertex: int, address: str) -> None:
        """An agent we started listens at ``address``: tell those waiting for it."""
        line = json.dumps({"addresses": {str(vertex): address}}).encode() + b"\n"
        # (One step: a single stdin, srun's, reaches every agent.)
        for wfd in self._stdin.values():
            if wfd >= 0:
                with contextlib.suppress(OSError):
                    os.write(wfd, line)

    def _start_more(self) -> None:
        boot = self._boot
        if boot is None or self.closing:
            return
        limit = boot.limit or len(self._todo)
        # The head's first level (vertex 0 and its fosters) starts at once.
        starting = sum(1 for v in self._pids if v in self._hellos and not self._hellos[v].done())
        while self._todo and (starting < limit or self._fosters):
            v = self._todo.pop(0)
            host = self.agent.plan.hosts[v]
            if v in self._fosters:
                cfg = self._config(v, host, parent="", up=0)
            else:
                cfg = self._config(v, host, listen=bool(self._fosters) and v == 0)
            try:
                early = take_early(v, host) if self.agent.vertex < 0 else None
                if early is not None:
                    pid, wfd = boot.adopt(early, cfg)  # type: ignore[attr-defined]
                else:
                    pid, wfd = boot.start(host, cfg)
            except Exception as exc:  # SpawnError, a bad template, ...: the node is lost
                self._lost(v, f"could not start its agent: {exc}")
                continue
            self._track(v, pid, wfd)
            starting += 1
