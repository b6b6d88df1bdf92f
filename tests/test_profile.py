"""``pmrun --profile FILE``: the start-up timeline as Chrome trace-event JSON, and the
breakdown table on stderr, for real MPICH jobs and for simulated ranks."""

from __future__ import annotations

import json
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pm.profile_report import AGENT_TID, breakdown, build_trace, coll_spans, format_table

Run = Callable[..., subprocess.CompletedProcess[str]]

#: The order of a rank's start-up marks (each present at most once).
RANK_ORDER = ("rank spawned", "PMI init", "finalize", "rank exit")


def _load(path: Path) -> list[dict[str, Any]]:
    trace = json.loads(path.read_text())
    assert trace["displayTimeUnit"] == "ms"
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    for e in events:
        assert e["ph"] in ("M", "X", "i"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int), e
        if e["ph"] != "M":
            assert e["ts"] >= 0, e
        if e["ph"] == "X":
            assert e["dur"] >= 0, e
    return list(events)


def _rank_threads(events: list[dict[str, Any]]) -> dict[int, tuple[int, list[dict[str, Any]]]]:
    """rank -> (node, its events other than metadata)."""
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    out: dict[int, tuple[int, list[dict[str, Any]]]] = {}
    for (pid, tid), name in names.items():
        if tid != AGENT_TID:
            assert name == f"rank {tid}"
            out[tid] = (pid, [e for e in events
                              if e["ph"] != "M" and e["pid"] == pid and e["tid"] == tid])
    return out


def _check_rank(rank: int, evs: list[dict[str, Any]], wants: tuple[str, ...],
                collectives: set[str]) -> None:
    """The rank's marks come in start-up order and its collectives lie within PMI."""
    at: dict[str, float] = {}
    for e in evs:
        if e["ph"] == "i" and e["name"] in RANK_ORDER:
            assert e["name"] not in at, f"rank {rank}: {e['name']} twice"
            at[e["name"]] = e["ts"]
    assert tuple(n for n in RANK_ORDER if n in at) == wants, (rank, at)
    times = [at[n] for n in wants]
    assert times == sorted(times), f"rank {rank} out of order: {at}"
    slices = {e["name"]: e for e in evs if e["ph"] == "X"}
    assert collectives <= set(slices), (rank, sorted(slices))
    if "PMI init" in at and "finalize" in at:
        pmi = slices["PMI"]
        assert pmi["ts"] == at["PMI init"]
        for e in evs:
            if e["ph"] == "X" and e["name"] in ("fence", "barrier", "allgather", "ring"):
                # Collectives nest inside the PMI slice (0.1 us rounding aside).
                assert pmi["ts"] - 0.2 <= e["ts"], (rank, e)
                assert e["ts"] + e["dur"] <= pmi["ts"] + pmi["dur"] + 0.2, (rank, e)


