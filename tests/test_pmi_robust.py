"""Hostile or broken PMI input and abort codes, through a real pmrun.

Each case is a rank that speaks the wire itself (raw PMI-1 or raw native
frames on its PMI_FD) and does something a correct client never does: an
endless spawn block, a request id that is a list, a wrong kvsname, a flood
of garbage lines, an abort code no exit status can hold.  The job must end
with the documented status, the cause named in one line, and no traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import assert_never_started_named, mpi_missing, script

pytestmark = pytest.mark.timeout(60)

Run = Callable[..., subprocess.CompletedProcess[str]]

RAW = """
    import os, socket, sys, time
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")
    rank = int(os.environ["PMI_RANK"])

    def ask(line):
        sock.sendall(line.encode() + b"\\n")
        return reader.readline().decode().rstrip("\\n")
"""


def no_traceback(r: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in r.stderr and "Task exception" not in r.stderr, r.stderr


def test_an_endless_spawn_block_fails_the_rank(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "mcmd.py", RAW + """
    # A spawn block that never ends: 16 MB of key=value lines, no endcmd.
    try:
        sock.sendall(b"mcmd=spawn\\n")
        chunk = b"".join(b"k%d=%s\\n" % (i, b"v" * 100) for i in range(10000))
        for _ in range(16):
            sock.sendall(chunk)
        reader.readline()
    except OSError:
        pass
    time.sleep(30)  # the agent, not this rank's exit, must end the job
    """)
    r = pmrun("-n", "1", "python", str(prog), timeout=30)
    assert r.returncode != 0, r.stderr
    assert re.search(r"rank 0\b.*spawn request.*longer than", r.stderr), r.stderr
    no_traceback(r)


def test_spawn_block_bound_in_the_codec() -> None:
    from pm.proto import pmi1
    from pm.proto.errors import ProtocolError

    dec = pmi1.Pmi1Decoder()
    dec.feed(b"mcmd=spawn\n")
    line = b"k=" + b"v" * 1000 + b"\n"
    with pytest.raises(ProtocolError, match="spawn request longer than"):
        for _ in range(pmi1.MAX_LINE // len(line) + 2):
            dec.feed(line)


ABORT_NATIVE = """
    import sys, time
    from pm.client import sync
    pmi = sync.connect()
    if pmi.rank == 0:
        pmi.abort(int(sys.argv[1]), "bye")
    time.sleep(30)
"""


@pytest.mark.parametrize(("code", "status"), [
    (3, 3), (255, 255), (256, 1), (2**40, 1), (0, 1), (-1, 255), (258, 2), (2**70, 255),
])
def test_abort_codes_map_to_an_exit_status(pmrun: Run, tmp_path: Path, code: int,
                                           status: int) -> None:
    prog = script(tmp_path, "abort.py", ABORT_NATIVE)
    r = pmrun("-n", "2", "python", str(prog), str(code), timeout=30)
    assert r.returncode == status, r.stderr
    assert re.search(rf"rank 0 .*called abort with code {code}\b", r.stderr) or code >= 2**63, \
        r.stderr
    no_traceback(r)


ABORT_AFTER_DEATH = """
    import os, select, signal, sys, time
    from pathlib import Path
    from pm.client import sync
    pmi = sync.connect()
    killed, aborter, pidfile = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    if pmi.rank == killed:
        Path(f"{pidfile}.tmp").write_text(str(os.getpid()))
        os.rename(f"{pidfile}.tmp", pidfile)
        os.kill(os.getpid(), signal.SIGKILL)
    if pmi.rank == aborter:
        # Abort the moment the killed rank is seen dead (as Open MPI does on a lost peer),
        # before its agent may have noticed.
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.001)
        try:
            select.select([os.pidfd_open(int(pidfile.read_text()))], [], [], 20)
        except ProcessLookupError:
            pass  # reaped already
        pmi.abort(14, "lost a peer")
    time.sleep(30)
"""


@pytest.mark.parametrize(("layout", "killed", "aborter"), [
    (("-n", "2"), 1, 0),  # same node: its agent sees the death at once
    (("-n", "4", "--local-nodes", "2"), 3, 1),  # the death on node 1, the abort on node 0
])
def test_a_death_comes_before_the_abort_it_caused(pmrun: Run, tmp_path: Path,
                                                 layout: tuple[str, ...], killed: int,
                                                 aborter: int) -> None:
    prog = script(tmp_path, "abort_after.py", ABORT_AFTER_DEATH)
    r = pmrun(*layout, "python", str(prog), str(killed), str(aborter), str(tmp_path / "pid"),
              timeout=30)
    assert r.returncode == 137, r.stderr
    first = next(line for line in r.stderr.splitlines() if line.startswith("pmrun:"))
    assert re.search(rf"rank {killed} \(node \d, [^)]*\) killed by SIGKILL", first), r.stderr
    no_traceback(r)


def test_pmi1_abort_code_out_of_range(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "abort1.py", RAW + """
    ask("cmd=init pmi_version=1 pmi_subversion=1")
    if rank == 0:
        sock.sendall(b"cmd=abort exitcode=512 message=bye\\n")
    time.sleep(30)
    """)
    r = pmrun("-n", "2", "python", str(prog), timeout=30)
    assert r.returncode == 1, r.stderr
    assert "called abort with code 512" in r.stderr
    no_traceback(r)


NATIVE_LIST_ID = """
    import os, socket, time
    from pm.proto import native
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    dec = native.FrameDecoder()

    def call(frame):
        sock.sendall(frame)
        while True:
            got = dec.feed(sock.recv(65536))
            if got:
                return got[0]

    sock.sendall(native.MAGIC)
    call(native.pack([1, "init"]))
    bad = call(native.pack([[2], "barrier"]))
    assert bad[0] == [2] and bad[1] is False, bad
    print("REPLY", bad[2], flush=True)
    assert call(native.pack([3, "barrier"]))[1] is True
    assert call(native.pack([4, "finalize"]))[1] is True
