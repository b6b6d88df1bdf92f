"""Nothing of a failed job stays in /dev/shm (pm.agent.shm_reaper)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# What is new in /dev/shm and held by nobody is any ending job's to remove: these tests
# make such files and look for them, so no other job runs meanwhile.
pytestmark = pytest.mark.alone

CRASH_MPI = r"""
import json, os, sys
from mpi4py import MPI
c = MPI.COMM_WORLD
c.Barrier()
maps = sorted({l.split()[5] for l in open('/proc/self/maps')
               if ' /dev/shm/' in l and not l.rstrip().endswith('(deleted)')})
print(json.dumps(maps), flush=True)
c.Barrier()
if c.rank == 1:
    os._exit(3)
c.Barrier()
"""

# Rank 0 maps a file of its own (a name no MPI library uses) and waits; rank 1 waits
# until it exists and fails: the job is killed with rank 0 still mapping it.
CRASH_OWN = r"""
import mmap, os, sys, time
path = sys.argv[1]
if os.environ["PMI_RANK"] == "0":
    fd = os.open(path + ".tmp", os.O_RDWR | os.O_CREAT, 0o600)
    os.ftruncate(fd, 1 << 20)
    m = mmap.mmap(fd, 1 << 20)
    os.close(fd)
    os.rename(path + ".tmp", path)
    while True:
        time.sleep(1)
else:
    while not os.path.exists(path):
        time.sleep(0.01)
    sys.exit(5)
"""


def _segments(stdout: str) -> set[str]:
    found: set[str] = set()
    for line in stdout.splitlines():
        if line.startswith("["):
            found.update(json.loads(line))
    return found


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("nodes", ["1", "2"])
def test_failed_mpich_job_leaves_no_segments(pmrun, tmp_path: Path, nodes: str) -> None:
    prog = tmp_path / "crash.py"
    prog.write_text(CRASH_MPI)
    res = pmrun("-n", "3", "--local-nodes", nodes, "python", str(prog), timeout=90)
    assert res.returncode == 3, res.stderr
    segs = _segments(res.stdout)
    assert segs, res.stdout  # MPICH did map its segments
    left = sorted(s for s in segs if os.path.exists(s))
    assert not left, f"left in /dev/shm: {left}"


@pytest.mark.timeout(60)
def test_segment_a_killed_rank_mapped_is_removed(pmrun, tmp_path: Path, marker: str) -> None:
    path = f"/dev/shm/{marker}-own"
    prog = tmp_path / "own.py"
    prog.write_text(CRASH_OWN)
    try:
        res = pmrun("-n", "2", "python", str(prog), path, timeout=45)
        assert res.returncode == 5, res.stderr
        assert not os.path.exists(path)
    finally:
        for p in (path, path + ".tmp"):
            if os.path.exists(p):
                os.unlink(p)


def test_a_file_in_use_is_kept(tmp_path: Path, marker: str) -> None:
    from pm.agent.shm_reaper import ShmReaper

    reaper = ShmReaper()
    path = f"/dev/shm/mpich_shm_{marker}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # created during the "job", still held
    try:
        assert reaper.reap() == []
        assert os.path.exists(path)
    finally:
        os.close(fd)
    assert reaper.reap() == [f"mpich_shm_{marker}"]
    assert not os.path.exists(path)


def test_the_sweep_knows_kvs_segments_by_the_layouts_name() -> None:
    """sweep_node looks for the shared-memory KVS by name without importing its layout."""
    from pm.agent.shm_reaper import _OWN_PREFIX
    from pm.proto.shm_layout import NAME_PREFIX, header_name

    assert _OWN_PREFIX == NAME_PREFIX and header_name("j", 0).startswith(_OWN_PREFIX)


MAPPER = r"""
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 4096)
m = mmap.mmap(fd, 4096)
os.close(fd)
print("mapped", flush=True)
sys.stdin.read()
"""


def test_a_sample_notes_the_new_files_a_rank_maps_once(marker: str) -> None:
    """sample() names what the ranks map that is new in /dev/shm, once; with nothing new
    there it names nothing (and reads no maps)."""
    import subprocess
    import sys

    from pm.agent.shm_reaper import ShmReaper

    reaper = ShmReaper()
    path = f"/dev/shm/mpich_shm_{marker}"
    idle = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", marker],
                            stdin=subprocess.PIPE)
    mapper = None
    try:
        assert reaper.sample([idle.pid]) == []
        mapper = subprocess.Popen([sys.executable, "-c", MAPPER, path, marker],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert mapper.stdout is not None and mapper.stdout.readline() == "mapped\n"
        assert reaper.sample([idle.pid, mapper.pid]) == [path]
        assert reaper.sample([idle.pid, mapper.pid]) == []  # seen already
    finally:
        for p in (idle, mapper):
            if p is not None:
                p.communicate(timeout=30)
    assert reaper.reap() == [f"mpich_shm_{marker}"]  # nobody maps it any more
    assert not os.path.exists(path)


#: A native-client rank (so its node has a KVS segment) that says where its segment, its
#: topology copy and its agent are, then waits for ever.
NATIVE_WAITER = r"""
import json, os, sys
from pm.client.sync import connect

with connect() as pmi:
    pmi.allgather(b"x")
    print(json.dumps({"rank": pmi.rank, "shm": pmi.info.get("shm"), "agent": os.getppid(),
                      "xml": os.environ.get("HWLOC_XMLFILE")}), flush=True)
    pmi.fence()
    pmi.get("never", rank=(pmi.rank + 1) % pmi.size)
