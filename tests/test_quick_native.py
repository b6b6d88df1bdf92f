"""pm.client ranks served by pmrun's quick phase (``--kvs socket``), and handed over whole.

With ``--kvs socket`` there is no shared-memory KVS to make, so the quick phase
(:mod:`pm.agent.pmi_quick`) serves the native protocol's init, put, get, fence,
barrier and finalize itself; anything else (an allgather here) hands the job
to the agent with the engines, the KVS and the calls held, in order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from launch_util import pmrun_argv, pmrun_env, script
from quick_util import Ranks

from pm.agent.pmi_actions import ALLGATHER, BARRIER, FENCE, Collective
from pm.proto import native

pytestmark = pytest.mark.timeout(60)

CLIENT = """
    import json, sys
    from pm.client.sync import connect

    with connect() as pmi:
        pmi.put("k", b"v%d" % pmi.rank)
        pmi.fence()
        got = [pmi.get("k", rank=i).decode() for i in range(pmi.size)]
        if sys.argv[1] == "allgather":  # not served by the quick phase: the agent takes over
            got += [v.decode() for v in pmi.allgather(b"a%d" % pmi.rank)]
            pmi.put("late", b"L%d" % pmi.rank)
            pmi.fence()
            got += [pmi.get("late", rank=i).decode() for i in range(pmi.size)]
        pmi.barrier()
        info = {k: v for k, v in pmi.info.items() if k not in ("job_id", "kvsname")}
        print(json.dumps({"rank": pmi.rank, "got": got, "info": info}), flush=True)
"""


def modules(importtime: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines()
            if line.startswith("import time:") and "|" in line}


def run(tmp_path: Path, mode: str, env: dict[str, str]) -> tuple[list[dict[str, object]], set[str]]:
    """The ranks' reports, and the modules pmrun imported (``-X importtime``)."""
    prog = script(tmp_path, "client.py", CLIENT)
    argv = pmrun_argv("--kvs", "socket", "-n", "3", sys.executable, str(prog), mode)
    p = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], env=env, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    mods = modules(p.stderr)
    reports = sorted((json.loads(line) for line in p.stdout.splitlines()),
                     key=lambda r: r["rank"])
    return reports, mods


def test_pm_client_ranks_are_served_without_asyncio(tmp_path: Path) -> None:
    reports, mods = run(tmp_path, "plain", pmrun_env())
    assert "pm.agent.pmi_engine_native" in mods
    assert "asyncio" not in mods and "pm.agent.node" not in mods
    assert [r["got"] for r in reports] == [["v0", "v1", "v2"]] * 3
    # The ranks learn what the agent would have told them.
    full, mods = run(tmp_path, "plain", pmrun_env({"PM_QUICK": "0"}))
    assert "pm.agent.node" in mods
    assert [r["info"] for r in reports] == [r["info"] for r in full]


def test_an_allgather_hands_the_job_over(tmp_path: Path) -> None:
    reports, mods = run(tmp_path, "allgather", pmrun_env())
    assert "pm.agent.node" in mods  # the agent served the allgather
    assert [r["got"] for r in reports] == [
        ["v0", "v1", "v2", "a0", "a1", "a2", "L0", "L1", "L2"]] * 3


def test_pm_client_ranks_with_shared_memory_go_to_the_agent(tmp_path: Path) -> None:
    prog = script(tmp_path, "client.py", CLIENT)
    r = subprocess.run([sys.executable, "-X", "importtime",
                        *pmrun_argv("-n", "2", sys.executable, str(prog), "plain")[1:]],
                       env=pmrun_env(), cwd=tmp_path, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "pm.agent.node" in modules(r.stderr)  # the segment is the agent's to make


# ------------------------------------------------------------------ no processes
def fr(*obj: object) -> bytes:
    return native.pack(list(obj))


def test_native_fence_and_barrier_complete_when_every_rank_entered() -> None:
    ranks = Ranks(2)
    try:
        for rank in (0, 1):
            assert ranks.send(rank, native.MAGIC + fr(1, "init"))
            assert native.FrameDecoder().feed(ranks.read(rank))[0][2]["rank"] == rank
            assert ranks.send(rank, fr(2, "put", b"k", b"v%d" % rank))
            assert ranks.read(rank) == fr(2, True, None)
        assert ranks.send(0, fr(3, "fence")) and ranks.read(0) == b""  # waits for rank 1
        assert ranks.send(1, fr(3, "fence"))
        assert ranks.read(0) == ranks.read(1) == fr(3, True, None)
        assert ranks.send(1, fr(4, "get", b"k", 0)) and ranks.read(1) == fr(4, True, b"v0")
        assert ranks.send(0, fr(5, "barrier")) and ranks.read(0) == b""
        assert ranks.send(1, fr(5, "barrier"))
        assert ranks.read(0) == ranks.read(1) == fr(5, True, None)
    finally:
        ranks.close()


def test_calls_held_go_over_before_what_came_after_them() -> None:
    """A native rank may have several requests under way: the hand-over keeps their order."""
    ranks = Ranks(2)
    try:
        assert ranks.send(0, native.MAGIC + fr(1, "init"))
        ranks.read(0)
        # A barrier the other rank has not entered, then a fence, a second barrier (only one
        # of a kind is held here) and an allgather: the last two are the agent's to run.
        assert ranks.send(0, fr(2, "barrier") + fr(3, "fence")) is True
        assert ranks.send(0, fr(4, "barrier") + fr(5, "allgather", b"a")) is False
        todo = ranks.pmi.todo(0)
        assert all(type(a) is Collective for a in todo)
        assert [a.kind for a in todo] == [BARRIER, FENCE, BARRIER, ALLGATHER]  # type: ignore[union-attr]
        assert ranks.pmi.todo(0) == []  # handed over once
    finally:
        ranks.close()


def test_a_request_larger_than_a_read_is_served_whole() -> None:
    """The quick phase reads a little first (most requests are small), then the rest."""
    ranks = Ranks(1)
    try:
        assert ranks.send(0, native.MAGIC + fr(1, "init"))
        ranks.read(0)
        big = bytes(range(256)) * 400  # 100 KiB: several reads
        ranks.peers[0].setblocking(True)
        assert ranks.send(0, fr(2, "put", b"big", big) + fr(3, "get", b"big", 0))
        want = fr(2, True, None) + fr(3, True, big)
        got = b""
        ranks.peers[0].settimeout(10)
        while len(got) < len(want):
            got += ranks.peers[0].recv(1 << 20)
        assert got == want
    finally:
        ranks.close()
