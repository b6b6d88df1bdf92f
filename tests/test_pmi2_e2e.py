"""PMI-2 through pmrun, checked by Slurm's real libpmi2 (tests/c/pmi2_client.c).

The client checks every answer itself (see tests/c/README.md) and prints
``OK rank=<r>`` last; here each rank must do so and pmrun must exit 0.  Runs
on one node, on three virtual nodes with block placement (a fence spans
agents; the ring moves subtree boundaries), with cyclic placement (the ring
rides an allgather), with two MPMD programs (appnum), and with an abort.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pm.common.mapping import place, process_mapping

pytestmark = pytest.mark.timeout(60)

def labelled(stdout: str) -> dict[int, list[str]]:
    """``[rank] line`` output of ``pmrun -l`` as lines per rank."""
    out: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        m = re.match(r"\[(\d+)\] (.*)", line)
        if m:
            out.setdefault(int(m.group(1)), []).append(m.group(2))
    return out


def check_all_ok(proc: subprocess.CompletedProcess[str], n: int) -> dict[int, list[str]]:
    assert proc.returncode == 0, f"pmrun exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    lines = labelled(proc.stdout)
    assert sorted(lines) == list(range(n)), proc.stdout
    for r in range(n):
        assert lines[r][-1] == f"OK rank={r}", f"rank {r}: {lines[r]}\n{proc.stderr}"
        assert not any(x.startswith("FAIL") for x in lines[r])
        assert f"ring rank={r} ranks={n} left=ring-{(r - 1) % n} right=ring-{(r + 1) % n}" \
            in lines[r], "this libpmi2 has PMIX_Ring: the ring must have run"
    jobids = {x for r in range(n) for x in lines[r] if x.startswith("jobid=")}
    assert len(jobids) == 1, f"ranks disagree on the job id: {jobids}"
    assert "FAIL" not in proc.stderr
    return lines


def expect_env(n: int, mapping: str) -> list[str]:
    return ["-genv", "EXPECT_UNIVERSE_SIZE", str(n), "-genv", "EXPECT_PROCESS_MAPPING", mapping,
            "-genv", "EXPECT_APPNUM", "0"]


def test_one_node(pmrun: Any, pmi2_client: Path) -> None:
    n = 3
    proc = pmrun("-l", "-n", str(n), *expect_env(n, "(vector,(0,1,3))"), str(pmi2_client))
    check_all_ok(proc, n)


def test_three_nodes_block(pmrun: Any, pmi2_client: Path) -> None:
    n = 5
    proc = pmrun("-l", "-n", str(n), "--local-nodes", "3",
                 *expect_env(n, "(vector,(0,2,2),(2,1,1))"), str(pmi2_client))
    check_all_ok(proc, n)


def test_three_nodes_cyclic(pmrun: Any, pmi2_client: Path) -> None:
    n = 5
    mapping = process_mapping(place(n, [1, 1, 1]))
    proc = pmrun("-l", "-n", str(n), "--local-nodes", "3", "-ppn", "1", "--fanout", "2",
                 *expect_env(n, mapping), str(pmi2_client))
    lines = check_all_ok(proc, n)
    assert f"PMI_process_mapping={mapping}" in lines[0]


def test_mpmd_appnum(pmrun: Any, pmi2_client: Path) -> None:
    proc = pmrun("-l", "--local-nodes", "2",
                 "-n", "2", "-env", "EXPECT_APPNUM", "0", str(pmi2_client), ":",
                 "-n", "2", "-env", "EXPECT_APPNUM", "1", str(pmi2_client))
    lines = check_all_ok(proc, 4)
    assert "init rank=3 size=4 appnum=1 spawned=0" in lines[3]
    assert "init rank=0 size=4 appnum=0 spawned=0" in lines[0]


def test_abort_ends_the_job(pmrun: Any, pmi2_client: Path) -> None:
    proc = pmrun("-n", "3", "--local-nodes", "2", str(pmi2_client), "abort")
    assert proc.returncode == 1, proc.stderr
    assert re.search(r"rank (\d+) .*called abort with code 1 \(abort; from \1\)", proc.stderr), \
        proc.stderr
    assert "OK rank" not in proc.stdout
