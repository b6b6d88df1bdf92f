"""Unmodified Intel MPI (the impi-rt wheel) through pmrun's PMI-1 server.

Intel MPI lives in its own virtual environment (it cannot share one with the
MPICH wheel): ``PMRUN_IMPI_PYTHON`` names its python, else ``.ci/impi`` in the
checkout (``.ci/run`` makes it: ``pip install impi-rt mpi4py``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

REPO = Path(__file__).resolve().parent.parent


def _impi_python() -> str | None:
    path = os.environ.get("PMRUN_IMPI_PYTHON") or str(REPO / ".ci" / "impi" / "bin" / "python")
    return path if os.access(path, os.X_OK) else None


IMPI = _impi_python()

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(IMPI is None, reason="Intel MPI not installed: set PMRUN_IMPI_PYTHON "
                                            "to a python with impi-rt and mpi4py"),
]

PROG = """
from mpi4py import MPI
c = MPI.COMM_WORLD
node = c.Split_type(MPI.COMM_TYPE_SHARED)
print(c.rank, c.size, node.size, c.allreduce(c.rank + 1),
      MPI.Get_library_version().splitlines()[0], flush=True)
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["--local-nodes", "2", "-ppn", "1"]],
                         ids=["1node", "2nodes", "2nodes-round-robin"])
def test_intel_mpi_allreduce(pmrun: Run, opts: list[str]) -> None:
    # Round robin (ranks 0, 2 on node 0, 1, 3 on node 1): Intel MPI's MPI_Init crashes on a
    # process mapping that relies on MPICH's restart, (vector,(0,2,1)) (pm.common.mapping).
    assert IMPI is not None
    r = pmrun("-n", "4", *opts, IMPI, "-c", PROG, timeout=100)
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert len(lines) == 4, r.stdout
    per_node = "2" if opts else "4"
    for rank, line in enumerate(lines):
        assert re.match(rf"{rank} 4 {per_node} 10 Intel\(R\) MPI Library", line), line


SPAWN = """
import sys
from mpi4py import MPI
parent = MPI.Comm.Get_parent()
if parent == MPI.COMM_NULL:
    inter = MPI.COMM_WORLD.Spawn(sys.executable, [sys.argv[0]], maxprocs=3)
    both = inter.Merge(high=False)
else:
    inter = parent
    both = inter.Merge(high=True)
print("child" if parent != MPI.COMM_NULL else "parent", both.size, both.allreduce(both.rank),
      flush=True)
both.Free()
inter.Disconnect()
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_intel_mpi_spawn(pmrun: Run, opts: list[str], tmp_path: Path) -> None:
    """MPI_Comm_spawn of 3 children from 2 Intel MPI parents, which merge and allreduce.
    Intel MPI serves spawn only with I_MPI_SPAWN=on (without it its ranks crash in the
    spawn, under its own mpiexec as well, before asking the process manager anything)."""
    assert IMPI is not None
    prog = tmp_path / "spawn.py"
    prog.write_text(SPAWN)
    r = pmrun("-n", "2", *opts, IMPI, str(prog), env={"I_MPI_SPAWN": "on"}, timeout=100)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["child 5 10"] * 3 + ["parent 5 10"] * 2, r.stdout