"""


@pytest.mark.timeout(120)
def test_next_agent_sweeps_what_a_killed_agent_left(pmrun, pmrun_popen, tmp_path: Path) -> None:
    import signal

    from launch_util import cmdline, read_lines, wait_until

    prog = tmp_path / "waiter.py"
    prog.write_text(NATIVE_WAITER)
    p = pmrun_popen("-n", "2", "--local-nodes", "2", "python", str(prog))
    assert p.stdout is not None
    got = {d["rank"]: d for d in map(json.loads, read_lines(p.stdout, 2, 60))}
    last = got[1]
    assert last["shm"] and last["xml"], last
    mine = [f"/dev/shm/{f}" for f in os.listdir("/dev/shm") if f.startswith(last["shm"])]
    assert mine and os.path.exists(last["xml"])
    os.kill(last["agent"], signal.SIGKILL)
    p.communicate(timeout=30)
    wait_until(lambda: cmdline(last["agent"]) is None, 10, "the killed agent to be gone")
    # The next job uses no native client and no shared-memory KVS: its agents sweep anyway.
    res = pmrun("-n", "2", "--local-nodes", "2", "true", timeout=60)
    assert res.returncode == 0, res.stderr
    left = [f for f in [*mine, last["xml"]] if os.path.exists(f)]
    assert not left, f"left behind: {left}"


#: MPI ranks that say which /dev/shm files they map, their agent and topology copy, then wait.
MPI_WAITER = r"""
import json, os, time
from mpi4py import MPI
c = MPI.COMM_WORLD
c.Barrier()
maps = sorted({l.split()[5] for l in open('/proc/self/maps')
               if ' /dev/shm/' in l and not l.rstrip().endswith('(deleted)')})
print(json.dumps({"rank": c.rank, "maps": maps, "agent": os.getppid(),
                  "xml": os.environ.get("HWLOC_XMLFILE")}), flush=True)
while True:
    time.sleep(1)
"""


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_an_agent_killed_by_sigkill_leaves_no_segments(pmrun_popen, tmp_path: Path) -> None:
    import signal

    from launch_util import read_lines, wait_until

    prog = tmp_path / "waiter.py"
    prog.write_text(MPI_WAITER)
    p = pmrun_popen("-n", "2", "--local-nodes", "2", "python", str(prog))
    assert p.stdout is not None
    got = {d["rank"]: d for d in map(json.loads, read_lines(p.stdout, 2, 90))}
    victim = got[1]
    files = [*victim["maps"], *([victim["xml"]] if victim["xml"] else [])]
    assert victim["maps"], victim
    os.kill(victim["agent"], signal.SIGKILL)
    p.communicate(timeout=60)
    # Its guardian removes them, with no later job to sweep them.
    wait_until(lambda: not any(os.path.exists(f) for f in files), 10,
               f"the killed agent's files to go: {files}")


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_pmrun_killed_by_sigkill_on_one_node_leaves_no_segments(pmrun_popen,
                                                                 tmp_path: Path) -> None:
    # One node: pmrun is the agent.  MPICH makes its segment inside MPI_Init with no PMI
    # request after it, so a pmrun killed at once has seen nothing to name to the ranks'
    # guardian: the guardian finds what its ranks map before it kills them.
    import signal

    from launch_util import read_lines, wait_until

    prog = tmp_path / "waiter.py"
    prog.write_text(MPI_WAITER)
    p = pmrun_popen("-n", "2", "python", str(prog))
    assert p.stdout is not None
    got = [json.loads(line) for line in read_lines(p.stdout, 2, 90)]
    files = sorted({f for d in got for f in d["maps"] if "/mpich_shm_" in f})
    assert files, got
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=60)
    # (Within 3 s: a later job's sweep takes orphans only once they are 5 s old.)
    wait_until(lambda: not any(os.path.exists(f) for f in files), 3,
               f"the job's segments to go: {files}")


def test_the_orphan_sweep_knows_ucx_segments() -> None:
    # What a rank killed inside UCX's set-up leaves (seen after a run of the suite).
    import time

    from pm.agent.shm_reaper import sweep_orphans

    path = f"/dev/shm/ucx_shm_posix_{os.getpid():x}"
    with open(path, "wb") as f:
        f.write(b"\0" * 4096)
    try:
        assert os.path.basename(path) not in sweep_orphans()  # too young: being made
        old = time.time() - 60
        os.utime(path, (old, old))
        assert os.path.basename(path) in sweep_orphans()
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


@pytest.mark.timeout(60)
def test_an_agent_tells_its_guardian_when_nothing_is_left(monkeypatch: pytest.MonkeyPatch,
                                                          marker: str) -> None:
    """A job whose ranks all ended and left no MPI segment spares its guardian the look
    through every process's maps (tens of ms of CPU after each job); a job that leaves a
    segment behind does not."""
    import sys

    import pm
    from pm.agent import spawn

    told: list[bool] = []
    release = spawn.Guardian.release

    def noted(self: spawn.Guardian, clean: bool = False) -> None:
        told.append(clean)
        release(self, clean)

    monkeypatch.setattr(spawn.Guardian, "release", noted)
    assert pm.run(["true"], n=2, local_nodes=1).ok
    assert told == [True]
    told.clear()
    res = pm.run([sys.executable, "-c", "import time; time.sleep(60)"], n=1, timeout=0.5)
    assert res.returncode == 124 and told == [True]  # killed, and gone before the end
    told.clear()
    # A segment named as MPICH names its own, still held open when the job ends.
    path = f"/dev/shm/mpich_shm_{marker}"
    prog = ("import os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600);"
            "pid = os.fork()\n"
            "if pid == 0: time.sleep(5); os._exit(0)\n")
    try:
        assert pm.run([sys.executable, "-c", prog, path], n=1).ok
        assert told == [False]
    finally:
        if os.path.exists(path):
            os.unlink(path)
