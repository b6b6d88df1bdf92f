"""pmrun --semaphore: GNU parallel's sem (at most N commands of one name at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import launch_util
import pytest
from conftest import PmrunRunner, PmrunStarter

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose semaphores live in the test's own home."""
    (tmp_path / "home").mkdir()
    return {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": ""}


def until(check: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.01)


def holder(tmp_path: Path, name: str) -> tuple[list[str], Path, Path]:
    """The words of a command that says it runs (a file) and holds its slot until told
    (a line on its named pipe)."""
    ran, gate = tmp_path / f"{name}.ran", tmp_path / f"{name}.gate"
    os.mkfifo(gate)
    return [f"touch {ran}; read line < {gate}; echo {name} done"], ran, gate


def release(gate: Path) -> None:
    with open(gate, "w") as f:
        f.write("go\n")


def test_one_slot_lets_one_command_run_at_a_time(pmrun: PmrunRunner,
                                                 pmrun_popen: PmrunStarter, tmp_path: Path,
                                                 home: dict[str, str]) -> None:
    words, ran, gate = holder(tmp_path, "first")
    first = pmrun_popen("--semaphore", "--fg", "--id", "s1", *words, env=home)
    until(ran.exists, "first command running")
    # The slot is held: a second command does not get it (and gives up, as told).
    r = pmrun("--semaphore", "--fg", "--id", "s1", "--st", "-0.3", "echo second", env=home)
    assert (r.returncode, r.stdout, r.stderr) == (
        1, "", "pmrun: semaphore s1: no slot free after 0.3 s\n")
    # ... or runs all the same once it waited that long.
    r = pmrun("--semaphore", "--fg", "--id", "s1", "--st", "0.3", "echo third", env=home)
    assert (r.returncode, r.stdout) == (0, "third\n"), r.stderr
    assert "running without one" in r.stderr
    # Another name has slots of its own.
    r = pmrun("--semaphore", "--fg", "--id", "s2", "echo other", env=home)
    assert (r.returncode, r.stdout) == (0, "other\n"), r.stderr
    release(gate)
    out, _ = first.communicate(timeout=30)
    assert (first.returncode, out) == (0, b"first done\n")
    r = pmrun("--semaphore", "--fg", "--id", "s1", "exit 7", env=home)
    assert r.returncode == 7, r.stderr
    assert not (tmp_path / "home" / ".pmrun").exists()  # an idle semaphore leaves nothing


def test_j_slots_run_together(pmrun_popen: PmrunStarter, tmp_path: Path,
                              home: dict[str, str]) -> None:
    a_words, a_ran, a_gate = holder(tmp_path, "a")
    b_words, b_ran, b_gate = holder(tmp_path, "b")
    a = pmrun_popen("--semaphore", "--fg", "-j", "2", "--id", "j2", *a_words, env=home)
    b = pmrun_popen("--semaphore", "--fg", "-j", "2", "--id", "j2", *b_words, env=home)
    until(lambda: a_ran.exists() and b_ran.exists(), "two commands holding slots")
    release(a_gate)
    release(b_gate)
    assert a.communicate(timeout=30)[0] == b"a done\n"
    assert b.communicate(timeout=30)[0] == b"b done\n"


def test_background_command_and_wait(pmrun: PmrunRunner, pmrun_popen: PmrunStarter,
                                     tmp_path: Path, home: dict[str, str]) -> None:
    words, ran, gate = holder(tmp_path, "bg")
    out, err = tmp_path / "bg.out", tmp_path / "bg.err"
    with open(out, "wb") as sink, open(err, "wb") as errors:  # (where the command writes)
        r = subprocess.run(launch_util.pmrun_argv("--semaphore", "--id", "w", *words),
                           stdin=subprocess.DEVNULL, stdout=sink, stderr=errors, timeout=30,
                           env=launch_util.pmrun_env(home), cwd=tmp_path)
    assert r.returncode == 0  # back at once, the command still running
    until(ran.exists, "the background command running")
    waiter = pmrun_popen("--semaphore", "--wait", "--id", "w", env=home)
    assert waiter.poll() is None and out.read_bytes() == b""  # (its output comes whole)
    release(gate)
    assert waiter.wait(timeout=30) == 0
    until(lambda: out.read_bytes() == b"bg done\n", "the command's output")
    assert err.read_bytes() == b""
    r = pmrun("--wait", "--id", "w", env=home)  # (nothing held: at once)
    assert (r.returncode, r.stderr) == (0, "")


@pytest.mark.parametrize(("argv", "message"), [
    (["--semaphore"], "--semaphore runs a command: give it (pmrun --semaphore CMD)"),
    (["--semaphore", "--fg", "--bg", "true"], "--fg and --bg: give one of them"),
    (["--semaphore", "-n", "2", "true"], "--semaphore runs one command with -j N and its own "
                                         "options, not -n"),
    (["--st", "0", "true"], "--st must be a positive number of seconds, not '0'"),
    (["--semaphore", "-j", "-8", "true"], "-j -8 leaves no slot for the semaphore"),
])
def test_bad_semaphore_command_lines_are_named(pmrun: PmrunRunner, home: dict[str, str],
                                               argv: list[str], message: str) -> None:
    r = pmrun(*argv, env=home)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {message}\n")


def test_srun_wait_seconds_is_still_sruns(pmrun: PmrunRunner) -> None:
    r = pmrun("--wait", "5", "-n", "2", "echo", "x")
    assert (r.returncode, r.stdout) == (0, "x\nx\n"), r.stderr


def test_a_signal_ends_the_command_and_frees_the_slot(pmrun: PmrunRunner,
                                                      pmrun_popen: PmrunStarter, tmp_path: Path,
                                                      home: dict[str, str]) -> None:
    pids = tmp_path / "pids"
    # sh runs sleep as a child of its own: pmrun passes the signal to both.
    first = pmrun_popen("--semaphore", "--fg", "--id", "sig",
                        f"sleep 60 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait",
                        env=home)
    until(pids.exists, "the command running")
    waiter = pmrun_popen("--semaphore", "--fg", "--id", "sig", "echo never", env=home)
    until(lambda: _waiting(waiter.pid), "the second one waiting for the slot")
    waiter.send_signal(signal.SIGINT)  # (waiting for the slot: it leaves)
    out, err = waiter.communicate(timeout=30)
    assert (waiter.returncode, out, err) == (130, b"", b"")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=30)
    assert first.returncode == 143
    for pid in map(int, pids.read_text().split()):
        until(lambda pid=pid: not _alive(pid), f"process {pid} ended")  # type: ignore[misc]
    r = pmrun("--semaphore", "--fg", "--id", "sig", "--st", "-5", "echo free", env=home)
    assert (r.returncode, r.stdout) == (0, "free\n"), r.stderr


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _waiting(pid: int) -> bool:
    """Whether ``pid`` pauses between its looks at the slots (asleep in a timer)."""
    try:
        with open(f"/proc/{pid}/wchan") as f:
            return "nanosleep" in f.read()
    except FileNotFoundError:
        return False
