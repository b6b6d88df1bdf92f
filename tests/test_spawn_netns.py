"""MPI_Comm_spawn across namespace hosts (tests/netns_util.py): children are started by
the agents in the namespaces, through the tree, and merge with their parents."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import pmrun_argv, pmrun_env, script
from netns_util import NetnsHosts, exec_launcher_args, netns_missing
from test_spawn import MERGE, check_merge

pytestmark = [pytest.mark.netns, pytest.mark.mpi, pytest.mark.timeout(120)]

_WHY = netns_missing()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))

WHERE = """
    import os, sys
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL:
        inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__], maxprocs=4)
        merged = inter.Merge(high=False)
    else:
        inter = parent
        merged = parent.Merge(high=True)
    nets = merged.allgather(os.readlink("/proc/self/ns/net"))
    if merged.rank == 0:
        print("merged", merged.size, "netns", len(set(nets)), flush=True)
    merged.Free()
    inter.Disconnect()
"""


def test_spawn_on_namespace_hosts(tmp_path: Path) -> None:
    with NetnsHosts(3) as hosts:
        prog = script(tmp_path, "merge.py", MERGE)
        res = subprocess.run(pmrun_argv(*exec_launcher_args(hosts), "-n", "2", sys.executable,
                                        str(prog)),
                             cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                             timeout=90, stdin=subprocess.DEVNULL)
        check_merge(res)
        # Children spread over the hosts that run the job (slots: one per host).
        where = script(tmp_path, "where.py", WHERE)
        res = subprocess.run(pmrun_argv(*exec_launcher_args(hosts), "-n", "3", "-ppn", "1",
                                        sys.executable, str(where)),
                             cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                             timeout=90, stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "merged 7 netns 3" in res.stdout, res.stdout
        assert not hosts.wait_empty(15)
