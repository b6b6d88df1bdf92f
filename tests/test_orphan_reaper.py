"""The test session's reaper of orphans (realcluster_util._Orphans) takes only orphans:
never a child the session started itself and waits for, whose exit status it would steal
(the waiting subprocess then reads 0, as if a failed pmrun or salloc had succeeded)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import launch_util
from realcluster_util import _Orphans


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    out = []
    for entry in os.scandir("/proc"):
        try:
            fields = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] == "Z" and fields[1] == me:
            out.append(int(entry.name))
    return out


def test_the_reaper_leaves_our_childrens_statuses_and_takes_the_orphans() -> None:
    launch_util.become_subreaper()
    reaper = _Orphans(poll=0.005)
    try:
        for _ in range(10):
            proc = subprocess.Popen(["sh", "-c", "exit 3"])
            deadline = time.monotonic() + 10
            while proc.pid not in _zombie_children():  # a zombie, not waited for yet
                assert time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.05)  # (ten of the reaper's rounds)
            assert proc.wait(timeout=10) == 3
        # An orphan of another session (a job's process whose parent ended): reaped.
        out = subprocess.run(["setsid", "sh", "-c", "sleep 0.1 & echo $!"], check=True,
                             timeout=10, capture_output=True, text=True).stdout
        orphan = int(out)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{orphan}"):  # (a zombie of ours until reaped)
            assert time.monotonic() < deadline, _zombie_children()
            time.sleep(0.01)
    finally:
        reaper.stop()
