"""An agent's children: link to them, wait for them to join, notice when they are lost.

A child is *lost* when its agent process ends before it reported its subtree
done, when its link stays silent for the heartbeat timeout, when it does not
join within the join timeout, or when its bootstrap fails.  The parent then
sends :class:`AgentGone` up (the head names the node, kills the job and exits
non-zero) and counts the child's subtree as done, so the job can end.

How the children are started (tree spawn, through the bootstrap) is
:class:`~pm.agent.child_starts.ChildStarts`, a part :class:`Children` inherits;
where they reach their parent is :mod:`pm.agent.listen_port`; the head's stand-in
for vertex 0 when the head stays off the nodes is :class:`~pm.agent.root_relay.RootRelay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import Protocol

from pm.agent.child_port import ChildPort
from pm.agent.child_starts import ChildStarts
from pm.agent.watch import ChildWatch, ExitStatus
from pm.bootstrap.base import Bootstrap, heartbeat_of, join_timeout_of
from pm.common.hostlist import compress
from pm.proto import tree_wire as t
from pm.proto.plan import JobPlan
from pm.proto.tree_frames import seal

log = logging.getLogger("pm.agent.children")

#: Seconds a child agent gets to exit after its stdin closed before it is killed.
EXIT_GRACE = 5.0
#: ... when the agents are one Slurm step and a node of it was named lost.
STEP_LOST_GRACE = 1.5
#: Seconds between "not joined yet" lines while children are awaited.
JOIN_NOTICE = 5.0
#: How many of the missing nodes such a line names.
JOIN_NAMED = 4


class Uplink(Protocol):
    def send(self, msg: t.Msg) -> None: ...


class Vertex(Protocol):
    """What :class:`Children` needs of the agent it belongs to."""

    @property
    def plan(self) -> JobPlan: ...
    @property
    def vertex(self) -> int: ...
    @property
    def children(self) -> list[int]: ...
    @property
    def parent(self) -> Uplink: ...
    def from_child(self, child: int, msg: t.Msg) -> None: ...


class Children(ChildStarts):
    """The downlinks of an agent with children (or of the head's
    :class:`~pm.agent.root_relay.RootRelay`)."""

    def __init__(self, agent: Vertex, secret: bytes, bind: str = "tcp://127.0.0.1", *,
                 port: ChildPort | None = None) -> None:
        self.agent = agent
        self.secret = secret
        plan = agent.plan
        self.heartbeat = heartbeat_of(plan.bootstrap)
        if port is None:
            port = ChildPort(secret, bind, self._hello, self._msg, heartbeat=self.heartbeat,
                             on_lost=self._silent)
        else:
            port.attach(self._hello, self._msg, self._silent)
        self.port = port
        loop = asyncio.get_running_loop()
        self._hellos: dict[int, asyncio.Future[bool]] = {
            v: loop.create_future() for v in agent.children
        }
        #: Frames for children that have not joined yet: sent after their Launch.
        self._queued: dict[int, list[bytes]] = {}
        self._stdin: dict[int, int] = {}
        self._pids: dict[int, int] = {}
        self.watch = ChildWatch()
        self.closing = False
        self.joined: dict[int, float] = {}
        self.gone: set[int] = set()
        #: A node below us was named lost (here or further down).
        self.lost = False
        self.done: set[int] = set()
        self._exits: list[asyncio.Future[ExitStatus]] = []
        #: Ended bootstrap commands not named lost yet (``Bootstrap.hold``): timer, line.
        self._held: dict[int, tuple[asyncio.TimerHandle, str]] = {}
        self._todo: list[int] = []
        #: Agents we started whose parent is another agent (``start == "first"``).
        self._fosters: set[int] = set()
        self._boot: Bootstrap | None = None
        self._launch: bytes | None = None
        self._spawned: float | None = None
        self._level = logging.getLogger("pm").getEffectiveLevel()
        for v, hello in port.take_early():
            self._hello(v, hello)

    # ------------------------------------------------------------------ start, join
    async def start(self, deadline: float) -> None:
        """Bootstrap every child and hand it the plan; children that fail are reported lost."""
        self.spawn_all()
        await self.join(deadline)

    def _hello(self, vertex: int, hello: t.Hello) -> None:
        fut = self._hellos.get(vertex)
        if fut is None:
            log.warning("refused hello from vertex %d: not a child of vertex %d", vertex,
                        self.agent.vertex)
            self.port.drop(vertex)  # its frames are sealed for its own parent's port
            return
        if fut.done():
            return
        if hello.version != t.PROTOCOL_VERSION:
            # Another pmrun there: it would misread the plan, or we its messages.
            self._lost(vertex, f"its agent speaks tree protocol version {hello.version}, "
                               f"this pmrun speaks version {t.PROTOCOL_VERSION} (install the "
                               "same pmrun on every node)")
            return
        self.joined[vertex] = time.monotonic()
        fut.set_result(True)
        if self._launch is None:
            self._launch = seal(self.secret, t.encode(t.Launch(self.agent.plan)))
        self.port.send_raw(vertex, self._launch)
        for frame in self._queued.pop(vertex, ()):
            self.port.send_raw(vertex, frame)
        self._start_more()

    async def join(self, deadline: float) -> None:
        """Wait until every child joined or was lost; name (and drop) the late ones.

        A long wait says what it waits for: every :data:`JOIN_NOTICE` seconds, one
        line with how many children have not joined yet and which (the first few).
        """
        since = self._spawned if self._spawned is not None else time.monotonic()
        notice = since + JOIN_NOTICE
        while True:
            pending = [f for f in self._hellos.values() if not f.done()]
            now = time.monotonic()
            if not pending or now >= deadline:
                break
            if now >= notice:
                self._say_missing(now - since)
                notice += JOIN_NOTICE * (1 + int((now - notice) // JOIN_NOTICE))
            await asyncio.wait(pending, timeout=min(deadline, notice) - now)
        late = [v for v, f in self._hellos.items() if not f.done()]
        if late:
            timeout = join_timeout_of(self.agent.plan.bootstrap)
            boot = self._boot
            for v in late:
                why = boot.late(v) if boot is not None else ""
                self._lost(v, why or f"did not join the tree within {timeout:g} s")
            hosts = compress([self.agent.plan.hosts[v] for v in late])
            # (each is named lost above: the head says so; this is the agent's own record)
            log.info("agent %d: nodes %s (%s) did not join in time", self.agent.vertex,
                     ",".join(map(str, late)), hosts)

    def waiting(self) -> list[int]:
        """The children that have not joined (nor been lost) yet."""
        return [v for v, f in self._hellos.items() if not f.done()]

    def cut_join(self, why: str) -> None:
        """Wait no longer for the children that have not joined: each is lost with ``why``
        (the job ends before they could: pmrun was interrupted)."""
        for v in self.waiting():
            self._lost(v, why)

    def name_waiting(self) -> str:
        """The children not joined yet, for a line: ``node 3 (h3), node 5 (h5) and 2 more``."""
        missing = self.waiting()
        hosts = self.agent.plan.hosts
        named = ", ".join(f"node {v} ({hosts[v]})" for v in missing[:JOIN_NAMED])
        return named + (f" and {len(missing) - JOIN_NAMED} more"
                        if len(missing) > JOIN_NAMED else "")

    def _say_missing(self, waited: float) -> None:
        count = len(self.waiting())
        nodes = "node has" if count == 1 else "nodes have"
        log.warning("%d %s not joined after %.0f s (--join-timeout %g s): %s", count, nodes,
                    waited, join_timeout_of(self.agent.plan.bootstrap), self.name_waiting())

    # ------------------------------------------------------------------ messages
    def _msg(self, vertex: int, msg: t.Msg) -> None:
        if isinstance(msg, t.AgentGone) and msg.vertex == vertex:
            # The child itself says it is leaving mid-job (pm.agent.main.STDIN_LOST).
            self._lost(vertex, msg.text)
            return
        if isinstance(msg, t.AgentGone) and msg.vertex in self._fosters:
            # Its parent gave up on it: whatever we started for it (an ssh still
            # connecting) is no use any more.
            self.gone.add(msg.vertex)
            if msg.vertex in self._pids:
                self.watch.kill(self._pids[msg.vertex])
        if isinstance(msg, (t.AgentGone, t.AgentError)):
            self.lost = True
        if isinstance(msg, t.Done):
            self.done.add(vertex)
            self.port.forget(vertex)
        if vertex in self.gone:
            return  # reported lost already: whatever it still says comes too late
        self.agent.from_child(vertex, msg)

    def send(self, vertex: int, msg: t.Msg) -> None:
        fut = self._hellos.get(vertex)
        if isinstance(msg, t.Kill) and fut is not None and not fut.done():
            # The job is being killed before this child joined: stop waiting for it.
            self._abandon(vertex)
            return
        if fut is not None and not fut.done():
            # A rank's direct get can reach a child that is still starting.
            self._queued.setdefault(vertex, []).append(seal(self.secret, t.encode(msg)))
            return
        self.port.send(vertex, msg)

    # ------------------------------------------------------------------ losses
    def _lost(self, vertex: int, why: str) -> None:
        """Report ``vertex`` lost (once) and count its subtree as done."""
        if self.closing or vertex in self.gone or vertex in self.done:
            return
        self.lost = True
        if vertex in self._fosters:
            # Its parent is vertex 0, which counts its subtree; the head hears it first.
            self.gone.add(vertex)
            self.agent.parent.send(t.AgentGone(vertex, self.agent.plan.hosts[vertex], why))
            return
        self.gone.add(vertex)
        self._queued.pop(vertex, None)
        self.port.drop(vertex, lost=True)
        fut = self._hellos.get(vertex)
        if fut is not None and not fut.done():
            fut.set_result(False)
        host = self.agent.plan.hosts[vertex]
        self.agent.parent.send(t.AgentGone(vertex, host, why))
        self.agent.from_child(vertex, t.Done(vertex, {}))
        self._start_more()

    def _abandon(self, vertex: int) -> None:
        if vertex in self.gone:
            return
        self.gone.add(vertex)
        self._queued.pop(vertex, None)
        fut = self._hellos[vertex]
        if not fut.done():
            fut.set_result(False)
        self.agent.from_child(vertex, t.Done(vertex, {}))

    def _exited(self, vertex: int, fut: asyncio.Future[ExitStatus]) -> None:
        if not fut.cancelled():
            self._died(vertex, fut.result())

    def _died(self, vertex: int, status: ExitStatus) -> None:
        if self.closing or vertex in self.done:
            return
        fut = self._hellos.get(vertex)
        when = " before joining the tree" if fut is not None and not fut.done() else ""
        why = ""
        delay = 0.0
        if self._boot is not None and vertex in self._pids:
            # ssh's or srun's own last words (srun's may name another node first).
            why = self._boot.explain(self._pids[vertex])
            delay = self._boot.hold(self._pids[vertex], status)
        if self.closing or vertex in self.done:
            return
        text = f"agent {status.describe()}{when}" + (f": {why}" if why else "")
        if delay > 0:
            # Perhaps the resource manager's end of the job: its word may be on its way.
            timer = asyncio.get_running_loop().call_later(delay, self._held_over, vertex)
            self._held[vertex] = (timer, text)
            return
        self._lost(vertex, text)

    def _held_over(self, vertex: int) -> None:
        held = self._held.pop(vertex, None)
        if held is not None:
            held[0].cancel()
            self._lost(vertex, held[1])

    def release(self) -> None:
        """The job is ending anyway (the launcher got a signal): name what was held now."""
        if self._boot is not None:
            self._boot.release()
        for vertex in list(self._held):
            self._held_over(vertex)

    def _silent(self, vertex: int, why: str) -> None:
        self._lost(vertex, why)

    def _boot_failed(self, vertex: int, host: str, why: str) -> None:
        if vertex < 0:  # an agent of one step that found no place in the job
            vertex = 0
        if vertex in self._hellos:
            self._lost(vertex, why)
        elif not self.closing:
            # A deeper vertex the head starts for its parent: only the head hears of it.
            gone = t.AgentGone(vertex, host, why)
            self.lost = True
            self.agent.parent.send(gone)
            if self.agent.vertex < 0 and 0 in self._hellos:
                # Its parent would only notice the silence (the heartbeat): tell it, so
                # its subtree counts as done and the job ends now.
                self.send(0, gone)

    def forget(self, vertex: int, why: str) -> None:
        """The head says our child ``vertex`` is lost (it heard it from the bootstrap):
        count its subtree as done, without naming it again."""
        if self.closing or vertex in self.gone or vertex in self.done \
                or vertex not in self._hellos:
            return
        log.info("agent %d: child %d lost: %s", self.agent.vertex, vertex, why)
        self.gone.add(vertex)
        self._queued.pop(vertex, None)
        self.port.drop(vertex, lost=True)
        fut = self._hellos[vertex]
        if not fut.done():
            fut.set_result(False)
        self.agent.from_child(vertex, t.Done(vertex, {}))

    # ------------------------------------------------------------------ ending
    def close(self) -> None:
        """Tell children to go (Shutdown, then closing their stdin) and stop listening.

        Bootstrap processes of children that never joined are killed at once:
        nothing would ever tell them to stop.  Idempotent.
        """
        if self.closing:
            return
        self.closing = True
        for timer, _ in self._held.values():
            timer.cancel()
        self._held.clear()
        bye = seal(self.secret, t.encode(t.Shutdown("job over")))
        for v, fut in self._hellos.items():
            if fut.done() and fut.result():
                self.port.send_raw(v, bye)
            elif v in self._pids:
                self.watch.kill(self._pids[v])  # only if not reaped yet
        for wfd in self._stdin.values():
            if wfd >= 0:
                with contextlib.suppress(OSError):
                    os.close(wfd)
        self._stdin.clear()
        self.port.close()
        if self._boot is not None:
            self._boot.close()

    # A grace period before SIGKILL, not a cancellation timeout.
    async def wait_exit(self, timeout: float = EXIT_GRACE) -> None:  # noqa: ASYNC109
        """Wait for child agent processes to exit; SIGKILL those still there after ``timeout``."""
        pending = [f for f in self._exits if not f.done()]
        step = self.agent.plan.bootstrap.get("start") == "step" and self.agent.vertex < 0
        if pending and step and self.lost:
            # srun waits for the lost node's tasks until Slurm declares the node down
            # (SlurmdTimeout: minutes): the other agents need only a moment to leave.
            timeout = min(timeout, STEP_LOST_GRACE)
        if pending:
            _, pending_set = await asyncio.wait(pending, timeout=timeout)
            if pending_set:
                for v, pid in self._pids.items():
                    # Only what we still own: a child reaped already is not ours any more.
                    if not self.watch.kill(pid):
                        continue
                    if step:
                        # With a node named lost already, this is expected: no second line.
                        log.log(logging.INFO if self.lost else logging.WARNING,
                                "the agents' srun (pid %d) did not exit: killed it", pid)
                    else:  # (a node named lost, or cut by an interrupt: expected)
                        log.log(logging.INFO if self.lost else logging.WARNING,
                                "agent %d: child agent %d (pid %d) did not exit: killed it",
                                self.agent.vertex, v, pid)
                await asyncio.wait(pending_set, timeout=2.0)
        self.watch.close()
        await self.port.aclose()
        if self._boot is not None:
            await self._boot.aclose()