"""


def test_native_request_id_must_be_an_integer(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "listid.py", NATIVE_LIST_ID)
    r = pmrun("-n", "2", "python", str(prog), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("REPLY request id must be an integer") == 2, r.stdout
    no_traceback(r)


def test_wrong_kvsname_is_refused(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "kvsname.py", RAW + """
    ask("cmd=init pmi_version=1 pmi_subversion=1")
    print(ask("cmd=put kvsname=other key=k value=v"))
    print(ask("cmd=get kvsname=other key=PMI_process_mapping"))
    print(ask("cmd=finalize"))
    """)
    r = pmrun("-n", "1", "python", str(prog), timeout=30)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert re.fullmatch(r"cmd=put_result rc=1 msg=\S*kvsname_'other'\S*", lines[0]), lines
    assert re.fullmatch(r"cmd=get_result rc=1 msg=\S*kvsname_'other'\S*", lines[1]), lines


def test_healthy_ranks_are_not_blamed(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "blame.py", RAW + """
    ask("cmd=init pmi_version=1 pmi_subversion=1")
    if rank == 3:
        sys.exit(15)
    print(ask("cmd=barrier_in"), flush=True)
    time.sleep(30)
    """)
    r = pmrun("-n", "4", "python", str(prog), timeout=30)
    assert r.returncode == 15, r.stderr
    assert "rank 3 (node 0" in r.stderr
    for rank in (0, 1, 2):
        assert not re.search(rf"rank {rank}\b.*(bad PMI|exited with code 15)", r.stderr), \
            r.stderr
    no_traceback(r)


def test_a_flood_of_bad_lines_is_logged_once_per_cause(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "flood.py", RAW + """
    ask("cmd=init pmi_version=1 pmi_subversion=1")
    for i in range(2000):
        ask(f"garbage{i}")
    for i in range(100):
        ask(f"cmd=nosuch{i}")
    print(ask("cmd=get_appnum"))
    print(ask("cmd=finalize"))
    """)
    r = pmrun("-n", "1", "python", str(prog), timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["cmd=appnum rc=0 appnum=0", "cmd=finalize_ack rc=0"]
    logged = [x for x in r.stderr.splitlines() if "rank 0" in x]
    assert 2 <= len(logged) <= 4, r.stderr
    assert any("without key=value" in x for x in logged), r.stderr
    assert any("unknown PMI-1 command" in x for x in logged), r.stderr
    assert any("2100" in x for x in logged), r.stderr  # the count, once, at the end


@pytest.mark.parametrize("layout", [[], ["--local-nodes", "3"]], ids=["one-node", "3-nodes"])
def test_a_rank_gone_before_the_others_fence_ends_the_job_named(pmrun: Run, tmp_path: Path,
                                                             layout: list[str]) -> None:
    # A rank that ends before PMI (here with status 0, which ends nothing by itself: a
    # wrapper that did not start the program) while the others wait in a barrier it never
    # joins: the job would hang.
    prog = script(tmp_path, "gone.py", RAW + """
    if rank == 2:
        sys.exit(int(sys.argv[1]))
    ask("cmd=init pmi_version=1 pmi_subversion=1")
    print(ask("cmd=barrier_in"), flush=True)
    time.sleep(30)
    """)
    r = pmrun("-n", "3", *layout, "python", str(prog), "0", timeout=30)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert re.fullmatch(r"pmrun: rank 2 \(node [02], \S+\) exited with code 0 (without joining "
                        r"the ranks' PMI fence 1, in which (rank [01]|other ranks) waits?: it "
                        r"can never complete|before PMI init, which rank [01] called: its "
                        r"MPI_Init would wait for it for ever)\n", r.stderr), r.stderr
    # Failures kept going (-disable-auto-cleanup): its own failure first, then this.
    r = pmrun("-n", "3", *layout, "-disable-auto-cleanup", "python", str(prog), "5",
              timeout=30)
    assert r.returncode == 5, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[0].endswith(") exited with code 5"), r.stderr
    assert re.search(r"without joining the ranks' PMI fence 1|before PMI init", lines[1]), \
        r.stderr
    no_traceback(r)


@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["one-node", "2-nodes"])
def test_mpi_init_waiting_for_a_rank_that_never_started_mpi_is_named(
        pmrun: Run, tmp_path: Path, layout: list[str]) -> None:
    # A wrapper that runs the MPI program on rank 0 only: MPICH's MPI_Init waits for rank 1
    # in a PMI fence between nodes, in shared memory within one (where pmrun sees nothing
    # of it): either way it would wait for ever.
    prog = script(tmp_path, "hello.py", """
    from mpi4py import MPI
    print(MPI.COMM_WORLD.size, flush=True)
    """)
    r = pmrun("-n", "2", *layout, "sh", "-c",
              f'[ "$PMI_RANK" = 1 ] || exec {sys.executable} {prog}', timeout=60)
    assert_never_started_named(r, "fence")
    no_traceback(r)
