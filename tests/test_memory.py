"""Memory subscription control: sizes, probes, admission, the governor (real cgroups)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from pm.agent.memory import (
    Admission,
    MemoryGovernor,
    NodeMemory,
    Overrun,
    OverrunEvent,
    SizeError,
    Watermarks,
    format_size,
    parallel_size,
    parse_size,
    read_node_memory,
    tree_pids,
    tree_rss,
)
from pm.proto.errors import ResourceLimit

sys.path.insert(0, str(Path(__file__).parent))
from cgroup_util import MemCgroup, memory_cgroup

MiB = 1 << 20
GiB = 1 << 30
ROOT = str(Path(__file__).resolve().parents[1])
# Allocates and writes {} MiB, says so, and holds it until stdin closes.
HOLD = "import sys; b = bytearray(b'x') * ({} << 20); print('ready', flush=True); sys.stdin.read()"

# ------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("1000000", None, 1_000_000),
        ("0", None, 0),
        ("4096B", None, 4096),
        ("1k", None, 1024),
        ("1KB", None, 1024),
        ("512M", None, 512 * MiB),
        ("512MiB", None, 512 * MiB),
        ("2G", None, 2 * GiB),
        ("2 gb", None, 2 * GiB),
        ("1.5GiB", None, 3 * GiB // 2),
        (".5T", None, 512 * GiB),
        ("0.1K", None, 102),
        ("80%", 1000, 800),
        ("12.5%", 24 * GiB, 3 * GiB),
        ("100%", 7, 7),
    ],
)
def test_parse_size(text: str, total: int | None, expected: int) -> None:
    assert parse_size(text, total=total) == expected


@pytest.mark.parametrize(
    ("text", "total", "message"),
    [
        ("", None, "cannot read"),
        ("-1G", None, "cannot read"),
        ("2X", None, "cannot read"),
        ("5ib", None, "cannot read"),
        ("1 K B", None, "cannot read"),
        ("G", None, "cannot read"),
        ("1.2.3M", None, "cannot read"),
        ("80%", None, "no total"),
        ("101%", 1000, "more than 100"),
    ],
)
def test_parse_size_errors(text: str, total: int | None, message: str) -> None:
    with pytest.raises(SizeError, match=message) as info:
        parse_size(text, total=total)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("text", "expected"), [
    ("100k", 100_000), ("100K", 100 * 1024), ("1ki", 1024), ("1KiB", 1024), ("1.5m", 1_500_000),
    ("2M", 2 * MiB), ("2g", 2 * 10**9), ("2G", 2 * GiB), ("1t", 10**12), ("7", 7), ("7b", 7),
])
def test_parallel_size_reads_sizes_as_gnu_parallel(text: str, expected: int) -> None:
    assert parallel_size(text) == expected


def test_parallel_size_takes_no_percentage() -> None:
    for text in ("10%", "x", "1q"):
        with pytest.raises(SizeError, match="1024-based; k, m, g, t, p: 1000-based"):
            parallel_size(text)


def test_format_size() -> None:
    assert format_size(100) == "100 B"
    assert format_size(2 * GiB) == "2 GiB"
    assert format_size(1536 * MiB) == "1.5 GiB"
    assert parse_size(format_size(200 * MiB).replace(" ", "")) == 200 * MiB


# ------------------------------------------------------------------------- watermarks


def test_watermarks_defaults_and_options() -> None:
    total = 24 * GiB
    w = Watermarks.resolve(total)
    assert (w.high, w.low) == (total * 90 // 100, total * 80 // 100)
    # StarPU's figures: block at 18 GB, resume at 16 GB of 24 GB.
    assert Watermarks.resolve(total, "18G") == Watermarks(18 * GiB, 16 * GiB)
    assert Watermarks.resolve(total, "75%", "50%") == Watermarks(18 * GiB, 12 * GiB)
    assert Watermarks.resolve(total, low="4G") == Watermarks(total * 90 // 100, 4 * GiB)
    assert "high 18 GiB, low 16 GiB of 24 GiB (meminfo)" in Watermarks(18 * GiB, 16 * GiB).describe(
        total, "meminfo"
    )


@pytest.mark.parametrize(
    ("high", "low", "message"),
    [("25G", None, "above the node"), ("10G", "10G", "must be under"), ("1G", "2G", "under")],
)
def test_watermarks_invalid(high: str, low: str | None, message: str) -> None:
    with pytest.raises(SizeError, match=message):
        Watermarks.resolve(24 * GiB, high, low)


# -------------------------------------------------------------------------- admission


def test_admission_fifo_and_release() -> None:
    a = Admission(Watermarks(100, 80))
    assert a.request("a", 40) and a.request("b", 40)
    assert not a.request("big", 30)  # 80 + 30 > 100
    assert not a.request("small", 10)  # would fit, but no overtaking
    assert a.queued() == ["big", "small"]
    assert a.release("a") == ["big", "small"]  # FIFO order
    assert a.reserved == 80 and a.headroom == 20
    assert a.release("a") == [] and a.release("nobody") == []  # idempotent
    a.release("b")
    a.release("big")
    a.release("small")
    assert a.report().admitted == 0 and a.reserved == 0


def test_admission_release_of_exited_work_frees_its_usage_at_once() -> None:
    a = Admission(Watermarks(100, 80))
    assert a.request("a", 50) and a.request("b", 30)
    a.observe(70, {"a": 50, "b": 5})  # 15 of the node are someone else's
    assert not a.request("c", 40)  # 70 + 25 unused + 40 > 100
    assert a.release("a", exited=True) == ["c"]  # its 50 left with it: 20 + 25 + 40
    assert a.used == 20
    a.release("b")  # a rank's block ends, the rank lives on: its memory stays counted
    assert a.used == 20 and a.release("c", exited=True) == [] and a.used == 20


def test_admission_backfill() -> None:
    a = Admission(Watermarks(100, 80), backfill=True)
    a.request("a", 60)
    assert not a.request("big", 50)
    assert a.request("small", 30)  # passes the blocked big one
    assert a.queued() == ["big"]
    assert a.release("small") == [] and a.release("a") == ["big"]


def test_admission_rejects_impossible_and_duplicates() -> None:
    a = Admission(Watermarks(100, 80))
    with pytest.raises(ResourceLimit, match="more than the node's high watermark"):
        a.request("huge", 101)
    a.request("x", 100)
    assert not a.request("y", 1)
    with pytest.raises(ValueError, match="already"):
        a.request("x", 1)
    with pytest.raises(ValueError, match="already"):
        a.request("y", 1)
    with pytest.raises(ValueError, match="negative"):
        a.request("z", -1)


def test_admission_zero_fits_exactly() -> None:
    a = Admission(Watermarks(100, 80))
    assert a.request("x", 100) and a.request("y", 0)  # used + reserved + 0 <= high
    assert not a.blocked


def test_admission_hysteresis() -> None:
    a = Admission(Watermarks(100, 80))
    assert a.update_usage(101) == []
    assert a.blocked and not a.fits(0)
    assert not a.request("t", 1)
    assert a.update_usage(90) == [] and a.blocked  # under high but above low: still blocked
    assert a.update_usage(81) == [] and a.blocked
    assert a.update_usage(80) == ["t"] and not a.blocked  # at low: resumes
    assert a.update_usage(99) == [] and not a.blocked  # 99 + 1 = 100: not past high
    assert a.update_usage(100) == [] and a.blocked  # 100 + 1 unused: passed


def test_admission_reservations_count_toward_blocking() -> None:
    a = Admission(Watermarks(100, 60))
    a.request("a", 50)
    a.update_usage(40)  # 40 + 50 = 90: fine
    assert not a.blocked
    a.correct("a", 70)  # the work uses more than it reserved: reservation grows to 70
    assert a.reservation("a") == 70 and a.reserved == 0
    a.update_usage(110)  # the node went over high
    assert a.blocked
    a.release("a")
    a.update_usage(61)
    assert a.blocked
    a.update_usage(60)
    assert not a.blocked


def test_admission_correction_reserved_unused() -> None:
    a = Admission(Watermarks(100, 80))
    a.request("a", 60)
    assert not a.request("b", 50)
    # The node sample and the work's sample arrive together: 30 of 60 are in use.
    assert a.observe(30, {"a": 30}) == []  # 30 used + 30 unused + 50 > 100
    assert a.reserved == 30 and a.headroom == 40
    # The work tells its real figure: the reservation shrinks, and 30 + 5 + 50 <= 100.
    assert a.resize("a", 35) == ["b"]
    assert a.reservation("a") == 35 and a.reserved == 5 + 50


def test_admission_settle_shrinks_after_quiet_peak() -> None:
    a = Admission(Watermarks(100, 80), settle=2.0, margin=0.1)
    a.request("a", 80)
    assert not a.request("b", 40)
    assert a.observe(50, {"a": 50}, now=0.0) == []
    assert a.observe(50, {"a": 50}, now=1.9) == []  # peak not yet quiet for 2 s
    assert a.reservation("a") == 80
    assert a.observe(50, {"a": 50}, now=2.0) == ["b"]  # shrunk to 55
    assert a.reservation("a") == 55
    a.observe(70, {"a": 70}, now=3.0)  # grows again: reservation follows
    assert a.reservation("a") == 70


def test_admission_never_shrinks_without_settle() -> None:
    a = Admission(Watermarks(100, 80))
    a.request("a", 80)
    a.observe(10, {"a": 10}, now=1e9)
    assert a.reservation("a") == 80 and a.reserved == 70


def test_admission_overruns() -> None:
    a = Admission(Watermarks(1000, 800))
    a.request("honest", 100)
    a.request("liar", 100)
    a.request("guess", 100, declared=False)
    a.observe(500, {"honest": 90, "liar": 300, "guess": 300})
    assert a.overruns() == [Overrun("liar", 100, 300)]  # a guess is no bound
    report = a.report()
    assert report.overruns == (Overrun("liar", 100, 300),)
    assert (report.used, report.reserved, report.admitted, report.blocked) == (500, 10, 3, False)
    a.correct("late", 5)  # a sample for released/unknown work is ignored
    assert not a.is_admitted("late")


def test_admission_release_owner() -> None:
    a = Admission(Watermarks(100, 80))
    a.request((0, 1), 40, owner=0)
    a.request((1, 1), 40, owner=1)
    a.request((0, 2), 40, owner=0)  # queued
    a.request((2, 1), 30, owner=2)  # queued behind it
    assert a.release_owner(0) == [(2, 1)]  # rank 0 died: both of its requests go
    assert a.admitted() == [(1, 1), (2, 1)] and a.queued() == []
    assert a.release_owner(0) == []


# ------------------------------------------------------------------------------ probes

ALLOC_TREE = f"""
import subprocess, sys
code = {HOLD.format(50)!r}
child = subprocess.Popen(
    [sys.executable, "-S", "-c", code], stdout=subprocess.PIPE, stdin=subprocess.PIPE
)
print(child.pid, child.stdout.readline().decode().strip(), flush=True)
sys.stdin.read()
child.stdin.close()
child.wait()
"""


@pytest.mark.timeout(30)
async def test_tree_rss_includes_grandchildren() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        "-c",
        ALLOC_TREE,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        pid_text, ready = (await proc.stdout.readline()).decode().split()
        assert ready == "ready"
        grandchild = int(pid_text)
        assert set(tree_pids(proc.pid)) == {proc.pid, grandchild}
        own = tree_rss(grandchild) - 50 * MiB  # what the grandchild holds besides the buffer
        assert tree_rss(grandchild) >= 50 * MiB
        assert tree_rss(proc.pid) >= 50 * MiB + own
        assert tree_rss(proc.pid, pss=True) >= 50 * MiB
        assert tree_rss(proc.pid) - tree_rss(grandchild) < 50 * MiB  # the parent is small
    finally:
        proc.stdin.close()
        await proc.wait()
    assert tree_rss(proc.pid) == 0 and tree_pids(proc.pid) == []  # gone: nothing, no error


def test_read_node_memory_of_this_process() -> None:
    snap = read_node_memory()
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    assert 0 < snap.total <= mem_total
    assert 0 < snap.used < snap.total and snap.available == snap.total - snap.used
    assert snap.limit_source == "meminfo" or snap.limit_source.startswith("cgroup")


@pytest.mark.cgroup
@pytest.mark.timeout(30)
async def test_read_node_memory_inside_capped_cgroup() -> None:
    code = (
        "from pm.agent.memory import read_node_memory\n"
        "s = read_node_memory()\n"
        "print(s.total, s.used, s.limit_source)\n"
    )
    with memory_cgroup(200 * MiB) as cg:
        proc = await asyncio.create_subprocess_exec(
            *cg.wrap([sys.executable, "-c", code]),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ROOT},
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        total, used, source = out.decode().split()
        assert int(total) == 200 * MiB
        assert 0 < int(used) < 200 * MiB
        assert source.startswith(("cgroup1:", "cgroup2:")) and source.endswith(cg.path.name)


@pytest.mark.cgroup
@pytest.mark.timeout(30)
async def test_node_memory_of_a_given_cgroup_follows_its_processes() -> None:
    hold = HOLD.format(64)
    with memory_cgroup(256 * MiB) as cg:
        probe = NodeMemory(cg.path)
        before = probe.read()
        assert before.total == 256 * MiB and before.used < 16 * MiB
        proc = await asyncio.create_subprocess_exec(
            *cg.wrap([sys.executable, "-S", "-c", hold]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdin is not None
        assert await proc.stdout.readline() == b"ready\n"
        assert probe.read().used >= before.used + 64 * MiB
        proc.stdin.close()
        await proc.wait()
        assert probe.read().used < before.used + 16 * MiB


def test_node_memory_rejects_a_non_cgroup(tmp_path: Path) -> None:
    with pytest.raises(SizeError, match="not a memory cgroup"):
        NodeMemory(tmp_path)


# ---------------------------------------------------------------- governor (usage source)


@pytest.mark.timeout(10)
async def test_governor_admit_waits_for_low_watermark() -> None:
    usage = [0]
    async with MemoryGovernor(Watermarks(100, 80), usage=lambda: usage[0], interval=60) as gov:
        await gov.admit("a", 30)
        usage[0] = 101
        await gov.sample()
        assert gov.report().blocked
        waiting = asyncio.create_task(gov.admit("b", 10))
        for _ in range(3):
            await gov.sample()
            await asyncio.sleep(0)
        usage[0] = 85  # under high but not under low
        await gov.sample()
        await asyncio.sleep(0)
        assert not waiting.done()
        usage[0] = 50  # 50 + 30 reserved = 80: at low
        await gov.sample()
        await asyncio.wait_for(waiting, 5)
        assert gov.admission.admitted() == ["a", "b"]


@pytest.mark.timeout(10)
async def test_governor_release_cancel_and_close() -> None:
    usage = [0]
    gov = MemoryGovernor(Watermarks(100, 80), usage=lambda: usage[0], interval=60)
    await gov.start()
    await gov.admit("a", 90)
    cancelled = asyncio.create_task(gov.admit("c", 50))
    released = asyncio.create_task(gov.admit("r", 50))
    by_owner = asyncio.create_task(gov.admit("o", 50, owner=7))
    left = asyncio.create_task(gov.admit("left", 50))
    await asyncio.sleep(0)
    assert gov.admission.queued() == ["c", "r", "o", "left"]
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gov.release("r")
    with pytest.raises(ResourceLimit, match="released before admission"):
        await released
    gov.release_owner(7)
    with pytest.raises(ResourceLimit):
        await by_owner
    assert gov.admission.queued() == ["left"]
    gov.release("r")  # idempotent
    await gov.aclose()
    with pytest.raises(ResourceLimit, match="closed"):
        await left
    await gov.aclose()
    with pytest.raises(ResourceLimit, match="closed"):
        await gov.admit("late", 1)


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def _stopped(pid: int, want: bool) -> bool:
    """Poll until the process is (or is no longer) stopped; signals land asynchronously."""
    deadline = asyncio.get_running_loop().time() + 5
    while (_proc_state(pid) == "T") != want:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


HOLD_40 = HOLD.format(40)


async def _holder() -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-S",
        "-c",
        HOLD_40,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await proc.stdout.readline() == b"ready\n"
    return proc


@pytest.mark.timeout(20)
async def test_governor_overrun_kill() -> None:
    events: list[OverrunEvent] = []
    usage = [0]
    proc = await _holder()
    async with MemoryGovernor(
        Watermarks(100 * MiB, 80 * MiB),
        usage=lambda: usage[0],
        interval=60,
        overrun="kill",
        on_overrun=events.append,
    ) as gov:
        await gov.admit("liar", 10 * MiB)
        gov.watch("liar", proc.pid)
        await gov.sample()  # over its bound, node under high: reported, not acted on
        assert [(e.ident, e.action, e.over_high) for e in events] == [("liar", "report", False)]
        assert events[0].bound == 10 * MiB and events[0].measured >= 40 * MiB
        assert proc.returncode is None
        usage[0] = 120 * MiB
        await gov.sample()
        assert [e.action for e in events] == ["report", "killed"] and events[1].over_high
        assert await asyncio.wait_for(proc.wait(), 5) == -9
        gov.release("liar")


@pytest.mark.timeout(20)
async def test_governor_overrun_suspend_and_resume() -> None:
    events: list[OverrunEvent] = []
    usage = [0]
    liar, other = await _holder(), await _holder()
    try:
        async with MemoryGovernor(
            Watermarks(100 * MiB, 80 * MiB),
            usage=lambda: usage[0],
            interval=60,
            overrun="suspend",
            on_overrun=events.append,
        ) as gov:
            await gov.admit("liar", 10 * MiB)
            await gov.admit("other", 50 * MiB)
            gov.watch("liar", liar.pid)
            usage[0] = 120 * MiB
            await gov.sample()
            assert [e.action for e in events] == ["report", "suspended"]
            assert await _stopped(liar.pid, True) and _proc_state(other.pid) != "T"
            gov.release("other")  # the only other work finished: nothing can free memory
            await gov.sample()
            assert events[-1].action == "resumed" and await _stopped(liar.pid, False)
            await gov.sample()  # still over high, but it is not suspended again
            assert [e.action for e in events] == ["report", "suspended", "resumed"]
    finally:
        for p in (liar, other):
            assert p.stdin is not None
            p.stdin.close()
            await p.wait()


# ------------------------------------------------------------- governor on a real cgroup

TOUCH = (
    "import sys, time\n"
    "b = bytearray(b'x') * (int(sys.argv[1]) << 20)\n"  # writes every page
    "time.sleep(float(sys.argv[2]))\n"  # the task's work: hold the memory a while
)


async def _run_ensemble(
    cg: MemCgroup, n: int, gov: MemoryGovernor | None, reserve: int
) -> tuple[list[int], int]:
    running = peak_running = 0

    async def one(i: int) -> int:
        nonlocal running, peak_running
        if gov is not None:
            await gov.admit(i, reserve)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cg.wrap([sys.executable, "-S", "-c", TOUCH, "64", "0.6"])
            )
            running += 1
            peak_running = max(peak_running, running)
            if gov is not None:
                gov.watch(i, proc.pid)
            code = await proc.wait()
            running -= 1
            return code
        finally:
            if gov is not None:
                gov.release(i)

    codes = await asyncio.gather(*(one(i) for i in range(n)))
    return list(codes), peak_running


@pytest.mark.cgroup
@pytest.mark.timeout(60)
async def test_governor_keeps_a_capped_cgroup_out_of_oom() -> None:
    with memory_cgroup(256 * MiB) as cg:
        gov = MemoryGovernor(Watermarks(200 * MiB, 150 * MiB), cgroup=cg.path, interval=0.05)
        async with gov:
            codes, peak_running = await _run_ensemble(cg, 8, gov, 80 * MiB)
        assert codes == [0] * 8
        assert cg.oom_kills() == 0
        peak = cg.peak()
        assert peak is None or peak < 256 * MiB
        assert peak_running == 2  # 2 x 80 MiB fit under 200 MiB, a third does not


@pytest.mark.cgroup
@pytest.mark.timeout(60)
async def test_same_ensemble_without_control_is_oom_killed() -> None:
    with memory_cgroup(256 * MiB) as cg:
        codes, _ = await _run_ensemble(cg, 8, None, 0)
        assert cg.oom_kills() >= 1
        assert -9 in codes
