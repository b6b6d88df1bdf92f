"""What slurmctld says about the Slurm job pmrun runs in, and timers in its run time.

One question, ``scontrol show job $SLURM_JOB_ID`` (one RPC to slurmctld, asked
only when an answer is needed: never on the way of a job that has no use for it), tells:

* the job's state: while Slurm holds it ``SUSPENDED`` (``scontrol suspend``, gang
  scheduling, suspend preemption) its agents are stopped and silent, which is no loss
  (:func:`silence_explained`); nor is the silence of agents resumed less than a heartbeat
  timeout ago, which have not had the time to speak again;
* its run time (``RunTime``, which does not count the time it was suspended) and time
  limit (``TimeLimit``): the time left, which Slurm 22.05 has no variable for (srun's
  ``--signal SIG@TIME`` inside a job without ``--timeout`` is due that many seconds before
  the job's end).

Slurm's time limits do not count suspended time (a resumed job's end moves by the time it
was held).  :class:`RunTimers` follows it: pmrun's ``--timeout`` and its ``--signal``, inside
a Slurm job, are timers in the job's run time; when one fires, slurmctld is asked how long
the job was held meanwhile, and the timer is set again that much later.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pm.agent.owned import Owned

#: Seconds pmrun waits for slurmctld's word on the job (longer than pm.bootstrap.slurm's
#: ASK_TIMEOUT: a silent node is named lost, and a timer fires, without it).
STATE_TIMEOUT = 3.0
#: A timer is set again only for at least this many seconds of suspension (RunTime is in
#: whole seconds: two readings of it are a second apart at worst).
SUSPENDED_MIN = 1.5
#: Slack for the time it takes a resumed agent's first heartbeat to reach the head.
RESUME_SLACK = 2.0
#: Seconds slurmctld's word that the job is suspended stands (a suspension may last hours:
#: one question a heartbeat would be many; resumed agents speak again anyway).
SUSPENDED_RECHECK = 30.0

_DURATION = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")
_FIELDS = {
    # (Each at the start of a line of its own, as Slurm prints it: the job's name comes
    # first, and only a name holding a new line and the field's words could pass for it.)
    "state": re.compile(r"^\s+JobState=(\S+)", re.M),
    "run": re.compile(r"^\s+RunTime=(\S+) TimeLimit=(\S+)", re.M),
    "suspend": re.compile(r"^\s+SuspendTime=(\S+) SecsPreSuspend=(\d+)", re.M),
}


def job_id(env: Mapping[str, str] | None = None) -> str | None:
    """The Slurm job we run in (``SLURM_JOB_ID``), or None."""
    job = (os.environ if env is None else env).get("SLURM_JOB_ID", "")
    return job if job.isdecimal() else None


def duration(text: str) -> int | None:
    """Slurm's ``[days-]hours:minutes:seconds`` (or ``minutes:seconds``) in seconds; None for
    ``UNLIMITED``, ``NOT_SET``, ``INVALID`` and anything else (pure)."""
    m = _DURATION.match(text.strip())
    if m is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


class JobInfo(NamedTuple):
    """The job as slurmctld sees it."""

    #: RUNNING, SUSPENDED, COMPLETING, ...
    state: str
    #: Seconds it has run, the time it was suspended not counted.
    run_time: int
    #: Seconds it may run (None: UNLIMITED).
    time_limit: int | None
    #: Seconds since it was last resumed (None: it never was, or it is suspended now).
    since_resume: int | None

    @property
    def time_left(self) -> int | None:
        """Seconds it may still run (None: no limit)."""
        return None if self.time_limit is None else self.time_limit - self.run_time


def job_info(text: str) -> JobInfo | None:
    """What ``scontrol show job`` said, read; None if it is not that (pure)."""
    state = _FIELDS["state"].search(text)
    run = _FIELDS["run"].search(text)
    if state is None or run is None:
        return None
    run_time = duration(run.group(1))
    if run_time is None:
        return None
    suspend = _FIELDS["suspend"].search(text)
    since = None
    if suspend is not None and suspend.group(1) != "None" and state.group(1) != "SUSPENDED":
        # RunTime counts from the last resume on, SecsPreSuspend is what it was before.
        since = max(0, run_time - int(suspend.group(2)))
    return JobInfo(state.group(1), run_time, duration(run.group(2)), since)


def _argv(job: str) -> list[str]:
    return ["scontrol", "show", "job", job]


def job_info_now(job: str, timeout: float = STATE_TIMEOUT) -> JobInfo | None:
    """slurmctld's word on ``job``, waited for (a command line's check, before the loop);
    None without an answer."""
    try:
        proc = subprocess.run(_argv(job), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return job_info(proc.stdout) if proc.returncode == 0 else None


async def slurm_says(argv: Sequence[str], within: float) -> str | None:
    """What a Slurm command (``argv``: squeue, scontrol) printed; None if it could not run,
    failed, or gave no answer within ``within`` seconds (it is killed then)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    finally:
        if proc.returncode is None:  # (cancelled: pmrun is closing)
            proc.kill()
    return out.decode(errors="replace") if proc.returncode == 0 else None


