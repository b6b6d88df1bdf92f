"""The memory governor signals only processes it still owns: a watched rank that
ended and was reaped may have its pid reused by anyone, and that one is never
measured as the rank nor killed for it (pidfds, as the rest of the agent)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from pm.agent.memory import MemoryGovernor, OverrunEvent, Watermarks
from pm.agent.memprobe import signal_tree

MiB = 1 << 20
HOLD = "import sys; b = bytearray(b'x') * (40 << 20); print('ready', flush=True); sys.stdin.read()"
LAST_PID = "/proc/sys/kernel/ns_last_pid"


def _holder() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-S", "-c", HOLD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)


def _holder_at(pid: int) -> subprocess.Popen[bytes] | None:
    """A 40 MiB holder whose pid is ``pid`` (the next pid set through ns_last_pid: other
    processes of the machine may take it first, so a few tries), or None."""
    for _ in range(300):
        fd = os.open(LAST_PID, os.O_WRONLY)
        try:
            os.write(fd, str(pid - 1).encode())
        finally:
            os.close(fd)
        p = _holder()
        if p.pid == pid:
            return p
        _end(p)
    return None


def _end(p: subprocess.Popen[bytes]) -> None:
    p.kill()
    p.wait()
    for f in (p.stdin, p.stdout):
        if f is not None:
            f.close()


def _ready(p: subprocess.Popen[bytes]) -> None:
    assert p.stdout is not None and p.stdout.readline() == b"ready\n"


@pytest.mark.timeout(60)
async def test_governor_never_kills_a_reused_pid() -> None:
    if os.geteuid() != 0 or not os.access(LAST_PID, os.W_OK):
        pytest.skip("setting the next pid needs root (ns_last_pid)")
    events: list[OverrunEvent] = []
    usage = [0]
    rank = _holder()
    _ready(rank)
    async with MemoryGovernor(Watermarks(100 * MiB, 80 * MiB), usage=lambda: usage[0],
                              interval=60, overrun="kill", on_overrun=events.append) as gov:
        await gov.admit("rank", 10 * MiB)
        gov.watch("rank", rank.pid)
        pid = rank.pid
        _end(rank)  # reaped: its pid is free for anyone
        stranger = await asyncio.to_thread(_holder_at, pid)
        if stranger is None:
            pytest.skip(f"pid {pid} was not handed out again")
        try:
            _ready(stranger)
            usage[0] = 120 * MiB  # the node over its high watermark: overruns are killed
            await gov.sample()
            assert [e.action for e in events] == []  # not measured as the rank, not killed
            with pytest.raises(subprocess.TimeoutExpired):  # (a SIGKILL would end it at once)
                stranger.wait(1)
        finally:
            _end(stranger)
        gov.release("rank")


@pytest.mark.timeout(30)
def test_signal_tree_reaches_the_tree_through_pidfds() -> None:
    # A shell with a child: both stopped and resumed through the root's pidfd.
    p = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    assert p.stdout is not None
    child = int(p.stdout.readline())
    fd = os.pidfd_open(p.pid)
    try:
        assert signal_tree(fd, p.pid, 9) == 2
        assert p.wait(10) == -9
        assert signal_tree(fd, p.pid, 9) == 0  # reaped: nothing more is signalled
        deadline = time.monotonic() + 10
        while _state(child) not in ("", "Z"):
            assert time.monotonic() < deadline, f"the shell's child {child} still runs"
            time.sleep(0.01)  # polling /proc against a deadline
    finally:
        os.close(fd)
        _end(p)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except OSError:
        return ""
