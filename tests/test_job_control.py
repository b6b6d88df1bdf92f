"""Signals from the terminal: they reach pmrun's process group, and pmrun alone passes them
on (Ctrl-C), or suspends and continues the whole job (Ctrl-Z, then fg)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from launch_util import pids_with, pmrun_argv, pmrun_env, read_lines, script, wait_gone, wait_until

pytestmark = pytest.mark.timeout(90)


@contextlib.contextmanager
def in_own_group(args: list[str], cwd: Path, env: dict[str, str] | None = None
                 ) -> Iterator[subprocess.Popen[bytes]]:
    """pmrun leading its own process group, as a shell's foreground job does."""
    p = subprocess.Popen(pmrun_argv(*args), cwd=cwd, env=pmrun_env(env), start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    try:
        yield p
    finally:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGCONT)
            p.kill()
        p.communicate(timeout=20)


def state(pid: int) -> str:
    """The process state letter of ``pid`` ("T" stopped), "" if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]


SLEEPER = """
    import os, sys, time
    print("up", os.environ["PMI_RANK"], flush=True)
    time.sleep(60)
"""


def test_ctrl_c_at_the_terminal_reaches_the_agents_through_pmrun(tmp_path: Path,
                                                                 marker: str) -> None:
    prog = script(tmp_path, "sleeper.py", SLEEPER)
    with in_own_group(["--local-nodes", "2", "-n", "2", "python", str(prog), marker],
                      tmp_path) as p:
        assert p.stdout is not None
        read_lines(p.stdout, 2, 30)
        os.killpg(p.pid, signal.SIGINT)  # the whole foreground group, as the terminal does
        _out, err = p.communicate(timeout=30)
    text = err.decode()
    assert p.returncode == 130, text
    assert "forwarding SIGINT" in text
    # Only the ranks died of it (forwarded); no agent got it from the terminal itself.
    assert text.count("KeyboardInterrupt") == 2, text
    assert "lost" not in text and "pm/agent/main.py" not in text, text
    wait_gone(marker, 10)


SAVER = """
    import os, sys, time
    rank = os.environ["PMI_RANK"]
    try:  # (the test's Ctrl-C may come as soon as the line is out)
        print("up", rank, flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        if rank == "1":  # a handler that takes its time (saving its state, say)
            time.sleep(0.5)
            print("saved", rank, flush=True)
        raise
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["one-node", "two-nodes"])
def test_ctrl_c_lets_every_rank_end_by_it(tmp_path: Path, marker: str, opts: list[str]) -> None:
    """After Ctrl-C, the first rank that dies of it does not get the others SIGTERM at
    once: their own KeyboardInterrupt handlers run to the end."""
    prog = script(tmp_path, "saver.py", SAVER)
    with in_own_group([*opts, "-n", "2", "python", str(prog), marker], tmp_path) as p:
        assert p.stdout is not None
        read_lines(p.stdout, 2, 30)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=30)
    text = err.decode()
    assert p.returncode == 130, text
    assert out.decode().splitlines()[-1:] == ["saved 1"], (out, text)
    assert text.count("KeyboardInterrupt") == 2, text
    assert "rank 0 (node 0, " in text and "killed by SIGINT" in text, text
    wait_gone(marker, 10)


WAITER = """
    import os, sys, time
    print("up", os.environ["PMI_RANK"], flush=True)
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.02)
    print("done", os.environ["PMI_RANK"], flush=True)
"""


@pytest.mark.parametrize(("opts", "quick"), [
    ([], "1"), ([], "0"), (["--local-nodes", "2", "--heartbeat", "1"], "1")],
    ids=["one-node", "one-node-agent", "two-nodes"])
def test_ctrl_z_suspends_the_job_and_fg_continues_it(tmp_path: Path, marker: str,
                                                     opts: list[str], quick: str) -> None:
    prog = script(tmp_path, "waiter.py", WAITER)
    go = tmp_path / "go"
    with in_own_group([*opts, "-n", "2", "-l", "python", str(prog), str(go), marker],
                      tmp_path, {"PM_QUICK": quick}) as p:
        assert p.stdout is not None
        read_lines(p.stdout, 2, 30)
        ranks = [pid for pid in pids_with(marker) if pid != p.pid]
        assert len(ranks) == 2
        os.killpg(p.pid, signal.SIGTSTP)  # Ctrl-Z
        wait_until(lambda: all(state(pid) == "T" for pid in [p.pid, *ranks]), 10,
                   "pmrun and its ranks to stop")
        # Suspended for longer than the heartbeat: a stopped head is no lost node.
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            assert all(state(pid) == "T" for pid in [p.pid, *ranks])
            time.sleep(0.1)  # sampling a state that must hold, not waiting for an event
        go.touch()
        os.killpg(p.pid, signal.SIGCONT)  # fg
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    # (The "up" lines were read above.)
    assert sorted(out.decode().splitlines()) == ["[0] done 0", "[1] done 1"]
    assert "lost" not in err.decode()


