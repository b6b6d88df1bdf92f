"""How a job ends on a node: what becomes of its ranks, said up the tree, and the close.

Each rank of a :class:`~pm.agent.node.JobAgent` ends one way or another, and how
it ended is the job's outcome.  What its PMI session saw (:func:`rank_event`: init,
finalize, abort, the connection closed, a stream that cannot be served) and its
exit (:func:`rank_ended`) become exits and aborts for the head: an abort is held
until the local ranks a signal ended before it are reported (the death is the
job's first failure, the abort its echo); a rank that ended without finalizing
fails the collectives it has not joined (:func:`_gone`), and one that ended before
PMI init while an MPI rank of the node initialized is said stuck.  Once every
rank of the subtree is reported, Done goes up with the node's figures
(:func:`check_done`).  A spawned job's spawner is answered as its ranks here
initialize, need it or end (:func:`report_when_needed`, :mod:`pm.agent.spawn_answer`).
Meanwhile the ``/dev/shm`` files the ranks map are noted
(:func:`watch_shm`, :func:`sample_shm`: :mod:`pm.agent.shm_reaper`), so that they
go with the job.  :func:`kill` ends the ranks (after a report of those still
running when asked: :mod:`pm.agent.state_report`); :func:`close` and
:func:`aclose` release what the job holds here.

These are the agent's own steps on its own state: functions of the agent, which
its methods (and :mod:`pm.agent.node_start`) call.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pm.agent.collectives import report_counts
from pm.agent.pmi_actions import Wire
from pm.agent.rank_proc import PmiPhase, RankLife, RankProc
from pm.agent.shm_reaper import ShmReaper, sweep_node
from pm.agent.spawn_answer import SpawnAnswer
from pm.proto import tree_wire as t

if TYPE_CHECKING:
    from pm.agent.node import JobAgent
    from pm.agent.spawn import Guardian

log = logging.getLogger("pm.agent")

#: How long a rank may live after closing its PMI connection before finalize.
EOF_GRACE = 1.0
#: Seconds between two looks at which /dev/shm files the ranks map.
SHM_SAMPLE_PERIOD = 2.0


class AgentState(enum.Enum):
    """Where a vertex is in its job."""

    RUNNING = "running"
    KILLING = "killing"  # the job is being killed: what ends now is the kill's doing
    DONE = "done"  # every rank of the subtree ended and Done went up


def watch_shm(agent: JobAgent, reaper: ShmReaper) -> None:
    agent.shm_reaper = reaper
    agent._shm_sampler = agent.owned.call_later(SHM_SAMPLE_PERIOD, sample_shm, agent, True)


def _live_pids(agent: JobAgent) -> list[int]:
    return list(_live(agent))


def _live(agent: JobAgent) -> Iterator[int]:
    return (p.pid for p in agent.ranks.values() if p.pid and p.status is None)


def sample_shm(agent: JobAgent, again: bool = False, pids: list[int] | None = None) -> None:
    """Note the /dev/shm files the live ranks map (they go when the job ends, and with
    the ranks' guardian if this agent dies first)."""
    if agent.shm_reaper is None:
        return
    # (Lazily: the pids are walked only if /dev/shm has new files; a rank's failure
    # samples, and thousands can fail at once.)
    fresh = agent.shm_reaper.sample(_live(agent) if pids is None else pids)
    if fresh and agent.procs.guardian is not None:
        agent.procs.guardian.note(fresh)
    if again:
        agent._shm_sampler = agent.owned.call_later(SHM_SAMPLE_PERIOD, sample_shm, agent, True)


def _sample_shm_due(agent: JobAgent) -> None:
    agent._shm_sample_due = False
    sample_shm(agent)


def rank_ended(agent: JobAgent, proc: RankProc) -> None:
    """A local rank ended and its pipes are drained (pm.agent.ranks): report it."""
    st = proc.status
    assert st is not None
    if not st.ok and not agent._shm_sample_due:
        # What the others map, before the job is killed: once for every rank that
        # failed meanwhile (scheduled before the flush that reports them).
        agent._shm_sample_due = True
        agent.loop.call_soon(_sample_shm_due, agent)
    agent._exits.append(t.RankExit(proc.rank, agent.vertex, st.code, st.signal, proc.reason,
                                   proc.ended_at))
    if agent._held_aborts:
        _release_aborts(agent, proc.rank)
    if agent.spawn_answer is not None:
        agent.spawn_answer.ended(proc.rank)
    agent.kvs.settle(proc.rank)
    if getattr(agent, "reservations", None) is not None:
        agent.reservations.release_rank(proc.rank)  # a rank that died holds nothing
    agent._schedule_flush()
    _gone(agent, proc)  # (after its exit: the head names what came first)


def _gone(agent: JobAgent, proc: RankProc) -> None:
    """A rank that ended, and whose PMI stream did (all it asked is read), without
    finalizing: the job's collectives it has not joined can never complete."""
    st = proc.status
    if (st is None or not proc.pmi_eof
            or agent.plan.spawned is not None  # (a spawned job's: not followed)
            or agent.state is AgentState.KILLING  # (pmrun ends them)
            or proc.rank in agent._gone_told):
        return
    agent._gone_told.add(proc.rank)
    how = f"was killed by {_signal_name(st.signal)}" if st.signal else \
        f"exited with code {st.code}"
    code = 128 + st.signal if st.signal else st.code or 1
    if proc.pmi is PmiPhase.FINALIZED:  # gone only for a collective that waits for it
        agent.coll.rank_finished(proc.rank, f"finalized and {how}", code)
        return
    agent.coll.rank_gone(proc.rank, how, code)
    if proc.pmi is PmiPhase.NONE:
        agent._never_init.append((proc.rank, how, code))
        _check_never_init(agent)


def _check_never_init(agent: JobAgent) -> None:
    """A rank that ended before PMI init while another of this node's ranks initialized
    (PMI-1, PMI-2 or PMIx: an MPI library's): that one's ``MPI_Init`` waits for it for
    ever (in a fence, or in the node's shared memory, where pmrun sees nothing).
    Open MPI's own launcher fails such a job too.  (pm.client's native protocol is not
    MPI: its ranks need not all take part.)"""
    if not agent._never_init or agent._told_never_init:
        return
    mpi = next((p.rank for p in agent.ranks.values() if p.pmi is not PmiPhase.NONE and (
        p.session is None or p.session.engine is None
        or p.session.engine.protocol is not Wire.NATIVE)), None)
    if mpi is None:
        return
    agent._told_never_init = True
    rank, how, code = agent._never_init[0]
    agent.loop.call_soon(agent.parent.send, t.Stuck(agent.vertex, rank, how, code, 0, 0, mpi))


def report_when_needed(agent: JobAgent, report: Callable[[bool], None]) -> None:
    """Call ``report`` (with False, then True; or True at once) as the local ranks of
    this spawned job initialize and need their spawner (:mod:`pm.agent.spawn_answer`)."""
    waiting = {r for r, p in agent.ranks.items()
               if p.pmi is PmiPhase.NONE and p.life is not RankLife.REPORTED}

    def told(needed: bool) -> None:
        if needed:
            agent.spawn_answer = None
        report(needed)

    answer = agent.spawn_answer = SpawnAnswer(
        waiting, agent.plan.spawned.preput if agent.plan.spawned is not None else (),
        told, lambda delay: agent.owned.call_later(delay, answer.expire))
    if any(p.life is RankLife.REPORTED for p in agent.ranks.values()):
        answer.want()  # (one ended)
    else:
        answer.check()


def rank_event(agent: JobAgent, rank: int, event: str, detail: Any = None) -> None:
    proc = agent.ranks[rank]
    if agent.timeline is not None:
        agent.mark(_EVENT_MARKS.get(event, event), rank)
    if event == "init":
        proc.pmi = PmiPhase.INITIALIZED
        _check_never_init(agent)
        if agent.spawn_answer is not None:
            agent.spawn_answer.initialized(rank)
    elif event == "finalize":
        proc.pmi = PmiPhase.FINALIZED
        agent.kvs.settle(rank)
    elif event == "abort":
        code, message = detail
        # A local rank a signal ended before the abort (which is most likely what
        # the aborting rank noticed) goes up first, as do the exits not sent yet:
        # the head names the first failure.
        killed = agent.procs.killed(rank)
        abort = t.Abort(rank, agent.vertex, code, message, time.time())
        if killed:
            agent._held_aborts.append((killed, abort))
        elif agent._exits:
            agent._aborts.append(abort)  # (their flush is scheduled)
        else:
            agent.parent.send(abort)
    elif event == "eof":
        proc.pmi_eof = True
        if not detail and proc.status is None:
            agent.owned.call_later(EOF_GRACE, _eof_without_finalize, agent, proc)
        _gone(agent, proc)
    elif event == "error" and proc.status is None and not agent.killing:
        # A PMI stream that cannot be followed: the rank fails, named with the cause.
        proc.reason = f"sent a PMI stream that cannot be served: {detail}"
        agent._exits.append(t.RankExit(proc.rank, agent.vertex, -1, 0, proc.reason))
        agent._schedule_flush()


def _release_aborts(agent: JobAgent, rank: int) -> None:
    """Local ``rank`` is reported: the aborts held for it alone go up after its exit."""
    held = []
    for killed, abort in agent._held_aborts:
        killed.discard(rank)
        if killed:
            held.append((killed, abort))
        else:
            agent._aborts.append(abort)
    agent._held_aborts = held


def _eof_without_finalize(agent: JobAgent, proc: RankProc) -> None:
    if proc.status is None and not agent.killing:
        proc.reason = "closed its PMI connection before finalize"
        agent._exits.append(t.RankExit(proc.rank, agent.vertex, -1, 0, proc.reason))
        agent._schedule_flush()


def check_done(agent: JobAgent) -> None:
    if agent.state is AgentState.DONE:
        return
    if all(p.life is RankLife.REPORTED for p in agent.ranks.values()) and (
            agent._children_done.issuperset(agent.children)):
        if agent._out or agent._exits:
            agent._schedule_flush()
            return
        agent.state = AgentState.DONE
        report_counts(agent.vertex, agent.coll.machine)  # only with PM_COUNT_MSGS set
        # Per-node figures of the whole subtree travel up with Done.
        kvs_bytes = {str(agent.vertex): [
            agent.kvs.bytes, agent.shm.bytes_used if agent.shm is not None else 0]}
        timeline = list(agent.timeline or [])
        for st in agent._child_stats:
            kvs_bytes.update(st.get("kvs_bytes", {}))
            timeline.extend(st.get("timeline", []))
        stats: dict[str, Any] = {"kvs_bytes": kvs_bytes}
        if agent.plan.sim_ranks:
            from pm.agent.sim import merge_stats

            stats["sim"] = merge_stats(agent.sim_stats,
                                       [st.get("sim") for st in agent._child_stats])
        if agent.timeline is not None:
            timeline.append([time.time(), agent.vertex, -1, "done", {}])
            stats["timeline"] = timeline
        agent.parent.send(t.Done(agent.vertex, stats))
        if not agent.done.done():
            agent.done.set_result(None)


def kill(agent: JobAgent, reason: str, grace: float, report: int = 0) -> None:
    """SIGTERM every rank of the subtree, SIGKILL after ``grace`` seconds; ``report``
    (a first kill's): say how the ranks still running stand first
    (:mod:`pm.agent.state_report`)."""
    first = agent.state is AgentState.RUNNING
    if first:
        agent.state = AgentState.KILLING
    agent._down_all(t.Kill(reason, grace, report if first else 0))
    if first:
        log.debug("agent %d: killing ranks: %s", agent.vertex, reason)
        sample_shm(agent)
        if report and (agent.local or (agent.spawns is not None and agent.spawns.jobs)):
            agent._reporting = agent.owned.spawn(_report_then_kill(agent, reason, grace, report))
            return
    elif agent._reporting is not None and not agent._reporting.done():
        # Killed again while reporting (a second Ctrl-C): at once, without the rest.
        agent._reporting.cancel()
        first = True  # (the report's kill never began)
    _kill_ranks(agent, reason, grace, first)


async def _report_then_kill(agent: JobAgent, reason: str, grace: float, report: int) -> None:
    from pm.agent.state_report import report_lines

    try:
        lines = await report_lines(agent, report)
    except Exception as exc:  # (a report must never keep the job from its end)
        lines = [f"node {agent.vertex} ({agent.host}): no report of its ranks: {exc}"]
    if lines:
        agent.parent.send(t.Report(agent.vertex, lines))
    _kill_ranks(agent, reason, grace, True)


def _kill_ranks(agent: JobAgent, reason: str, grace: float, first: bool) -> None:
    agent.fail_collectives(reason)
    agent.procs.kill(grace, first)
    if agent.spawns is not None:
        agent.spawns.kill(reason, grace)
    if agent.spawn_requests is not None:
        agent.spawn_requests.fail(reason)


def close(agent: JobAgent) -> None:
    """Release everything; ranks still alive are killed. Idempotent.  Removing the
    job's /dev/shm files may wait up to a second for killed ranks: :func:`aclose`
    does that in a thread, this in the caller's."""
    if agent.spawns is not None:
        agent.spawns.close()
    reap, guardian = _close(agent)
    clean = _reap_shm(agent, *reap) if reap is not None else False
    if guardian is not None:
        guardian.release(clean=clean)


async def aclose(agent: JobAgent) -> None:
    """:func:`close` without blocking the loop; returns once our tasks have ended and
    the job's /dev/shm files are gone (a child agent exits right after)."""
    if agent.spawns is not None:
        await agent.spawns.aclose()
    killed = _live_pids(agent)  # (killed by _close: ours to collect)
    reap, guardian = _close(agent)
    clean = False
    if reap is not None:
        if reap[1]:  # ranks just killed: their files may wait up to a second
            clean = await asyncio.to_thread(_reap_shm, agent, *reap)
        else:  # nothing to wait for (and no thread pool to start, 2 ms of CPU)
            clean = _reap_shm(agent, *reap)
    if guardian is not None:
        guardian.release(clean=clean)
    if killed:
        from pm.agent.watch import killed_reaped

        await killed_reaped(killed)
    await agent.procs.owned.aclose()
    await agent.owned.aclose()
    if getattr(agent, "reservations", None) is not None:
        await agent.reservations.aclose()


def _close(agent: JobAgent) -> tuple[tuple[ShmReaper, list[int]] | None, Guardian | None]:
    """All of closing but the /dev/shm files: the reaper and the ranks just killed, and
    the ranks' guardian, still to be let go (:func:`_reap_shm` tells it how)."""
    agent.owned.cancel()
    agent._shm_sampler = None
    if getattr(agent, "reservations", None) is not None:
        agent.reservations.close()
    live = _live_pids(agent)
    guardian = agent.procs.close(keep_guardian=True)
    reaper, agent.shm_reaper = agent.shm_reaper, None
    for cb in agent.on_close:
        with contextlib.suppress(Exception):
            cb()
    agent.on_close.clear()
    return ((reaper, live) if reaper is not None else None), guardian


def _reap_shm(agent: JobAgent, reaper: ShmReaper, dying: list[int]) -> bool:
    """Remove the /dev/shm files the ranks left (``dying``: ranks just killed), and what
    agents killed by SIGKILL left on this node.  True when every rank had ended and no
    MPI segment is left that could be theirs: the guardian need not look for any in
    every process's maps (tens of ms of CPU after each job)."""
    try:
        for name in reaper.reap(dying):
            log.debug("agent %d: removed /dev/shm/%s", agent.vertex, name)
        sweep_node()
        return not dying and not reaper.candidates()
    except Exception as exc:  # never worth failing the job's end for
        log.warning("agent %d: cleaning /dev/shm failed: %s", agent.vertex, exc)
        return False


#: Profile names of the PMI events a session reports.
_EVENT_MARKS = {"init": "PMI init", "finalize": "finalize", "abort": "abort", "eof": "PMI eof"}


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
