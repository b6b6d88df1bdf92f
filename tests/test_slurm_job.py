"""What slurmctld says about the job pmrun runs in (pm.bootstrap.slurm_job), without Slurm:
scontrol's words read, a silent node judged, timers in the job's run time."""

from __future__ import annotations

import asyncio
import time

import pytest

from pm.agent.owned import Owned
from pm.bootstrap import slurm_job
from pm.bootstrap.slurm_job import (
    JobInfo,
    RunTimers,
    SilenceJudge,
    duration,
    job_info,
    silence_explained,
)

pytestmark = pytest.mark.timeout(30)

#: scontrol show job, as Slurm 22.05 says it (a running job, never suspended, whose name
#: tries to pass for its state).
RUNNING = """JobId=6 JobName=a JobState=SUSPENDED Reason=
   UserId=root(0) GroupId=root(0) MCS_label=N/A
   Priority=4294901743 Nice=0 Account=(null) QOS=(null)
   JobState=RUNNING Reason=None Dependency=(null)
   Requeue=1 Restarts=0 BatchFlag=0 Reboot=0 ExitCode=0:0
   RunTime=00:00:02 TimeLimit=00:05:00 TimeMin=N/A
   SubmitTime=2026-12-07T09:28:28 EligibleTime=2026-12-07T09:28:28
   AccrueTime=Unknown
   StartTime=2026-12-07T09:28:28 EndTime=2026-12-07T09:33:28 Deadline=N/A
   SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-07T09:28:28 Scheduler=Main
   Partition=debug AllocNode:Sid=localhost:17839
   NodeList=pm8h1
   Command=(null)
   WorkDir=/tmp/x
"""


def test_slurm_durations() -> None:
    assert duration("00:05:00") == 300
    assert duration("1-02:03:04") == 93784
    assert duration("4:58") == 298  # (squeue's %L)
    assert duration("UNLIMITED") is None
    assert duration("NOT_SET") is None


def test_scontrol_s_line_read() -> None:
    # (The job's name may say anything: the fields are found where Slurm prints them.)
    assert job_info(RUNNING) == JobInfo("RUNNING", 2, 300, None)
    assert job_info(RUNNING).time_left == 298  # type: ignore[union-attr]
    held = RUNNING.replace("JobState=RUNNING Reason=None", "JobState=SUSPENDED Reason=None") \
        .replace("SuspendTime=None SecsPreSuspend=0", "SuspendTime=2026-12-07T09:19:07 "
                 "SecsPreSuspend=2")
    assert job_info(held) == JobInfo("SUSPENDED", 2, 300, None)
    resumed = held.replace("JobState=SUSPENDED", "JobState=RUNNING").replace(
        "RunTime=00:00:02", "RunTime=00:00:05")
    assert job_info(resumed) == JobInfo("RUNNING", 5, 300, 3)  # resumed 3 s ago
    unlimited = RUNNING.replace("TimeLimit=00:05:00", "TimeLimit=UNLIMITED")
    assert job_info(unlimited).time_left is None  # type: ignore[union-attr]
    assert job_info("slurm_load_jobs error: Invalid job id specified") is None


def test_a_silent_node_is_no_loss_while_slurm_holds_the_job() -> None:
    assert silence_explained(JobInfo("SUSPENDED", 2, None, None), 5)
    assert silence_explained(JobInfo("RUNNING", 9, None, 3), 5)  # not 5 s since the resume
    assert not silence_explained(JobInfo("RUNNING", 90, None, 30), 5)
    assert not silence_explained(JobInfo("RUNNING", 9, None, None), 5)  # never held
    assert not silence_explained(JobInfo("COMPLETING", 9, None, None), 5)
    assert not silence_explained(None, 5)  # (no answer)


