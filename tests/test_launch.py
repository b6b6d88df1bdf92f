"""Launching unmodified MPICH (mpi4py and C) through pmrun's tree of node agents,
and what happens when ranks fail, are signalled, or the launcher dies."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import (
    cmdline,
    first_cause,
    pids_with,
    pids_with_env,
    read_lines,
    script,
    wait_gone,
    wait_until,
)

Run = Callable[..., subprocess.CompletedProcess[str]]
Start = Callable[..., subprocess.Popen[bytes]]

HELLO = re.compile(r"Hello, World! I am process\s+(\d+) of (\d+) on ")
TREE = ("--local-nodes", "4", "--fanout", "2")


def _hello_ranks(out: str, n: int) -> None:
    got = sorted(int(m.group(1)) for m in HELLO.finditer(out))
    assert got == list(range(n)), out
    assert all(int(m.group(2)) == n for m in HELLO.finditer(out)), out


# --- hello world --------------------------------------------------------------


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_mpi4py_hello(pmrun: Run, n: int) -> None:
    r = pmrun("-n", str(n), "python", "-m", "mpi4py.bench", "helloworld")
    assert r.returncode == 0, r.stderr
    _hello_ranks(r.stdout, n)
    assert r.stderr == ""


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("n", [1, 4, 16])
def test_mpi4py_hello_on_a_tree(pmrun: Run, n: int) -> None:
    r = pmrun("-n", str(n), *TREE, "python", "-m", "mpi4py.bench", "helloworld")
    assert r.returncode == 0, r.stderr
    _hello_ranks(r.stdout, n)


ALLREDUCE = """
    import os
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.rank + 1, op=MPI.SUM)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    nodes = comm.allreduce(1 if node.rank == 0 else 0)
    # Every rank knows it is one of MPI_LOCALNRANKS on its (virtual) node.
    assert node.size == int(os.environ["MPI_LOCALNRANKS"]), (node.size, os.environ)
    assert node.rank == int(os.environ["MPI_LOCALRANKID"])
    print(f"rank {comm.rank} of {comm.size}: sum {total} nodes {nodes}", flush=True)
"""


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_allreduce_across_virtual_nodes(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "allreduce.py", ALLREDUCE)
    r = pmrun("-n", "8", *TREE, "python", str(prog))
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines(), key=lambda s: int(s.split()[1]))
    # 4 virtual nodes with 2 ranks each: MPICH sees 4 shared-memory groups.
    assert lines == [f"rank {i} of 8: sum 36 nodes 4" for i in range(8)], r.stdout


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_ringtest_across_virtual_nodes(pmrun: Run) -> None:
    r = pmrun("-n", "8", *TREE, "python", "-m", "mpi4py.bench", "ringtest",
              "-n", "4096", "-l", "50")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"time for 50 loops = \S+ seconds \(8 processes, 4096 bytes\)\n",
                        r.stdout), r.stdout


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("nodes", [1, 2])
def test_c_hello(pmrun: Run, c_hello: Path, nodes: int) -> None:
    r = pmrun("-n", "8", "--local-nodes", str(nodes), str(c_hello))
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"hello from 8 ranks, max MPI_Init \d+\.\d ms\n", r.stdout), r.stdout


NODE_PEERS = """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    peers = node.allgather(world.rank)
    print(world.rank, "node", ",".join(map(str, peers)), "sum", world.allreduce(world.rank),
          flush=True)
