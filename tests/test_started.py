"""One way to start a node's ranks (pm.agent.started.start_local), the one pipe reader
(pm.common.output.read_pipe), and the hand-over of what was started: whole, one owner at a time."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pm.agent.spawn import PMI_FD, Guardian, SpawnError, rank_env, spawn
from pm.agent.started import RankStart, StartedRank, StartedRanks, start_local
from pm.agent.watch import ChildWatch
from pm.common.output import LineBuffer, read_pipe

pytestmark = pytest.mark.timeout(30)

PROG = ("import os, sys; sys.stdout.write('line ' + os.environ['PMI_RANK'] + '\\npart'); "
        "sys.stdout.flush(); sys.stdin.read()")


def _todo(n: int, argv: list[str] | None = None) -> list[RankStart]:
    argv = argv or [sys.executable, "-c", PROG]
    return [RankStart(r, r, argv[0], argv, rank_env(os.environ, {}, r, n, "h", r, n))
            for r in range(n)]


def _drain(fd: int, buf: LineBuffer) -> tuple[bytes, int]:
    """Everything up to EOF through read_pipe (polling, with a deadline)."""
    got = b""
    while True:
        assert select.select([fd], [], [], 10)[0], "no output within 10 s"
        lines, n = read_pipe(fd, buf)
        got += lines
        if n == 0:
            return got, n


def test_ranks_start_with_their_descriptors_and_stdin_for_one() -> None:
    started = start_local(_todo(2), stdin_rank=0)
    try:
        assert started.guardian is not None and not started.failed
        r0, r1 = started.ranks
        assert r0.pid > 0 and r1.pid > 0 and r0.pidfd >= 0 and r1.pidfd >= 0
        assert r0.pmi is not None and r1.pmi is not None
        assert r0.stdin_fd >= 0 and r1.stdin_fd == -1  # rank 1 reads /dev/null
        os.close(r0.stdin_fd)
        r0.stdin_fd = -1
        for r in (r0, r1):
            lines, n = _drain(r.out_fd, r.out)
            # The partial line comes at EOF as it is (no newline added); the writer is
            # then told that its line goes on no more.
            assert (lines, n, r.out.open) == (b"line %d\npart" % r.rank, 0, True)
            os.waitpid(r.pid, 0)
            r.pid = 0
    finally:
        for r in started.ranks:
            r.close()
        assert started.guardian is not None
        started.guardian.release()


def _open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def test_ranks_share_one_devnull_and_it_is_closed_after() -> None:
    """The ranks that do not read our stdin read one /dev/null, which start_local closes:
    what is left open is each rank's pipes, socket and pidfd, and the guardian's pipe."""
    before = _open_fds()
    started = start_local(_todo(3, ["/bin/sleep", "30"]), stdin_rank=None)
    try:
        ours = {fd for r in started.ranks
                for fd in (r.out_fd, r.err_fd, r.pidfd, r.pmi.fileno() if r.pmi else -1)}
        assert -1 not in ours and len(ours) == 12
        # (the guardian's end of its pipe is the one more)
        assert len(_open_fds() - before - ours) == 1
        for r in started.ranks:
            assert os.readlink(f"/proc/{r.pid}/fd/0") == os.devnull
            os.kill(r.pid, 9)
            os.waitpid(r.pid, 0)
    finally:
        for r in started.ranks:
            r.close()
        assert started.guardian is not None
        started.guardian.release()
    assert _open_fds() == before


def test_a_rank_that_cannot_start_stops_the_rest_when_asked() -> None:
    todo = _todo(3)
    todo[1] = RankStart(1, 1, "/no/such/program", ["/no/such/program"], {})
    started = start_local(todo, stop_at_failure=True)
    try:
        r0, r1, r2 = started.ranks
        assert r0.pid > 0 and not r0.failure
        assert r1.pid == 0 and "/no/such/program" in r1.failure and not r1.skipped
        assert r2.pid == 0 and r2.skipped and "rank 1 could not start" in r2.failure
    finally:
        for r in started.ranks:
            r.close()
        assert started.guardian is not None
        started.guardian.kill_all()
        started.guardian.release()
        os.waitpid(r0.pid, 0)


def test_a_task_without_pmi_gets_no_socket() -> None:
    # What the task finds at PMI_FD must be what pmrun itself had there (an fd its
    # caller passed down, or nothing), never a socket made for it.
    try:
        ours = os.readlink(f"/proc/self/fd/{PMI_FD}") if os.get_inheritable(PMI_FD) else "none"
    except OSError:
        ours = "none"
    started = start_local(_todo(1, ["/bin/sh", "-c", f"echo hi; readlink /proc/self/fd/{PMI_FD}"
                                                      " || echo none"]),
                          stdin_rank=None, pmi=False)
    (r,) = started.ranks
    try:
        assert r.pmi is None and r.stdin_fd == -1
        assert _drain(r.out_fd, r.out)[0] == f"hi\n{ours}\n".encode()
    finally:
        os.waitpid(r.pid, 0)
        r.close()
        assert started.guardian is not None
        started.guardian.release()


def test_take_moves_everything_and_leaves_nothing_behind() -> None:
    started = start_local(_todo(1), stdin_rank=0)
    started.job_id, started.xml_path = "j1", "/tmp/x.xml"
    started.signals.append(2)
    t0 = started.t0
    new = started.take()
    # The old owner holds nothing it could close or signal any more.
    assert (started.ranks, started.guardian, started.xml_path, started.signals) == (
        [], None, None, [])
    assert new.job_id == "j1" and new.t0 == t0 and new.xml_path == "/tmp/x.xml"
    assert new.pending_signals() == [2] and new.pending_signals() == []
    (r,) = new.ranks
    os.close(r.stdin_fd)
    r.stdin_fd = -1
    os.waitpid(r.pid, 0)
    r.close()
    assert new.guardian is not None
    new.guardian.release()


async def test_the_watch_takes_the_pidfd_it_is_given() -> None:
    started = start_local(_todo(1, ["/bin/sh", "-c", "exit 3"]), stdin_rank=None)
    (r,) = started.ranks
    watch = ChildWatch()
    pidfd, r.pidfd = r.pidfd, -1
    try:
        status = await watch.watch(r.pid, pidfd)
        assert status.code == 3 and watch.running == 0
    finally:
        watch.close()
        r.close()
        assert started.guardian is not None
        started.guardian.release()


def _guarded_sleeper(tmp_path: Path) -> tuple[StartedRank, Guardian, Path]:
    """One rank sleeping under its guardian, which was told of one file (``noted``)."""
    started = start_local(_todo(1, ["/bin/sh", "-c", "sleep 60"]), stdin_rank=None)
    (r,) = started.ranks
    guardian = started.guardian
    assert guardian is not None
    noted = tmp_path / "noted"
    noted.write_text("x")
    guardian.note([str(noted)])
    return r, guardian, noted


def test_a_guardian_released_clean_still_removes_its_files_and_kills_its_group(
        tmp_path: Path) -> None:
    """release(clean=True) spares the guardian its look through every process's maps; the
    files it was told of go and what is left of the group is killed all the same."""
    r, guardian, noted = _guarded_sleeper(tmp_path)
    guardian.release(clean=True)
    try:
        assert select.select([r.pidfd], [], [], 10)[0], "the rank outlived its guardian"
        _, status = os.waitpid(r.pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        # The guardian removed the file before it killed the group (itself included).
        assert not noted.exists()
    finally:
        r.close()


def test_started_ranks_is_importable_without_asyncio() -> None:
    import subprocess

    code = ("import sys; import pm.agent.started, pm.common.output, pm.common.output_writer; "
            "sys.exit('asyncio' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    assert subprocess.run([sys.executable, "-c", code], env=env, timeout=30).returncode == 0


def test_an_empty_started_ranks_has_nothing_to_hand_over() -> None:
    s = StartedRanks("job")
    assert s.take().ranks == [] and not s.failed


class _Agent:
    """What LocalRanks needs of its JobAgent, for a node of a 64-node job (a small window)."""

    def __init__(self, n: int) -> None:
        import asyncio
        from types import SimpleNamespace

        self.loop = asyncio.get_running_loop()
        self.plan = SimpleNamespace(hosts=["h"] * 64, spawned=False)
        self.timeline = None
        self.killing = False
        self.vertex = 0
        self.kvsname = "kvs"
        self.out: list[bytes] = []
        self.ended = self.loop.create_future()
        self._left = n
        self.procs: Any = None

    def mark(self, *args: object, **kw: object) -> None:
        pass

    def rank_output(self, rank: int, stream: int, lines: bytes) -> None:
        # As the head does once it wrote them: the credit comes back.
        self.out.append(lines)
        self.loop.call_soon(self.procs.output_credit, len(lines))

    def rank_ended(self, proc: object) -> None:
        self._left -= 1
        if not self._left and not self.ended.done():
            self.ended.set_result(None)

    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None  # PMI events of a rank that never speaks PMI


@pytest.mark.timeout(120)
async def test_a_line_longer_than_the_output_window_is_not_stuck() -> None:
    # The window of a 64-node job is 256 KiB; a 600 KB line grows in the agent's line
    # buffer first.  Counting what was read (not what went up) used the credit up with
    # nothing sent, so nothing ever came back: the job hung.
    import asyncio

    from pm.agent.ranks import LocalRanks
    from pm.common.output import output_window

    assert output_window(64) < 600_000
    agent = _Agent(1)
    procs = agent.procs = LocalRanks(agent, [0])  # type: ignore[arg-type]
    prog = "import sys; [sys.stdout.write('x' * 1000) for _ in range(600)]; print()"
    procs.adopt(start_local(_todo(1, [sys.executable, "-c", prog]), stdin_rank=None))
    try:
        await asyncio.wait_for(agent.ended, 90)
    finally:
        await procs.aclose()
    assert b"".join(agent.out) == b"x" * 600_000 + b"\n"


async def test_the_output_thread_writes_in_order_reports_credit_and_ends_with_close() -> None:
    import asyncio
    import threading

    from pm.common.output_writer import Writer

    r, w = os.pipe()
    writer = Writer(True, out_fd=w)
    got: dict[int, int] = {}
    before = set(threading.enumerate())
    writer.write_behind(asyncio.get_running_loop().call_soon_threadsafe,
                        lambda tag, n: got.__setitem__(tag, got.get(tag, 0) + n))
    (thread,) = (t for t in set(threading.enumerate()) - before if t.name == "pm-output")
    for i in range(100):
        writer.write(i % 3, 1, b"line %d\n" % i, i % 2)
    await asyncio.to_thread(writer.drain)
    await asyncio.sleep(0)  # the thread's last report, queued on the loop
    writer.close()
    os.close(w)
    with os.fdopen(r, "rb") as f:
        lines = f.read().splitlines()
    assert lines == [b"[%d] line %d" % (i % 3, i) for i in range(100)]
    # Credit counts the bytes as they came, labels not included.
    assert got == {t: sum(len(b"line %d\n" % i) for i in range(t, 100, 2)) for t in (0, 1)}
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()


async def test_the_output_thread_keeps_writing_stderr_after_stdout_lost_its_reader() -> None:
    import asyncio

    from pm.common.output import STDERR, STDOUT
    from pm.common.output_writer import Writer

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    os.close(out_r)  # `pmrun ... | head` once head has gone
    writer = Writer(False, out_fd=out_w, err_fd=err_w)
    lost: list[int] = []
    broken = asyncio.get_running_loop().create_future()

    def on_broken(stream: int) -> None:
        lost.append(stream)
        if not broken.done():
            broken.set_result(None)

    writer.on_broken = on_broken
    got: dict[int, int] = {}
    writer.write_behind(asyncio.get_running_loop().call_soon_threadsafe,
                        lambda tag, n: got.__setitem__(tag, got.get(tag, 0) + n))
    try:
        writer.write(0, STDOUT, b"out\n", 5)
        await asyncio.wait_for(broken, 10)
        for _ in range(3):
            writer.write(0, STDOUT, b"out\n", 5)  # dropped, but credited
            writer.write(0, STDERR, b"err\n", 6)
        await asyncio.to_thread(writer.drain)
        await asyncio.sleep(0)  # the thread's last report, queued on the loop
    finally:
        writer.close()
        os.close(out_w)
        os.close(err_w)
    with os.fdopen(err_r, "rb") as f:
        assert f.read() == b"err\n" * 3
    assert lost == [STDOUT] and writer.broken == {STDOUT}
    assert got == {5: 16, 6: 12}


def _spy_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What os.write writes from now on (until ``monkeypatch.undo()``), as it goes."""
    said: list[bytes] = []
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        said.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    return said


