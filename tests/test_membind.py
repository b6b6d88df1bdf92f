"""--mem-bind (srun's) and -membind (Hydra's): each rank's NUMA memory policy, set
by its agent around the spawn (pm.agent.membind), as the rank itself reads it back."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest
from conftest import PmrunRunner as Run

from pm.agent.membind import (
    MPOL_BIND,
    MPOL_INTERLEAVE,
    MPOL_PREFERRED,
    MemBindError,
    numa_nodes,
    parse,
    rank_policy,
)

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(platform.machine() != "x86_64" or not numa_nodes(),
                                 reason="get_mempolicy's number is x86-64's; NUMA in /sys")]

#: A rank that prints its rank, then its memory policy's mode and node mask.
SHOW = """
import ctypes, os
call = ctypes.CDLL(None, use_errno=True).syscall
mode, mask = ctypes.c_int(0), (ctypes.c_ulong * 16)()
assert call(239, ctypes.byref(mode), mask, ctypes.c_ulong(1025), None, ctypes.c_ulong(0)) == 0
print(os.environ["PMI_RANK"], mode.value, mask[0], flush=True)
"""
FIRST = min(numa_nodes())
BIT = 1 << FIRST


def shown(stdout: str) -> list[str]:
    return sorted(stdout.splitlines())


def test_the_values_of_srun_and_hydra() -> None:
    assert parse("local") == ("local", False)
    assert parse("verbose,rank") == ("rank", True)
    assert parse("v,prefer,map_mem:0,2,3") == ("prefer,map:0,2,3", True)
    assert parse("map_mem:0,0,1,1") == ("map:0,0,1,1", False)  # (a node each rank, in turn)
    assert parse("map_mem:0*2,1*2") == ("map:0,0,1,1", False)
    assert parse("mask_mem:0x1*2,0x2") == ("mask:0x1,0x1,0x2", False)
    assert parse("quiet,mask_mem:0x1,3") == ("mask:0x1,0x3", False)
    assert parse("verbose") == ("none", True)
    assert parse("firsttouch") == ("none", False)
    assert parse("bind:0-1") == ("bind:0,1", False)
    assert parse("interleave:1,0") == ("interleave:1,0", False)
    for bad, why in (("nearby", "'nearby' is not one of"), ("local,rank", "one memory binding"),
                     ("map_mem:a", "'a' is not a NUMA node"), ("mask_mem:0", "names no NUMA"),
                     ("map_mem:0-1", "'0-1' is not a NUMA node"),
                     ("map_mem:0*x", "repeats an item"),
                     ("nexttouch", "Linux does not migrate"), ("prefer", "no binding")):
        with pytest.raises(ValueError, match=why):
            parse(bad)


def test_each_rank_gets_its_policy() -> None:
    nodes = {0: frozenset({0, 1}), 1: frozenset({2, 3})}
    assert rank_policy("local", 0, frozenset({3}), nodes, "h") == (MPOL_BIND, (1,))
    assert rank_policy("local", 0, None, nodes, "h") == (MPOL_BIND, (0, 1))
    assert [rank_policy("rank", r, None, nodes, "h") for r in range(3)] == [
        (MPOL_BIND, (0,)), (MPOL_BIND, (1,)), (MPOL_BIND, (0,))]
    assert rank_policy("prefer,map:1,0", 0, None, nodes, "h") == (MPOL_PREFERRED, (1,))
    assert [rank_policy("map:0,0,1,1", r, None, nodes, "h") for r in range(4)] == [
        (MPOL_BIND, (0,)), (MPOL_BIND, (0,)), (MPOL_BIND, (1,)), (MPOL_BIND, (1,))]
    assert rank_policy("mask:0x3,0x2", 1, None, nodes, "h") == (MPOL_BIND, (1,))
    assert rank_policy("interleave:0,1", 5, None, nodes, "h") == (MPOL_INTERLEAVE, (0, 1))
    assert rank_policy("none", 0, None, nodes, "h") is None
    with pytest.raises(MemBindError, match=r"NUMA node 4 is not one of h's with memory \(0,1\)"):
        rank_policy("map:4", 0, None, nodes, "h")
    with pytest.raises(MemBindError, match="says nothing of its NUMA nodes"):
        rank_policy("local", 0, None, {}, "h")


def test_only_nodes_with_memory_count(tmp_path: Path) -> None:
    (tmp_path / "has_memory").write_text("0,2\n")
    for node, cpus in ((0, "0-1"), (1, "2-3"), (2, "")):
        (tmp_path / f"node{node}").mkdir()
        (tmp_path / f"node{node}" / "cpulist").write_text(cpus + "\n")
    assert numa_nodes(str(tmp_path)) == {0: frozenset({0, 1}), 2: frozenset()}
    assert numa_nodes(str(tmp_path / "absent")) == {}


def test_ranks_run_with_the_policy_and_the_agent_keeps_its_own(pmrun: Run) -> None:
    r = pmrun("-n", "2", "--mem-bind=local", sys.executable, "-c", SHOW)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert shown(r.stdout) == [f"0 {MPOL_BIND} {BIT}", f"1 {MPOL_BIND} {BIT}"]
    r = pmrun("-n", "2", "-membind", f"interleave:{FIRST}", sys.executable, "-c", SHOW)
    assert shown(r.stdout) == [f"0 {MPOL_INTERLEAVE} {BIT}", f"1 {MPOL_INTERLEAVE} {BIT}"]
    # Through the tree (two agents), and with srun's prefer.
    r = pmrun("--local-nodes", "2", "-n", "2", "--mem-bind", "prefer,rank", sys.executable,
              "-c", SHOW)
    assert shown(r.stdout) == [f"0 {MPOL_PREFERRED} {BIT}", f"1 {MPOL_PREFERRED} {BIT}"]
    # Without it the ranks have the kernel's default, as they would from a shell: the
    # agent put its own policy back after each spawn.
    r = pmrun("-n", "2", sys.executable, "-c", SHOW)
    assert shown(r.stdout) == ["0 0 0", "1 0 0"], r.stderr


def test_verbose_reports_each_ranks_memory(pmrun: Run) -> None:
    host = os.uname().nodename
    r = pmrun("-n", "2", "--mem-bind=verbose,map_mem:" + str(FIRST), "true")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stderr.splitlines()) == [
        f"rank 0 on {host}: memory bind NUMA node {FIRST}",
        f"rank 1 on {host}: memory bind NUMA node {FIRST}"]


def test_a_node_the_host_lacks_is_named_in_one_line(pmrun: Run) -> None:
    have = ",".join(map(str, sorted(numa_nodes())))
    r = pmrun("-n", "2", f"--mem-bind=map_mem:{FIRST},999", "true")
    assert r.returncode != 0
    assert r.stderr == (f"pmrun: rank 1 (node 0, {os.uname().nodename}) could not start: "
                        f"--mem-bind: NUMA node 999 is not one of {os.uname().nodename}'s "
                        f"with memory ({have})\n")
    r = pmrun("-n", "1", "--mem-bind", "nearby", "true")
    assert r.returncode == 2
    assert r.stderr.startswith("pmrun: --mem-bind: 'nearby' is not one of "), r.stderr


def test_from_python(tmp_path: Path) -> None:
    import subprocess

    prog = ("import pm, sys\n"
            f"r = pm.run([sys.executable, '-c', {SHOW!r}], 2, mem_bind='local')\n"
            "sys.exit(r.returncode)\n")
    out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                         timeout=50, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert shown(out.stdout) == [f"0 {MPOL_BIND} {BIT}", f"1 {MPOL_BIND} {BIT}"]
    bad = "import pm\npm.run(['true'], 1, mem_bind='nearby')\n"
    out = subprocess.run([sys.executable, "-c", bad], capture_output=True, text=True,
                         timeout=50, cwd=tmp_path)
    assert out.returncode != 0 and "mem_bind: 'nearby' is not one of" in out.stderr
