"""One rank of a node as its agent sees it: its process, PMI session, pipes and end.

:class:`RankProc` is the record :class:`~pm.agent.ranks.LocalRanks` keeps for each of
the node's ranks (the agent's ``ranks``, by rank); :class:`PmiPhase` says how far the
rank got with PMI and :class:`RankLife` where its end is (running, exited, reported up
the tree).  The agent's end of a job (:mod:`pm.agent.node_end`) and its state reports
(:mod:`pm.agent.state_report`) read them.
"""

from __future__ import annotations

import asyncio
import enum
from typing import TYPE_CHECKING

from pm.common.output import LineBuffer

if TYPE_CHECKING:
    from pm.agent.pmi_shell import PmiSession
    from pm.agent.watch import ExitStatus


class PmiPhase(enum.Enum):
    """How far a rank got with PMI."""

    NONE = "none"  # never called init
    INITIALIZED = "initialized"
    FINALIZED = "finalized"


class RankLife(enum.Enum):
    """A rank as a process, as its agent sees it."""

    RUNNING = "running"  # or never started: ``status`` says how it ended once it has
    EXITED = "exited"  # ended; its last output may still be in its pipes
    REPORTED = "reported"  # its end went up the tree (once)


class RankProc:
    """One local rank: its process, PMI session, pipes and how it ended."""

    __slots__ = ("ended", "ended_at", "fds", "life", "local_rank", "pid", "pmi", "pmi_eof", "rank",
                 "reason", "session", "status", "stdin_buf", "stdin_fd", "stdin_taken",
                 "streams")

    def __init__(self, rank: int, local_rank: int) -> None:
        self.rank = rank
        self.local_rank = local_rank
        self.pid = 0
        self.session: PmiSession | None = None
        self.streams: dict[int, LineBuffer] = {}
        self.fds: dict[int, int] = {}
        self.status: ExitStatus | None = None
        #: Its exit status once the watch has it (``status`` once the loop took it).
        self.ended: asyncio.Future[ExitStatus] | None = None
        #: When we learned that it ended (``time.time()``), 0 while it runs.
        self.ended_at = 0.0
        self.reason = ""
        self.pmi = PmiPhase.NONE
        #: Its PMI stream ended: every request it sent has been read.
        self.pmi_eof = False
        self.life = RankLife.RUNNING
        self.stdin_fd = -1
        #: pmrun's stdin not written to it yet, and how much of it the rank took (bytes
        #: from the first: written, or dropped once its stdin closed).
        self.stdin_buf = b""
        self.stdin_taken = 0
