"""Front ends of task ensembles: ``pmrun --tasks FILE`` and :func:`pm.run_tasks`.

The console prefixes each task's lines with ``[task N] `` and, on a terminal,
keeps a progress line redrawn in place; the machinery is :mod:`pm.ensemble`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from pm.agent.memory import SizeError, parse_size
from pm.common.output import STDERR, Writer
from pm.ensemble.core import Ensemble, Event
from pm.ensemble.inputs import SEPARATORS, combinations, split_columns
from pm.ensemble.joblog import JobLog, read_joblog
from pm.ensemble.scheduler import TaskSpec, parse_tasks, with_arguments
from pm.ensemble.task import Task, TaskResult
from pm.proto.errors import PMError

if TYPE_CHECKING:
    from pm.cli import CliOptions
    from pm.common.nodes import Nodes

__all__ = ["run_cli", "run_ensemble"]

class _Console:
    """Task output with a ``[task N] `` prefix, messages, and on a terminal's stderr
    a progress line redrawn in place (cleared before anything else is written).

    Written in order by the output thread (:class:`pm.common.output.Writer`): a slow reader
    of our stdout never stops the loop that runs the tasks.  :meth:`aclose` waits
    until all is written."""

    def __init__(self, verbose: int, tty: bool) -> None:
        self.verbose = verbose
        self.tty = tty
        #: -k: the tasks in the order their output is written (the first one's as it
        #: comes, the others' held until those before them ended), and what is held.
        self._order: deque[int] | None = None
        self._held: dict[int, list[tuple[int, bytes]]] = {}
        self._ended: set[int] = set()
        self._shown = False
        self._text = ""
        self._timer: asyncio.TimerHandle | None = None
        self._writer = Writer(False)
        self._writer.write_behind(asyncio.get_running_loop().call_soon_threadsafe,
                                  lambda _tag, _n: None)

    def _write(self, stream: int, data: bytes) -> None:
        self._writer.write(0, stream, data)

    def keep_order(self, indices: Iterable[int]) -> None:
        """Write tasks' output in this order (GNU parallel's ``-k``)."""
        self._order = deque(indices)

    def ended(self, index: int) -> None:
        """Task ``index`` has ended for good: with ``-k``, the output it let wait goes."""
        order = self._order
        if order is None:
            return
        self._ended.add(index)
        while order and order[0] in self._ended:
            self._ended.discard(order.popleft())
            if order:
                for stream, data in self._held.pop(order[0], ()):
                    self._output(order[0], stream, data)

    def output(self, index: int, stream: int, data: bytes) -> None:
        if self._order is not None and self._order and self._order[0] != index:
            self._held.setdefault(index, []).append((stream, data))
            return
        self._output(index, stream, data)

    def _output(self, index: int, stream: int, data: bytes) -> None:
        prefix = b"[task %d] " % index
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        self._clear()
        self._write(stream, b"".join(prefix + line + b"\n" for line in lines))
        self._later()

    def message(self, text: str) -> None:
        self._clear()
        self._write(STDERR, f"pmrun: {text}\n".encode())
        self._later()

    def event(self, e: Event) -> None:
        if e.kind in ("overrun", "killed", "suspended", "resumed", "lost", "timeout"):
            level = 0
        elif e.kind in ("watermarks", "blocked", "unblocked"):
            level = 1
        elif e.kind in ("start", "exit") or (e.kind == "sample" and e.used + e.reserved > e.low):
            level = 2  # samples only while they matter: between the watermarks or above
        else:
            return
        if self.verbose >= level:
            self.message(e.text)

    def progress(self, text: str) -> None:
        self._text = text
        self._later()

    def _later(self) -> None:
        if self.tty and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(0.1, self._draw)

    def _draw(self) -> None:
        self._timer = None
        if self._text:
            self._write(STDERR, f"\r{self._text}\x1b[K".encode())
            self._shown = True

    def _clear(self) -> None:
        if self._shown:
            self._write(STDERR, b"\r\x1b[K")
            self._shown = False

    async def aclose(self, last: str = "") -> None:
        """Clear the progress line, write ``last``, and wait until everything is written."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._clear()
        if last:
            self._write(STDERR, last.encode())
        await asyncio.to_thread(self._writer.drain)
        self._writer.close()