"""


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", [["-m", "cyclic"], ["--map-by", "node"], ["-m", "plane=2"]])
def test_ranks_dealt_to_the_nodes_as_srun_deals_them(pmrun: Run, tmp_path: Path,
                                                     how: list[str]) -> None:
    # MPICH learns each rank's node from PMI_process_mapping: its node communicator must
    # hold the ranks pmrun dealt there (srun's -m cyclic, Open MPI's --map-by node).
    prog = script(tmp_path, "peers.py", NODE_PEERS)
    r = pmrun("-n", "5", "--local-nodes", "2", *how, "python", str(prog))
    assert r.returncode == 0, r.stderr
    want = {"cyclic": ["0,2,4", "1,3"], "node": ["0,2,4", "1,3"], "plane=2": ["0,1,4", "2,3"]}
    nodes = want[how[1]]
    rows = sorted(r.stdout.splitlines(), key=lambda line: int(line.split()[0]))
    assert rows == [f"{rank} node {next(n for n in nodes if str(rank) in n.split(','))} sum 10"
                    for rank in range(5)], r.stdout


MEMORY_KINDS = """
    from mpi4py import MPI

    kinds = MPI.COMM_WORLD.Get_info().Get("mpi_memory_alloc_kinds")
    print(MPI.COMM_WORLD.rank, kinds, flush=True)
"""


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("nodes", [[], ["--local-nodes", "2"]])
def test_memory_alloc_kinds_reach_mpich_as_hydras_do(pmrun: Run, tmp_path: Path,
                                                     nodes: list[str]) -> None:
    """Hydra's -memory-alloc-kinds: MPICH asks for PMI_mpi_memory_alloc_kinds at MPI_Init
    and adds what it supports of them (mpi:alloc_mem; not cuda here) to its default."""
    prog = script(tmp_path, "kinds.py", MEMORY_KINDS)
    r = pmrun("-n", "2", *nodes, "-memory-alloc-kinds", "mpi:alloc_mem,cuda:device", "python",
              str(prog))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 mpi,system,mpi:alloc_mem",
                                             "1 mpi,system,mpi:alloc_mem"], r.stdout
    r = pmrun("-n", "1", *nodes, "python", str(prog))
    assert (r.returncode, r.stdout) == (0, "0 mpi,system\n"), r.stderr


MPMD = """
    import sys
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    appnum = comm.Get_attr(MPI.APPNUM)
    total = comm.allreduce(1)
    print(f"{sys.argv[1]} rank {comm.rank} appnum {appnum} of {total}", flush=True)
"""


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_mpmd_appnum(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "mpmd.py", MPMD)
    r = pmrun("--local-nodes", "2", "-n", "2", "python", str(prog), "first",
              ":", "-n", "3", "python", str(prog), "second")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [
        "first rank 0 appnum 0 of 5", "first rank 1 appnum 0 of 5",
        "second rank 2 appnum 1 of 5", "second rank 3 appnum 1 of 5",
        "second rank 4 appnum 1 of 5",
    ], r.stdout


# --- failures -------------------------------------------------------------------

FAIL = """
    import os, signal, sys
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    comm.Barrier()
    if comm.rank == int(sys.argv[1]):
        how = sys.argv[2]
        if how == "exit":
            sys.stdout.flush()
            os._exit(3)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "abort":
            comm.Abort(7)
    comm.Barrier()  # the others wait for the failed rank: pmrun must end them
"""


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "rank", "code", "named"),
    [
        ("exit", 2, 3, r"rank 2 \(node 1, [^)]*\) exited with code 3"),
        ("kill", 3, 137, r"rank 3 \(node 1, [^)]*\) killed by SIGKILL"),
        ("abort", 1, 7, r"rank 1 \(node 0, [^)]*\) called abort with code 7"),
    ],
)
def test_failing_rank_is_named(pmrun: Run, tmp_path: Path, marker: str, how: str, rank: int,
                               code: int, named: str) -> None:
    prog = script(tmp_path, "fail.py", FAIL)
    r = pmrun("-n", "4", "--local-nodes", "2", "python", str(prog), str(rank), how, marker)
    assert r.returncode == code, r.stderr
    # The root cause comes first and is named once, with the node it ran on.
    first = first_cause(r.stderr)
    assert re.search(named, first), r.stderr
    wait_gone(marker, 10)


SLEEPER = """
    import os, sys, time
    if sys.argv[1] == "mpi":
        from mpi4py import MPI
        MPI.COMM_WORLD.Barrier()
    if sys.argv[1] == "child":  # a process of the rank's own, in its process group
        import subprocess
        subprocess.Popen(["sh", "-c", "sleep 300; : " + sys.argv[2]])
    print("up", os.environ["PMI_RANK"], flush=True)
    time.sleep(300)
