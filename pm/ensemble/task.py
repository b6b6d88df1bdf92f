"""A submitted task as its caller holds it: the :class:`Task` handle and its :class:`TaskResult`.

Apart from :mod:`pm.ensemble` because both sides of an ensemble share them:
the :class:`~pm.ensemble.Ensemble` that admits and finishes tasks, and the
runners that start their processes on this machine
(:mod:`pm.ensemble.local`) or on other hosts (:mod:`pm.ensemble.remote`).
Callers import both names from :mod:`pm.ensemble`, which re-exports them.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass

from pm.ensemble.taskspec import TaskSpec

__all__ = ["InputStream", "Task", "TaskResult"]


@dataclass(frozen=True)
class TaskResult:
    """How a task ended.  ``returncode``: the last run's status as a shell shows it
    (128 + N for signal N), None if it never ran to an end (lost node, cancelled,
    too big for every node: see ``reason``); ``exit_codes``: one per run."""

    index: int
    argv: tuple[str, ...]
    returncode: int | None
    exit_codes: tuple[int | None, ...]
    node: str | None
    peak: int  # largest sample of its memory, bytes
    reservation: int  # what its last run reserved
    reason: str | None = None
    started: float | None = None  # wall clock of the last run's start and end
    ended: float | None = None
    stdout: bytes = b""  # when captured
    stderr: bytes = b""

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class InputStream:
    """What a task reads on stdin, given as it comes (GNU parallel's ``--roundrobin``:
    block after block, then its end); its runner writes it as the task reads it."""

    def __init__(self) -> None:
        self.blocks: collections.deque[bytes] = collections.deque()
        #: Bytes given and not yet written to the task.
        self.pending = 0
        #: Bytes written to the task (GNU parallel's joblog "Send").
        self.sent = 0
        self.ended = False
        #: The task closed its stdin or ended: what it is given is dropped.
        self.gone = False
        #: Told when there is more to write (or the end); set by the runner.
        self.wake: Callable[[], None] | None = None
        #: Told when the task took what it had been given (or left).
        self.drained = asyncio.Event()
        self.drained.set()

    @classmethod
    def whole(cls, data: bytes) -> InputStream:
        """All there is at once: ``data`` (``--pipe``'s block), then the end."""
        stream = cls()
        stream.put(data)
        stream.end()
        return stream

    def put(self, block: bytes) -> None:
        if self.gone or self.ended or not block:
            return
        self.blocks.append(block)
        self.pending += len(block)
        self.drained.clear()
        if self.wake is not None:
            self.wake()

    def end(self) -> None:
        self.ended = True
        if self.wake is not None:
            self.wake()

    def took(self, nbytes: int) -> None:
        """The runner wrote ``nbytes`` of it."""
        self.pending -= nbytes
        self.sent += nbytes
        if not self.pending:
            self.drained.set()

    def leave(self) -> None:
        """The task will read no more: drop what is left."""
        self.gone = True
        self.blocks.clear()
        self.pending = 0
        self.drained.set()


class Task:
    """A submitted task: ``await task.wait()`` gives its :class:`TaskResult`."""

    def __init__(self, spec: TaskSpec, env: dict[str, str], wdir: str | None,
                 stdin: bytes | InputStream | None = None) -> None:
        self.spec = spec
        #: What its runs read on stdin (``--pipe``'s block, ``--roundrobin``'s blocks as
        #: they come), None: /dev/null.
        self.stdin = stdin
        self.env = env
        self.wdir = wdir
        loop = asyncio.get_running_loop()
        self.admitted: asyncio.Future[None] = loop.create_future()
        self._result: asyncio.Future[TaskResult] = loop.create_future()
        self.node: str | None = None
        self.pid = 0  # of the current run on this machine
        #: Its last run's largest resident size (bytes, 0: not known): what the kernel
        #: accounted when it was reaped (:meth:`pm.ensemble.local.LocalRunner.run`).
        self.exit_rss = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.out: list[bytes] | None = None
        #: Bytes its last run wrote on stdout (GNU parallel's joblog "Receive").
        self.received = 0
        self.err: list[bytes] | None = None
        #: Files put on its host before each run, and brought back after (GNU parallel's
        #: --transferfile and --return: pm.ensemble.transfer).
        self.transfer: tuple[str, ...] = ()
        self.returns: tuple[str, ...] = ()

    @property
    def index(self) -> int:
        return self.spec.index

    @property
    def argv(self) -> tuple[str, ...]:
        return self.spec.argv

    def done(self) -> bool:
        return self._result.done()

    @property
    def sent(self) -> int:
        """Bytes given to its stdin (GNU parallel's joblog "Send": ``--pipe``'s block)."""
        given = self.stdin
        return len(given) if isinstance(given, bytes) else 0 if given is None else given.sent

    async def wait(self) -> TaskResult:
        """The result once the task succeeded or failed for good (retries included)."""
        return await asyncio.shield(self._result)