def _options(extra: dict[str, str]) -> dict[str, Any]:
    """Ensemble keyword arguments from the CLI's option values (UsageError if bad)."""
    from pm.proto.errors import UsageError

    out: dict[str, Any] = {"mem_high": extra.get("mem_high"), "mem_low": extra.get("mem_low")}
    try:
        if "mem_per_task" in extra:
            out["mem_per_task"] = parse_size(extra["mem_per_task"])
        out["retries"] = int(extra.get("retries", "0"))
        if "mem_settle" in extra:
            value = extra["mem_settle"]
            out["settle"] = None if value in ("off", "0") else float(value)
    except (SizeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if out["retries"] < 0:
        raise UsageError("--retries must be at least 0")
    jobs = extra.get("jobs")
    if jobs is None:
        out["jobs"] = "cores"  # GNU parallel's default: one task per core
    else:
        out["jobs"] = int(jobs)  # checked by pm.options.task_slots
    overrun = extra.get("mem_overrun", "warn")
    if overrun not in ("warn", "kill", "suspend"):
        raise UsageError(f"--mem-overrun takes warn, kill or suspend, not {overrun!r}")
    out["overrun"] = overrun
    return out


class _Halt:
    """GNU parallel's ``--halt WHEN,WHY=N`` (as :func:`pm.options.halt_policy` gives it):
    :meth:`count` says why the ensemble stops, once."""

    def __init__(self, policy: str, total: int) -> None:
        self.policy = policy
        when, _, rule = policy.partition(",")
        self.now = when == "now"
        self.why, _, count = rule.partition("=")
        if count.endswith("%"):
            self.limit = max(1, -(-int(count[:-1]) * total // 100))
        else:
            self.limit = int(count) if count else 0
        self.seen = 0
        self.reached = False

    def count(self, result: TaskResult) -> str | None:
        if not self.limit or result.started is None:
            return None  # never, or a task that never ran (the stop's own, too)
        if self.why == "done" or (self.why == "fail") != result.ok:
            self.seen += 1
            if self.seen == self.limit:
                self.reached = True
                what = {"fail": "failed", "success": "succeeded", "done": "ended"}[self.why]
                return (f"--halt {self.policy}: {self.seen} task{'s' * (self.seen != 1)} "
                        f"{what}: " + ("killing the running tasks" if self.now
                                       else "starting no more"))
        return None


def _sources(opts: CliOptions) -> list[str]:
    """The input sources' words (``::: A B``, ``:::: FILE``...; empty without them); a
    program beside ``--tasks FILE`` is refused, since the file's lines run and it would
    silently be left out."""
    from pm.proto.errors import UsageError

    apps = opts.spec.apps
    if not apps:
        return []
    if opts.n_given:
        raise UsageError("-n is the number of an MPI job's ranks: here each line and "
                         "combination of arguments is one task (-j N: N at once)")
    argv = apps[0].argv
    if len(apps) > 1 or argv[0] not in SEPARATORS:
        raise UsageError(f"--tasks runs the lines of {opts.extra['tasks']}, not {argv[0]!r}: "
                         "put the command in the file (arguments for its {} go after :::)")
    return argv


def _read_text(path: str) -> str:
    """A tasks file's or an input source's text; bytes that are not UTF-8 (a file name in
    another encoding) come back unchanged in the tasks' command lines (``os.fsdecode``'s
    way)."""
    if path == "-":
        return sys.stdin.buffer.read().decode(errors="surrogateescape")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


async def run_cli(opts: CliOptions) -> int:
    """``pmrun --tasks FILE``: run the file's tasks, print a summary; the exit status is 0
    if every task succeeded, 1 if one failed for good, 128 + N after signal N."""
    from pm.cli import nodes_of
    from pm.common.nodes import Nodes
    from pm.proto.errors import UsageError

    extra = opts.extra
    path = extra.get("tasks")
    options = _options(extra)
    sources = _sources(opts)

    def read_source(name: str) -> str:
        if name == "-" and path == "-":
            raise UsageError("--tasks - and :::: - both read standard input: give one a file")
        return _read_text(name)

    def tasks() -> list[TaskSpec]:
        text = extra["tasks_line"] if path is None else _read_text(path)
        specs = parse_tasks(text, options.get("mem_per_task"))
        if not sources:
            return specs
        combos = combinations(sources, read_source)
        if "colsep" in extra:
            combos = split_columns(combos, extra["colsep"])
        return with_arguments(specs, combos)

    try:
        specs = await asyncio.to_thread(tasks)
    except OSError as exc:
        raise UsageError(f"--tasks {path}: {exc.strerror}") from None
    except PMError as exc:  # naming the line of the file, or the command's words
        raise UsageError(f"{path}: {exc}" if path is not None
                         else f"{extra['tasks_line']}: {str(exc).removeprefix('line 1: ')}"
                         ) from None
    joblog = extra.get("joblog")
    if joblog is not None and ("resume" in extra or "resume_failed" in extra):
        seen = await asyncio.to_thread(read_joblog, joblog)
        again = "resume_failed" in extra
        specs = [s for s in specs if s.index + 1 not in seen or (again and not seen[s.index + 1])]
    if "dry_run" in extra:
        sys.stdout.write("".join(f"{s.argv[2]}\n" for s in specs))
        return 0
    log = None if joblog is None else JobLog(
        joblog, append="resume" in extra or "resume_failed" in extra)
    halt = _Halt(extra.get("halt", "never"), len(specs))
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    console = _Console(opts.verbose, os.isatty(2))
    interrupted: list[int] = []
    try:
        ens = Ensemble(nodes, spec=opts.spec, output=console.output, on_event=console.event,
                       timeout=opts.spec.timeout, **options)
        await ens.start()
    except SizeError as exc:
        await console.aclose()
        if log is not None:
            log.close()
        raise UsageError(str(exc)) from None
    loop = asyncio.get_running_loop()

    def interrupt(signum: int) -> None:
        interrupted.append(signum)
        console.message(f"{signal.Signals(signum).name}: starting no more tasks"
                        if len(interrupted) == 1 else "killing the running tasks")
        ens.interrupt(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        if console.tty:  # (the line is only drawn on a terminal)
            ens.on_progress = lambda: console.progress(ens.progress_text())
        if "keep_order" in extra:
            console.keep_order(spec.index for spec in specs)

        def done(task: Task, result: TaskResult) -> None:
            console.ended(task.index)
            if log is not None:
                log.record(result, task.spec.argv[2], task.received)
            why = halt.count(result)
            if why:
                console.message(why)
                ens.halt(f"not run: --halt {halt.policy}", now=halt.now)

        ens.on_done = done
        for spec in specs:
            ens.add(spec.argv, spec=spec)
        results = await ens.join()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await ens.aclose()
        if log is not None:
            log.close()
        summary = ens.summary_text()
        if not opts.verbose:  # the nodes' memory peaks with -v
            summary = "\n".join(x for x in summary.split("\n") if not x.startswith("node "))
        await console.aclose(summary + "\n")
    if interrupted:
        return 128 + interrupted[0]
    if halt.reached and halt.why == "success":
        return 0  # what was looked for was found
    return 0 if all(r.ok for r in results) else 1


async def run_ensemble(tasks: Iterable[Sequence[str] | str], nodes: Nodes, *,
                       output: str = "inherit", **options: Any) -> list[TaskResult]:
    """Run ``tasks`` (argv lists, or tasks-file lines like ``"[mem=2G] ./sim 1"``)
    to their end; ``options`` are :class:`Ensemble`'s.  ``output="inherit"``
    writes their lines to our stdout/stderr with ``[task N] ``; ``"capture"``
    keeps them in the results."""
    if output not in ("inherit", "capture"):
        raise ValueError("output must be 'inherit' or 'capture'")
    console = _Console(0, False) if output == "inherit" else None
    try:
        async with Ensemble(nodes, output=console.output if console else None,
                            **options) as ens:
            for item in tasks:
                if isinstance(item, str):
                    for spec in parse_tasks(item, options.get("mem_per_task")):
                        ens.add(spec.argv, spec=spec)
                else:
                    ens.add(item)
            return await ens.join()
    finally:
        if console is not None:
            await console.aclose()
