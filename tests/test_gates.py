"""GNU parallel's --load, --noswap and --limit: a host's activity from /proc (pure), the
gates (pure), the scheduler's bound, then real ensembles under a real load."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pm.agent.memory import SizeError, Watermarks
from pm.common.activity import Activity, ActivityProbe, blocked_io, running_threads, swap_counts
from pm.common.nodes import Nodes
from pm.ensemble.core import Ensemble, Event
from pm.ensemble.gates import (
    Builtin,
    builtin_answer,
    load_gate,
    max_load,
    parse_limit,
    parse_load,
)
from pm.ensemble.scheduler import EnsembleScheduler, Progress
from pm.ensemble.taskspec import TaskSpec
from pm.proto.runner import ProbeSample

sys.path.insert(0, str(Path(__file__).parent))
from launch_util import hogs, pmrun_argv, pmrun_env

pytestmark = pytest.mark.timeout(60)

GiB = 1 << 30

STAT = """cpu  1 2 3 4
intr 12345
ctxt 999
procs_running 5
procs_blocked 2
softirq 1 2
"""
DISKSTATS = """   7       0 loop0 10 0 20 3 0 0 0 0 0 40 3 0 0 0 0
   1       0 ram0 0 0 0 0 0 0 0 0 0 900 0 0 0 0 0
   8       0 sda 100 5 200 30 50 2 80 10 0 1200 40 0 0 0 0
