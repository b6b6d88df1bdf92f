"""The Python launcher API (pm.run, pm.Cluster): the same code path as pmrun."""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

import pm
from pm.api import JobFailed
from pm.job_result import JobResult, RankResult

pytestmark = pytest.mark.timeout(60)

PY = sys.executable


def test_run_blocking_returns_per_rank_codes(capfd: pytest.CaptureFixture[str]) -> None:
    result = pm.run([PY, "-c", "import os, sys; print('hi', flush=True); "
                              "sys.exit(int(os.environ['PMI_RANK']) == 1 and 5)"],
                    n=3, local_nodes=2)
    assert result.returncode == 5 and not result.ok
    assert result.exit_codes[1] == 5
    assert result.cause is not None and result.cause.startswith("rank 1 (node 0, ")
    assert capfd.readouterr().out.count("hi") >= 1


def test_run_with_env_and_check() -> None:
    ok = pm.run([PY, "-c", "import os, sys; sys.exit(os.environ['X'] != 'y')"], n=2,
                env={"X": "y"}, check=True)
    assert ok.ok and ok.exit_codes == [0, 0]
    with pytest.raises(JobFailed, match=r"rank 0 \(node 0, [^)]*\) exited with code 1") as info:
        pm.run([PY, "-c", "import sys; sys.exit(1)"], n=1, check=True)
    assert info.value.result.returncode == 1


def test_exit_codes_has_one_entry_per_rank_of_the_job() -> None:
    """Rank by rank, the job's size long: -1 in the place of a rank that never reported."""
    ended = {r: RankResult(r, 0, 127, 0, "could not start") for r in (0, 2)}
    assert JobResult(127, ended, size=4).exit_codes == [127, -1, 127, -1]
    assert JobResult(127, ended).exit_codes == [127, -1, 127]  # (size unknown: as far as known)
    # Rank 0 could not start: the job ends, most likely before node 1 joined (its ranks
    # never start then, as with pmrun).
    result = pm.run(["/nonexistent"], n=4, local_nodes=2, placement=[0, 1, 0, 1])
    assert result.returncode == 127 and len(result.exit_codes) == 4
    assert result.exit_codes == [127 if r in result.ranks else -1 for r in range(4)]
    assert {0, 2} <= set(result.ranks)
    # Each failing on its own (the job not ended by the first): each its 127.
    result = pm.run(["/nonexistent"], n=4, local_nodes=2, placement=[0, 1, 0, 1],
                    kill_on_bad_exit=False)
    assert result.exit_codes == [127] * 4


async def test_cluster_output_signal_and_wait() -> None:
    async with pm.Cluster(local_nodes=2, fanout=2) as cluster:
        job = await cluster.launch(
            [PY, "-c", "import os, sys, time\n"
                       "print('ready', os.environ['PMI_RANK'], flush=True)\n"
                       "print('to stderr', file=sys.stderr, flush=True)\n"
                       "time.sleep(60)"], n=4)
        seen: set[int] = set()
        streams: set[str] = set()
        async for rank, stream, line in job.output():
            streams.add(stream)
            if line.startswith(b"ready"):
                seen.add(rank)
            if len(seen) == 4 and streams == {"stdout", "stderr"}:
                job.send_signal(signal.SIGTERM)
        result = await job.wait()
        assert seen == {0, 1, 2, 3}
        assert result.returncode == 128 + signal.SIGTERM
        assert result.exit_codes == [128 + signal.SIGTERM] * 4
        assert result.cause is not None and "killed by SIGTERM" in result.cause


async def test_two_jobs_at_once_on_one_cluster() -> None:
    async with pm.Cluster(local_nodes=2) as cluster:
        jobs = [await cluster.launch([PY, "-c", f"print({i})"], n=2) for i in range(2)]
        results = await asyncio.gather(*(j.wait() for j in jobs))
        assert [r.returncode for r in results] == [0, 0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n": 10**20}, "n 100000000000000000000: more than pmrun can run (at most 16777216)"),
    ({"n": "4"}, "n must be a whole number, not '4'"),
    ({"n": 2.5}, "n must be a whole number, not 2.5"),
    ({"local_nodes": 0}, "local_nodes must be at least 1, got 0"),
    ({"local_nodes": 10**20}, "local_nodes 100000000000000000000: more than pmrun can run "
                              "(at most 1024)"),
    ({"fanout": 0}, "fanout must be at least 1, got 0"),
    ({"env": {"A=B": "x"}}, "'A=B' is not an environment variable name"),
    ({"env": {"A": 1}}, "environment variable A: its value must be a string without NUL "
                        "bytes, not 1"),
    ({"timeout": float("nan")}, "timeout must be a positive number of seconds, not nan"),
])
def test_a_python_caller_s_bad_values_are_named_by_their_argument(
        kwargs: dict[str, object], message: str) -> None:
    """Not a ZeroDivisionError, an OverflowError, a hang or a rank that cannot start; and
    named as the Python argument, not the command line's option."""
    with pytest.raises(ValueError) as err:
        pm.run(["true"], **kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message
