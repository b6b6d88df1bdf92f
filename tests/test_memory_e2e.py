"""Memory subscription control end to end, inside memory-capped cgroups made by the test.

Each test runs the real front end -- ``pmrun --tasks``, ``pm.Cluster.submit``,
``pm.run_tasks``, ``pmi.reserve`` in ranks under ``pmrun`` -- with the process
that does the accounting inside a fresh cgroup, so the node's memory is the
cgroup's limit, and checks what the kernel saw (OOM kills, peak usage) and
what the scheduler did (which tasks ran together, when submissions returned).
Every test skips with the reason where cgroups cannot be made.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cgroup_util import MemCgroup, memory_cgroup
from launch_util import pmrun_argv, pmrun_env

from pm.agent.memory import parse_size
from pm.common.nodes import Nodes
from pm.ensemble import Ensemble, Event, Task

pytestmark = pytest.mark.cgroup

MiB = 1 << 20
PY = sys.executable

# A task: allocates and writes N MiB, holds them S seconds, says so.
TOUCH = """\
import sys, time
b = bytearray(b'x') * (int(sys.argv[1]) << 20)
time.sleep(float(sys.argv[2]))
print('touched', sys.argv[1], flush=True)
"""

# Something else on the node: holds as many MiB as the last line read says, in
# 8 MiB pieces so that going down frees at once and going up never doubles.
HOG = """\
import sys
pieces = []
for line in sys.stdin:
    n = int(line) // 8
    del pieces[n:]
    while len(pieces) < n:
        pieces.append(bytearray(b'x') * (8 << 20))
    print('ok', flush=True)
"""


async def _run(argv: Sequence[str], cwd: Path, within: float = 90,
               **kw: object) -> tuple[int, str, str]:
    """Run ``argv`` to its end; (status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, env=pmrun_env(), cwd=cwd, **kw)  # type: ignore[arg-type]
    out, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def _pmrun_in(cg: MemCgroup, cwd: Path, *args: str) -> tuple[int, str, str]:
    """``pmrun *args`` started inside ``cg``: it and everything it starts are capped."""
    return await _run(cg.wrap(pmrun_argv(*args)), cwd)


def _concurrency(stderr: str) -> list[set[int]]:
    """The set of running tasks after each start, from ``-v -v`` start/exit lines."""
    running: set[int] = set()
    out = []
    for m in re.finditer(r"^pmrun: \[task (\d+)\] (started|exited)", stderr, re.M):
        index = int(m.group(1))
        if m.group(2) == "started":
            running.add(index)
            out.append(set(running))
        else:
            running.discard(index)
    return out


def _peak_in_use(stderr: str) -> tuple[int, int]:
    """(sampled peak in use, high watermark) from the ``-v`` summary."""
    m = re.search(r"peak memory in use (\S+ \S+) \(high watermark (\S+ \S+)\)", stderr)
    assert m is not None, stderr
    return parse_size(m.group(1)), parse_size(m.group(2))


@pytest.fixture
def touch(tmp_path: Path) -> Path:
    path = tmp_path / "touch.py"
    path.write_text(TOUCH)
    return path


# ----------------------------------------------------------------- pmrun --tasks

SMALL, BIG = 8, 5  # 8 x 16 MiB + 5 x 80 MiB = 528 MiB: over twice the 256 MiB cap


def _mixed(touch: Path, bounds: bool) -> list[str]:
    small = f"{PY} -S {touch} 16 0.4"
    big = f"{PY} -S {touch} 80 0.4"
    if bounds:
        small, big = f"[mem=24M] {small}", f"[mem=96M] {big}"
    return [small] * SMALL + [big] * BIG


