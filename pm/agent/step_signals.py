"""Signals Slurm sends a job agent: they are meant for the ranks.

Inside a Slurm allocation the agents are the tasks of pmrun's one step, and slurmstepd
signals a step's tasks: ``scancel --signal=USR1 JOB`` (every step but the batch script's),
sbatch's and salloc's ``--signal=USR1@110`` before the time limit, and a suspension
(``scontrol suspend``, gang scheduling, suspend preemption): SIGTSTP, then SIGSTOP 2 s
later, and SIGCONT when resumed (Slurm's ``src/slurmd/slurmstepd/req.c``).  With
proctrack/pgid the step's process group gets them, with proctrack/cgroup the tasks alone
(the children of slurmstepd; SIGSTOP is its cgroup's freezer): either way our ranks, in the
process group of their guardian, get nothing unless the agent passes it on, as srun's tasks
would have got it.  (``scancel --batch`` and ``--full`` signal the batch step alone: its
shell, or all its process group, pmrun among them, which passes it on down the tree.)

An agent therefore takes the signals pmrun itself takes, SIGTERM aside (Slurm's end of the
step: pm.bootstrap.slurm names it):

* SIGUSR1, SIGUSR2, SIGINT, SIGHUP, SIGQUIT: every local rank gets it (and every rank of the jobs
  they spawned), and the agent runs on;
* SIGTSTP: the ranks are stopped (SIGSTOP: a rank cannot ignore it, as a task of a
  suspended step cannot); SIGCONT continues them.  Slurm's SIGTSTP is there "to let MPI
  daemons stop their tasks" before its SIGSTOP stops everything else: this agent is such
  a daemon.  The agent's own stop (its links silent meanwhile) is no loss: see
  pm.agent.links.Liveness, and the head's question to slurmctld (pm.bootstrap.slurm_job).

A signal may come twice, from Slurm and from pmrun: when pmrun is itself a task of a step
(``srun pmrun``, a shell of ``srun --pty bash``), ``scancel --signal`` signals its step and
its agents' both, and pmrun passes it on down the tree.  srun's tasks get it once, so do
our ranks: a signal Slurm sent this agent and the same signal from pmrun less than
:data:`PAIRED` seconds apart are one (:class:`Pairs`).  (Two scancels are two; a user's
``kill -USR1`` of pmrun and a scancel of the same signal within those seconds are one.
SIGTSTP/SIGCONT are states, not events: each is acted on, however often it comes.)

Before the agent's loop runs, the signals are noted by a plain handler (:func:`note`), so
that none kills the agent on its way up, and acted on once its ranks run
(:meth:`StepSignals.attach`).
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

#: The signals an agent takes (see the module docstring).
TAKEN = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
         signal.SIGTSTP, signal.SIGCONT)
#: Those that are states (stop, continue), acted on each time.
STATES = (signal.SIGTSTP, signal.SIGCONT)
#: Seconds within which Slurm's and pmrun's same signal are one (one scancel sends both at
#: once; on a loaded machine either can take seconds).
PAIRED = 5.0

_noted: list[int] = []


def note(signum: int, _frame: Any = None) -> None:
    """The handler of :data:`TAKEN` until the loop runs: noted, acted on later."""
    _noted.append(signum)


def note_early() -> None:
    """Take :data:`TAKEN` from now on (a job agent's first step)."""
    for sig in TAKEN:
        signal.signal(sig, note)


class Pairs:
    """Which of a signal's arrivals, from Slurm (``local``) and from pmrun (``tree``), to
    act on: each one, except one that pairs with an earlier arrival from the other side,
    less than ``window`` seconds before, not paired yet (pure: the caller gives ``now``)."""

    def __init__(self, window: float = PAIRED) -> None:
        self.window = window
        #: Arrivals acted on and not paired yet: (from Slurm, signal) -> times.
        self._open: dict[tuple[bool, int], list[float]] = {}

    def take(self, signum: int, local: bool, now: float) -> bool:
        """Whether to act on ``signum`` arriving now."""
        if signum in STATES:
            return True
        other = self._open.get((not local, signum), [])
        other[:] = [at for at in other if now - at < self.window]
        if other:
            other.pop(0)  # the same signal, come the other way first
            return False
        self._open.setdefault((local, signum), []).append(now)
        return True


class StepSignals:
    """A job agent's signals from Slurm: ``deliver(signum)`` acts on one (for SIGTSTP,
    SIGSTOP to the ranks); pmrun's signals down the tree ask :meth:`from_tree` first."""

    def __init__(self) -> None:
        self.pairs = Pairs()
        self._deliver: Callable[[int], None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[int], None]) -> None:
        """Take the signals on ``loop`` from now on, passed to ``deliver``; those noted
        before are passed now, in order."""
        self._deliver = deliver
        for sig in TAKEN:
            loop.add_signal_handler(sig, self.got, sig)
        noted, _noted[:] = _noted[:], []
        for signum in noted:
            self.got(signum)

    def got(self, signum: int) -> None:
        """Slurm's (or anyone's) ``signum`` reached this agent."""
        if self._deliver is not None and self.pairs.take(signum, True, time.monotonic()):
            self._deliver(signal.SIGSTOP if signum == signal.SIGTSTP else signum)

    def from_tree(self, signum: int) -> bool:
        """Whether pmrun's ``signum``, come down the tree, is to reach the ranks (not when
        Slurm's same signal did already)."""
        return self.pairs.take(signum, False, time.monotonic())
