"""The programs in examples/ run and print what their docstrings promise."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import pmrun_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

Run = Callable[..., subprocess.CompletedProcess[str]]


def _python(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                          text=True, timeout=90, env=pmrun_env(None), cwd=tmp_path)


@pytest.mark.timeout(120)
def test_launch_example(tmp_path: Path) -> None:
    proc = _python("launch.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "blocking run: 0 [0, 0, 0, 0]" in out
    assert sorted(re.findall(r"rank (\d) stdout: hello from \1", out)) == ["0", "1", "2", "3"]
    assert "async run: 0" in out
    assert "failing run: 3 - rank 2 (node 1, " in out


@pytest.mark.timeout(120)
def test_allgather_example(pmrun: Run) -> None:
    proc = pmrun("-n", "8", "--local-nodes", "2", "python", str(EXAMPLES / "allgather.py"))
    assert proc.returncode == 0, proc.stderr
    assert "8 ranks; addresses: [" in proc.stdout
    for r in range(8):
        assert f"rank {r}: ring neighbours {(r - 1) % 8},{(r + 1) % 8}; rank 0 is pid" \
            in proc.stdout


@pytest.mark.timeout(120)
def test_ensemble_example(tmp_path: Path) -> None:
    proc = _python("ensemble.py", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("task exit 0") == 6
    assert sorted(re.findall(r"\[task (\d)\] 52428800", proc.stdout)) == ["0", "1", "2"]