@pytest.mark.mpi
@pytest.mark.timeout(90)
@pytest.mark.parametrize("tree", [("--local-nodes", "2"), ("--local-nodes", "4", "--fanout", "2")])
def test_profile_of_an_mpi_job(pmrun: Run, c_hello: Path, tmp_path: Path,
                               tree: tuple[str, ...]) -> None:
    out = tmp_path / "p.json"
    n = 8
    r = pmrun("--profile", str(out), "-n", str(n), *tree, str(c_hello))
    assert r.returncode == 0, r.stderr
    assert f"hello from {n} ranks" in r.stdout
    events = _load(out)
    nodes = int(tree[1])
    procs = {e["pid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "process_name"}
    assert procs == {v: f"node {v}" for v in range(nodes)}
    ranks = _rank_threads(events)
    assert sorted(ranks) == list(range(n))
    per = n // nodes
    for rank, (node, evs) in ranks.items():
        assert node == rank // per  # block placement: the rank's thread sits in its node
        _check_rank(rank, evs, RANK_ORDER, {"launch", "PMI", "exit", "fence"})
    # Every agent but the head's own reports its interpreter start-up and spawning.
    agent_slices = defaultdict(set)
    for e in events:
        if e["ph"] == "X" and e["tid"] == AGENT_TID:
            agent_slices[e["pid"]].add(e["name"])
    for v in range(nodes):
        assert "spawning ranks" in agent_slices[v], (v, agent_slices[v])
    # The table on stderr.
    assert f"-> {out}" in r.stderr
    for row in ("bootstrap: head start -> agent connected", "spawn: agent spawning its ranks",
                f"rank: spawned -> PMI init ({n} ranks)", "PMI exchange: init -> finalize",
                "barrier waits", "tree level 1: collective up", "total: pmrun start -> last exit"):
        assert row in r.stderr, r.stderr
    if nodes == 4:  # fanout 2: vertex 3 hangs below vertex 1
        assert "tree level 2: collective down" in r.stderr, r.stderr


@pytest.mark.timeout(60)
def test_profile_of_simulated_ranks(pmrun: Run, tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    r = pmrun("--profile", str(out), "--local-nodes", "3", "--fanout", "2",
              "--sim-ranks-per-node", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all values right" in r.stdout
    ranks = _rank_threads(_load(out))
    assert sorted(ranks) == list(range(12))
    for rank, (node, evs) in ranks.items():
        assert node == rank // 4
        # Simulated ranks are never spawned and never exit as processes.
        _check_rank(rank, evs, ("PMI init", "finalize"), {"PMI", "barrier", "allgather"})
        puts = [e for e in evs if e["name"] == "put"]
        assert len(puts) == 1 and puts[0]["args"]["size"] == 64, puts
    assert "allgather, each" in r.stderr and "tree level 1" in r.stderr


@pytest.mark.timeout(60)
def test_no_profile_no_file(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("-n", "2", "--local-nodes", "2", "python", "-c", "pass")
    assert r.returncode == 0, r.stderr
    assert "pmrun profile" not in r.stderr
    assert list(tmp_path.iterdir()) == []


# --- the pure pieces ----------------------------------------------------------------


@pytest.mark.timeout(10)
def test_trace_and_breakdown_of_a_made_up_timeline() -> None:
    t = 1000.0
    timeline = [
        [t - 0.1, 0, -1, "process start", {}],
        [t, 0, -1, "head start", {}],
        [t + 0.10, 0, -1, "agent connected", {"child": 1}],
        [t + 0.05, 1, -1, "process start", {}], [t + 0.08, 1, -1, "agent main", {}],
        [t + 0.20, 1, 7, "rank spawned", {"pid": 1}],
        [t + 0.30, 1, 7, "PMI init", {}],
        [t + 0.31, 1, 7, "put", {"key": "k", "size": 3}],
        [t + 0.32, 1, 7, "fence in", {"epoch": 1}],
        [t + 0.33, 1, -1, "coll up", {"kind": "fence", "epoch": 1}],
        [t + 0.34, 0, -1, "coll child in", {"child": 1, "kind": "fence", "epoch": 1}],
        [t + 0.35, 0, -1, "coll down", {"kind": "fence", "epoch": 1}],
        [t + 0.37, 1, -1, "coll result in", {"kind": "fence", "epoch": 1}],
        [t + 0.38, 1, 7, "fence out", {"epoch": 1}],
        [t + 0.40, 1, 7, "finalize", {}],
        [t + 0.45, 1, 7, "rank exit", {"code": 0, "signal": 0}],
    ]
    assert coll_spans([e for e in timeline if e[2] == 7]) == [
        ("fence", 1, pytest.approx(t + 0.32), pytest.approx(t + 0.38))]
    trace = build_trace(timeline, hosts=2)
    json.dumps(trace)  # serialisable
    slices = {(e["name"], e["tid"]): e for e in trace["traceEvents"] if e["ph"] == "X"}
    assert slices[("launch", 7)]["dur"] == pytest.approx(100_000, abs=1)
    # Times count from the head's process start.
    assert slices[("fence", 7)]["ts"] == pytest.approx(420_000, abs=1)
    assert slices[("interpreter start-up", AGENT_TID)]["dur"] == pytest.approx(30_000, abs=1)
    rows = {name: (med, mx) for name, med, mx in breakdown(timeline, hosts=2, fanout=2)}
    assert rows["bootstrap: head start -> agent connected (1 agents)"] == ("100.00 ms",) * 2
    assert rows["tree level 1: collective up (child -> parent)"] == ("10.00 ms",) * 2
    assert rows["tree level 1: collective down (parent -> child)"] == ("20.00 ms",) * 2
    assert rows["    fence, each"] == ("60.00 ms",) * 2
    assert rows["head: interpreter start-up"] == ("100.00 ms",) * 2
    assert rows["total: pmrun start -> last exit"] == ("550.00 ms",) * 2
    assert "no events" in format_table([])
    assert build_trace([])["traceEvents"] == []
