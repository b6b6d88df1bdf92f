"""The head's stand-in for vertex 0 when the head stays off the nodes.

:class:`RootRelay` is used when the head runs no ranks
(``pm.bootstrap.base.head_relays``): vertex 0 then runs on ``hosts[0]`` like any
other agent and the head is its parent, with one link (its
:class:`~pm.agent.children.Children`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from pm.common.kary_tree import Tree
from pm.proto import tree_wire as t
from pm.proto.plan import JobPlan

if TYPE_CHECKING:
    from pm.agent.children import Children, Uplink


class RootRelay:
    """The head's side of vertex 0 when vertex 0 runs on ``hosts[0]`` (no ranks in the head).

    It offers what :class:`pm.head.JobRun` uses of an in-process
    :class:`~pm.agent.node.JobAgent` and relays: messages from vertex 0 go to
    the head unchanged, the head's Kill / Signal / Stdin go down to vertex 0.
    """

    vertex = -1

    def __init__(self, plan: JobPlan, parent: Uplink) -> None:
        self.plan = plan
        self.parent = parent
        self.tree = Tree(len(plan.hosts), plan.fanout)
        self.children = [0]
        self.node_of_rank = plan.node_of_rank()
        self.children_link: Children | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.host = socket.gethostname()
        #: Start-up events are recorded by vertex 0 and come up with its Done.
        self.timeline: list[Any] | None = None
        self._killing = False

    def mark(self, what: str, rank: int = -1, **args: Any) -> None:
        """Nothing to record: the head's own events are not part of any node's timeline."""

    async def prepare(self) -> None:
        """Nothing to prepare: the head runs no ranks."""

    def start_ranks(self) -> None:
        """The head runs no ranks."""

    def from_child(self, child: int, msg: t.Msg) -> None:
        if isinstance(msg, t.Done) and not self.done.done():
            self.done.set_result(None)
        self.parent.send(msg)

    def from_parent(self, msg: t.Msg) -> None:
        if isinstance(msg, t.Kill):
            self.kill(msg.reason, msg.grace, msg.report)
        else:
            self._down(msg)

    def from_tree(self, msg: t.Msg) -> None:
        self._down(msg)

    def _down(self, msg: t.Msg) -> None:
        if self.children_link is not None:
            self.children_link.send(0, msg)

    def kill(self, reason: str, grace: float, report: int = 0) -> None:
        """Kill the job on every node (vertex 0 passes it down the tree); ``report``: each
        agent first says how its ranks stand (:class:`~pm.proto.tree_wire.Report`)."""
        first = not self._killing
        self._killing = True
        if first or grace <= 0:
            self._down(t.Kill(reason, grace, report if first else 0))

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """Nothing of its own to release: the head closes the :class:`Children`."""