async def ask_job(job: str) -> JobInfo | None:
    """slurmctld's word on ``job``; None without an answer in STATE_TIMEOUT seconds."""
    out = await slurm_says(_argv(job), STATE_TIMEOUT)
    return job_info(out) if out is not None else None


def job_end(give: str) -> tuple[float, float] | str:
    """Inside a Slurm job, its end, as srun's ``--signal`` without a time of its own takes
    it: (seconds left, the ``time.monotonic()`` they were asked at); else why there is
    none, as the end of a sentence (``give``: how to give one instead)."""
    job = job_id()
    if job is None:
        return f" ({give})"
    asked = time.monotonic()
    info = job_info_now(job)
    if info is None:
        return f": slurmctld did not tell Slurm job {job}'s ({give})"
    if info.time_left is None:
        return f": Slurm job {job} has none (its TimeLimit is UNLIMITED; {give})"
    return float(info.time_left), asked


def silence_explained(info: JobInfo | None, timeout: float) -> bool:
    """Whether agents silent for ``timeout`` seconds are no loss, given slurmctld's word on
    the job: Slurm holds it suspended, or resumed it too recently for them to have spoken
    since (pure)."""
    if info is None:
        return False
    if info.state == "SUSPENDED":
        return True
    return info.state == "RUNNING" and info.since_resume is not None and \
        info.since_resume < timeout + RESUME_SLACK


class SilenceJudge:
    """What the head's tree port asks when nodes fall silent inside a Slurm job
    (``pm.agent.child_port.ChildPort.vouch``): whether the job's state explains it (asked
    again at most every SUSPENDED_RECHECK seconds while it is suspended); a line at -v when
    Slurm holds the job suspended (once for each suspension)."""

    def __init__(self, job: str, timeout: float, hosts: list[str],
                 say: Callable[[str], None]) -> None:
        self.job = job
        self.timeout = timeout
        self.hosts = hosts
        self._say = say
        #: When slurmctld last said the job is suspended (time.monotonic()), or None.
        self._suspended: float | None = None

    async def __call__(self, vertices: list[int]) -> bool:
        said = self._suspended
        if said is not None and time.monotonic() - said < SUSPENDED_RECHECK:
            return True
        info = await ask_job(self.job)
        if info is not None and info.state == "SUSPENDED":
            if said is None:
                nodes = ", ".join(f"node {v} ({self.hosts[v]})" for v in vertices)
                self._say(f"{nodes} silent for {self.timeout:g} s: Slurm holds job "
                          f"{self.job} suspended; waiting for its resumption")
            self._suspended = time.monotonic()
        else:
            self._suspended = None
        return silence_explained(info, self.timeout)


class RunTimers:
    """Timers in the job's run time: inside a Slurm job (``job``), the time Slurm held it
    suspended does not count, as in Slurm's own time limits; elsewhere plain timers.

    :meth:`start` asks slurmctld for the job's run time once, in the background (only a job
    that sets such timers asks); a timer that fires asks again, and is set again as much
    later as the job was held meanwhile.  Without an answer, timers fire as set."""

    def __init__(self, owned: Owned, job: str | None) -> None:
        self.owned = owned
        self.job = job
        #: (time.monotonic(), the job's run time then), once slurmctld said.
        self._base: tuple[float, int] | None = None

    def start(self) -> None:
        if self.job is not None:
            self.owned.spawn(self._baseline(self.job), name="slurm run time")

    async def _baseline(self, job: str) -> None:
        info = await ask_job(job)
        if info is not None:
            self._base = (time.monotonic(), info.run_time)

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args)`` once the job has run ``delay`` more seconds."""
        self.owned.call_later(max(0.0, delay), self._due, 0.0, fn, args)

    def _due(self, counted: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self._base is None or self.job is None:
            fn(*args)
            return
        self.owned.spawn(self._check(self.job, self._base, counted, fn, args),
                         name="slurm run time")

    async def _check(self, job: str, base: tuple[float, int], counted: float,
                     fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        info = await ask_job(job)
        held = 0.0 if info is None else \
            (time.monotonic() - base[0]) - (info.run_time - base[1])
        if held - counted >= SUSPENDED_MIN:
            self.owned.call_later(held - counted, self._due, held, fn, args)
        else:
            fn(*args)

    def before_end(self, left: float, asked: float, before: float, fn: Callable[..., Any],
                   *args: Any) -> None:
        """``fn(*args)`` ``before`` seconds before the Slurm job's end (srun's --signal in a
        job without --timeout), ``left`` seconds away when asked at ``asked``
        (time.monotonic()); when it fires, the time left is asked anew (a suspension, or a
        new limit, moves the end)."""
        delay = left - before - (time.monotonic() - asked)
        self.owned.call_later(max(0.0, delay), self._end_due, before, fn, args)

    def _end_due(self, before: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        if self.job is None:
            fn(*args)
            return
        self.owned.spawn(self._end_check(self.job, before, fn, args), name="slurm time left")

    async def _end_check(self, job: str, before: float, fn: Callable[..., Any],
                         args: tuple[Any, ...]) -> None:
        info = await ask_job(job)
        left = None if info is None else info.time_left
        if left is not None and left - before >= SUSPENDED_MIN:
            self.owned.call_later(left - before, self._end_due, before, fn, args)
        else:
            fn(*args)
