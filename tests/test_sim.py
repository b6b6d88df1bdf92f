"""Simulated ranks (``--sim-ranks-per-node``): M agents x R in-process ranks through the
real agent, tree, collective and KVS code, with every value each rank sees checked."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

import pytest

from pm.agent.sim import (
    CORRUPT_ENV,
    ValuePattern,
    exchange_seconds,
    merge_stats,
    peers_of,
    sim_settings,
    summary_line,
)

Run = Callable[..., subprocess.CompletedProcess[str]]

SUMMARY = re.compile(r"pmrun sim: (\d+) ranks \((\d+) nodes x (\d+)\), (\w+) of (\d+) B "
                     r"\+ (\d+) gets/rank \((\d+) waited\): exchange ([\d.]+) s")


def _summary(out: str) -> re.Match[str]:
    lines = [ln for ln in out.splitlines() if ln.startswith("pmrun sim:")]
    assert len(lines) == 1, out
    m = SUMMARY.match(lines[0])
    assert m is not None, lines[0]
    return m


# --- whole jobs -----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("nodes", "per"), [(2, 3), (4, 100)])
@pytest.mark.parametrize("exchange", ["allgather", "fence"])
def test_sim_ranks_see_every_value_right(pmrun: Run, nodes: int, per: int,
                                         exchange: str) -> None:
    r = pmrun("--local-nodes", str(nodes), "--sim-ranks-per-node", str(per),
              "--sim-exchange", exchange, "--sim-gets", "left,right,leader,far")
    assert r.returncode == 0, r.stdout + r.stderr
    m = _summary(r.stdout)
    assert (int(m[1]), int(m[2]), int(m[3])) == (nodes * per, nodes, per)
    assert m[4] == exchange and m[5] == "64" and m[6] == "4"
    assert r.stdout.rstrip().endswith("all values right"), r.stdout
    if exchange == "allgather":
        # Gets after an allgather miss the node cache for other nodes' keys:
        # at least each node's "leader" get (first rank of the next node) waited.
        assert int(m[7]) >= nodes * per
    else:
        # After a fence every key is on every node: no get waits.
        assert int(m[7]) == 0


@pytest.mark.timeout(60)
def test_sim_value_size_travels(pmrun: Run) -> None:
    r = pmrun("--local-nodes", "3", "--sim-ranks-per-node", "5", "--sim-value-size", "1000")
    assert r.returncode == 0, r.stdout + r.stderr
    m = _summary(r.stdout)
    assert int(m[1]) == 15 and m[5] == "1000"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("exchange", ["allgather", "fence"])
def test_a_wrong_value_fails_the_job_naming_it(pmrun: Run, exchange: str) -> None:
    # Rank 5 (on node 1) puts a wrong address: its neighbours (and, with an
    # allgather, everybody) must notice, and pmrun must exit non-zero.
    r = pmrun("--local-nodes", "2", "--sim-ranks-per-node", "3", "--sim-exchange", exchange,
              env={CORRUPT_ENV: "5"})
    assert r.returncode != 0, r.stdout + r.stderr
    assert "saw a wrong value for rank 5" in r.stdout + r.stderr
    assert "all values right" not in r.stdout


@pytest.mark.timeout(30)
@pytest.mark.parametrize("args", [
    ("--sim-ranks-per-node", "2", "python", "-c", "pass"),
    ("--sim-ranks-per-node", "0"),
    ("--sim-ranks-per-node", "2", "--sim-exchange", "ring"),
    ("--sim-ranks-per-node", "2", "--sim-gets", "left,nowhere"),
])
def test_bad_sim_options_are_usage_errors(pmrun: Run, args: tuple[str, ...]) -> None:
    r = pmrun("--local-nodes", "2", *args)
    assert r.returncode != 0
    assert "pmrun sim:" not in r.stdout
    assert r.stderr.strip(), "a usage error says why"


# --- the pure pieces ----------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("prepared", [True, False])
@pytest.mark.parametrize(("size", "value_size"), [(1, 64), (300, 8), (1000, 64), (257, 3)])
def test_value_pattern_check_finds_the_first_wrong_rank(prepared: bool, size: int,
                                                         value_size: int) -> None:
    p = ValuePattern(size, value_size)
    if prepared:
        p.prepare()
    good = [ValuePattern(size, value_size).value(r) for r in range(size)]
    assert len(set(good)) == size and all(len(v) == value_size for v in good)
    assert p.first_wrong(good) == -1
    for bad_rank in {0, size // 2, size - 1}:
        values: list[bytes | None] = list(good)
        v = good[bad_rank]
        values[bad_rank] = v[:-1] + bytes([v[-1] ^ 1])
        assert p.first_wrong(values) == bad_rank
        values[bad_rank] = None
        assert p.first_wrong(values) == bad_rank
    assert p.first_wrong(good[:-1]) == size - 1
    if size > 1:
        swapped = list(good)
        swapped[0], swapped[1] = swapped[1], swapped[0]
        assert p.first_wrong(swapped) == 0


@pytest.mark.timeout(10)
def test_peers_are_distinct_and_never_the_rank_itself() -> None:
    assert peers_of(0, 6, 3, ("left", "right", "leader")) == [5, 1, 3]
    assert peers_of(4, 6, 3, ("left", "right", "leader", "far")) == [3, 5, 0, 1]
    assert peers_of(0, 1, 1, ("left", "right", "leader", "far")) == []
    assert peers_of(0, 2, 1, ("left", "right", "leader")) == [1]


@pytest.mark.timeout(10)
def test_settings_and_stats_merge() -> None:
    s = sim_settings({"sim_ranks": "7", "sim_gets": "far"})
    assert s["ranks_per_node"] == 7 and s["gets"] == ["far"] and s["value_size"] == 64
    with pytest.raises(ValueError, match="--sim-value-size"):
        sim_settings({"sim_ranks": "7", "sim_value_size": "x"})
    a = {"ranks": 3, "nodes": 1, "wrong": 0, "failed": 0, "remote_gets": 2,
         "first_init": 10.0, "first_start": 11.0, "last_done": 12.0, "first_wrong": "",
         "phases": {"result": [11.5, 11.5]}}
    b = dict(a, ranks=3, wrong=1, first_start=10.5, last_done=12.5, first_wrong="rank 4 ...",
             phases={"result": [11.2, 11.2]})
    m = merge_stats(a, [b, None])
    assert (m["ranks"], m["nodes"], m["wrong"], m["remote_gets"]) == (6, 2, 1, 4)
    assert m["first_start"] == 10.5 and m["last_done"] == 12.5
    assert m["phases"]["result"] == [11.2, 11.5]
    assert exchange_seconds(m) == pytest.approx(2.0)
    line = summary_line(m, 6, 2)
    assert "6 ranks (2 nodes x 3)" in line and "1 ranks saw a wrong value" in line
    assert "did not run" in summary_line(None, 6, 2)
