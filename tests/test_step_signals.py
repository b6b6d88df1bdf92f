"""The signals Slurm sends a job agent (pm.agent.step_signals), without Slurm: paired with
pmrun's same signal, noted before the agent's loop runs, and a suspension's stop, which
stops the ranks and not their guardian."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from launch_util import wait_until

from pm.agent import step_signals
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