"""


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_sigint_is_forwarded(pmrun_popen: Start, tmp_path: Path, marker: str) -> None:
    prog = script(tmp_path, "sleeper.py", SLEEPER)
    p = pmrun_popen("-n", "4", "--local-nodes", "2", "python", str(prog), "mpi", marker)
    assert p.stdout is not None
    read_lines(p.stdout, 4, 30)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    text = err.decode()
    assert "forwarding SIGINT" in text
    # Each rank died of the forwarded SIGINT itself (Python re-raises it after the
    # KeyboardInterrupt traceback): pmrun names one of them.
    assert re.search(r"rank \d \(node \d, [^)]*\) killed by SIGINT", text), text
    assert text.count("KeyboardInterrupt") == 4, text
    wait_gone(marker, 10)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nodes", [1, 2])
def test_kill9_of_pmrun_leaves_nothing(pmrun_popen: Start, tmp_path: Path, marker: str,
                                       nodes: int) -> None:
    prog = script(tmp_path, "sleeper.py", SLEEPER)
    p = pmrun_popen("-n", "4", "--local-nodes", str(nodes), "python", str(prog), "child",
                    marker, env={"PMTEST_MARK": marker})
    assert p.stdout is not None
    read_lines(p.stdout, 4, 30)
    ranks = [pid for pid in pids_with(marker)
             if pid != p.pid and (cmdline(pid) or [""])[0] != "sh"]
    assert len(ranks) == 4
    # Each node's ranks are in the process group its guardian leads, and so is what each
    # rank started (here a shell and its sleep: they must go too).
    guardians = {os.getpgid(pid) for pid in ranks}
    assert len(guardians) == nodes
    assert all((cmdline(g) or [""])[0] == "pm-guardian" for g in guardians)

    def shells() -> list[int]:
        return [pid for pid in pids_with(marker) if pid != p.pid and pid not in ranks]

    # (A shell forking its sleep has a twin with its command line until the exec.)
    wait_until(lambda: len(shells()) == 4, 10, "each rank's shell, one each")
    assert {os.getpgid(pid) for pid in shells()} == guardians
    family = set(pids_with_env(marker))
    agents = [pid for pid in family if pid != p.pid and _pgid(pid) not in guardians]
    # The child agent of node 1 when there are two nodes.
    assert len(agents) == nodes - 1, agents
    p.kill()
    p.wait(10)
    wait_gone(marker, 10)
    family |= guardians
    wait_until(lambda: all(cmdline(pid) is None for pid in family), 10,
               "the guardians and agents to end")


PMI_EOF = """
    import os, socket, sys, time

    rank = int(os.environ["PMI_RANK"])
    pmi = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = pmi.makefile("rb")
    pmi.sendall(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
    assert reader.readline().startswith(b"cmd=response_to_init rc=0")
    if rank == 1:
        reader.close()
        pmi.close()
        if sys.argv[1] == "exit":
            sys.exit(0)  # exit 0, but without PMI finalize
        time.sleep(300)  # or stay alive without a PMI connection
    pmi.sendall(b"cmd=barrier_in\\n")  # rank 1 never joins: pmrun must end the job
    print(reader.readline(), flush=True)
    time.sleep(300)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "named"),
    [
        ("exit", "rank 1 (node 1, {host}) exited without calling PMI finalize"),
        ("live", "rank 1 (node 1, {host}) closed its PMI connection before finalize"),
    ],
)
def test_pmi_eof_before_finalize_fails_the_job(pmrun: Run, tmp_path: Path, marker: str,
                                               how: str, named: str) -> None:
    prog = script(tmp_path, "pmi_eof.py", PMI_EOF)
    r = pmrun("-n", "2", "--local-nodes", "2", sys.executable, str(prog), how, marker)
    assert r.returncode == 1, r.stderr
    first = first_cause(r.stderr)
    assert first == "pmrun: " + named.format(host=os.uname().nodename), r.stderr
    wait_gone(marker, 10)
