"""GNU parallel's job log, for ``pmrun --joblog FILE`` (and ``--resume``, ``--resume-failed``,
``--retry-failed``).

One tab-separated line per task once it has ended for good (its retries
included), in GNU parallel's columns::

    Seq  Host  Starttime  JobRuntime  Send  Receive  Exitval  Signal  Command

``Seq`` is the task's number (``{#}``, from 1), ``Host`` the node it last ran on (``:``
for this machine, as GNU parallel names it), ``Starttime`` and ``JobRuntime`` its last
run's start (seconds since the epoch) and length, ``Send`` the bytes given to its stdin
(``--pipe``'s block; else 0), ``Receive`` the bytes it wrote on stdout, ``Exitval`` its
exit status, ``Signal`` N when its status was 128 + N (as a shell reports a signal), and
``Command`` the line as written.  A task that started but never ran to an end (its node
was lost) has ``Exitval`` -1; one that never started (the run was interrupted first, no
node could admit it) is not in the log.  ``--joblog +FILE`` appends to FILE, without a
header; ``--joblog -`` writes the log on stdout, each line after its task's output.

Each line is written as the task ends, so the log of an interrupted run (an
allocation's time limit, a Ctrl-C) holds every task that finished:
:func:`read_joblog` gives them to ``--resume`` (skip every task in the log) and
``--resume-failed`` (skip those that succeeded); :func:`failed_commands` to
``--retry-failed`` (run again the commands that failed, as the log has them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from typing import TextIO

from pm.ensemble.task import TaskResult
from pm.proto.errors import UsageError

log = logging.getLogger("pm.ensemble")

HEADER = "Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n"
_SIGNALS = frozenset(int(s) for s in signal.Signals)


def read_joblog(path: str) -> dict[int, bool]:
    """Each task number in the log at ``path``: whether its last entry succeeded (exit
    status 0, no signal).  Empty if the file does not exist; :class:`UsageError` naming
    the file and line if a line is not a job log's."""
    return {seq: ok for seq, (ok, _lineno, _command) in _last_entries(path).items()}


def failed_commands(path: str) -> list[tuple[int, int, str]]:
    """``--retry-failed``: (task number, line, command) of each task whose last entry in
    the log at ``path`` failed, in task order (none if the file does not exist, as GNU
    parallel's)."""
    return [(seq, lineno, command)
            for seq, (ok, lineno, command) in sorted(_last_entries(path).items()) if not ok]


def _last_entries(path: str) -> dict[int, tuple[bool, int, str]]:
    """Task number -> (succeeded, line number, command) of its last entry in the log."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"--joblog {path}: {exc.strerror or exc}") from None
    entries: dict[int, tuple[bool, int, str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (lineno == 1 and line.startswith("Seq\t")):
            continue
        fields = line.split("\t", 8)
        try:
            seq, code, sig = int(fields[0]), int(fields[6]), int(fields[7])
        except (IndexError, ValueError):
            raise UsageError(f"--joblog {path}: line {lineno} is not a job log's "
                             f"(Seq, Host, ... Exitval, Signal, Command): {line[:80]!r}") from None
        entries[seq] = (code == 0 and sig == 0, lineno, fields[8] if len(fields) > 8 else "")
    return entries


def entry(result: TaskResult) -> tuple[float, float, int, int] | None:
    """A task's ``Starttime``, ``JobRuntime``, ``Exitval`` and ``Signal`` (None: it never
    started)."""
    start, end = result.started, result.ended
    if start is None:
        return None
    code = result.returncode
    sig = code - 128 if code is not None and code > 128 and code - 128 in _SIGNALS else 0
    exitval = -1 if code is None else 0 if sig else code
    return start, 0.0 if end is None else end - start, exitval, sig


def written(file: TextIO, text: str, what: str, items: str, seq: int) -> None:
    """``text`` written to ``file`` at once; if it cannot be, the tasks go on and the file
    stops: one line names ``what`` and the task from which no more ``items`` are written."""
    try:
        file.write(text)
        file.flush()
    except OSError as exc:
        log.error("%s: %s: no more %s written (from Seq %d on)", what, exc.strerror or exc,
                  items, seq)
        with contextlib.suppress(OSError):
            file.close()


def log_target(given: str) -> tuple[str, bool]:
    """Where ``--joblog`` writes and whether it appends: GNU parallel's ``+FILE`` appends to
    FILE (no header: the lines go on those there), ``-`` is stdout (``(path, append)``)."""
    if given.startswith("+") and given != "+":
        return given[1:], True
    return given, False


class JobLog:
    """The job log being written: :meth:`record` appends a task's line, flushed at once.
    ``append``: to what ``path`` holds (its header written if it is empty or new);
    ``header``: False for none at all (GNU parallel's ``+FILE``).  ``path`` ``-``: no
    file, the lines are the caller's to write (:attr:`to_stdout`: after each task's
    output on stdout, as GNU parallel's ``--joblog -``)."""

    def __init__(self, path: str, append: bool, header: bool = True) -> None:
        self.path = path
        self.to_stdout = path == "-"
        if self.to_stdout:
            return
        try:
            fresh = header and (not append or not os.path.getsize(path))
        except OSError:
            fresh = True
        try:
            self._file = open(path, "a" if append else "w", encoding="utf-8",  # noqa: SIM115
                              errors="surrogateescape")
        except OSError as exc:
            raise UsageError(f"--joblog {path}: {exc.strerror or exc}") from None
        if fresh:
            try:  # (before any task started: a file that takes no bytes is refused now)
                self._file.write(HEADER)
                self._file.flush()
            except OSError as exc:
                self.close()
                raise UsageError(f"--joblog {path}: cannot be written: "
                                 f"{exc.strerror or exc}") from None

    def record(self, result: TaskResult, line: str, received: int, sent: int = 0,
               host: str | None = None) -> str:
        """Write the line of a task that ended (with :attr:`to_stdout`: return it); "" for
        one that never started.  ``received``, ``sent``: its stdout's bytes and its stdin's;
        ``host``: where it ran as the log names it (default: its node)."""
        fields = entry(result)
        if fields is None or (not self.to_stdout and self._file.closed):
            return ""  # a task that never started (interrupted, too big) is run by --resume
        start, took, exitval, sig = fields
        command = line.replace("\t", " ").replace("\n", " ")
        text = (f"{result.index + 1}\t{host or result.node or ':'}\t{start:.3f}\t"
                f"{took:10.3f}\t{sent}\t{received}\t{exitval}\t{sig}\t{command}\n")
        if self.to_stdout:
            return text
        written(self._file, text, f"--joblog {self.path}", "lines", result.index + 1)
        return text

    def close(self) -> None:
        if not self.to_stdout:
            with contextlib.suppress(OSError):
                self._file.close()
