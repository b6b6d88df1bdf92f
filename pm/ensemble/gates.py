"""GNU parallel's start conditions besides slots and memory: ``--load``, ``--noswap``,
``--limit``.

Each is a *gate* of a host: how many tasks may start there until its next sample
(:meth:`~pm.ensemble.scheduler.EnsembleScheduler.set_gate`), from the host's
:class:`~pm.common.activity.Activity`:

- ``--load MAX``: tasks start while the host's instant load is under MAX (a number,
  or ``+N``, ``-N``, ``N%`` of its CPU threads, as ``-j``; or a file that says one, read
  again when it changed): so at most ``ceil(MAX - load)`` until the next sample, which
  sees them;
- ``--noswap``: none while the host swaps both in and out;
- ``--limit "CMD"``: before each start on a host, ``sh -c CMD`` runs here (``SSHLOGIN``:
  the host, ``:`` for this one); its exit status 0 lets one task start, 1 none, 2 none
  and the youngest task there is ended (SIGTERM; a failed run, retried as
  ``--retries`` allows).  ``mem SIZE``, ``load N`` and ``io PCT`` are parallel's
  built-in limits, judged here from the host's own sample, no command run: 2 under half
  of SIZE free, 1 under SIZE; 1 with a load over N; 1 with a disk over PCT % busy.
  Any other status is no limit's answer: the ensemble starts nothing more, and says why.
"""

from __future__ import annotations

import asyncio
import math
import os
import shlex
from dataclasses import dataclass

from pm.agent.memory import SizeError, format_size, parallel_size
from pm.common.activity import Activity
from pm.options import cpu_rule

__all__ = ["BUILTINS", "Builtin", "LimitAnswer", "builtin_answer", "describe_status",
           "load_file", "load_gate", "max_load", "parse_limit", "parse_load", "run_limit"]

#: What a limit's exit status means (GNU parallel's).
START, NONE, KILL_YOUNGEST = 0, 1, 2
BUILTINS = ("mem", "load", "io")


@dataclass(frozen=True)
class Builtin:
    """One of parallel's built-in limits: ``kind`` (``mem``, ``load``, ``io``) and its
    value (bytes, threads, percent)."""

    kind: str
    value: float


@dataclass(frozen=True)
class LimitAnswer:
    """A limit's verdict on a host: its status (0, 1, 2) and what it waits for."""

    code: int
    why: str


def parse_load(text: str) -> str:
    """``--load``'s value, checked: a number, or ``+N``, ``-N``, ``N%`` (pure)."""
    text = text.strip()
    if text != "cores" and cpu_rule(text):
        return text
    try:
        if float(text) >= 0:
            return text
    except ValueError:
        pass
    raise ValueError(f"--load takes a number of running threads, or +N, -N, N% of the "
                     f"CPU threads, not {text!r}")


def load_file(path: str) -> str:
    """The ``--load`` rule file ``path`` says (``OSError``, ``ValueError``)."""
    with open(path, "rb") as f:
        text = f.read(4096).decode(errors="replace").strip()
    try:
        return parse_load(text)
    except ValueError:
        raise ValueError(f"says {text[:40]!r}, not a number of running threads, or +N, "
                         "-N, N% of the CPU threads") from None


def max_load(rule: str, cpus: int) -> float:
    """The load ``rule`` allows on a host of ``cpus`` CPU threads (at least 0.01, as
    parallel's) (pure)."""
    if rule.endswith("%"):
        most = cpus * float(rule[:-1]) / 100
    elif rule[:1] in ("+", "-"):
        most = cpus + int(rule)
    else:
        most = float(rule)
    return max(most, 0.01)


def load_gate(rule: str, cpus: int, load: int) -> tuple[int, str]:
    """How many tasks may start on a host at ``load`` under ``--load rule`` until it is
    sampled again, and what it waits for when none (pure)."""
    most = max_load(rule, cpus)
    return max(math.ceil(most - load), 0), f"a load under {most:g}"


def parse_limit(text: str) -> Builtin | str:
    """``--limit``'s value: one of parallel's built-in limits, or a shell command (pure).
    ValueError for a built-in limit without its one value."""
    words = text.split()
    if not words:
        raise ValueError("--limit takes a command (or mem SIZE, load N, io PCT)")
    if words[0] not in BUILTINS:
        return text
    if len(words) != 2:
        raise ValueError(f"--limit {words[0]} takes one value, not {text!r}")
    try:
        value = float(parallel_size(words[1])) if words[0] == "mem" else float(words[1])
    except (SizeError, ValueError):
        raise ValueError(f"--limit {words[0]}: cannot read {words[1]!r}") from None
    return Builtin(words[0], value)


def builtin_answer(limit: Builtin, free: int, activity: Activity | None) -> LimitAnswer:
    """What built-in ``limit`` says of a host with ``free`` bytes and ``activity`` (pure)."""
    if limit.kind == "mem":
        why = f"{format_size(int(limit.value))} free (--limit mem)"
        if free < limit.value / 2:
            return LimitAnswer(KILL_YOUNGEST, why)
        return LimitAnswer(NONE if free < limit.value else START, why)
    if activity is None:
        return LimitAnswer(NONE, "the host's first sample")
    if limit.kind == "load":
        return LimitAnswer(NONE if activity.load > limit.value else START,
                           f"a load of {limit.value:g} at most (--limit load)")
    return LimitAnswer(NONE if activity.io > limit.value else START,
                       f"its disks at most {limit.value:g} % busy (--limit io)")


async def run_limit(command: str, sshlogin: str) -> int:
    """Run ``--limit``'s command for one host: its exit status (128 + N if signal N
    ended it, 127 if no shell could start)."""
    env = {**os.environ, "SSHLOGIN": sshlogin}
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, env=env, stdin=asyncio.subprocess.DEVNULL)
    except OSError:
        return 127
    try:
        code = await proc.wait()
    except asyncio.CancelledError:
        proc.kill()
        await asyncio.shield(proc.wait())
        raise
    return code if code >= 0 else 128 - code


def describe_status(command: str, code: int) -> str:
    """Why status ``code`` of ``--limit``'s command stops the ensemble (pure)."""
    return (f"--limit {shlex.quote(command)} exited with {code}: a limit says 0 (start a "
            "task), 1 (start none) or 2 (end the youngest task)")