TAKER = """
    import os, signal, sys, time
    rank = os.environ["PMI_RANK"]
    signal.signal(signal.SIGUSR1, lambda s, f: print("got USR1", rank, flush=True))
    signal.signal(signal.SIGALRM, lambda s, f: print("got ALRM", rank, flush=True))
    print("up", rank, os.getpid(), os.getppid(), flush=True)
    go = sys.argv[1]
    while not os.path.exists(go):
        time.sleep(0.02)
    print("done", rank, flush=True)
"""


def test_an_agent_passes_the_signals_it_gets_to_its_ranks(tmp_path: Path, marker: str) -> None:
    """What slurmstepd does to pmrun's agents, the tasks of its step (scancel --signal,
    --signal=USR1@110, scontrol suspend): node 1's agent gets SIGUSR1 (SIGALRM) and its rank
    gets it too, and the job runs on; SIGTSTP stops its rank (not the agent), SIGCONT
    continues it."""
    prog = script(tmp_path, "taker.py", TAKER)
    go = tmp_path / "go"
    with in_own_group(["--local-nodes", "2", "-n", "2", "-l", "python", str(prog), str(go),
                       marker], tmp_path) as p:
        assert p.stdout is not None
        up = {int(w[2]): (int(w[3]), int(w[4])) for w in
              (line.split() for line in read_lines(p.stdout, 2, 30))}
        rank, agent = up[1]
        assert agent != p.pid  # (node 1's agent: a process of its own)
        os.kill(agent, signal.SIGUSR1)
        assert read_lines(p.stdout, 1, 30) == [b"[1] got USR1 1\n"]
        os.kill(agent, signal.SIGALRM)
        assert read_lines(p.stdout, 1, 30) == [b"[1] got ALRM 1\n"]
        os.kill(agent, signal.SIGTSTP)
        wait_until(lambda: state(rank) == "T", 10, "node 1's rank to stop")
        assert state(agent) not in ("T", "")
        os.kill(agent, signal.SIGCONT)
        wait_until(lambda: state(rank) not in ("T", ""), 10, "node 1's rank to continue")
        go.touch()
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()
    assert sorted(out.decode().splitlines()) == ["[0] done 0", "[1] done 1"]
    assert "lost" not in err.decode()


HANG_ON_HOST_C = """#!/bin/sh
# A launcher that never gets through to host c (as ssh to a host that does not answer).
host=$1; shift
[ "$host" = c ] && exec {python} -c "import time; time.sleep(600)" {marker}-hang
exec "$@"
"""


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_while_nodes_have_not_joined_ends_the_job_at_once(
        tmp_path: Path, marker: str, sig: signal.Signals, code: int) -> None:
    """Ctrl-C (or SIGTERM) while the launch waits for a node: the job (or the ensemble)
    ends now, naming what had not joined, not after --join-timeout."""
    wrap = script(tmp_path, "wrap.sh", HANG_ON_HOST_C.replace("{marker}", marker)
                  .replace("{python}", sys.executable))
    wrap.chmod(0o755)
    sleeper = ["python", "-c", "import time; time.sleep(600)", marker]
    for argv in (["--launcher-exec", f"{wrap} {{host}} {{command}}", "-hosts", "a,c", "-n",
                  "2", *sleeper],
                 ["--ssh", str(wrap), "-S", "c", *sleeper, ":::", "1", "2"]):
        with in_own_group(argv, tmp_path) as p:
            wait_until(lambda: bool(pids_with(f"{marker}-hang")), 30,
                       "the launch to wait for host c")
            began = time.monotonic()
            p.send_signal(sig)
            _, err = p.communicate(timeout=30)
            text = err.decode()
            assert time.monotonic() - began < 10, text  # not --join-timeout's 60 s
            assert p.returncode == code, text
            assert "Traceback" not in text and "internal error" not in text, text
            if argv[0] == "--launcher-exec":  # (node 0 too, if it had not joined yet)
                assert re.search(rf"^pmrun: {sig.name} while the job was starting: (node 0 "
                                 r"\(a\)|node 1 \(c\)).* had not joined$", text, re.M), text
                assert len(text.splitlines()) == 2, text  # (and the loopback notice)
            else:
                assert f"task 1: not run: {sig.name}" in text, text
                assert f"pmrun: node c lost: its task runner had not started ({sig.name})\n" \
                    in text, text
        wait_gone(marker, 10)
