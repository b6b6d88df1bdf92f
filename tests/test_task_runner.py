"""A host's task runner (``python -m pm.ensemble runner``) as the ensemble drives it: real
processes, commands on its stdin, records back on its stdout (pm.proto.runner)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pm.ensemble.transfer import FileSink, chunks, here_path, there_path
from pm.proto.runner import (
    MAX_DATA,
    FileChunk,
    ProbeSample,
    Report,
    RunnerReader,
    TaskExit,
    TaskOutput,
    TasksEnv,
    TaskSignal,
    TaskStart,
)

pytestmark = pytest.mark.timeout(60)


class Runner:
    """A runner process, what it said so far, and whole lines per task and stream."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.reports: list[Report] = []
        self.output: dict[tuple[int, int], bytes] = {}
        self.exits: dict[int, int] = {}
        self.rss: dict[int, int] = {}
        self._reader = RunnerReader()

    def send(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def end_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.stdin = None  # (communicate() would flush it)

    def until(self, done: Callable[[], bool], timeout: float = 20) -> None:
        """Read records until ``done()`` (against a deadline)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, f"not done; got {self.reports}"
            if not select.select([fd], [], [], left)[0]:
                continue
            data = os.read(fd, 1 << 20)
            assert data, f"the runner ended; got {self.reports}"
            for rec in self._reader.feed(data):
                self.reports.append(rec)
                if isinstance(rec, TaskOutput):
                    key = (rec.index, rec.stream)
                    self.output[key] = self.output.get(key, b"") + rec.data
                elif isinstance(rec, TaskExit):
                    self.exits[rec.index] = rec.code
                    self.rss[rec.index] = rec.rss


@contextmanager
def runner(env: dict[str, str] | None = None) -> Iterator[Runner]:
    proc = subprocess.Popen([sys.executable, "-m", "pm.ensemble", "runner", "0.1"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    r = Runner(proc)
    try:
        r.send(TasksEnv(env or {"PATH": os.environ["PATH"]}).line())
        yield r
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stdin is not None:
            r.end_stdin()
        proc.communicate(timeout=30)


def sh(index: int, line: str, env: dict[str, str] | None = None) -> bytes:
    return TaskStart(index, ["sh", "-c", line], env or {}, None).line()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_tasks_run_with_their_environment_and_report_output_and_exit() -> None:
    with runner({"PATH": os.environ["PATH"], "BASE": "base"}) as r:
        r.send(sh(0, "echo $BASE $MINE; echo oops >&2; exit 3", {"MINE": "mine"}))
        long = MAX_DATA + 100  # one line in two records, without its newline
        r.send(TaskStart(1, [sys.executable, "-c", f"print('y' * {long}, end='')"], {},
                         "/").line())
        r.send(TaskStart(2, ["no-such-command-here"], {}, None).line())
        r.until(lambda: len(r.exits) == 3)
        assert isinstance(r.reports[0], ProbeSample) and r.reports[0].cores
        assert r.exits == {0: 3, 1: 0, 2: 127}
        assert r.output[0, 1] == b"base mine\n" and r.output[0, 2] == b"oops\n"
        assert r.output[1, 1] == b"y" * long
        assert r.output[2, 2] == b"pmrun: no-such-command-here: command not found\n"
        # Each task's output comes before its exit.
        for index in (0, 1, 2):
            at = [i for i, x in enumerate(r.reports) if getattr(x, "index", None) == index]
            assert isinstance(r.reports[at[-1]], TaskExit), r.reports


def test_an_exit_says_the_largest_resident_size_the_kernel_counted() -> None:
    # What a task too short for any sample teaches its command (pm.ensemble.scheduler).
    with runner() as r:
        r.send(TaskStart(0, [sys.executable, "-c", "b = bytearray(64 << 20)"], {}, None).line())
        r.send(sh(1, "true"))
        r.until(lambda: len(r.exits) == 2)
        assert r.rss[0] >= 64 << 20, r.rss
        assert 0 < r.rss[1] < 64 << 20, r.rss
    # A runner of the earlier protocol says no size: read as 0.
    assert RunnerReader().feed(b"pmrun-exit 3 0\n") == [TaskExit(3, 0, 0)]


def test_a_signal_reaches_one_task_or_every_task() -> None:
    with runner() as r:
        for index in (0, 1, 2):
            r.send(sh(index, "echo up; exec sleep 30"))
        r.until(lambda: all((i, 1) in r.output for i in (0, 1, 2)))
        r.send(TaskSignal(1, signal.SIGTERM).line())
        r.until(lambda: 1 in r.exits)
        assert r.exits == {1: 128 + signal.SIGTERM}
        r.send(TaskSignal(-1, signal.SIGINT).line())
        r.until(lambda: len(r.exits) == 3)
        assert r.exits == {0: 130, 1: 143, 2: 130}


def test_at_the_end_of_its_stdin_it_kills_its_tasks_and_ends() -> None:
    with runner() as r:
        r.send(sh(0, "exec python3 -c \"import os, time; b = bytearray(32 << 20); "
                  "print(os.getpid(), flush=True); time.sleep(60)\""))
        r.until(lambda: (0, 1) in r.output)
        pid = int(r.output[0, 1])
        # Its samples count the task's memory (the 32 MiB it touched).
        r.until(lambda: any(isinstance(x, ProbeSample) and x.sizes.get(0, 0) >= 32 << 20
                            for x in r.reports))
        r.end_stdin()
        assert r.proc.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while not gone(pid):
            assert time.monotonic() < deadline, f"task {pid} left running"
            time.sleep(0.05)
        assert 0 not in r.exits  # killed with the runner: the ensemble has gone


def test_a_line_that_is_no_command_is_named_and_the_rest_served() -> None:
    with runner() as r:
        r.send(b"pmrun-start {not json\n")
        r.send(sh(0, "echo fine"))
        r.until(lambda: 0 in r.exits)
        assert r.output[0, 1] == b"fine\n" and r.exits == {0: 0}
        r.end_stdin()
        _, err = r.proc.communicate(timeout=20)
        assert err == b"ignored a line that is no command: b'pmrun-start {not json'\n"


# ------------------------------------------------------------------ files with a run
def test_paths_there_and_here_as_gnu_parallels() -> None:
    assert [there_path(p, "/w") for p in ("a.txt", "./d/a.txt", "/abs/a", "/x/./d/a")] == [
        "/w/a.txt", "/w/d/a.txt", "/abs/a", "/w/d/a"]
    assert there_path("d/a.txt", None) == "d/a.txt"
    assert [here_path(p) for p in ("a.txt", "./d/a", "/abs/a", "/x/./d/a", "x/./a")] == [
        "a.txt", "d/a", "/abs/a", "/x/d/a", "x/a"]


def test_a_runs_files_go_there_come_back_and_are_cleaned_up(tmp_path: Path) -> None:
    there, here = tmp_path / "there", tmp_path / "here"
    there.mkdir()
    here.mkdir()
    big = os.urandom(3 * MAX_DATA + 17)  # (several records each way)
    (here / "in.bin").write_bytes(big)
    (here / "tool.sh").write_text("#!/bin/sh\nrev\n")
    (here / "tool.sh").chmod(0o750)
    sink = FileSink()
    with runner() as r:
        for chunk in [*chunks(-1, str(here / "tool.sh"), str(there / "bin/tool.sh"), True),
                      *chunks(0, str(here / "in.bin"), str(there / "sub/in.bin"))]:
            r.send(chunk.put_record())
        r.send(TaskStart(0, ["sh", "-c", "cat sub/in.bin sub/in.bin > out.bin; "
                                         "echo hi | bin/tool.sh"], {}, str(there),
                         [str(there / "out.bin"), str(there / "none")],
                         [str(there / "sub/in.bin"), str(there / "out.bin")]).line())
        r.until(lambda: 0 in r.exits)
        got = [x for x in r.reports if isinstance(x, FileChunk)]
        assert (r.exits[0], r.output[0, 1]) == (0, b"ih\n")
        for chunk in got:
            assert sink.write(chunk, str(here / "back" / "out.bin")) == ""
        assert (here / "back" / "out.bin").read_bytes() == big + big
        assert r.output[0, 2] == (f"pmrun: --return {there / 'none'}: No such file or "
                                  f"directory on {os.uname().nodename}\n").encode()
        # Each file whole before the run's exit; --cleanup: the run's files and the
        # directory made for them are gone, the --basefile stays until the runner ends.
        assert sorted(p.name for p in there.rglob("*")) == ["bin", "tool.sh"]
        assert os.stat(there / "bin/tool.sh").st_mode & 0o777 == 0o750
        r.end_stdin()
        assert r.proc.wait(timeout=20) == 0
    assert list(there.iterdir()) == [], list(there.rglob("*"))
    # A file that cannot be written there is named on the run's stderr; the run goes on.
    with runner() as r:
        blocker = tmp_path / "file"
        blocker.write_text("")
        for chunk in chunks(1, str(here / "tool.sh"), str(blocker / "x")):
            r.send(chunk.put_record())
        r.send(sh(1, "echo ran"))
        r.until(lambda: 1 in r.exits)
        assert (r.exits[1], r.output[1, 1]) == (0, b"ran\n")
        assert r.output[1, 2] == f"pmrun: --transferfile {blocker}/x: Not a directory\n".encode()
