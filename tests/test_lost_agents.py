"""After a lost node, only what pmrun still owns is signalled (pidfds, never bare pids)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from launch_util import cmdline, read_lines, wait_until

from pm.agent.watch import ChildWatch

#: Each rank says who its agent is, then waits to be killed.
WAITER = r"""
import json, os, sys, time
print(json.dumps({"rank": int(os.environ["PMI_RANK"]), "agent": os.getppid()}), flush=True)
while True:
    time.sleep(60)
"""


def _waiters(pmrun_popen: Any, tmp_path: Path, n: int, heartbeat: str
             ) -> tuple[Any, dict[int, int]]:
    """pmrun with ``n`` waiting ranks on ``n`` local nodes; each rank's agent's pid."""
    prog = tmp_path / "waiter.py"
    prog.write_text(WAITER)
    p = pmrun_popen("-n", str(n), "--local-nodes", str(n), "--heartbeat", heartbeat,
                    "python", str(prog))
    assert p.stdout is not None and p.stderr is not None
    return p, {d["rank"]: d["agent"] for d in map(json.loads, read_lines(p.stdout, n, 60))}


def _stopped(p: Any, agent: int) -> str:
    """pmrun's stderr once it ended after ``agent`` was stopped (SIGSTOP, then SIGKILL)."""
    os.kill(agent, signal.SIGSTOP)
    try:
        _, err = p.communicate(timeout=60)
    finally:
        if cmdline(agent) is not None:
            os.kill(agent, signal.SIGKILL)
    return str(err.decode())


@pytest.mark.timeout(90)
def test_a_reaped_agent_is_not_killed_again(pmrun_popen: Any, tmp_path: Path) -> None:
    p, agents = _waiters(pmrun_popen, tmp_path, 3, "2")
    # Node 1's agent dies (pmrun reaps it); node 2's hangs, so pmrun has to kill it.
    os.kill(agents[1], signal.SIGKILL)
    text = _stopped(p, agents[2])
    assert p.returncode != 0
    assert "node 1" in text, text
    assert f"child agent 1 (pid {agents[1]})" not in text, text
    wait_until(lambda: cmdline(agents[2]) is None, 10, "node 2's agent to be gone")


def _start(*argv: str) -> int:
    return os.posix_spawn(argv[0], list(argv), {})


async def test_watch_signals_only_unreaped_processes() -> None:
    watch = ChildWatch()
    pid = _start("/bin/true")
    status = await asyncio.wait_for(watch.watch(pid), 30)
    assert status.ok
    assert watch.kill(pid) is False  # reaped: its pid is nobody's to signal now
    live = _start("/bin/sleep", "60")
    fut = watch.watch(live)
    assert watch.kill(live) is True
    status = await asyncio.wait_for(fut, 30)
    assert status.signal == signal.SIGKILL
    watch.close()


@pytest.mark.timeout(90)
def test_a_hung_agent_is_named_in_one_line(pmrun_popen: Any, tmp_path: Path) -> None:
    # A node whose agent stops answering: one line names it (node, host, why), no second
    # line about its "vertex".
    p, agents = _waiters(pmrun_popen, tmp_path, 2, "1")
    lines = _stopped(p, agents[1]).splitlines()
    assert p.returncode == 255 and len(lines) == 1, lines
    assert lines[0].startswith("pmrun: node 1 (") and "no heartbeat for" in lines[0], lines
    wait_until(lambda: cmdline(agents[1]) is None, 10, "node 1's agent to be gone")