def test_a_guardian_whose_files_are_gone_removes_nothing_and_kills_its_group(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """release(clean=True) once every file it was told of is gone: it says so ("done"),
    so the guardian runs no rm; what is left of the group is killed all the same."""
    r, guardian, noted = _guarded_sleeper(tmp_path)
    noted.unlink()  # the agent removed it itself
    said = _spy_writes(monkeypatch)
    guardian.release(clean=True)
    monkeypatch.undo()
    try:
        assert said == [b"done\n"]
        assert select.select([r.pidfd], [], [], 10)[0], "the rank outlived its guardian"
        _, status = os.waitpid(r.pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
        _, gst = os.waitpid(guardian.pid, 0)  # it ended the group, itself included
        assert os.WIFSIGNALED(gst) and os.WTERMSIG(gst) == 9
    finally:
        r.close()


def test_a_file_named_twice_to_the_guardian_is_told_once(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The quick phase names the topology copy, and the agent adopting its ranks names it
    again: the guardian is told once."""
    r, guardian, noted = _guarded_sleeper(tmp_path)
    said = _spy_writes(monkeypatch)
    guardian.note([str(noted), str(noted)])
    other = tmp_path / "other"
    guardian.note([str(other), str(noted)])
    monkeypatch.undo()
    try:
        assert said == [f"{other}\n".encode()]
    finally:
        guardian.release()
        assert select.select([r.pidfd], [], [], 10)[0], "the rank outlived its guardian"
        os.waitpid(r.pid, 0)
        r.close()
        os.waitpid(guardian.pid, 0)


def test_rank_limits_hold_around_the_spawn_and_are_put_back() -> None:
    """srun's --propagate on a node: the ranks spawned inside get the limits; the agent
    has its own back at once."""
    import resource

    from pm.agent.rlimits import RankLimits, current

    before = resource.getrlimit(resource.RLIMIT_STACK)
    want = 12345 * 1024
    said: list[str] = []
    with RankLimits({"STACK": want, "CORE": -1}, said.append):
        assert resource.getrlimit(resource.RLIMIT_STACK)[0] == want
        assert current(["STACK", "CORE"]) == {"STACK": want, "CORE": -1}
        out = subprocess.run(["sh", "-c", "ulimit -s"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    assert out.strip() == "12345"
    assert resource.getrlimit(resource.RLIMIT_STACK) == before and said == []


def test_a_working_directory_that_is_not_there_is_a_spawn_error() -> None:
    """(An MPI_Comm_spawn's wdir info, say: the one rank fails to start, named; the agent
    and its own working directory carry on.)"""
    here = os.getcwd()
    for cwd, why in (("/nonexistent/dir", "No such file or directory"),
                     ("/etc/passwd", "Not a directory")):
        with pytest.raises(SpawnError) as err:
            spawn("/bin/true", ["true"], {}, cwd=cwd)
        assert str(err.value) == f"true: its working directory {cwd}: {why}"
        assert os.getcwd() == here
