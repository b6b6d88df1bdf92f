"""Signals Slurm sends a job agent: they are meant for the ranks.

Inside a Slurm allocation the agents are the tasks of pmrun's one step, and slurmstepd
signals a step's tasks: ``scancel --signal=USR1 JOB`` (every step but the batch script's),
sbatch's and salloc's ``--signal=USR1@110`` before the time limit, and a suspension
(``scontrol suspend``, gang scheduling, suspend preemption): SIGTSTP, then SIGSTOP 2 s
later, and SIGCONT when resumed (Slurm's ``src/slurmd/slurmstepd/req.c``).  Which of the
step's processes get them is proctrack's choice (``proctrack_p_signal`` of each plugin in
``src/plugins/proctrack``): with proctrack/pgid the step's process group (``killpg``), with
proctrack/cgroup the step's tasks alone, the children of slurmstepd (every process of the
step only with cgroup.conf's ``SignalChildrenProcesses=yes``, Slurm 23.02 on; SIGSTOP is
the cgroup's freezer, SIGKILL reaches every process), with proctrack/linuxproc every
descendant of slurmstepd.  The agent gets them always; our ranks, in the process group of
their guardian, get nothing under pgid and cgroup (without SignalChildrenProcesses) unless
the agent passes it on, as srun's tasks would have got it, and Slurm's own under
linuxproc.  (``scancel --batch`` and ``--full`` signal the batch step alone: its shell, or
all its process group, pmrun among them, which passes it on down the tree.)

An agent therefore takes the signals pmrun itself takes:

* SIGUSR1, SIGUSR2, SIGALRM, SIGINT, SIGHUP, SIGQUIT (those srun passes to its tasks):
  every local rank gets it once (and every rank of the jobs they spawned), and the agent
  runs on.  Once: from Slurm itself if it signalled the
  ranks, else from the agent.  Their guardian, in their process group, blocks these
  signals: one pending there (:meth:`pm.agent.spawn.Guardian.got`) came from Slurm to the
  whole group.  The agent looks for it :data:`PROBE` seconds (Slurm signals the processes
  of a step one after another) at the first such signal from Slurm that it did not send the
  group itself before (then the guardian tells nothing), and knows from then on;
* SIGTSTP: the ranks are stopped (SIGSTOP: a rank cannot ignore it, as a task of a
  suspended step cannot); SIGCONT continues them.  Slurm's SIGTSTP is there "to let MPI
  daemons stop their tasks" before its SIGSTOP stops everything else: this agent is such
  a daemon.  The agent's own stop (its links silent meanwhile) is no loss: see
  pm.agent.liveness.Liveness, and the head's question to slurmctld (pm.bootstrap.slurm_job);
* SIGTERM, as those, by an agent that Slurm started (``--launcher slurm``) from when its
  plan says so (:func:`take_term`, before its ranks start; until then nothing of the job
  is there to save, and a SIGTERM ends the agent).  See below.

**Slurm's end of the job.**  When Slurm ends a job (``scancel JOB``, its time limit,
preemption), slurmd sends every step SIGCONT, then SIGTERM, and SIGKILL only KillWait
seconds later (``MAX(KillWait, 5)``: ``_rpc_terminate_job`` in Slurm's
``src/slurmd/slurmd/req.c``; a time limit sends the steps one SIGTERM more just before,
``_rpc_timelimit``): srun's tasks have that grace to save a checkpoint.  Which processes
get the SIGTERM is proctrack's choice, as above: the ranks may or may not have it from
Slurm, their agent has it always.  Were the agent to die of it, its ranks' guardian would
kill them at once (pm.agent.spawn.Guardian).  Instead:

* the agent tells pmrun first (:class:`pm.proto.tree_wire.StepSignal`, one from a subtree
  for the SIGTERMs of :data:`PAIRED` seconds): pmrun waits for slurmstepd's line, or asks
  slurmctld, whether Slurm ends the job, and names that as the job's end (the ranks' ends
  meanwhile are its doing, not failures: pm.head.JobRun);
* every local rank gets SIGTERM once, from Slurm or from the agent, as the signals above;
* the agent runs on while its ranks run their handlers and end: it serves their PMI and
  their output, reports their exits, and leaves when pmrun says the job is over.  pmrun
  kills nothing meanwhile: what still runs after KillWait, Slurm kills (the agent with
  SIGKILL, and so its ranks through their guardian).

Each SIGTERM Slurm sends is passed on as it comes, as srun's tasks get each (a time limit's
two).  ``scancel --signal=TERM JOB`` sends the same SIGTERM without ending the job: the
ranks get it, and those that run on run on, as srun's tasks would (slurmstepd's line calls
the step cancelled all the same, as srun shows it, and so does pmrun, whose status is
SIGTERM's once the ranks have ended).

A signal may come twice, from Slurm and from pmrun: when pmrun is itself a task of a step
(``srun pmrun``, a shell of ``srun --pty bash``), ``scancel --signal`` signals its step and
its agents' both, and pmrun passes it on down the tree (so does pmrun in a batch script,
where Slurm's end of the job sends it SIGTERM too).  srun's tasks get it once, so do
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

#: The signals an agent takes (see the module docstring); SIGTERM too once
#: :func:`take_term` said so.
TAKEN = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGINT, signal.SIGHUP,
         signal.SIGQUIT, signal.SIGTSTP, signal.SIGCONT)
#: Those that are states (stop, continue), acted on each time.
STATES = (signal.SIGTSTP, signal.SIGCONT)
#: Seconds within which Slurm's and pmrun's same signal are one (one scancel sends both at
#: once; on a loaded machine either can take seconds).
PAIRED = 5.0
#: Seconds an agent looks for Slurm's signal at its ranks' guardian before it sends them its
#: own (Slurm signals the processes of a step one after another).
PROBE = 0.05

_noted: list[int] = []
#: SIGTERM is taken too (:func:`take_term`).
_term: list[int] = []


def taken() -> tuple[int, ...]:
    """The signals taken now: :data:`TAKEN`, and SIGTERM after :func:`take_term`."""
    return TAKEN + tuple(_term)


def note(signum: int, _frame: Any = None) -> None:
    """The handler of :func:`taken` until the loop runs: noted, acted on later."""
    _noted.append(signum)


def note_early() -> None:
    """Take :func:`taken` from now on (a job agent's first step, and its last)."""
    for sig in taken():
        signal.signal(sig, note)


def take_term() -> None:
    """Take SIGTERM from now on: this agent is a task of a Slurm step (its plan says so)."""
    if not _term:
        _term.append(signal.SIGTERM)
    signal.signal(signal.SIGTERM, note)


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
    SIGSTOP to the ranks); pmrun's signals down the tree ask :meth:`from_tree` first.
    ``on_term()``: Slurm's SIGTERM came (each time, before it is delivered)."""

    def __init__(self, on_term: Callable[[], None] | None = None) -> None:
        self.pairs = Pairs()
        self.on_term = on_term
        self._deliver: Callable[[int], None] | None = None

    def attach(self, loop: asyncio.AbstractEventLoop, deliver: Callable[[int], None]) -> None:
        """Take the signals on ``loop`` from now on, passed to ``deliver``; those noted
        before are passed now, in order."""
        self._deliver = deliver
        for sig in taken():
            loop.add_signal_handler(sig, self.got, sig)
        noted, _noted[:] = _noted[:], []
        for signum in noted:
            self.got(signum)

    def got(self, signum: int) -> None:
        """Slurm's (or anyone's) ``signum`` reached this agent."""
        if signum == signal.SIGTERM and self.on_term is not None:
            self.on_term()
        if self._deliver is not None and self.pairs.take(signum, True, time.monotonic()):
            self._deliver(signal.SIGSTOP if signum == signal.SIGTSTP else signum)

    def from_tree(self, signum: int) -> bool:
        """Whether pmrun's ``signum``, come down the tree, is to reach the ranks (not when
        Slurm's same signal did already)."""
        return self.pairs.take(signum, False, time.monotonic())
