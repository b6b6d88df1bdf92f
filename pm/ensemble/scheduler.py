"""Task ensembles' scheduler: which task starts where, under each node's memory admission.

:class:`EnsembleScheduler` is pure: events in (node memory samples, task
usage samples, task exits), :class:`Start` actions out.  Per node it keeps
an :class:`Admission` so the rule is the agents' rule: a task starts on a
node only if used + reserved + its reservation stays under the node's high
watermark, and a node that passed its high watermark takes nothing until
it is back under its low one.  The tasks it runs: :mod:`pm.ensemble.taskspec`.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from pm.agent.admission import Admission, Watermarks, format_size
from pm.ensemble.taskspec import TaskSpec

NodeId = Hashable

DEFAULT_RESERVATION = 256 << 20  # a task whose size nobody knows yet
#: Sizes below this count as one when the tasks of a command are compared: a short task's
#: size is the kernel's count at its end, which includes its spawner's (ours) and the
#: libraries it mapped, where a sample counts the task's own anonymous pages alone.
SMALL = 32 << 20
LEARN_MARGIN = 1.25  # learned reservation = largest peak seen x this


class TaskStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"  # exited 0
    FAILED = "failed"  # out of retries, or can never fit a node


@dataclass(frozen=True)
class Start:
    """Action: run ``task`` on ``node``; ``reservation`` bytes are held for it there.

    ``declared``: the reservation is the task's own bound (overruns are
    reported against it) rather than a learned or default guess.
    """

    task: TaskSpec
    node: NodeId
    reservation: int
    attempt: int  # 1 for the first run
    declared: bool


@dataclass
class TaskRecord:
    spec: TaskSpec
    status: TaskStatus = TaskStatus.QUEUED
    attempts: int = 0
    exit_codes: list[int | None] = field(default_factory=list)  # None: node lost
    node: NodeId | None = None
    reservation: int = 0
    peak: int = 0
    reason: str | None = None
    sized: bool = False  # its size counted in its command's (:meth:`EnsembleScheduler._size`)


class Progress(NamedTuple):
    """``done`` (finished, well or not), ``running``, ``queued`` (waiting to
    start, retries included) and ``waiting``: what the first queued task waits
    for (the others wait behind it), "" if nothing holds it back."""

    done: int
    running: int
    queued: int
    waiting: str = ""

    def format(self, total: int) -> str:
        text = f"tasks: {self.done}/{total} done, {self.running} running, {self.queued} queued"
        return f"{text}, waiting for {self.waiting}" if self.queued and self.waiting else text


@dataclass(frozen=True)
class Summary:
    total: int
    succeeded: int
    failed: int
    retries: int  # runs beyond the first, over all tasks
    exit_codes: Mapping[int, tuple[int | None, ...]]  # task index -> code of each attempt
    failures: tuple[TaskRecord, ...]

    def format(self, by_seq: bool = False) -> str:
        """The summary's lines; ``by_seq``: each failed task named by its Seq (its index + 1,
        GNU parallel's ``{#}``), not by its index and its tasks file's line."""
        lines = [
            f"{self.total} task{'s' * (self.total != 1)}: {self.succeeded} succeeded, "
            f"{self.failed} failed, {self.retries} retr{'y' if self.retries == 1 else 'ies'}"
        ]
        for rec in self.failures:
            codes = ", ".join("lost with its node" if c is None else str(c)
                              for c in rec.exit_codes)
            what = rec.reason or f"exit codes {codes}"
            name = (f"task {rec.spec.index + 1}" if by_seq
                    else f"task {rec.spec.index} (line {rec.spec.lineno})")
            lines.append(f"  {name}: {what}: {rec.spec.line}")
        return "\n".join(lines)


@dataclass
class _Node:
    slots: int | None
    admission: Admission | None = None
    running: set[int] = field(default_factory=set)
    alive: bool = True
    #: Starts allowed until the next :meth:`EnsembleScheduler.set_gate` (None: no gate),
    #: and what a closed gate waits for.
    allow: int | None = None
    gated: str = ""

    def free_slots(self, gate: bool = True) -> float:
        if not self.alive or self.admission is None:
            return 0
        free = math.inf if self.slots is None else self.slots - len(self.running)
        return free if self.allow is None or not gate else min(free, self.allow)


class EnsembleScheduler:
    """Runs tasks over nodes as fast as each node's memory admission allows.

    ``nodes``: the node ids; a node takes tasks once :meth:`node_memory`
    gave its watermarks.  ``retries``: extra runs of a task that exits
    non-zero.  ``learn``: a task without a bound reserves the largest peak
    measured in finished tasks of the same
    :func:`~pm.ensemble.taskspec.command_key`, times
    ``margin``; else ``default_reservation`` (a guess, capped at the
    largest high watermark).  ``slots``: tasks at most
    per node (None: memory is the only limit); ``slot_word`` says what a slot
    is in the progress line ("a core" when slots are the node's cores).  ``backfill``: a task that
    fits may pass an earlier one that does not (default: strict FIFO).
    A rerun reserves at least its previous peak x ``margin``.  A task reserving a
    guess starts on a node only once the node's last guessed task was measured by
    a sample (slow start: a burst of under-guessed tasks cannot start at once).
    Node choice: the most headroom (high - used - reserved), then the
    fewest running tasks, then the order of ``nodes``.
    """

    def __init__(
        self,
        nodes: Sequence[NodeId],
        retries: int = 0,
        learn: bool = True,
        *,
        slots: int | Mapping[NodeId, int] | None = None,
        backfill: bool = False,
        default_reservation: int = DEFAULT_RESERVATION,
        margin: float = LEARN_MARGIN,
        settle: float | None = None,
        slot_word: str = "a free slot",
        small: int = SMALL,
    ) -> None:
        self._order = list(nodes)
        self._small = small
        self._slot_word = slot_word
        self._nodes = {
            n: _Node(slots.get(n) if isinstance(slots, Mapping) else slots) for n in nodes
        }
        self._retries = retries
        self._learn = learn
        self._backfill = backfill
        self._default = default_reservation
        self._margin = margin
        self._settle = settle
        self._tasks: dict[int, TaskRecord] = {}
        self._queue: deque[int] = deque()
        #: Why nothing more starts (:meth:`stop`), or None.
        self._stopped: str | None = None
        self._learned: dict[tuple[str, ...], int] = {}
        #: Per command, the smallest and largest size its tasks showed (a running task's
        #: steady peak, a finished task's) and how many tasks showed one.
        self._sizes: dict[tuple[str, ...], list[int]] = {}
        self._failed_unrun: list[int] = []

    # -- queries
    def record(self, index: int) -> TaskRecord:
        return self._tasks[index]

    def admission(self, node: NodeId) -> Admission | None:
        return self._nodes[node].admission

    @property
    def finished(self) -> bool:
        """Every task added has succeeded or failed for good."""
        return not self._queue and all(not n.running for n in self._nodes.values())

    def queued(self) -> int:
        """How many tasks wait to start."""
        return len(self._queue)

    def progress(self) -> Progress:
        # Every task is queued, running or done (well or not): no pass over the tasks,
        # which made an ensemble of n tasks cost O(n^2) (20,000 took minutes).
        running = sum(len(n.running) for n in self._nodes.values())
        done = len(self._tasks) - len(self._queue) - running
        return Progress(done, running, len(self._queue), self._waiting_for())

    def _waiting_for(self) -> str:
        """What the first queued task waits for, by the rule :meth:`schedule` applies."""
        if not self._queue:
            return ""
        spec = self._tasks[self._queue[0]].spec
        nbytes, _ = self.reservation_for(spec)
        live = [n for n in self._nodes.values() if n.alive]
        if live and all(n.admission is None for n in live):
            return "the nodes' memory figures"
        free = [n for n in live if n.free_slots() > 0]
        if not free:
            gated = [n.gated for n in live if n.free_slots(gate=False) > 0 and n.gated]
            return gated[0] if gated else self._slot_word
        fitting = [n for n in free if n.admission is not None and n.admission.fits(nbytes)]
        if not fitting:
            return "memory"
        if not self._informed(spec) and all(n.admission.unmeasured_guesses() for n in fitting
                                            if n.admission is not None):
            return "a running task's first measurement"
        return ""

    def set_slots(self, node: NodeId, slots: int | None) -> list[Start]:
        """Change a node's task slots (a host's cores, once its runner told them)."""
        self._nodes[node].slots = slots
        return self.schedule()

    def running_on(self, node: NodeId) -> set[int]:
        """The tasks running on ``node``."""
        return self._nodes[node].running

    def set_gate(self, node: NodeId, allow: int | None, why: str = "") -> list[Start]:
        """Let at most ``allow`` more tasks start on ``node`` until the next call (None: no
        such bound): GNU parallel's ``--load``, ``--noswap``, ``--limit``.  ``why``: what
        the node waits for while it allows none (the progress line's words)."""
        n = self._nodes[node]
        n.allow, n.gated = allow, why
        return self.schedule()

    def summary(self) -> Summary:
        recs = sorted(self._tasks.values(), key=lambda r: r.spec.index)
        failures = tuple(r for r in recs if r.status is TaskStatus.FAILED)
        return Summary(
            total=len(recs),
            succeeded=sum(r.status is TaskStatus.DONE for r in recs),
            failed=len(failures),
            retries=sum(max(0, r.attempts - 1) for r in recs),
            exit_codes={r.spec.index: tuple(r.exit_codes) for r in recs},
            failures=failures,
        )

    def reservation_for(self, spec: TaskSpec) -> tuple[int, bool]:
        """(bytes to reserve, whether it is the task's declared bound)."""
        rec = self._tasks.get(spec.index)
        again = int(rec.peak * self._margin) if rec is not None else 0
        if spec.mem is not None:  # (0: a task started at once whatever its size, unbound)
            return max(spec.mem, again), spec.mem > 0
        learned = self._learned.get(spec.key) if self._learn else None
        if learned is None and spec.key in self._sizes:  # a running task's steady peak
            again = max(again, int(self._sizes[spec.key][1] * self._margin))  # (raises it)
        guess = max(self._default if learned is None else int(learned * self._margin), again)
        # A guess is no promise: never let it alone keep a task off every node, so cap it
        # at what the roomiest node can give once our tasks there have ended.
        rooms = [n.admission.watermarks.high - n.admission.foreign
                 for n in self._nodes.values() if n.alive and n.admission is not None]
        if rooms and max(rooms) > 0:
            guess = min(guess, max(rooms))
        return guess, False

    def _informed(self, spec: TaskSpec) -> bool:
        """Whether ``spec``'s reservation rests on a size: its declared bound, or the sizes
        tasks of its command showed, two or more of them and all alike (within the margin:
        :meth:`_size`).  Tasks with one start together, as GNU parallel's ``-j N`` start;
        a mere guess waits for the guesses before it to be measured (:meth:`_pick`), and so
        do the tasks of a command whose sizes vary: the next may be larger again."""
        if spec.mem is not None:
            return True
        sizes = self._sizes.get(spec.key) if self._learn else None
        return (sizes is not None and sizes[2] >= 2
                and max(sizes[1], self._small) <= max(sizes[0], self._small) * self._margin)

    def _size(self, rec: TaskRecord, size: int) -> None:
        """Task ``rec`` showed ``size`` (a steady peak while it runs, its last one at its
        end): its command's range of sizes takes it in."""
        sizes = self._sizes.setdefault(rec.spec.key, [size, size, 0])
        sizes[0], sizes[1] = min(sizes[0], size), max(sizes[1], size)
        if not rec.sized:
            rec.sized = True
            sizes[2] += 1

    # -- events
    def add(self, specs: Iterable[TaskSpec]) -> list[Start]:
        """Queue tasks (indices must be new); once stopped, they fail with the stop's
        reason at once (:meth:`take_failed_unrun`)."""
        for spec in specs:
            if spec.index in self._tasks:
                raise ValueError(f"task {spec.index} was already added")
            self._tasks[spec.index] = TaskRecord(spec)
            self._queue.append(spec.index)
        if self._stopped is not None:
            self.stop(self._stopped)
        return self.schedule()

    def node_memory(
        self,
        node: NodeId,
        used: int,
        watermarks: Watermarks | None = None,
        *,
        tasks: Mapping[int, int] | None = None,
        now: float = 0.0,
    ) -> list[Start]:
        """A node's memory sample, with its watermarks (required the first time)
        and, in ``tasks``, samples of its running tasks taken at the same time.

        Send the task samples here rather than through :meth:`task_usage` when
        they come with the node's: applied apart, a task's usage would count
        in its (stale) unused reservation and in the fresh node usage, or in
        neither, until the other sample arrives.
        """
        n = self._nodes[node]
        if watermarks is not None:
            if n.admission is None:
                n.admission = Admission(watermarks, used=used, settle=self._settle)
            else:
                n.admission.set_watermarks(watermarks)
        if n.admission is None:
            raise ValueError(f"node {node!r}: the first memory sample must give its watermarks")
        mine = {}
        for index, measured in (tasks or {}).items():
            rec = self._tasks.get(index)
            if rec is not None and rec.status is TaskStatus.RUNNING and rec.node == node:
                rec.peak = max(rec.peak, measured)
                mine[index] = measured
        n.admission.observe(used, mine, now=now)
        self._note_steady(n.admission, mine)
        return self.schedule()

    def _note_steady(self, adm: Admission, indices: Iterable[int]) -> None:
        for index in indices:
            if adm.steady(index):
                self._size(self._tasks[index], self._tasks[index].peak)

    def task_usage(self, index: int, measured: int, *, now: float = 0.0) -> list[Start]:
        """A sample of a running task's memory (its process tree)."""
        rec = self._tasks[index]
        if rec.status is not TaskStatus.RUNNING or rec.node is None:
            return []
        rec.peak = max(rec.peak, measured)
        adm = self._nodes[rec.node].admission
        assert adm is not None
        adm.correct(index, measured, now=now)
        self._note_steady(adm, (index,))
        return self.schedule()

    def task_exited(self, index: int, code: int | None, *, rss: int = 0) -> list[Start]:
        """A running task ended with ``code`` (None: lost with its node).  ``rss``: the
        largest resident size of its processes, as the kernel accounted it (0: not known),
        what its command learns from when no sample measured it (a short task): more than
        what a sample counts (its share of libraries, the spawner's size), never less."""
        rec = self._tasks[index]
        if rec.status is not TaskStatus.RUNNING:
            return []
        assert rec.node is not None
        node = self._nodes[rec.node]
        node.running.discard(index)
        if node.admission is not None:
            node.admission.release(index, exited=code is not None)
        rec.exit_codes.append(code)
        size = rec.peak or rss
        if size:
            key = rec.spec.key
            self._learned[key] = max(self._learned.get(key, 0), size)
            self._size(rec, size)
        if code == 0:
            rec.status = TaskStatus.DONE
        elif rec.attempts <= self._retries and self._stopped is None:
            rec.status = TaskStatus.QUEUED
            self._queue.append(index)
        else:
            rec.status = TaskStatus.FAILED
        return self.schedule()

    def stop(self, reason: str) -> None:
        """Start nothing more: queued tasks fail with ``reason``, and a running task that
        fails from now on is not retried."""
        if self._stopped is None:
            self._stopped = reason
        for index in list(self._queue):
            self.cancel(index, reason)

    def withdraw(self, index: int) -> None:
        """A task :meth:`schedule` started whose run never began (the ensemble stopped
        first): it fails with the stop's reason, its reservation released."""
        rec = self._tasks[index]
        if rec.status is not TaskStatus.RUNNING or rec.node is None:
            return
        node = self._nodes[rec.node]
        node.running.discard(index)
        if node.admission is not None:
            node.admission.release(index, exited=False)
        rec.attempts -= 1
        rec.status, rec.reason = TaskStatus.FAILED, self._stopped or "withdrawn"
        self._failed_unrun.append(index)

    def cancel(self, index: int, reason: str = "cancelled") -> list[Start]:
        """Withdraw a queued task: it fails with ``reason`` (a running one is left alone)."""
        rec = self._tasks[index]
        if rec.status is TaskStatus.QUEUED:
            self._queue.remove(index)
            rec.status, rec.reason = TaskStatus.FAILED, reason
            self._failed_unrun.append(index)
        return self.schedule()

    def take_failed_unrun(self) -> list[int]:
        """Tasks failed since the last call without a run ending: cancelled, or too big
        for every node (their failure comes with no :meth:`task_exited`)."""
        out, self._failed_unrun = self._failed_unrun, []
        return out

    def node_lost(self, node: NodeId) -> list[Start]:
        """A node is gone: its running tasks count as failed runs (retried if allowed)."""
        n = self._nodes[node]
        n.alive = False
        for index in sorted(n.running):
            self.task_exited(index, None)
        return self.schedule()

    def schedule(self) -> list[Start]:
        """Start what the admission rule allows now, in queue order (nothing once stopped)."""
        starts: list[Start] = []
        if self._stopped is not None:
            return starts
        for index in list(self._queue):
            rec = self._tasks[index]
            nbytes, declared = self.reservation_for(rec.spec)
            node_id = self._pick(nbytes, guess=not self._informed(rec.spec))
            if node_id is None:
                if self._unschedulable(rec, nbytes):
                    continue
                if not self._backfill or not any(n.free_slots() for n in self._nodes.values()):
                    break
                continue
            node = self._nodes[node_id]
            assert node.admission is not None
            admitted = node.admission.request(index, nbytes, declared=declared)
            assert admitted
            self._queue.remove(index)
            node.running.add(index)
            if node.allow is not None:
                node.allow -= 1
            rec.status, rec.node, rec.reservation = TaskStatus.RUNNING, node_id, nbytes
            rec.attempts += 1
            starts.append(Start(rec.spec, node_id, nbytes, rec.attempts, declared))
        return starts

    # -- internals
    def _pick(self, nbytes: int, guess: bool = False) -> NodeId | None:
        best: tuple[int, int, int] | None = None
        choice: NodeId | None = None
        for pos, node_id in enumerate(self._order):
            n = self._nodes[node_id]
            if n.free_slots() <= 0 or n.admission is None or not n.admission.fits(nbytes):
                continue
            if guess and n.admission.unmeasured_guesses():
                # One guess in flight per node: the tasks it would start together may all
                # be far bigger than guessed, and start before any sample shows it.
                continue
            rank = (-n.admission.headroom, len(n.running), pos)
            if best is None or rank < best:
                best, choice = rank, node_id
        return choice

    def _unschedulable(self, rec: TaskRecord, nbytes: int) -> bool:
        """Fail a task no node could ever take (once every live node has reported)."""
        live = [n for n in self._nodes.values() if n.alive]
        if live and any(n.admission is None for n in live):
            return False
        highs = [n.admission.watermarks.high for n in live if n.admission is not None]
        if highs and nbytes <= max(highs):
            return False
        self._queue.remove(rec.spec.index)
        rec.status = TaskStatus.FAILED
        self._failed_unrun.append(rec.spec.index)
        rec.reason = (
            f"needs {format_size(nbytes)}, more than any node's high watermark "
            f"({format_size(max(highs))})"
            if highs
            else "no node left to run it"
        )
        return True
