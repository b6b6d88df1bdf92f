"""Each rank's exit status when the job is torn down around it (-print-all-exitcodes,
``JobResult.exit_codes``): a rank that ended on its own has its own code, one the teardown
killed has the signal's, and one that never started (the job ended before its node could
start it) has none ("-", -1).  No rank starts once the job is being killed."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import pids_with

import pm
from pm.agent.node import JobAgent
from pm.common.nodes import Nodes
from pm.head import JobRun
from pm.jobspec import AppSpec, JobSpec
from pm.proto import tree_wire as t

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(120)

#: Rank R exits with code R at once, after it made the file R in $0.  SIGTERM is ignored
#: from before that file: a rank that made it can only have ended on its own.
EXIT_RANK = "trap '' TERM; : > \"$0/$PMI_RANK\"; exit $PMI_RANK"
#: Runs of each case (a kill racing the ranks' own ends, each run a new race).
RUNS = 5


def _check_codes(codes: list[str], ran: Path, killed: str, never: str) -> None:
    """``codes``, rank by rank: its own for a rank that ran (made its file), else the
    teardown's SIGTERM (``killed``, before it ignored it) or none (``never``: not started)."""
    assert len(codes) == 4, codes
    for rank, code in enumerate(codes):
        if (ran / str(rank)).exists():
            assert code == str(rank), (rank, codes)
        else:
            assert code in (killed, never), (rank, codes)


class Uplink:
    """Where vertex 1 sends what goes up the tree (its parent link, without the socket)."""

    def __init__(self) -> None:
        self.sent: list[t.Msg] = []

    def send(self, msg: t.Msg) -> None:
        self.sent.append(msg)


async def test_a_node_killed_while_it_prepares_starts_none_of_its_ranks(marker: str) -> None:
    """A Kill that reaches an agent during :meth:`JobAgent.prepare` (its topology, its PMIx
    server: awaits) must not be followed by its ranks' start: nothing would kill them, and
    the job would wait for them to end on their own (they showed 0 in its exit codes)."""
    run = JobRun(JobSpec([AppSpec(["sh", "-c", f"sleep 30 # {marker}"], 4)]),
                 Nodes.local(2, 2))
    up = Uplink()
    agent = JobAgent(run.plan, 1, up, host="node-b")
    try:
        assert agent.local == [2, 3]
        agent.from_parent(t.Kill("rank 0 (node 0, node-a) exited with code 1", 2.0))
        agent.start_ranks()  # (what pm.agent.main does once prepare returns)
        await asyncio.wait_for(agent.done, 5.0)
        assert not pids_with(marker)
        # Nothing to report but the node's end: no exit of a rank that never ran.
        assert [m for m in up.sent if isinstance(m, t.Exits)] == []
        assert isinstance(up.sent[-1], t.Done) and up.sent[-1].vertex == 1
        # A get of their keys from another node misses at once (none will ever put).
        assert agent.kvs.settled(2, 1) and agent.kvs.settled(3, 1)
    finally:
        await agent.aclose()


@pytest.mark.parametrize("nodes", [[], ["--local-nodes", "4"],
                                   ["--local-nodes", "4", "--fanout", "2"]],
                         ids=["1-node", "4-nodes", "4-nodes-fanout-2"])
def test_print_all_exitcodes_when_the_ranks_end_at_once(pmrun: Run, tmp_path: Path,
                                                       nodes: list[str]) -> None:
    """Ranks 1-3 fail at once: the first failure named ends the job, and every rank has
    its own code but those killed or never started by then (Hydra's -print-all-exitcodes,
    pmrun's 128+N and "-")."""
    for i in range(RUNS):
        ran = tmp_path / f"run{i}"
        ran.mkdir()
        r = pmrun(*nodes, "-n", "4", "-print-all-exitcodes", "sh", "-c", EXIT_RANK, str(ran),
                  timeout=30)
        lines = r.stderr.splitlines()
        said = [line.rsplit("] ", 1)[1] for line in lines if line.startswith("pmrun: exit codes [")]
        assert len(said) == (1 if not nodes else 4), r.stderr
        codes = ",".join(said).split(",")  # (ranks in node order: placed in blocks)
        _check_codes(codes, ran, "143", "-")
        # The job's status and its one line: the first failure's, unchanged.
        assert r.returncode in (1, 2, 3), r.stderr
        assert re.fullmatch(rf"pmrun: rank {r.returncode} \(node \d, [^)]+\) exited with code "
                            rf"{r.returncode}", lines[0]), r.stderr
        assert codes[r.returncode] == str(r.returncode)


def test_job_result_exit_codes_when_the_ranks_end_at_once(tmp_path: Path) -> None:
    """The Python API's ``exit_codes``: the same statuses (-1 for a rank never started)."""
    for i in range(RUNS):
        ran = tmp_path / f"run{i}"
        ran.mkdir()
        result = pm.run(["sh", "-c", EXIT_RANK, str(ran)], n=4, local_nodes=4)
        _check_codes([str(c) for c in result.exit_codes], ran, "143", "-1")
        assert result.returncode in (1, 2, 3)
        assert result.exit_codes[result.returncode] == result.returncode
        assert result.cause is not None and re.fullmatch(
            rf"rank {result.returncode} \(node \d, [^)]+\) exited with code "
            rf"{result.returncode}", result.cause)


def test_ranks_of_a_node_killed_while_it_prepares_never_run(pmrun: Run, marker: str) -> None:
    """Rank 1 fails at once while the other nodes find their topology (``--bind-to``: in a
    thread, while the agent's loop takes the Kill): no rank runs to its end after that,
    the job ends at once (the others would sleep for 60 s)."""
    for _ in range(8):
        r = pmrun("--local-nodes", "4", "-n", "4", "--bind-to", "core", "-print-all-exitcodes",
                  "sh", "-c", f'[ "$PMI_RANK" = 1 ] && exit 1; sleep 60 # {marker}',
                  timeout=20)
        assert r.returncode == 1, r.stderr
        codes = [line.rsplit("] ", 1)[1] for line in r.stderr.splitlines()
                 if line.startswith("pmrun: exit codes [")]
        assert codes[1] == "1" and set(codes[:1] + codes[2:]) <= {"143", "-"}, r.stderr
        assert not pids_with(marker)
