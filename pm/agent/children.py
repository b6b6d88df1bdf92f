"""An agent's children: start them (tree spawn), link to them, notice when they are lost.

A child is *lost* when its agent process ends before it reported its subtree
done, when its link stays silent for the heartbeat timeout, when it does not
join within the join timeout, or when its bootstrap fails.  The parent then
sends :class:`AgentGone` up (the head names the node, kills the job and exits
non-zero) and counts the child's subtree as done, so the job can end.

:class:`RootRelay` is the head's stand-in for vertex 0 when the head stays off
the nodes (``pm.bootstrap.base.head_relays``): vertex 0 then runs on
``hosts[0]`` like any other agent and the head is its parent, with one link.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import time
from typing import Any, Protocol

from pm.agent.links import (
    ANY_ADDRESS,
    ChildPort,
    endpoint_host,
    iface_address,
    is_ip,
    route_source,
)
from pm.agent.watch import ChildWatch, ExitStatus
from pm.bootstrap import get_bootstrap
from pm.bootstrap.base import (
    LOCAL_NAMES,
    Bootstrap,
    heartbeat_of,
    join_timeout_of,
    step_config,
)
from pm.bootstrap.early import abandon_all as abandon_early
from pm.bootstrap.early import take as take_early
from pm.common.hostlist import compress
from pm.common.kary_tree import Tree
from pm.proto import tree_wire as t
from pm.proto.errors import PMError
from pm.proto.plan import AgentConfig, JobPlan

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


def listen_endpoint(options: dict[str, Any], parent: str | None,
                    toward: str | None = None) -> str:
    """The endpoint (``tcp://ADDR``, no port) an agent listens on for its children.

    Local trees use loopback.  ``--iface`` names an interface (used on every
    host) or an address (used by the head only: agents elsewhere listen on the
    address they reach their parent through).  The head without ``--iface``
    uses its address on the route to ``toward`` (its first child's host).
    """
    if str(options.get("name", "local")) in LOCAL_NAMES:
        return "tcp://127.0.0.1"
    iface = options.get("iface")
    if iface and (parent is None or not is_ip(str(iface))):
        return f"tcp://{iface_address(str(iface))}"
    src, unresolved = None, ""
    if parent is not None:
        src = route_source(endpoint_host(parent))
    else:
        if toward and str(options.get("name")) == "ssh":
            from pm.bootstrap.ssh import resolve_host

            # Where ssh goes for that name (Host aliases), which DNS may not know.
            toward = resolve_host(toward, options)
        src = route_source(toward) if toward else None
        if src is None and str(options.get("name")) == "slurm":
            # A node name DNS does not know (Slurm's NodeAddr only): asking slurmctld
            # costs a round trip on the launch's path.  Listen on every address instead;
            # the agents reach us where srun runs (SLURM_LAUNCH_NODE_IPADDR, what their
            # slurmd saw srun's connection come from: agent.main.reach_launcher).
            return f"tcp://{ANY_ADDRESS}"
        unresolved = toward if toward and src is None else ""
        if src is None:
            src = route_source(socket.getfqdn())
    if src is None or src.startswith("127."):
        # Under a parent on loopback (``--iface 127.0.0.1``) the whole tree is on this
        # machine by the user's choice: nothing to warn about.
        if parent is None or not endpoint_host(parent).startswith("127."):
            why = f"{unresolved} does not resolve here: " if unresolved else ""
            log.warning("%slistening for agents on loopback: agents on other hosts cannot "
                        "reach it (give -localhost ADDRESS: this machine's address they "
                        "reach)", why)
        src = src or "127.0.0.1"
    return f"tcp://{src}"


async def find_listen_endpoint(options: dict[str, Any], parent: str | None,
                               toward: str | None = None) -> str:
    """:func:`listen_endpoint` off the loop: finding it may run ``ssh -G`` or ``scontrol``
    and ask DNS, which can take seconds.  A local tree's is known at once."""
    if str(options.get("name", "local")) in LOCAL_NAMES:
        return "tcp://127.0.0.1"
    return await asyncio.to_thread(listen_endpoint, options, parent, toward)


def _step_config(plan: JobPlan, secret: bytes, address: str, level: int) -> AgentConfig:
    """This plan's :func:`~pm.bootstrap.base.step_config`."""
    return step_config(secret=secret, job_id=plan.job_id, address=address, level=level,
                       options=plan.bootstrap, hosts=compress(plan.hosts), fanout=plan.fanout)


def step_port(plan: JobPlan, secret: bytes) -> ChildPort | None:
    """The head's port on the socket whose address the early Slurm step was told
    (:mod:`pm.bootstrap.early`), if the config it was told is this plan's; else None (and
    that step is let go)."""
    if plan.bootstrap.get("start") != "step":
        return None
    from pm.bootstrap.early import abandon_all, take_listener

    level = logging.getLogger("pm").getEffectiveLevel()
    taken = take_listener(lambda address: _step_config(plan, secret, address, level).to_wire())
    if taken is None:
        return None
    try:
        return ChildPort(secret, f"tcp://{ANY_ADDRESS}", None, None,
                         heartbeat=heartbeat_of(plan.bootstrap), listening=taken)
    except (PMError, OSError) as exc:
        log.info("cannot serve the early step's socket (%s): starting the agents anew", exc)
        with contextlib.suppress(OSError):
            os.close(taken[0])
        abandon_all()
        return None


class Children:
    """The downlinks of an agent with children (or of the head's :class:`RootRelay`)."""

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

    # ------------------------------------------------------------------ start
    async def start(self, deadline: float) -> None:
        """Bootstrap every child and hand it the plan; children that fail are reported lost."""
        self.spawn_all()
        await self.join(deadline)

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
        cfg = _step_config(plan, self.secret, self.port.address, self._level)
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
            self._launch = t.seal(self.secret, t.encode(t.Launch(self.agent.plan)))
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
            self._queued.setdefault(vertex, []).append(t.seal(self.secret, t.encode(msg)))
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
        bye = t.seal(self.secret, t.encode(t.Shutdown("job over")))
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
