"""GNU parallel's ``--onall`` and ``--nonall``: every task on every host.

As parallel does it: one run of the ensemble per host (``pmrun -j1 -hosts HOST`` and the
rest of the command line), ``-j N`` of them at once (default: all), each run's output
whole once it ended (``-k``: in host order; ``--lb``/``-u``: as it comes), ``--tag``
prefixing each line with the host.  What the runs read from stdin is read once, into a
file each run reads; their ``--joblog``s become one.  The exit status is 0 if every
host's run succeeded, else how many failed (101: more than 100), as parallel's, or 128 + N
after signal N.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pm.common.output_writer import write_all
from pm.ensemble.joblog import log_target

if TYPE_CHECKING:
    from pm.cli import CliOptions

__all__ = ["run_onall"]


def host_argv(words: Sequence[str | None], host: str, stdin_file: str, tag: bool,
              joblog: str | None) -> list[str]:
    """The command line of ``host``'s run: ``words`` (``--onall``'s, see
    :func:`pm.options.task_forms._onall_words`) with stdin's words the file it was read into."""
    argv = [sys.executable, "-m", "pm", "-j", "1", "-hosts", host]
    if tag:
        argv += ["--tagstring", host]
    if joblog is not None:
        argv += ["--joblog", joblog]
    return argv + [stdin_file if w is None else w for w in words]


async def run_onall(opts: CliOptions) -> int:
    """Run ``opts``' ensemble on each of its hosts (see the module docstring)."""
    from pm.cli_nodes import nodes_of
    from pm.common.nodes import Nodes
    from pm.ensemble.cli_options import sources_of
    from pm.options import parse_jobs

    extra = opts.extra
    sources_of(opts)  # (what each host's run would refuse, refused once)
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    hosts = sorted(set(nodes.hosts))  # (parallel's order: its hosts sorted by name)
    jobs = parse_jobs(extra.get("jobs", "0"))
    at_once = jobs if isinstance(jobs, int) and jobs > 0 else len(hosts)
    words: list[str | None] = json.loads(extra["onall_words"])
    mode = extra.get("output_mode", "group")
    keep = "keep_order" in extra
    joblog = extra.get("joblog")
    folder = tempfile.mkdtemp(prefix="pmrun-onall.", dir=extra.get("tmpdir"))
    try:
        stdin_file = os.path.join(folder, "stdin")
        if None in words:  # (read once: every host's run reads the same arguments)
            await asyncio.to_thread(_copy_stdin, stdin_file)
        logs = [os.path.join(folder, f"joblog.{i}") for i in range(len(hosts))]
        runs = _Runs(at_once, mode != "line", keep)
        argvs = [host_argv(words, h, stdin_file, "tag" in extra,
                           logs[i] if joblog is not None else None)
                 for i, h in enumerate(hosts)]
        codes = await runs.run(argvs)
        if joblog is not None:
            await asyncio.to_thread(_join_logs, joblog, logs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if runs.signum:
        return 128 + runs.signum
    return min(sum(c != 0 for c in codes), 101)


def _copy_stdin(path: str) -> None:
    with open(path, "wb") as f:
        while data := os.read(0, 1 << 20):
            f.write(data)


def _join_logs(given: str, logs: Sequence[str]) -> None:
    """Each host's ``--joblog`` in one, its header once (parallel's: there are several
    task number 1); ``+FILE`` appended to FILE without it, ``-`` on stdout."""
    path, append = log_target(given)
    header = append
    with (open(1, "w", encoding="utf-8", errors="surrogateescape", closefd=False)
          if path == "-" else open(path, "a" if append else "w", encoding="utf-8",
                                   errors="surrogateescape")) as out:
        for log in logs:
            with contextlib.suppress(OSError), \
                    open(log, encoding="utf-8", errors="surrogateescape") as f:
                first = f.readline()
                if not header and first:
                    out.write(first)
                    header = True
                out.write(f.read())


class _Runs:
    """The host runs, ``at_once`` at a time; ``grouped``: each one's output kept until it
    ended (``keep``: and the runs before it in order)."""

    def __init__(self, at_once: int, grouped: bool, keep: bool) -> None:
        self._slots = asyncio.Semaphore(at_once)
        self._grouped = grouped
        self._keep = keep
        self._procs: set[asyncio.subprocess.Process] = set()
        self._stopping = False
        #: The signal that ended pmrun's runs (0: none).
        self.signum = 0

    async def run(self, argvs: Sequence[list[str]]) -> list[int]:
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        for s in sigs:
            loop.add_signal_handler(s, self._signal, s)
        turns = [asyncio.Event() for _ in argvs]
        if turns:
            turns[0].set()
        try:
            return list(await asyncio.gather(*(self._one(argv, turns, i)
                                               for i, argv in enumerate(argvs))))
        finally:
            for s in sigs:
                loop.remove_signal_handler(s)

    def _signal(self, signum: int) -> None:
        """Each run under way hears it (in a session of its own, as a terminal's ^C would
        reach it: once); none starts after it."""
        self.signum = self.signum or signum
        self._stopping = True
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signum)

    async def _one(self, argv: list[str], turns: list[asyncio.Event], i: int) -> int:
        async with self._slots:
            if self._stopping:
                code, out, err = 128 + self.signum, b"", b""
            else:
                code, out, err = await self._start(argv)
        if self._keep:
            await turns[i].wait()
        await asyncio.to_thread(write_all, 1, out)
        await asyncio.to_thread(write_all, 2, err)
        if i + 1 < len(turns):
            turns[i + 1].set()
        return code

    async def _start(self, argv: list[str]) -> tuple[int, bytes, bytes]:
        pipe = asyncio.subprocess.PIPE if self._grouped else None
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=pipe, stderr=pipe,
            start_new_session=True)
        self._procs.add(proc)
        try:
            out, err = await proc.communicate()
        except BaseException:  # (pmrun's own failure: the run ends with it, as it would)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            await proc.wait()
            raise
        finally:
            self._procs.discard(proc)
        return proc.returncode or 0, out or b"", err or b""
