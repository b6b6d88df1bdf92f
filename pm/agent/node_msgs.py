"""The tree's messages at a node: routed on, or handed to the agent's parts; and signals.

A :class:`~pm.agent.node.JobAgent` hears from its parent (the next agent up, or the
head in the same process) and from the child agents it started, and sends on what is
for another vertex (:func:`route`: each message one hop nearer ``dst``).  What comes
down (:func:`from_parent`: the collectives' results, a spawned job's messages, the
kill, a stream nobody reads any more, pmrun's signals) and what comes up
(:func:`from_child`: contributions, Done, name requests, stdin taken, what goes on up
unchanged) is handed to the part it is for; what is routed (:func:`from_tree`: direct
gets and their answers, stdin, output credit, spawn answers, a lost node's word) is
served here when it is for this vertex.  A bug in handling a message ends the job,
naming the node, instead of leaving collectives waiting for ever.

Signals reach the ranks from pmrun, down the tree, and from Slurm to the agent's step
(:mod:`pm.agent.step_signals`): :func:`slurm_signal` passes Slurm's on unless Slurm
signalled the ranks itself, and :func:`slurm_term` says Slurm's SIGTERM up, once per
:data:`pm.agent.step_signals.PAIRED` seconds of the subtree.

These are the agent's own steps on its own state: functions of the agent, which its
methods call.
"""

from __future__ import annotations

import logging
import signal
import time
from typing import TYPE_CHECKING

from pm.agent import node_end
from pm.agent.step_signals import PAIRED
from pm.proto import tree_wire as t
from pm.proto.plan import STDIN_ALL

if TYPE_CHECKING:
    from pm.agent.node import JobAgent

log = logging.getLogger("pm.agent")


def route(agent: JobAgent, dst: int, msg: t.Msg) -> None:
    """Send ``msg`` on its way to vertex ``dst`` (handled here when it is this one)."""
    if dst == agent.vertex:
        from_tree(agent, msg)
        return
    hop = agent.tree.route(agent.vertex, dst)
    if hop == agent.tree.parent(agent.vertex):
        agent.parent.send(msg)
    elif agent.children_link is not None:
        agent.children_link.send(hop, msg)


def from_parent(agent: JobAgent, msg: t.Msg) -> None:
    """A message that came down the tree."""
    try:
        _from_parent(agent, msg)
    except Exception as exc:
        _internal_error(agent, msg, exc)


def from_child(agent: JobAgent, child: int, msg: t.Msg) -> None:
    """A message that came up from child agent ``child``."""
    try:
        _from_child(agent, child, msg)
    except Exception as exc:
        _internal_error(agent, msg, exc)


def _internal_error(agent: JobAgent, msg: t.Msg, exc: Exception) -> None:
    # A bug here would leave collectives waiting for ever: end the job instead,
    # naming the node, as for any other fatal agent error.
    log.exception("agent %d failed handling %s", agent.vertex, type(msg).__name__)
    agent.parent.send(t.AgentError(agent.vertex, agent.host,
                                   f"internal error handling {type(msg).__name__}: {exc!r}"))


def _from_parent(agent: JobAgent, msg: t.Msg) -> None:
    if isinstance(msg, t.CollOut):
        agent.coll.from_parent(msg)
    elif isinstance(msg, (t.Sub, t.SpawnLaunch)):
        from pm.agent.spawned_jobs import on_agent

        spawns = on_agent(agent)
        if isinstance(msg, t.Sub):
            spawns.from_parent(msg)
        else:
            spawns.launch(msg)
    elif isinstance(msg, t.Kill):
        agent.kill(msg.reason, msg.grace, msg.report)
    elif isinstance(msg, t.OutputGone):
        agent._down_all(msg)
        agent.procs.output_gone(msg.stream)
        if agent.spawns is not None:
            agent.spawns.output_gone(msg.stream)
    elif isinstance(msg, t.Signal):
        agent._down_all(msg)
        if agent.step_signals is None or agent.step_signals.from_tree(msg.signum):
            agent.deliver_signal(msg.signum)
        if msg.signum in (signal.SIGTSTP, signal.SIGCONT):
            # After a SIGTSTP the head stops itself until SIGCONT: a parent that
            # watches the link for silence (ParentLink) holds that watch meanwhile.
            hold = getattr(agent.parent, "hold", None)
            if hold is not None:
                hold(msg.signum == signal.SIGTSTP)
    else:
        from_tree(agent, msg)


def slurm_signal(agent: JobAgent, signum: int) -> None:
    """Slurm's ``signum`` to this agent's step (pm.agent.step_signals): for the ranks,
    unless Slurm signalled them itself (their guardian tells, within
    :data:`pm.agent.step_signals.PROBE` seconds, the first time it can: until then the
    signals wait, in order)."""
    from pm.agent.spawn import GUARDIAN_BLOCKS

    if signum not in GUARDIAN_BLOCKS or agent.slurm_reaches is False:
        agent.deliver_signal(signum)
    elif agent.slurm_reaches is None:
        agent._probing.append(signum)
        if len(agent._probing) == 1:
            from pm.agent.step_signals import PROBE

            _probe(agent, time.monotonic() + PROBE)