async def test_the_head_asks_slurmctld_why_nodes_are_silent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [JobInfo("SUSPENDED", 2, None, None), JobInfo("RUNNING", 9, None, 3),
               JobInfo("RUNNING", 90, None, 60)]
    asked: list[str] = []

    async def ask(job: str) -> JobInfo:
        asked.append(job)
        return answers[len(asked) - 1]

    monkeypatch.setattr(slurm_job, "ask_job", ask)
    said: list[str] = []
    judge = SilenceJudge("42", 5.0, ["n1", "n2"], said.append)
    assert await judge([0])  # suspended: no loss, said once
    assert await judge([0]) and asked == ["42"]  # (its word stands a while)
    assert said == ["node 0 (n1) silent for 5 s: Slurm holds job 42 suspended; waiting for "
                    "its resumption"]
    monkeypatch.setattr(slurm_job, "SUSPENDED_RECHECK", 0.0)
    assert await judge([0])  # resumed 3 s ago: not heard from yet
    assert not await judge([0])  # running for a minute: lost
    assert len(said) == 1


class FakeSlurm:
    """slurmctld as RunTimers asks it: held (suspended) from ``held[0]`` to ``held[1]`` s
    after the start, a ``limit`` of run time (seconds, as floats: a test's are short)."""

    def __init__(self, held: tuple[float, float], limit: float | None = None) -> None:
        self.t0 = time.monotonic()
        self.held = held
        self.limit = limit
        self.asked = 0

    async def ask(self, job: str) -> JobInfo:
        self.asked += 1
        now = time.monotonic() - self.t0
        a, b = self.held
        run = now - max(0.0, min(now, b) - a)
        return JobInfo("SUSPENDED" if a <= now < b else "RUNNING", run, self.limit,  # type: ignore[arg-type]
                       None)


@pytest.mark.parametrize("held", [(0.0, 0.0), (0.05, 0.4)], ids=["running", "held"])
async def test_timers_in_the_job_s_run_time(monkeypatch: pytest.MonkeyPatch,
                                            held: tuple[float, float]) -> None:
    """--timeout inside a Slurm job: the time Slurm held the job does not count."""
    fake = FakeSlurm(held)
    monkeypatch.setattr(slurm_job, "ask_job", fake.ask)
    monkeypatch.setattr(slurm_job, "SUSPENDED_MIN", 0.05)
    owned = Owned()
    fired = asyncio.get_running_loop().create_future()
    timers = RunTimers(owned, "7")
    timers.start()
    await asyncio.sleep(0)  # (the baseline's question)
    timers.call_later(0.2, fired.set_result, None)
    await asyncio.wait_for(fired, 10)
    took = time.monotonic() - fake.t0
    await owned.aclose()
    length = held[1] - held[0]
    assert 0.2 + length - 0.05 <= took < 0.2 + length + 0.5, took


async def test_a_signal_before_the_slurm_job_s_end_follows_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """srun's --signal without --timeout: asked anew when due, the end moved by a
    suspension moves the signal."""
    fake = FakeSlurm((0.0, 0.3), limit=10.0)
    monkeypatch.setattr(slurm_job, "ask_job", fake.ask)
    monkeypatch.setattr(slurm_job, "SUSPENDED_MIN", 0.05)
    owned = Owned()
    fired = asyncio.get_running_loop().create_future()
    # 10 s left, due 9.8 s before: 0.2 s on, as the command line saw it.
    RunTimers(owned, "7").before_end(10.0, time.monotonic(), 9.8, fired.set_result, None)
    await asyncio.wait_for(fired, 10)
    took = time.monotonic() - fake.t0
    await owned.aclose()
    assert 0.45 <= took < 1.0 and fake.asked >= 2, (took, fake.asked)


async def test_plain_timers_outside_slurm() -> None:
    owned = Owned()
    fired = asyncio.get_running_loop().create_future()
    t0 = time.monotonic()
    RunTimers(owned, None).call_later(0.1, fired.set_result, None)
    await asyncio.wait_for(fired, 10)
    await owned.aclose()
    assert time.monotonic() - t0 < 1.0