@pytest.mark.timeout(90)
async def test_cli_ensemble_twice_the_cap_runs_without_oom(tmp_path: Path, touch: Path) -> None:
    lines = [*_mixed(touch, bounds=True), f"{PY} -S -c 'raise SystemExit(3)'"]
    (tmp_path / "tasks.txt").write_text("\n".join(lines) + "\n")
    with memory_cgroup(256 * MiB) as cg:
        code, out, err = await _pmrun_in(cg, tmp_path, "-v", "-v", "--retries", "2", "-j", "0",
                                         "--tasks", "tasks.txt")
        assert cg.oom_kills() == 0
        kernel_peak = cg.peak()
    assert code == 1, err  # the last task failed for good
    # Defaults printed by -v: 90 % / 80 % of the cgroup's limit.
    assert re.search(r"memory watermarks: high 230.4 MiB, low 204.8 MiB of 256 MiB "
                     rf"\(cgroup[12]:{re.escape(str(cg.path))}\)", err), err
    summary = f"{SMALL + BIG + 1} tasks: {SMALL + BIG} succeeded, 1 failed, 1 retry"
    assert summary in err, err
    assert re.search(rf"task {SMALL + BIG} \(line {SMALL + BIG + 1}\): exit codes 3, 3", err)
    # Each task's output apart, prefixed with its index.
    for i in range(SMALL + BIG):
        assert out.count(f"[task {i}] touched ") == 1, out
    sampled, high = _peak_in_use(err)
    assert sampled <= high
    assert kernel_peak is None or kernel_peak < 256 * MiB
    # Small tasks many at once, big ones few: 2 x 96 MiB fit under 230 MiB, 3 do not.
    smalls, bigs = set(range(SMALL)), set(range(SMALL, SMALL + BIG))
    running = _concurrency(err)
    assert max(len(r & smalls) for r in running) >= 6, running
    assert max(len(r & bigs) for r in running) == 2, running


@pytest.mark.timeout(90)
async def test_same_tasks_without_control_are_oom_killed(tmp_path: Path, touch: Path) -> None:
    (tmp_path / "tasks.txt").write_text("\n".join(_mixed(touch, bounds=False)) + "\n")
    with memory_cgroup(256 * MiB) as cg:
        # Every line at once, as a plain parallel launcher without a memory limit does.
        argv = ["sh", "-c", 'xargs -P 0 -d "\\n" -n 1 sh -c < tasks.txt']
        code, _, _ = await _run(cg.wrap(argv), tmp_path)
        assert cg.oom_kills() >= 1
    assert code != 0


@pytest.mark.timeout(90)
async def test_correction_to_measured_usage_lets_more_tasks_in(tmp_path: Path,
                                                              touch: Path) -> None:
    # Tasks that declare 150 MiB but use about 24: by their bounds only two fit
    # under 400 MiB; once a reservation shrinks to the measured peak, more do.
    lines = [f"[mem=150M] {PY} -S {touch} 20 1.5"] * 6
    (tmp_path / "tasks.txt").write_text("\n".join(lines) + "\n")
    most = {}
    for settle in ("off", "0.3"):
        with memory_cgroup(512 * MiB) as cg:
            code, _, err = await _pmrun_in(
                cg, tmp_path, "-v", "-v", "--mem-high", "400M", "--mem-low", "300M",
                "--mem-settle", settle, "-j", "0", "--tasks", "tasks.txt")
            assert cg.oom_kills() == 0
        assert code == 0, err
        most[settle] = max(len(r) for r in _concurrency(err))
    assert most["off"] == 2
    assert most["0.3"] > 2, most


@pytest.mark.timeout(90)
@pytest.mark.parametrize("policy", ["warn", "kill"])
async def test_task_over_its_bound_is_reported_and_acted_on_only_if_asked(
        tmp_path: Path, touch: Path, policy: str) -> None:
    # Task 0 declares 20 MiB and takes 220: the node passes its 200 MiB high watermark.
    lines = [f"[mem=20M] {PY} -S {touch} 220 1.0", f"[mem=30M] {PY} -S {touch} 8 0"]
    (tmp_path / "tasks.txt").write_text("\n".join(lines) + "\n")
    with memory_cgroup(512 * MiB) as cg:
        code, out, err = await _pmrun_in(
            cg, tmp_path, "-v", "-v", "--mem-high", "200M", "--mem-low", "150M",
            "--mem-overrun", policy, "--tasks", "tasks.txt")
        assert cg.oom_kills() == 0
    assert re.search(r"pmrun: \[task 0\] uses \S+ MiB, over its bound of 20 MiB", err), err
    assert "over the high watermark 200 MiB" in err, err
    killed = "[task 0] killed: over its bound" in err
    assert killed == (policy == "kill"), err
    assert code == (1 if policy == "kill" else 0), err
    assert ("[task 0] touched" in out) == (policy == "warn")
    assert "[task 1] touched 8" in out


