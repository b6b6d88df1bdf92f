"""srun's --pty: rank 0 on a pseudo-terminal its agent makes, driven from pmrun's terminal
(a real one here: tests/pty_util.py); over real ssh in test_ssh.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launch_util import pmrun_argv, pmrun_env
from pty_util import on_terminal

pytestmark = pytest.mark.timeout(120)


def test_rank_0_has_a_terminal_of_pmruns_size_and_reads_the_keys(tmp_path: Path) -> None:
    t = on_terminal(["--pty", "-n", "1", "sh", "-c",
                     "tty; stty size; echo ready; read x; echo got $x"],
                    [(b"ready", b"hello\r")], cwd=tmp_path)
    lines = t.text.split("\r\n")
    assert t.code == 0, t.text
    assert lines[0].startswith("/dev/pts/") and lines[1] == "33 111", t.text
    # The rank's terminal echoes what is typed, as a terminal does; pmrun's is raw meanwhile.
    assert lines[2:] == ["ready", "hello", "got hello", ""], t.text
    assert t.after == t.before  # pmrun's terminal as it found it


def test_a_resized_terminal_resizes_the_ranks(tmp_path: Path) -> None:
    # pmrun's terminal goes from 33 x 111 to 50 x 70 (SIGWINCH): so does the rank's.
    prog = "trap 'exit 0' INT; echo ready; while :; do stty size; sleep 0.05; done"
    t = on_terminal(["--pty", "-n", "1", "sh", "-c", prog],
                    [(b"ready", (50, 70)), (b"50 70", b"\x03")], cwd=tmp_path)
    assert t.code == 0 and "50 70" in t.text.split("\r\n"), t.text


def test_ctrl_c_is_the_ranks_and_its_status_is_the_jobs(tmp_path: Path) -> None:
    t = on_terminal(["--pty", "-n", "1", "sh", "-c",
                     "trap 'echo INT; exit 5' INT; echo ready; while :; do sleep 0.1; done"],
                    [(b"ready", b"\x03")], cwd=tmp_path)
    assert t.code == 5, t.text
    assert t.text.endswith("^CINT\r\npmrun: rank 0 (node 0, " + os.uname().nodename
                           + ") exited with code 5\r\n"), t.text
    assert t.after == t.before


def test_only_rank_0_is_heard_and_the_job_ends_as_usual(tmp_path: Path) -> None:
    prog = ('echo "rank $PMI_RANK"; if [ $PMI_RANK = 0 ]; then read x; echo got $x; fi; '
            "exit 0")
    t = on_terminal(["--pty", "--local-nodes", "2", "-n", "2", "sh", "-c", prog],
                    [(b"rank 0", b"bye\r")], cwd=tmp_path)
    assert (t.code, t.text) == (0, "rank 0\r\nbye\r\ngot bye\r\n")
    # The time limit ends a rank on its terminal too (SIGTERM, then SIGKILL).
    t0 = time.monotonic()
    t = on_terminal(["--pty", "--timeout", "1", "-n", "1", "sh", "-c",
                     "trap '' TERM; echo ready; sleep 60"], cwd=tmp_path)
    assert t.code == 124 and "job timed out after 1 s" in t.text, t.text
    assert time.monotonic() - t0 < 30


def test_piped_stdin_ends_with_the_terminals_end_of_file(tmp_path: Path) -> None:
    r = subprocess.run(pmrun_argv("--pty", "-n", "1", "sh", "-c", "cat; echo cat ended"),
                       input=b"one\ntwo\n", capture_output=True, timeout=60, cwd=tmp_path,
                       env=pmrun_env())
    assert (r.returncode, r.stdout) == (0, b"one\r\ntwo\r\none\r\ntwo\r\ncat ended\r\n"), r


def test_a_killed_pmrun_hangs_up_the_terminal_and_leaves_nothing(tmp_path: Path,
                                                                 marker: str) -> None:
    proc = subprocess.Popen(pmrun_argv("--pty", "-n", "1", "sh", "-c",
                                       f"echo {marker} $$; exec sleep 300"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            cwd=tmp_path, env=pmrun_env())
    assert proc.stdout is not None
    said, pid = proc.stdout.readline().split()  # (the rank's pid: its sleep's after exec)
    assert said == marker.encode()
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    deadline = time.monotonic() + 20
    while _alive(int(pid)):
        assert time.monotonic() < deadline, "the rank outlived its terminal"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_pty_refusals_are_one_line(tmp_path: Path) -> None:
    for args, line in ((["--stdin", "all"], "pmrun: --pty gives rank 0 a terminal, with "
                                            "pmrun's stdin: not with --stdin all"),
                       (["-l"], "pmrun: --pty passes output on as it comes, not in lines: "
                                "-l has no line to start")):
        r = subprocess.run(pmrun_argv("--pty", *args, "-n", "1", "true"), capture_output=True,
                           text=True, timeout=60, cwd=tmp_path, env=pmrun_env())
        assert (r.returncode, r.stderr.splitlines()) == (2, [line]), args