"""


# ------------------------------------------------------------------------- activity
def test_activity_is_read_from_procs_figures() -> None:
    assert running_threads(STAT) == 7
    assert swap_counts("nr_free_pages 10\npswpin 12\npswpout 30\n") == (12, 30)
    assert swap_counts("nr_free_pages 10\n") == (0, 0)
    assert blocked_io(DISKSTATS) == {"loop0": 40, "sda": 1200}  # (RAM disks left out)


def _proc(root: Path, running: int, swaps: tuple[int, int], ticks: int) -> None:
    (root / "stat").write_text(f"procs_running {running}\nprocs_blocked 0\n")
    (root / "vmstat").write_text(f"pswpin {swaps[0]}\npswpout {swaps[1]}\n")
    (root / "diskstats").write_text(f"8 0 sda 1 0 0 0 0 0 0 0 0 {ticks} 0\n")


def test_a_probe_compares_each_read_with_the_one_before(tmp_path: Path) -> None:
    _proc(tmp_path, 3, (10, 10), 0)
    probe = ActivityProbe(str(tmp_path))
    _proc(tmp_path, 3, (11, 10), 10**6)  # swapped in only; a disk busy all the time
    first = probe.read()
    assert (first.load, first.swapping, first.io) == (2, False, 100)  # (less the reader)
    _proc(tmp_path, 1, (12, 11), 10**6)  # in and out; no I/O since
    assert probe.read() == Activity(0, True, 0)
    assert probe.read() == Activity(0, False, 0)
    with hogs(2):  # this machine's: two processes that are always runnable count
        live = ActivityProbe().read()
    assert live.load >= 2 and 0 <= live.io <= 100, live


def test_a_sample_carries_the_activity_when_asked() -> None:
    plain = ProbeSample(8 * GiB, GiB, "machine", 4, {3: 100})
    assert ProbeSample.parse(plain.line()) == plain and plain.activity is None
    busy = ProbeSample(8 * GiB, GiB, "cgroup", 4, {3: 100}, Activity(7, True, 42))
    assert "load=7 swap=1 io=42" in busy.line()
    assert ProbeSample.parse(busy.line()) == busy


# ------------------------------------------------------------------------- gates
def test_load_rules_as_gnu_parallels() -> None:
    assert [parse_load(x) for x in ("2", "1.5", "+1", "-1", "50%")] == [
        "2", "1.5", "+1", "-1", "50%"]
    for bad in ("x", "cores", "-x", ""):
        with pytest.raises(ValueError, match="--load takes"):
            parse_load(bad)
    assert [max_load(r, 8) for r in ("3", "+2", "-2", "50%", "-9")] == [3, 10, 6, 4, 0.01]
    # Under the limit, as many start as bring the load to it (the next sample sees them).
    assert load_gate("3", 8, 0) == (3, "a load under 3")
    assert load_gate("2.5", 8, 0)[0] == 3 and load_gate("2.5", 8, 2)[0] == 1
    assert load_gate("100%", 2, 2)[0] == 0 and load_gate("100%", 2, 9)[0] == 0


def test_limits_as_gnu_parallels() -> None:
    assert parse_limit("./over.sh 4") == "./over.sh 4"
    assert parse_limit("mem 1G") == Builtin("mem", float(GiB))
    assert parse_limit("mem 1g") == Builtin("mem", 1e9)
    assert parse_limit("load 3") == Builtin("load", 3.0)
    assert parse_limit("io 50") == Builtin("io", 50.0)
    for bad, words in (("mem", "takes one value"), ("io x", "cannot read 'x'"),
                       ("  ", "takes a command")):
        with pytest.raises(ValueError, match=words):
            parse_limit(bad)
    mem = Builtin("mem", float(GiB))
    assert [builtin_answer(mem, free, None).code for free in (2 * GiB, GiB - 1, GiB // 3)] \
        == [0, 1, 2]
    busy = Activity(4, False, 80)
    assert builtin_answer(Builtin("load", 3), 0, busy).code == 1
    assert builtin_answer(Builtin("load", 4), 0, busy).code == 0
    assert builtin_answer(Builtin("io", 50), 0, busy).code == 1
    assert builtin_answer(Builtin("io", 90), 0, busy).code == 0
    assert builtin_answer(Builtin("io", 90), 0, None).code == 1  # (not known yet)


def test_a_gate_bounds_the_starts_until_the_next_call() -> None:
    s = EnsembleScheduler(["n0"], slots=4)
    s.node_memory("n0", 0, Watermarks(1000, 800))
    assert s.set_gate("n0", 0, "a load under 2") == []
    s.add([TaskSpec(i, ("work",), 10, "work") for i in range(5)])
    assert s.progress() == Progress(0, 0, 5, "a load under 2")
    assert [x.task.index for x in s.set_gate("n0", 2, "a load under 2")] == [0, 1]
    assert s.task_exited(0, 0) == []  # (a slot is free, the gate is not)
    assert [x.task.index for x in s.set_gate("n0", None)] == [2, 3, 4]
    assert s.progress().waiting == ""


# ------------------------------------------------------------------------- real ensembles
class Seen:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    def put(self, e: Event) -> None:
        self.events.append(e)
        self.changed.set()

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    async def until(self, kind: str, count: int = 1) -> list[Event]:
        async with asyncio.timeout(20):
            while self.count(kind) < count:
                self.changed.clear()
                await self.changed.wait()
        return [e for e in self.events if e.kind == kind]


async def test_no_task_starts_while_the_load_is_at_the_limit() -> None:
    seen = Seen()
    with hogs(6) as procs:
        ens = Ensemble(Nodes.local(1), load="6", interval=0.05, on_event=seen.put, jobs=2)
        async with ens:
            tasks = [ens.add(["true"]) for _ in range(3)]
            await seen.until("sample", 10)  # half a second of samples, each with load >= 6
            assert seen.count("start") == 0
            assert ens.progress_text().endswith("waiting for a load under 6")
            for p in procs:
                p.kill()
            results = await asyncio.wait_for(asyncio.gather(*(t.wait() for t in tasks)), 30)
    assert [r.returncode for r in results] == [0, 0, 0]


async def test_a_load_file_is_read_again_when_it_changed(tmp_path: Path) -> None:
    seen = Seen()
    rule = tmp_path / "load"
    rule.write_text("6\n")
    with hogs(6):
        ens = Ensemble(Nodes.local(1), load=str(rule), interval=0.05, on_event=seen.put,
                       jobs=2)
        async with ens:
            task = ens.add(["true"])
            await seen.until("sample", 10)
            assert seen.count("start") == 0
            rule.write_text("100%\n+100\n")  # (not a rule: it stays as it was)
            await seen.until("sample", 20)
            assert seen.count("start") == 0
            rule.write_text("100\n")
            assert (await asyncio.wait_for(task.wait(), 20)).returncode == 0
    rule.write_text("lots")
    with pytest.raises(SizeError, match=f"--load {rule}: says 'lots', not a number"):
        Ensemble(Nodes.local(1), load=str(rule))


async def test_the_limit_command_says_start_none_or_end_the_youngest(tmp_path: Path) -> None:
    seen = Seen()
    said, runs = tmp_path / "said", tmp_path / "runs"
    said.write_text("1")
    limit = f'echo "$SSHLOGIN" >> {runs}; exit $(cat {said})'
    ens = Ensemble(Nodes.local(1), limit=limit, interval=0.05, on_event=seen.put, jobs=2)
    async with ens:
        tasks = [ens.add(["sleep", "60"]) for _ in range(2)]
        deadline = time.monotonic() + 20
        while not runs.exists() or len(runs.read_text().split()) < 3:  # asked 3 times
            assert time.monotonic() < deadline, "the limit command did not run"
            await asyncio.sleep(0.05)
        assert seen.count("start") == 0
        assert ens.progress_text().endswith(f"waiting for --limit {limit}")
        said.write_text("0")  # one start each time it says so
        await seen.until("start", 2)
        said.write_text("2")  # way over: the youngest ends
        killed = await seen.until("killed")
        said.write_text("1")
        young = await asyncio.wait_for(tasks[1].wait(), 20)
        assert not tasks[0].done()
        ens.interrupt(signal.SIGTERM)
        old = await asyncio.wait_for(tasks[0].wait(), 20)
    assert killed[0].task == 1 and "says the host is way over its limit" in killed[0].text
    assert (young.returncode, old.returncode) == (128 + signal.SIGTERM,) * 2
    assert set(runs.read_text().split()) == {":"}  # (GNU parallel's name of this host)


async def test_a_builtin_memory_limit_is_judged_on_the_hosts_sample() -> None:
    seen = Seen()
    ens = Ensemble(Nodes.local(1), limit="mem 1P", interval=0.05, on_event=seen.put, jobs=1)
    async with ens:
        task = ens.add(["true"])
        await seen.until("sample", 5)
        assert seen.count("start") == 0 and not task.done()
        assert ens.progress_text().endswith("waiting for 1024 TiB free (--limit mem)")
    ens = Ensemble(Nodes.local(1), limit="mem 1k", interval=0.05, jobs=1)
    async with ens:
        assert (await asyncio.wait_for(ens.add(["true"]).wait(), 20)).returncode == 0


def test_command_line_limit_load_and_noswap(tmp_path: Path) -> None:
    # (400 %: 4 threads a CPU thread.  The machine's own load must not hold the tasks: at
    # 100 % a busy 2-CPU machine running this suite is at the limit, rightly.)
    res = subprocess.run(pmrun_argv("--limit", "echo $SSHLOGIN >> runs", "--load", "400%",
                                    "--noswap", "-k", "echo", ":::", "a", "b", "c"),
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=50)
    assert (res.returncode, res.stdout, res.stderr) == (0, "a\nb\nc\n", "")
    assert set((tmp_path / "runs").read_text().split()) == {":"}
    res = subprocess.run(pmrun_argv("--limit", "exit 7", "echo", ":::", "a"), cwd=tmp_path,
                         env=pmrun_env(), capture_output=True, text=True, timeout=50)
    assert res.returncode == 1
    assert res.stderr.splitlines()[0] == (
        "pmrun: --limit 'exit 7' exited with 7: a limit says 0 (start a task), 1 (start "
        "none) or 2 (end the youngest task)"), res.stderr
    assert "Traceback" not in res.stderr
