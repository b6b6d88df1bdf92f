"""Arguments on stdin read as they come (pm.ensemble.stream): as with GNU parallel, the
first tasks run before the input ends, so a producer that waits on them (or never
ends, ``tail -f``) is served."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from launch_util import pmrun_argv, pmrun_env

from pm.ensemble.stream import Arrivals, streamable

pytestmark = pytest.mark.timeout(60)


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(pmrun_argv(*args), cwd=tmp_path, env=pmrun_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for(path: Path, proc: subprocess.Popen[bytes], within: float = 20) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {path.name}: the task did not run"
        time.sleep(0.02)


def test_a_task_runs_before_the_input_ends(tmp_path: Path) -> None:
    proc = _start(tmp_path, "-j", "2", "-k", "touch {}.done; echo {#} {}")
    assert proc.stdin is not None
    proc.stdin.write(b"a\n")
    proc.stdin.flush()
    _wait_for(tmp_path / "a.done", proc)  # (pmrun waiting for the end would never run it)
    # (The last one unended: it counts at the end.)
    out, err = proc.communicate(b"b\nc", timeout=30)
    assert (proc.returncode, out, err) == (0, b"1 a\n2 b\n3 c\n", b"")


def test_an_interrupt_ends_it_while_the_input_is_still_open(tmp_path: Path) -> None:
    proc = _start(tmp_path, "-j", "2", "touch {}.done")
    assert proc.stdin is not None
    proc.stdin.write(b"x\n")
    proc.stdin.flush()
    _wait_for(tmp_path / "x.done", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)  # (stdin still open: not waited for)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


def test_halt_ends_it_while_the_input_is_still_open(tmp_path: Path) -> None:
    proc = _start(tmp_path, "--halt", "now,fail=1", "-j", "1", "exit {}")
    assert proc.stdin is not None
    proc.stdin.write(b"0\n3\n")
    proc.stdin.flush()
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 3, err  # (the failed task's)
    assert b"--halt now,fail=1: 1 task failed" in err, err


def test_gnu_parallels_input_options_hold(tmp_path: Path) -> None:
    # --resume: tasks the log has are not run again; -E ends the input; --trim; -0.
    log = tmp_path / "log"
    r = subprocess.run(pmrun_argv("--joblog", str(log), "-k", "echo {#}:{}"), input=b"a\nb\n",
                       capture_output=True, cwd=tmp_path, env=pmrun_env(), timeout=30)
    assert r.stdout == b"1:a\n2:b\n", r.stderr
    r = subprocess.run(pmrun_argv("--resume", "--joblog", str(log), "-k", "echo {#}:{}"),
                       input=b"a\nb\nc\n", capture_output=True, cwd=tmp_path, env=pmrun_env(),
                       timeout=30)
    assert r.stdout == b"3:c\n", r.stderr
    r = subprocess.run(pmrun_argv("-E", "STOP", "--trim", "lr", "-k", "echo '<{}>'"),
                       input=b" a \nSTOP\nb\n", capture_output=True, env=pmrun_env(),
                       cwd=tmp_path, timeout=30)
    assert r.stdout == b"<a>\n", r.stderr
    r = subprocess.run(pmrun_argv("-0", "-k", "echo '<{}>'"), input=b"x y\0z\0",
                       capture_output=True, env=pmrun_env(), cwd=tmp_path, timeout=30)
    assert r.stdout == b"<x y>\n<z>\n", r.stderr


def test_only_one_stdin_source_without_whole_input_options_streams() -> None:
    assert streamable({"tasks_line": "echo"}, ["::::", "-"], "::::")
    assert not streamable({"tasks_line": "echo"}, ["::::", "f"], "::::")
    assert not streamable({"tasks_line": "echo", "shuf": "1"}, ["::::", "-"], "::::")
    assert not streamable({"tasks_line": "echo {= $_ =}"}, ["::::", "-"], "::::")
    assert not streamable({"tasks_line": "echo", "halt": "now,fail=10%"}, ["::::", "-"],
                          "::::")


async def test_arrivals_give_whole_items_as_they_come(tmp_path: Path) -> None:
    import os

    rfd, wfd = os.pipe()
    try:
        got = Arrivals(rfd)
        os.write(wfd, b"one\ntw")
        assert await got.next() == ["one"]
        os.write(wfd, b"o\nthree")
        assert await got.next() == ["two"]
        os.close(wfd)
        wfd = -1
        assert await got.next() == ["three"]
        assert await got.next() is None
    finally:
        os.close(rfd)
        if wfd >= 0:
            os.close(wfd)


def test_total_jobs_is_the_progress_lines_total_while_arguments_come(tmp_path: Path) -> None:
    import os
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(pmrun_argv("--total-jobs", "5", "-j", "1", "sleep 0.3; : {}"),
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=follower, env=pmrun_env(), cwd=tmp_path)
        os.close(follower)
        follower = -1
        assert proc.stdin is not None
        proc.stdin.write(b"a\nb\n")  # (two of the five so far: the line says 5)
        proc.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 20
        while b"tasks: 0/5 done, 1 running, 1 queued" not in seen:
            assert time.monotonic() < deadline, seen
            seen += os.read(leader, 65536)
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)


def test_a_named_pipe_given_as_a_source_streams_too(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "args"
    os.mkfifo(fifo)
    proc = subprocess.Popen(pmrun_argv("-j", "2", "-k", "-a", str(fifo), "touch {}.done; echo {}"),
                            cwd=tmp_path, env=pmrun_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(fifo, "wb", buffering=0) as w:  # (opens once pmrun opened it to read)
        w.write(b"p\n")
        _wait_for(tmp_path / "p.done", proc)
        w.write(b"q\n")
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, b"p\nq\n", b"")


def test_perl_expressions_anywhere_keep_the_whole_input_path() -> None:
    for key in ("tagstring", "transfer", "returns"):
        assert not streamable({"tasks_line": "echo", key: "{= $_ =}"}, ["::::", "-"], "::::")
