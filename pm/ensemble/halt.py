"""GNU parallel's ``--halt WHEN,WHY=N`` over an ensemble's results, and the exit status of
parallel's command line.

:class:`Halt` counts each task's result as it ends for good: once the tasks that failed,
succeeded or ended reach N (or N %), it says why the ensemble stops (starting no more, or
with ``now`` killing the running tasks too); its :meth:`~Halt.status` is then pmrun's exit
status, as parallel's.  Its policy is the one :func:`pm.options.task_options.halt_policy`
read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pm.ensemble.task import TaskResult


class Halt:
    """GNU parallel's ``--halt WHEN,WHY=N`` (as :func:`pm.options.task_options.halt_policy`
    gives it): :meth:`count` says why the ensemble stops, once; :meth:`status` is pmrun's
    exit status then, as parallel's."""

    def __init__(self, policy: str, total: int) -> None:
        self.policy = policy
        when, _, rule = policy.partition(",")
        self.now = when == "now"
        self.why, _, count = rule.partition("=")
        self.total = total
        self.percent = count.endswith("%")
        if self.percent:
            self.limit = max(1, -(-int(count[:-1]) * total // 100))
        else:
            self.limit = int(count) if count else 0
        self.seen = 0
        self.reached = False
        #: Tasks that ran and failed until the halt (the halt's own kills are not counted).
        self.failed = 0
        #: The exit status of the task whose end reached the halt.
        self.code = 0

    def count(self, result: TaskResult) -> str | None:
        if self.reached:
            return None  # (the halt's own kills and tasks not run)
        if not result.ok:
            self.failed += 1  # (one that could not run too: its hosts were lost)
        if not self.limit or result.started is None:
            return None  # never, or a task that never ran
        if self.why == "done" or (self.why == "fail") != result.ok:
            self.seen += 1
            if self.seen == self.limit:
                self.reached = True
                self.code = 1 if result.returncode is None else result.returncode
                what = {"fail": "failed", "success": "succeeded", "done": "ended"}[self.why]
                return (f"--halt {self.policy}: {self.seen} task{'s' * (self.seen != 1)} "
                        f"{what}: " + ("killing the running tasks" if self.now
                                       else "starting no more"))
        return None

    def status(self) -> int:
        """GNU parallel's exit status: the number of failed tasks (101: more than 100);
        after ``--halt``: 0 for ``success``, the status of the task that halted it for
        ``fail=1``/``done=1``, the percentage of the tasks that failed for ``fail=N%``."""
        if self.reached and self.why == "success":
            return 0
        if self.reached and self.limit == 1 and not self.percent:
            return self.code
        if self.reached and self.percent:
            return round(100 * self.failed / max(self.total, 1))
        return min(self.failed, 101)
