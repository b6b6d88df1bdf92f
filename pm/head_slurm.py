"""Slurm's SIGTERM at the head: what the ranks' ends mean is held until Slurm says
whether it ends the job.

Slurm's SIGTERM reaches the ranks (through their agents, or pmrun's own, which it passes
on): Slurm's end of the job, most likely (its time limit, a scancel), and then the ranks
have Slurm's grace and their ends are no failures.  Until slurmctld says whether it is
(or slurmstepd's line does, through srun: :mod:`pm.bootstrap.slurm`), for
:data:`pm.bootstrap.slurm.SIGNAL_GRACE` seconds at most, what the ranks' ends meant is
held: dropped if Slurm ends the job, else judged then, in order.
:class:`SlurmHolds` is the part of :class:`~pm.head.JobRun` that does this
(:mod:`pm.head_base`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from collections.abc import Callable
from typing import Any

from pm.head_base import JobRunBase, RunState

log = logging.getLogger("pm")


class SlurmHolds(JobRunBase):
    """A job run's holds for Slurm's word (see the module docstring)."""

    async def _ask_slurm(self, signum: int) -> None:
        """pmrun's own SIGTERM in a Slurm job, passed on: Slurm's end of the job, or not."""
        answered, why = await self._ask()
        if self._interrupts > 1:
            return  # (killed already)
        if why is None and self.state is RunState.RUNNING:
            log.warning("forwarded %s to all ranks (again to kill them)",
                        signal.Signals(signum).name)
        self._slurm_word(answered, why)
        if self.children is not None:
            # Nodes whose end is held back (pm.bootstrap.slurm) are named now: the
            # same signal most likely ended them (a batch job Slurm cancelled).
            self.children.release()

    def _ask(self) -> asyncio.Task[tuple[bool, tuple[str, int] | None]]:
        """slurmctld's word on whether Slurm ends the job (one question for all who ask)."""
        if self._asked is None or self._asked.done():
            from pm.bootstrap.slurm import ask_why

            self._asked = self.owned.spawn(ask_why(), name="ask slurm")
        return self._asked

    def _hold_for_slurm(self) -> bool:
        """Slurm's SIGTERM reached the ranks (through their agents, or pmrun's own, which it
        passed on): Slurm's end of the job, most likely.  Until slurmctld says whether it is
        (or slurmstepd's line does, through srun: pm.bootstrap.slurm), for SIGNAL_GRACE
        seconds at most, what the ranks' ends mean is held: nothing if Slurm ends the job,
        else what it meant (``scancel --signal=TERM``, someone's kill of an agent or of
        pmrun), judged then, in order.  False when nothing is to be held (held already, or
        the job's end is named)."""
        if self._held_term is not None or self.slurm_ends or self.state is not RunState.RUNNING:
            return False
        from pm.bootstrap.slurm import SIGNAL_GRACE

        self._held_term = []
        self._held_term_timer = self.owned.call_later(SIGNAL_GRACE, self._judge_held_term)
        return True

    def _slurm_term(self) -> None:
        """Slurm sent the agents' step SIGTERM (an agent said so, :class:`t.StepSignal`),
        which they pass to the ranks (pm.agent.step_signals): held (:meth:`_hold_for_slurm`)
        until Slurm's word; slurmctld is asked if slurmstepd's line did not come first
        (pm.bootstrap.slurm.LINE_FIRST: its words are srun's)."""
        if self._hold_for_slurm():
            from pm.bootstrap.slurm import LINE_FIRST

            self.owned.spawn(self._slurm_says(LINE_FIRST), name="Slurm's SIGTERM")

    async def _slurm_says(self, first: float) -> None:
        await asyncio.sleep(first)
        if self._held_term is None:
            return  # (Slurm's word came, or the hold is over)
        # (No answer: slurmstepd's line may come, until the hold is over.)
        self._slurm_word(*await self._ask())

    def _slurm_word(self, answered: bool, why: tuple[str, int] | None) -> None:
        """slurmctld's answer (:meth:`_ask`): Slurm's end of the job, named; or the job runs
        on, and what was held is what it was."""
        if why is not None:
            self.ended(*why)
        elif answered:
            self._judge_held_term()

    def _hold_term(self, judge: Callable[..., None], *args: Any) -> bool:
        """Hold ``judge(*args)`` while the head asks why Slurm sent SIGTERM; False when it
        does not (then judge now)."""
        if self._held_term is None:
            return False
        self._held_term.append(functools.partial(judge, *args))
        return True

    def _judge_held_term(self) -> None:
        """Slurm does not end the job (or said nothing in time): what was held is judged."""
        for judge in self._end_hold() or ():
            judge()
        self.spawned_done()  # (if every rank ended meanwhile)

    def _end_hold(self) -> list[Callable[[], None]] | None:
        """The hold is over: what it held (None: there was none)."""
        held, self._held_term = self._held_term, None
        if self._held_term_timer is not None:
            self._held_term_timer.cancel()
            self._held_term_timer = None
        return held

    def ended(self, why: str, code: int) -> None:
        """The resource manager ended the job (scancel, time limit): ``code`` is our status.

        Under Slurm every rank has its SIGTERM (from Slurm, through its agent or from pmrun:
        pm.agent.step_signals), and Slurm kills what still runs after KillWait (through the
        agents it kills, their ranks' guardians): pmrun kills nothing itself, so that the
        ranks' handlers have that grace (to save a checkpoint), as srun's tasks have, and
        ends once every rank has ended or its node is gone.  What the ranks' ends meant
        while this was asked is the end's doing (dropped)."""
        self.slurm_ends = True
        self._end_hold()
        self._fail(why, code, kill=False)
        self.spawned_done()  # (if every rank ended meanwhile)
