"""The signals Slurm sends a job agent (pm.agent.step_signals), without Slurm: paired with
pmrun's same signal, noted before the agent's loop runs, a suspension's stop, which stops
the ranks and not their guardian, and signals that Slurm sent the ranks itself, which the
agent does not send them again."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from launch_util import wait_until

from pm.agent import step_signals
from pm.agent.node import JobAgent
from pm.agent.spawn import Guardian, spawn
from pm.agent.step_signals import Pairs, StepSignals

pytestmark = pytest.mark.timeout(30)


def test_slurm_s_signal_and_pmrun_s_same_one_are_one() -> None:
    p = Pairs(window=5.0)
    usr1 = signal.SIGUSR1
    # One scancel to pmrun's step and its agents': from Slurm and from pmrun, either order.
    assert p.take(usr1, local=True, now=0.0)
    assert not p.take(usr1, local=False, now=0.1)
    assert p.take(usr1, local=True, now=1.0)  # (a second scancel)
    assert not p.take(usr1, local=False, now=1.2)
    assert p.take(usr1, local=False, now=3.0)
    assert not p.take(usr1, local=True, now=3.1)
    # Two from the same side are two; one from long ago pairs with nothing.
    assert p.take(usr1, local=True, now=10.0) and p.take(usr1, local=True, now=10.1)
    assert p.take(usr1, local=False, now=20.0)
    # Another signal is another; stop and continue are states, acted on each time.
    assert p.take(signal.SIGUSR2, local=True, now=20.1)
    assert p.take(signal.SIGCONT, local=True, now=30.0)
    assert p.take(signal.SIGCONT, local=False, now=30.1)


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_an_agent_stops_its_ranks_and_not_their_guardian(marker: str) -> None:
    """Slurm's SIGTSTP to an agent: its ranks stop (SIGSTOP to their group); their guardian
    runs on (it kills the group if the agent dies meanwhile); SIGCONT continues them."""
    guardian = Guardian()
    rank = spawn("/bin/sh", ["/bin/sh", "-c", "sleep 60; :", marker], {"PATH": os.defpath},
                 pgid=guardian.pgid)
    delivered: list[int] = []
    signals = StepSignals()
    signals._deliver = delivered.append  # (attach() with a loop: the agent's)
    try:
        # (Stopped in the middle of its exec, a process shows "D" until continued.)
        wait_until(lambda: _state(rank) == "S", 10, "the rank to run")
        signals.got(signal.SIGTSTP)
        assert delivered == [signal.SIGSTOP]
        guardian.signal(delivered[-1])
        wait_until(lambda: _state(rank) == "T", 10, "the rank to stop")
        wait_until(lambda: _state(guardian.pid) != "T", 10, "the guardian to run on")
        signals.got(signal.SIGCONT)
        guardian.signal(delivered[-1])
        wait_until(lambda: _state(rank) != "T", 10, "the rank to continue")
    finally:
        guardian.release()  # (it kills the group, stopped or not, and ends)
        for pid in (rank, guardian.pid):
            os.waitpid(pid, 0)


def test_signals_that_come_before_the_loop_are_noted_then_delivered() -> None:
    step_signals._noted[:] = []
    old = {sig: signal.getsignal(sig) for sig in step_signals.TAKEN}
    try:
        step_signals.note_early()
        os.kill(os.getpid(), signal.SIGUSR1)  # (handled before kill returns: our own)
        os.kill(os.getpid(), signal.SIGTSTP)
        assert step_signals._noted == [signal.SIGUSR1, signal.SIGTSTP]
        loop = asyncio.new_event_loop()
        delivered: list[int] = []
        try:
            StepSignals().attach(loop, delivered.append)
        finally:
            loop.close()
        assert delivered == [signal.SIGUSR1, signal.SIGSTOP]
        assert step_signals._noted == []
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def test_a_guardian_tells_a_signal_someone_else_sent_its_group() -> None:
    """The guardian blocks the signals an agent passes on: one that Slurm (here: we) sent
    its whole group stays pending there; one the agent sent itself tells nothing."""
    guardian = _trapped(Guardian())
    try:
        assert guardian.got(signal.SIGTERM) is False
        os.killpg(guardian.pgid, signal.SIGTERM)  # (what Slurm's proctrack/linuxproc does)
        wait_until(lambda: guardian.got(signal.SIGTERM) is True, 10, "SIGTERM pending")
        assert guardian.got(signal.SIGUSR1) is False
        guardian.signal(signal.SIGUSR1)
        assert guardian.got(signal.SIGUSR1) is None
        assert guardian.got(signal.SIGCONT) is None  # (not one it blocks)
    finally:
        guardian.release()
        os.waitpid(guardian.pid, 0)


def _trapped(guardian: Guardian) -> Guardian:
    """``guardian`` once its shell ignores the signals it blocks (its ``trap ''``, which
    discards any of them pending by then: Slurm's signal must come after it to be seen)."""
    def ignores() -> bool:
        status = Path(f"/proc/{guardian.pid}/status").read_text()
        ign = int(next(ln for ln in status.splitlines() if ln.startswith("SigIgn:")).split()[1],
                  16)
        return bool(ign & (1 << (signal.SIGTERM - 1)))

    wait_until(ignores, 10, "the guardian's traps")
    return guardian


class _Agent:
    """What JobAgent.slurm_signal (pm.agent.node_msgs.slurm_signal) uses of an agent: its
    ranks' guardian, its timers, the signals it delivers."""

    def __init__(self, guardian: Guardian, loop: asyncio.AbstractEventLoop) -> None:
        self.vertex = 1
        self.procs = SimpleNamespace(guardian=guardian)
        self.owned = SimpleNamespace(call_later=loop.call_later)
        self.slurm_reaches: bool | None = None
        self._probing: list[int] = []
        self.delivered: list[int] = []
        self.deliver_signal = self.delivered.append


@pytest.mark.parametrize("slurm_reaches", [False, True])
def test_slurm_s_signals_reach_each_rank_once(slurm_reaches: bool) -> None:
    """An agent passes Slurm's signals on unless Slurm signalled its ranks' group itself
    (proctrack/linuxproc, cgroup's SignalChildrenProcesses): its guardian tells at the first
    (within PROBE seconds), and from then on the agent knows."""

    async def run() -> _Agent:
        agent = _Agent(guardian, asyncio.get_running_loop())
        slurm_signal = functools.partial(JobAgent.slurm_signal, cast(JobAgent, agent))
        if slurm_reaches:
            os.killpg(guardian.pgid, signal.SIGTERM)
        slurm_signal(signal.SIGTERM)
        slurm_signal(signal.SIGTERM)  # (a time limit's second, say)
        await asyncio.sleep(step_signals.PROBE + 0.5)
        slurm_signal(signal.SIGUSR1)
        return agent

    guardian = _trapped(Guardian())
    try:
        agent = asyncio.run(run())
    finally:
        guardian.release()
        os.waitpid(guardian.pid, 0)
    assert agent.slurm_reaches is slurm_reaches
    assert agent.delivered == ([] if slurm_reaches else
                               [signal.SIGTERM, signal.SIGTERM, signal.SIGUSR1])


def test_slurm_s_sigterm_is_taken_once_the_plan_says_so_and_told_first() -> None:
    step_signals._noted[:] = []
    old = {sig: signal.getsignal(sig) for sig in (*step_signals.TAKEN, signal.SIGTERM)}
    try:
        step_signals.take_term()
        os.kill(os.getpid(), signal.SIGTERM)  # (noted: the agent's loop is not running yet)
        assert step_signals._noted == [signal.SIGTERM]
        said: list[str] = []
        loop = asyncio.new_event_loop()
        try:
            StepSignals(on_term=lambda: said.append("told")).attach(
                loop, lambda signum: said.append(signal.Signals(signum).name))
        finally:
            loop.close()
        assert said == ["told", "SIGTERM"]
        step_signals.note_early()  # (the agent's last words: SIGTERM still noted)
        assert signal.getsignal(signal.SIGTERM) is step_signals.note
    finally:
        step_signals._term[:] = []
        step_signals._noted[:] = []
        for sig, handler in old.items():
            signal.signal(sig, handler)