def _probe(agent: JobAgent, until: float) -> None:
    guardian = agent.procs.guardian
    seen = guardian.got(agent._probing[0]) if guardian is not None else None
    if seen is False and time.monotonic() < until:
        agent.owned.call_later(0.01, _probe, agent, until)
        return
    if seen is not None:
        agent.slurm_reaches = seen
        log.debug("agent %d: Slurm's signals %s our ranks themselves", agent.vertex,
                  "reach" if seen else "do not reach")
    waiting, agent._probing = agent._probing, []
    if not seen:
        for signum in waiting:
            agent.deliver_signal(signum)


def slurm_term(agent: JobAgent) -> None:
    """Slurm's SIGTERM reached this agent: the head asks slurmctld whether Slurm ends the
    job (told before any rank's end that follows)."""
    _tell_term(agent, t.StepSignal(agent.vertex, signal.SIGTERM))


def _tell_term(agent: JobAgent, msg: t.StepSignal) -> None:
    """Up the tree: once from this subtree for the SIGTERMs of PAIRED seconds (a time
    limit's two, every node's)."""
    now = time.monotonic()
    if now - agent._term_told >= PAIRED:
        agent._term_told = now
        agent.parent.send(msg)


def _from_child(agent: JobAgent, child: int, msg: t.Msg) -> None:
    if isinstance(msg, t.CollIn):
        agent.coll.from_child(child, msg)
    elif isinstance(msg, t.Done):
        agent._children_done.add(child)
        agent._child_stats.append(msg.stats)
        node_end.check_done(agent)
    elif isinstance(msg, t.NameReq):
        agent.requests.name_req(msg)
    elif isinstance(msg, t.Sub):
        from pm.agent.spawned_jobs import on_agent

        on_agent(agent).from_child(child, msg)
    elif isinstance(msg, t.StdinAck) and agent.plan.stdin_rank == STDIN_ALL:
        agent._stdin_children[child] = agent._stdin_children.get(child, 0) + msg.nbytes
        agent._stdin_up()
    elif isinstance(msg, t.Gone) and agent.vertex == 0:
        agent.coll.gone(msg)
    elif isinstance(msg, t.StepSignal):
        _tell_term(agent, msg)
    elif isinstance(msg, (t.Output, t.Exits, t.Abort, t.AgentError, t.AgentGone,
                          t.Started, t.StdinAck, t.SpawnReq, t.Stuck, t.Gone,
                          t.Report)):
        agent.parent.send(msg)
    else:
        from_tree(agent, msg)


def from_tree(agent: JobAgent, msg: t.Msg) -> None:
    """Routed messages, wherever they came from."""
    if isinstance(msg, t.GetReq):
        if msg.dst != agent.vertex:
            route(agent, msg.dst, msg)
            return
        if agent.plan.pmix and msg.key.startswith(b"\x00pmix."):
            # A rank's PMIx data, from the PMIx server (once it runs here).
            if agent.pmix is not None:
                agent.pmix.serve_get(msg)
            else:
                agent._pmix_early.append(msg)
            return
        agent.requests.serve_get(msg)
    elif isinstance(msg, (t.GetResp, t.NameResp)):
        if msg.dst != agent.vertex:
            route(agent, msg.dst, msg)
            return
        agent.requests.response(msg)
    elif isinstance(msg, t.Winsize):  # srun's --pty: pmrun's terminal, resized
        if msg.dst != agent.vertex:
            route(agent, msg.dst, msg)
        else:
            agent.procs.winsize(msg.rows, msg.cols)
    elif isinstance(msg, t.Stdin):
        if msg.dst == STDIN_ALL:  # --stdin all: to every node, whose ranks all read it
            for child in agent.children:
                route(agent, child, msg)
            agent.procs.stdin(msg.data, msg.eof)
        elif msg.dst != agent.vertex:
            route(agent, msg.dst, msg)
        else:
            agent.procs.stdin(msg.data, msg.eof)
    elif isinstance(msg, t.OutputAck):
        if msg.dst != agent.vertex:
            route(agent, msg.dst, msg)
        else:
            agent.procs.output_credit(msg.nbytes)
    elif isinstance(msg, t.SpawnResp):
        if msg.dst != agent.vertex:
            route(agent, msg.dst, msg)
        elif agent.spawn_requests is not None:
            agent.spawn_requests.response(msg)
    elif isinstance(msg, t.AgentGone):
        # Down the tree: the head heard (from srun) that a node below us is lost.
        if not 0 < msg.vertex < len(agent.plan.hosts):
            return
        up = agent.tree.parent(msg.vertex)
        if up is not None and up != agent.vertex:
            route(agent, up, msg)
        elif up == agent.vertex:
            forget = getattr(agent.children_link, "forget", None)  # (not a spawned job's)
            if forget is not None:
                forget(msg.vertex, msg.text)
    else:
        log.warning("agent %d: unexpected %s", agent.vertex, type(msg).__name__)
