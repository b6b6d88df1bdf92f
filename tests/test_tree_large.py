"""Bodies over the tree links' frame bound cross as several parts, whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pm.proto.tree_frames import PART_MAX, split

BIG = r"""
import hashlib
from pm.client.sync import connect

with connect() as pmi:
    mine = bytes([pmi.rank + 1]) * (3 << 20)
    got = pmi.allgather(mine)
    print(pmi.rank, [len(v) for v in got], hashlib.sha256(b"".join(got)).hexdigest(), flush=True)
"""


@pytest.mark.timeout(120)
def test_collective_larger_than_a_frame_crosses_the_tree(pmrun: Any, tmp_path: Path) -> None:
    import hashlib

    assert PART_MAX < 2 * (3 << 20)
    prog = tmp_path / "big.py"
    prog.write_text(BIG)
    res = pmrun("-n", "2", "--local-nodes", "2", "python", str(prog), timeout=90)
    assert res.returncode == 0, res.stderr
    want = hashlib.sha256(b"\x01" * (3 << 20) + b"\x02" * (3 << 20)).hexdigest()
    lines = sorted(res.stdout.splitlines())
    assert lines == [f"{r} [{3 << 20}, {3 << 20}] {want}" for r in range(2)], res.stdout


def test_split_keeps_small_bodies_whole() -> None:
    assert split(b"abc") == [b"abc"]
    body = bytes(range(256)) * ((PART_MAX * 2 + 10) // 256 + 1)
    parts = split(body)
    assert all(len(p) <= PART_MAX for p in parts) and len(parts) == 3
    assert b"".join(parts) == body
