"""Launching unmodified MPICH (mpi4py and C) through pmrun's tree of node agents."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

HELLO = re.compile(r"Hello, World! I am process\s+(\d+) of (\d+) on ")


def _hello_ranks(out: str, n: int) -> None:
    got = sorted(int(m.group(1)) for m in HELLO.finditer(out))
    assert got == list(range(n)), out
    assert all(int(m.group(2)) == n for m in HELLO.finditer(out)), out


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_mpi4py_hello(pmrun: Run, n: int) -> None:
    r = pmrun("-n", str(n), "python", "-m", "mpi4py.bench", "helloworld")
    assert r.returncode == 0, r.stderr
    _hello_ranks(r.stdout, n)


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_mpi4py_hello_on_a_tree(pmrun: Run, n: int) -> None:
    r = pmrun("-n", str(n), "--local-nodes", "4", "--fanout", "2",
              "python", "-m", "mpi4py.bench", "helloworld")
    assert r.returncode == 0, r.stderr
    _hello_ranks(r.stdout, n)


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_c_hello(pmrun: Run, c_hello: Path) -> None:
    r = pmrun("-n", "4", "--local-nodes", "2", str(c_hello))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"hello from 4 ranks, max MPI_Init \d+\.\d ms\n", r.stdout), r.stdout
