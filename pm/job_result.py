"""How a job ended, as the head reports it: each rank's end (:class:`RankResult`) and the
job's (:class:`JobResult`, what ``pm.run`` returns and ``pmrun`` exits with)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RankResult:
    rank: int
    node: int
    code: int
    signal: int
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.signal == 0 and not self.reason


def abort_status(code: int) -> int:
    """pmrun's exit status for an abort with ``code``: modulo 256, as exit() takes it,
    and 1 where that leaves 0 (an aborted job never reports success)."""
    return code % 256 or 1


@dataclass(slots=True)
class JobResult:
    """How a job ended: ``returncode`` is what ``pmrun`` exits with."""

    returncode: int
    ranks: dict[int, RankResult] = field(default_factory=dict)
    cause: str | None = None
    stats: dict[str, object] = field(default_factory=dict)
    #: Jobs the ranks spawned (MPI_Comm_spawn), by number: pm.spawned_jobs.SpawnedJob.summary().
    spawned: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: The job's number of ranks, those that never reported included (0: as ``ranks`` says).
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def exit_codes(self) -> list[int]:
        """Each rank's exit status as a shell reports it (128 + signal when killed), rank 0
        first; -1 for a rank that never reported one (never started: the job ended first)."""
        size = self.size or max(self.ranks, default=-1) + 1
        return [
            (128 + r.signal if r.signal else r.code) if (r := self.ranks.get(i)) else -1
            for i in range(size)
        ]
