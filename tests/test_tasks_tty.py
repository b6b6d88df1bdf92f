"""GNU parallel's --tty: each task reads pmrun's terminal, in the terminal's foreground
(a real terminal of pmrun's own: tests/pty_util.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launch_util import pmrun_argv, pmrun_env
from pty_util import _take_terminal, on_terminal

pytestmark = pytest.mark.timeout(120)


def test_each_task_reads_the_terminal_in_its_foreground_one_at_a_time(tmp_path: Path
                                                                       ) -> None:
    # ps's "+": the task's group is the terminal's foreground (a read would stop it else).
    # (ps not the last command: a shell that runs the last one in its place, as bash does,
    # would show ps's own state)
    t = on_terminal(["--tty", "echo got {}; read x; echo read $x; ps -o stat= -p $$; :",
                     ":::", "a", "b"],
                    [(b"got a", b"one\n"), (b"got b", b"two\n")], cwd=tmp_path,
                    controlling=True)
    assert t.code == 0, t.text
    assert t.text.split("\r\n") == ["got a", "one", "read one", "S+",
                                    "got b", "two", "read two", "S+", ""], t.text
    assert t.after == t.before


#: A task the key ends by SIGINT whenever it comes (a Ctrl-C between a shell's echo and its
#: next command reaches the shell alone, which would wait for that command first).
ON_KEY = "trap 'trap - INT; kill -INT $$' INT; echo got {}; while :; do sleep 0.1; done"


def test_ctrl_c_ends_the_task_and_the_run(tmp_path: Path) -> None:
    t = on_terminal(["--tty", ON_KEY, ":::", "a", "b"],
                    [(b"got a", b"\x03")], cwd=tmp_path, controlling=True)
    assert t.code == 130, t.text
    lines = t.text.split("\r\n")
    assert lines[:2] == ["got a", "^Cpmrun: SIGINT: starting no more tasks"], t.text
    assert f"  task 2: not run: SIGINT: {ON_KEY.replace('{}', 'b')}" in lines, t.text
    assert "got b" not in lines


def test_a_task_killed_by_a_signal_leaves_the_terminals_modes_as_they_were(tmp_path: Path
                                                                           ) -> None:
    t = on_terminal(["--tty", "stty -echo -icanon; echo {}; kill -KILL $$", ":::", "a"],
                    cwd=tmp_path, controlling=True)
    assert t.code == 1 and "task 1: exit codes 137:" in t.text, t.text
    assert t.after == t.before


def test_a_killed_pmrun_leaves_no_task_on_the_terminal(tmp_path: Path, marker: str) -> None:
    master, slave = os.openpty()
    try:
        # (The task's shell keeps the marker in its command line: "sleep 300" alone could
        # be another test's.)
        proc = subprocess.Popen(pmrun_argv("--tty", f"echo {marker}; sleep 300; : {marker}",
                                           ":::", "a"),
                                stdin=slave, stdout=slave, stderr=slave, cwd=tmp_path,
                                env=pmrun_env(), start_new_session=True,
                                preexec_fn=_take_terminal)
        seen = b""
        deadline = time.monotonic() + 30
        while marker.encode() not in seen:
            assert time.monotonic() < deadline, seen
            seen += os.read(master, 4096)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while subprocess.run(["pgrep", "-f", f": {marker}$"],
                             capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "the task outlived pmrun"
            time.sleep(0.05)
    finally:
        os.close(slave)
        os.close(master)


def test_tty_refusals_are_one_line(tmp_path: Path) -> None:
    cases: tuple[tuple[list[str], str], ...] = (
        (["--tag"], "pmrun: --tty gives each task pmrun's terminal and its output as it "
                    "comes, on this machine: not with --tag"),
        ([], "pmrun: --tty gives each task pmrun's terminal, and pmrun has none (/dev/tty: "
             "No such device or address)"))
    for args, line in cases:
        r = subprocess.run(pmrun_argv("--tty", *args, "echo", ":::", "a"),
                           capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           env=pmrun_env(), start_new_session=True)
        assert (r.returncode, r.stderr.splitlines()) == (2, [line]), args
    # Tasks on another host would not have it.
    t = on_terminal(["--tty", "-S", "otherhost", "echo", ":::", "a"], cwd=tmp_path,
                    controlling=True)
    assert (t.code, t.text) == (2, "pmrun: --tty gives each task pmrun's terminal: tasks "
                                   "run on this machine, not on otherhost\r\n")
