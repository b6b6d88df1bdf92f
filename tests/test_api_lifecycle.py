"""The Python API in a program that outlives its jobs: what a job started in this process
(its ranks' guardian) is collected when the job ends, and a job is used only from the
event loop that launched it."""

from __future__ import annotations

import asyncio
import gc
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import launch_util
import pytest

import pm

pytestmark = pytest.mark.timeout(60)

PY = sys.executable

#: Runs jobs every way the API runs them, then prints this process's children (pid: state)
#: at two points: inside a Cluster once its jobs ended, and at the end.
_JOBS_THEN_CHILDREN = r'''
import asyncio, os
import pm

def children():
    me = os.getpid()
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue
        if int(ppid) == me:
            found[int(pid)] = state
    return found

for _ in range(4):
    pm.run(["true"])
    pm.run(["true"], n=2, local_nodes=2)
pm.run(["/nonexistent"], n=2)

async def main():
    async with pm.Cluster(local_nodes=2) as cluster:
        jobs = [await cluster.launch(["true"], n=2) for _ in range(3)]
        for job in jobs:
            await job.wait()
        print(children(), flush=True)

asyncio.run(main())
pm.run_tasks([["true"], ["true"]], output="capture")
print(children(), flush=True)
'''


def test_jobs_leave_no_zombie_in_the_program_that_ran_them() -> None:
    """Every job's guardian (the leader of its ranks' process group) is collected when the
    job ends, not left a zombie child of the program (run in a process of its own: this
    test session collects its orphans)."""
    proc = subprocess.run([PY, "-c", _JOBS_THEN_CHILDREN], capture_output=True, text=True,
                          timeout=50, env=launch_util.pmrun_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["{}", "{}"], proc.stdout


@pytest.mark.parametrize("call", ["run", "run_tasks"])
async def test_the_blocking_calls_refuse_a_running_loop(call: str, tmp_path: Path) -> None:
    """pm.run() and pm.run_tasks() run a loop of their own: called from async code, one
    error that points to the async API, no job started, no coroutine left unawaited."""
    made = tmp_path / "ran"
    argv = [PY, "-c", f"open({str(made)!r}, 'w')"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError) as err:
            if call == "run":
                pm.run(argv)
            else:
                pm.run_tasks([argv])
        gc.collect()  # (a coroutine made and dropped is warned of when it is collected)
    assert caught == []
    assert str(err.value).startswith(f"pm.{call}() cannot be called from a running event "
                                     f"loop (it runs one of its own until the ")
    assert "async with pm.Cluster(...) as cluster: " in str(err.value)
    assert ("await cluster.launch(" if call == "run" else "await cluster.submit(") \
        in str(err.value)
    assert not made.exists()


async def test_killing_or_signalling_an_ended_job_does_nothing(
        capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    async with pm.Cluster() as cluster:
        job = await cluster.launch(["true"])
        result = await job.wait()
        capfd.readouterr()
        caplog.clear()
        job.kill()
        job.kill("again")
        job.send_signal(signal.SIGTERM)
        assert capfd.readouterr() == ("", "") and caplog.messages == []
        assert await job.wait() == result
        assert result.ok and result.cause is None
        assert job._run.cause is None  # (the run's own record: no cause made up either)
        # A running job is still killed, its cause the reason given (and said).
        job = await cluster.launch(["sleep", "30"])
        job.kill("enough")
        assert (await job.wait()).cause == "enough"
        assert caplog.messages == ["enough"]


#: Launches a job in one asyncio.run() and uses it in another (argv: a marker for the ranks'
#: command lines, local_nodes); prints the job's id and what each use said.
_TWO_LOOPS = r'''
import asyncio, os, sys
import pm

marker, local_nodes = sys.argv[1], int(sys.argv[2])
cluster = pm.Cluster(local_nodes=local_nodes)

async def launch():
    return await cluster.launch([sys.executable, "-c", "import time; time.sleep(60)", marker],
                                n=2)

job = asyncio.run(launch())
print(job.plan.job_id, flush=True)
zombies = []  # this process's children that ended and were not collected
for pid in filter(str.isdecimal, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    except OSError:
        continue
    if int(stat[1]) == os.getpid() and stat[0] == "Z":
        zombies.append(pid)
print("zombies", len(zombies), flush=True)

async def elsewhere():
    for use in (job.wait, lambda: anext(job.output())):
        try:
            await use()
        except RuntimeError as exc:
            print(exc, flush=True)
    job.kill()  # (nothing to kill: no line)
    await cluster.aclose()  # (nothing to wait for: no CancelledError from the job)
    again = await cluster.launch(["true"])  # (the cluster is no loop's)
    print((await again.wait()).returncode, flush=True)
    await cluster.aclose()

asyncio.run(elsewhere())
'''


@pytest.mark.parametrize("local_nodes", [1, 2])
def test_a_job_ends_with_the_loop_that_launched_it_and_says_so(local_nodes: int,
                                                                marker: str) -> None:
    """A job launched in one asyncio.run() and used in another: the first loop's end
    killed it, said then, and a wait (or its output) on the second says what became of it
    (run in a process of its own: this test session fails a test that leaves a task)."""
    proc = subprocess.run([PY, "-c", _TWO_LOOPS, marker, str(local_nodes)],
                          capture_output=True, text=True, timeout=50,
                          env=launch_util.pmrun_env(), check=False)
    assert proc.returncode == 0, proc.stderr
    job_id, zombies, *said, status = proc.stdout.splitlines()
    assert zombies == "zombies 0"  # (the ranks killed: their exits collected)
    ended = ("killed when the event loop that launched it ended, before the job did (a job "
             "belongs to the loop that launched it)")
    assert f"job {job_id} {ended}" in proc.stderr.splitlines()
    refusal = f"job {job_id} was {ended}: launch and await a job in one asyncio.run()"
    assert said == [refusal, refusal] and status == "0"
    launch_util.wait_until(lambda: not launch_util.pids_with(marker), 10, "the ranks' end")


async def test_a_job_is_awaited_on_its_loop_not_another_thread_s() -> None:
    async with pm.Cluster() as cluster:
        job = await cluster.launch(["sleep", "30"])
        with pytest.raises(RuntimeError) as err:
            await asyncio.to_thread(asyncio.run, job.wait())
        assert str(err.value) == (f"job {job.plan.job_id} belongs to the event loop that "
                                  f"launched it (another thread's, which runs it): await it "
                                  f"there")
        job.kill()
        assert (await job.wait()).cause == "killed by the user"


async def test_a_long_lived_cluster_keeps_no_ended_job() -> None:
    # A program that launches job after job on one Cluster: the ones that ended (failed or
    # not) are let go at the next launch, a running one stays for aclose().
    async with pm.Cluster() as cluster:
        for _ in range(3):
            await (await cluster.launch(["true"])).wait()
        running = await cluster.launch(["sleep", "30"])
        assert cluster._jobs == [running]
        failed = await cluster.launch(["sh", "-c", "exit 3"])
        assert (await failed.wait()).returncode == 3
        await cluster.launch(["true"])
        assert running in cluster._jobs and failed not in cluster._jobs
    assert cluster._jobs == [] and running._ended