@pytest.mark.timeout(60)
async def test_progress_line_on_a_terminal(tmp_path: Path, touch: Path) -> None:
    lines = [f"[mem=60M] {PY} -S {touch} 40 0.3"] * 6
    (tmp_path / "tasks.txt").write_text("\n".join(lines) + "\n")
    with memory_cgroup(256 * MiB) as cg:
        leader, follower = pty.openpty()
        try:
            proc = await asyncio.create_subprocess_exec(
                *cg.wrap(pmrun_argv("-j", "0", "--tasks", "tasks.txt")),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=follower, env=pmrun_env(),
                cwd=tmp_path)
            os.close(follower)
            follower = -1
            chunks = []
            loop = asyncio.get_running_loop()
            while True:
                try:
                    data = await loop.run_in_executor(None, os.read, leader, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not data:
                    break
                chunks.append(data)
            assert await proc.wait() == 0
        finally:
            os.close(leader)
            if follower >= 0:
                os.close(follower)
    text = b"".join(chunks).decode(errors="replace")
    # 60 MiB bounds under a 230 MiB high watermark: three at once, the others wait for memory.
    assert re.search(r"\rtasks: \d/6 done, \d running, \d queued, waiting for memory\x1b", text)
    assert "6 tasks: 6 succeeded, 0 failed, 0 retries" in text


# -------------------------------------------------------------------- hysteresis


class _Hog:
    """A process in the cgroup holding what the test tells it (something else on the node)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def hold(self, mib: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"%d\n" % mib)
        await self.proc.stdin.drain()
        assert await self.proc.stdout.readline() == b"ok\n"

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def _hog(cg: MemCgroup) -> _Hog:
    proc = await asyncio.create_subprocess_exec(
        *cg.wrap([PY, "-S", "-c", HOG]), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    return _Hog(proc)


@pytest.mark.timeout(60)
async def test_blocks_at_high_and_resumes_only_under_low(tmp_path: Path) -> None:
    events: asyncio.Queue[Event] = asyncio.Queue()
    seen: list[Event] = []

    def on_event(e: Event) -> None:
        seen.append(e)
        events.put_nowait(e)

    async def until(pred: Callable[[Event], bool], count: int = 1) -> list[Event]:
        got: list[Event] = []
        while len(got) < count:
            e = await asyncio.wait_for(events.get(), 20)
            if pred(e):
                got.append(e)
        return got

    with memory_cgroup(512 * MiB) as cg:
        hog = await _hog(cg)
        ens = Ensemble(Nodes.local(1), mem_high="300M", mem_low="200M", cgroup=cg.path,
                       interval=0.05, on_event=on_event)
        try:
            async with ens:
                await hog.hold(320)
                await until(lambda e: e.kind == "blocked")
                # Three small tasks: each fits under high by its size, none may start.
                submits = [asyncio.ensure_future(ens.submit([PY, "-S", "-c", "print(1)"], "20M"))
                           for _ in range(3)]
                await hog.hold(250)  # under high with room for them, still above low
                between = await until(lambda e: e.kind == "sample" and (
                    e.low < e.used + e.reserved <= e.high - 20 * MiB), 5)
                assert not any(s.done() for s in submits)
                await hog.hold(0)
                unblocked = (await until(lambda e: e.kind == "unblocked"))[0]
                tasks = await asyncio.gather(*submits)
                results = [await t.wait() for t in tasks]
        finally:
            await hog.close()
    assert [r.returncode for r in results] == [0, 0, 0]
    assert all(r.stdout == b"1\n" for r in results)
    assert unblocked.used + unblocked.reserved <= unblocked.low
    kinds = [e.kind for e in seen if e.kind in ("blocked", "unblocked", "start")]
    assert kinds == ["blocked", "unblocked", "start", "start", "start"], kinds
    assert all(e.time < unblocked.time for e in between)


def _state(pid: int) -> str:
    """A process's state letter (T: stopped)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


async def _settled(tasks: list[Task], stopped: list[str], within: float = 10) -> list[str]:
    """The tasks' state letters once all but the first read ``stopped`` (a stop signal
    takes effect when its process next runs: on a busy machine not at once), or as they
    are at the deadline."""
    deadline = time.monotonic() + within
    while True:
        states = [_state(t.pid) for t in tasks if t.pid]
        if states[1:] == stopped or time.monotonic() > deadline:
            return states
        await asyncio.sleep(0.02)


@pytest.mark.timeout(60)
async def test_memsuspend_stops_the_youngest_and_lets_the_oldest_go_on_first() -> None:
    events: asyncio.Queue[Event] = asyncio.Queue()

    async def until(kind: str, count: int = 1) -> list[Event]:
        got: list[Event] = []
        while len(got) < count:
            e = await asyncio.wait_for(events.get(), 20)
            if e.kind == kind:
                got.append(e)
        return got

    forever = [PY, "-S", "-c", "import time; time.sleep(60)"]
    with memory_cgroup(512 * MiB) as cg:
        hog = await _hog(cg)
        # GNU parallel's --memsuspend 100M: with 2 x 100M free all run; under it the
        # oldest k of them, k from how near 200M it is (k = 2 from 100M up to 150M free).
        ens = Ensemble(Nodes.local(1), mem_suspend=100 * MiB, cgroup=cg.path, interval=0.05,
                       on_event=events.put_nowait, jobs=3)
        try:
            async with ens:
                tasks = [ens.add(forever) for _ in range(3)]
                await until("start", 3)
                await hog.hold(370)  # ~130 MiB free: the youngest stops
                first = await until("suspended")
                await hog.hold(450)  # ~55 MiB free: the oldest alone runs
                second = await until("suspended")
                states = await _settled(tasks, ["T", "T"])
                await hog.hold(0)  # all free again: one goes on a sample, the oldest first
                resumed = await until("resumed", 2)
                await hog.hold(370)
                third = await until("suspended")
                ens.interrupt(signal.SIGTERM)  # a stopped task hears it too
                results = await asyncio.wait_for(asyncio.gather(*(t.wait() for t in tasks)),
                                                 20)
        finally:
            await hog.close()
    assert [e.task for e in first + second] == [2, 1]
    assert "has " in first[0].text and first[0].text.endswith(" free, --memsuspend 100 MiB"), first
    assert states[0] != "T" and states[1:] == ["T", "T"], states
    assert [e.task for e in resumed] == [1, 2] and resumed[0].time < resumed[1].time
    assert third[0].task == 2
    assert [r.returncode for r in results] == [128 + signal.SIGTERM] * 3, results


# -------------------------------------------------------------------- Python API

SUBMIT = """\
import asyncio, json, os, sys, time
import pm

flag = sys.argv[1]
# Holds 64 MiB until the flag file exists (tasks' stdin is /dev/null).
HOLD = [sys.executable, "-S", "-c",
        "import os, sys, time\\n"
        "b = bytearray(b'x') * (64 << 20)\\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.02)\\n", flag]
SMALL = [sys.executable, "-S", "-c", "print('small')"]

async def main():
    async with pm.Cluster(mem_high="200M", mem_low="150M") as c:
        a = await c.submit(HOLD, mem="120M")
        b = asyncio.ensure_future(c.submit(SMALL, mem="130M"))
        # A window in which b could wrongly return: a second of memory samples.
        await asyncio.wait({b}, timeout=1.0)
        early = b.done()
        with open(flag, "w"):
            pass
        ra = await a.wait()
        tb = await b
        returned = time.time()
        rb = await tb.wait()
        return dict(early=early, a_ended=ra.ended, b_returned=returned,
                    b_started=rb.started, codes=[ra.returncode, rb.returncode],
                    b_out=rb.stdout.decode())

out = asyncio.run(main())
# The blocking form: tasks-file lines, output captured in the results.
rs = pm.run_tasks(["[mem=40M] %s -S -c 'print(2 * 21)'" % sys.executable,
                   [sys.executable, "-S", "-c", "raise SystemExit(5)"]],
                  output="capture", mem_high="200M", retries=1)
out["sync"] = [[r.returncode, list(r.exit_codes), r.stdout.decode()] for r in rs]
print(json.dumps(out))
"""


@pytest.mark.timeout(90)
async def test_submit_returns_only_once_admitted(tmp_path: Path) -> None:
    driver = tmp_path / "driver.py"
    driver.write_text(SUBMIT)
    with memory_cgroup(512 * MiB) as cg:
        code, out, err = await _run(cg.wrap([PY, str(driver), str(tmp_path / "flag")]),
                                    tmp_path)
        assert cg.oom_kills() == 0
    assert code == 0, err
    got = json.loads(out.splitlines()[-1])
    assert got["early"] is False
    assert got["codes"] == [0, 0] and got["b_out"] == "small\n"
    # 120 + 130 MiB do not fit under 200: b was admitted only once a had ended.
    assert got["a_ended"] <= got["b_returned"] and got["a_ended"] <= got["b_started"]
    assert got["sync"] == [[0, [0], "42\n"], [5, [5, 5], ""]]


# ------------------------------------------------------------ ranks: pmi.reserve

RESERVE = """\
from pm.client import connect
import time

GiB = 1 << 30

async def main():
    pmi = await connect()
    r = pmi.rank
    out = {"rank": r}
    if r == 0:
        async with pmi.reserve(GiB):
            out["held"] = time.time()
            await pmi.put("held", "1")
            await pmi.get("asking", rank=1)   # rank 1 is about to ask
            await asyncio.sleep(0.5)          # a window for it to be (wrongly) admitted
            out["released"] = time.time()
        await pmi.get("holding", rank=1)
        async with pmi.reserve(GiB):          # rank 1 holds it until it exits
            out["admitted_after_exit"] = time.time()
        await pmi.close()
    else:
        await pmi.get("held", rank=0)        # ask only once rank 0 holds its gigabyte
        await pmi.put("asking", "1")
        async with pmi.reserve(GiB):
            out["admitted"] = time.time()
        held = pmi.reserve(GiB)
        await held.__aenter__()               # never released by the rank itself
        await pmi.put("holding", "1")
        await asyncio.sleep(0.3)              # rank 0 is now waiting for it
        await pmi.close()
        out["exiting"] = time.time()
        report(**out)
        os._exit(0)
    report(**out)

asyncio.run(main())
"""


@pytest.mark.timeout(90)
async def test_reserve_is_one_budget_for_the_ranks_of_a_node(tmp_path: Path) -> None:
    from client_util import results, write_program

    prog = write_program(tmp_path, "reserve.py", RESERVE)
    with memory_cgroup(2 << 30) as cg:
        # 1 GiB + 1 GiB do not fit under 1.5 GiB: the ranks take turns.
        code, out, err = await _pmrun_in(cg, tmp_path, "-v", "-n", "2", "--mem-high", "1.5G",
                                         "python", str(prog))
    assert code == 0, err
    assert re.search(r"node 0 \(.*\): memory watermarks: high 1.5 GiB, low 1.3 GiB of 2 GiB", err)
    got = results(out)
    assert got[0]["held"] < got[0]["released"] <= got[1]["admitted"]
    # The reservation of a rank that ended without releasing it was given back.
    assert got[1]["exiting"] <= got[0]["admitted_after_exit"]


@pytest.mark.timeout(30)
async def test_an_exception_of_the_callers_hook_ends_the_ensemble_and_reaches_join() -> None:
    """The caller's event hook raising at a start: join raises it (nothing waits for ever),
    the hook is called no more and nothing more starts."""
    seen: list[Event] = []

    def on_event(e: Event) -> None:
        seen.append(e)
        if e.kind == "start" and e.task == 0:
            raise RuntimeError("hook broke")

    ens = Ensemble(Nodes.local(1), jobs=1, on_event=on_event)
    with pytest.raises(RuntimeError, match="hook broke"):
        async with ens:
            for _ in range(3):
                ens.add([PY, "-S", "-c", "print(1)"])
            await asyncio.wait_for(ens.join(), 20)
    assert seen[-1].kind == "start" and seen[-1].task == 0, seen
    assert not [e for e in seen if e.kind == "start" and e.task != 0]
