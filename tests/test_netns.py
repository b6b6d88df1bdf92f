"""Multi-host jobs on real hosts made of network namespaces (tests/netns_util.py).

Each namespace is a host with its own address on a private bridge; the head
runs in the root namespace and listens on the bridge address (``--iface``).
Agents start through the exec launcher (``ip netns exec {host} {command}``),
each starting its own children inside the namespaces (tree spawn), or through
persistent ``pm-agent serve`` services running in the namespaces.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import mpi_missing, pmrun_argv, pmrun_env, script
from netns_util import NetnsHosts, exec_launcher_args, netns_missing

pytestmark = [pytest.mark.netns, pytest.mark.timeout(90)]

_WHY = netns_missing()
if _WHY:
    pytestmark.append(pytest.mark.skip(reason=_WHY))

MPI_PROGRAM = """
    import os
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.rank)
    nets = comm.allgather(os.readlink("/proc/self/ns/net"))
    hosts = comm.allgather(os.environ["PMI_HOSTNAME"])
    comm.Barrier()
    if comm.rank == 0:
        print("sum", total, "size", comm.size, "netns", len(set(nets)),
              "hosts", ",".join(sorted(set(hosts))), flush=True)
"""

#: Every rank says it is ready, then all but the ranks on host ``argv[1]`` wait in
#: a PMI barrier that cannot complete: a collective in flight when the node goes.
HANG_PROGRAM = """
    import os, sys, time
    from pm.client.sync import connect

    pmi = connect()
    print("ready", pmi.rank, flush=True)
    if os.environ["PMI_HOSTNAME"] == sys.argv[1]:
        time.sleep(300)
    try:
        pmi.barrier()
    except Exception as exc:
        print("barrier failed:", exc, flush=True)
        sys.exit(3)
"""


@pytest.fixture
def hosts3() -> Iterator[NetnsHosts]:
    with NetnsHosts(3) as hosts:
        yield hosts


def run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pmrun_argv(*args), cwd=cwd, env=pmrun_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def assert_nothing_left(hosts: NetnsHosts) -> None:
    left = hosts.wait_empty(15)
    assert not left, f"processes left in the namespaces: {left}"


def start_hanging_job(hosts: NetnsHosts, tmp_path: Path, victim: str, *extra: str
                      ) -> subprocess.Popen[str]:
    """Start 6 ranks on 3 hosts and return once every rank said it is ready."""
    prog = script(tmp_path, "hang.py", HANG_PROGRAM)
    args = [*exec_launcher_args(hosts), *extra, "-n", "6", sys.executable, str(prog), victim]
    proc = subprocess.Popen(pmrun_argv(*args), cwd=tmp_path, env=pmrun_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    ready = 0
    deadline = time.monotonic() + 40
    while ready < 6:
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"job did not get ready (rc {proc.returncode}): {out}\n{err}")
        ready += line.startswith("ready")
    return proc


# --------------------------------------------------------------------- exec launcher


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_mpich_job_across_four_namespace_hosts_with_fanout_2(tmp_path: Path) -> None:
    # Tree (fanout 2): head -> h1 -> {h2 -> h3, h4}: agents in namespaces start agents
    # in other namespaces, and MPICH ranks talk across them.
    with NetnsHosts(4) as hosts:
        prog = script(tmp_path, "mpi_prog.py", MPI_PROGRAM)
        res = run([*exec_launcher_args(hosts, fanout=2), "-n", "8", sys.executable,
                   str(prog)], tmp_path)
        assert res.returncode == 0, res.stderr
        assert f"sum 28 size 8 netns 4 hosts {','.join(hosts.names)}" in res.stdout
        assert_nothing_left(hosts)


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_c_mpi_program_across_three_hosts(tmp_path: Path, hosts3: NetnsHosts,
                                          c_hello: Path) -> None:
    res = run([*exec_launcher_args(hosts3), "-n", "6", str(c_hello)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "hello from 6 ranks" in res.stdout
    assert_nothing_left(hosts3)


def test_each_rank_runs_in_its_hosts_namespace(tmp_path: Path, hosts3: NetnsHosts) -> None:
    prog = script(tmp_path, "where.py", """
        import os
        print(os.environ["PMI_RANK"], os.environ["PMI_HOSTNAME"],
              os.readlink("/proc/self/ns/net"))
    """)
    res = run([*exec_launcher_args(hosts3), "-ppn", "1", "-n", "3", sys.executable, str(prog)],
              tmp_path)
    assert res.returncode == 0, res.stderr
    rows = sorted(line.split() for line in res.stdout.splitlines())
    assert [r[1] for r in rows] == hosts3.names
    mine = os.readlink("/proc/self/ns/net")
    assert len({r[2] for r in rows} | {mine}) == 4


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_each_program_runs_on_its_own_hosts(tmp_path: Path, hosts3: NetnsHosts) -> None:
    # Open MPI's --host per app context: a master on the first host (the job's -hosts),
    # workers on the other two, a third program on the last; one MPI job all the same.
    prog = script(tmp_path, "mpmd.py", """
        import os, sys
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        print(world.rank, sys.argv[1], os.environ["PMI_HOSTNAME"],
              ",".join(map(str, node.allgather(world.rank))), world.Get_attr(MPI.APPNUM),
              world.allreduce(world.rank), flush=True)
    """)
    a, b, c = hosts3.names
    res = run([*exec_launcher_args(hosts3), "-n", "1", sys.executable, str(prog), "master",
               ":", "-n", "3", "-host", f"{b},{c}", sys.executable, str(prog), "worker",
               ":", "-n", "2", "-host", f"{c},{a}", sys.executable, str(prog), "third"],
              tmp_path)
    assert res.returncode == 0, res.stderr
    rows = sorted((line.split() for line in res.stdout.splitlines()), key=lambda r: int(r[0]))
    assert rows == [["0", "master", a, "0,5", "0", "15"], ["1", "worker", b, "1,2", "1", "15"],
                    ["2", "worker", b, "1,2", "1", "15"], ["3", "worker", c, "3,4", "1", "15"],
                    ["4", "third", c, "3,4", "2", "15"], ["5", "third", a, "0,5", "2", "15"]]
    assert_nothing_left(hosts3)


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_a_rankfile_places_mpich_ranks_on_the_hosts_it_names(tmp_path: Path,
                                                             hosts3: NetnsHosts) -> None:
    # Open MPI's rankfile, by name and by place (+nK) in the hosts given: each rank in its
    # host's namespace, MPICH's node groups as the file says.
    prog = script(tmp_path, "where.py", """
        import os
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        print(world.rank, os.environ["PMI_HOSTNAME"], os.readlink("/proc/self/ns/net"),
              ",".join(map(str, node.allgather(world.rank))), world.allreduce(world.rank),
              flush=True)
    """)
    a, b, c = hosts3.names
    (tmp_path / "ranks").write_text(f"rank 0={c}\nrank 1={a}\nrank 2={c}\nrank 3=+n1\n")
    res = run([*exec_launcher_args(hosts3), "-rf", "ranks", sys.executable, str(prog)],
              tmp_path)
    assert res.returncode == 0, res.stderr
    rows = sorted((line.split() for line in res.stdout.splitlines()), key=lambda r: int(r[0]))
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("0", c, "0,2", "6"), ("1", a, "1", "6"), ("2", c, "0,2", "6"), ("3", b, "3", "6")]
    assert rows[0][2] == rows[2][2] and len({r[2] for r in rows}) == 3
    # Given no hosts, a rankfile that names them all gives them (in the order it names them).
    (tmp_path / "named").write_text(f"rank 0={c}\nrank 1={a}\nrank 2={c}\n")
    given = exec_launcher_args(hosts3)
    at = given.index("-hosts")
    res = run([*given[:at], *given[at + 2:], "--display-map", "-rf", "named", sys.executable,
               str(prog)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"pmrun: rank map: node 0 ({c}): 0,2\npmrun: rank map: node 1 ({a}): 1\n" in \
        res.stderr, res.stderr
    assert_nothing_left(hosts3)

def test_a_wdir_that_only_the_hosts_have_is_theirs(tmp_path: Path) -> None:
    # Hydra's -wdir is a directory of the hosts': a node-local scratch directory (a tmpfs
    # mounted where each agent starts, in a mount namespace of its own) that this machine
    # lacks runs the ranks there; a host without it is named in one line, status 127.
    node = tmp_path / "node"
    node.mkdir()
    scratch = node / "scratch"
    with NetnsHosts(2) as hosts:
        a, b = hosts.names

        def on(without: str) -> list[str]:
            mount = (f'[ "$0" = {without} ] || {{ mount -t tmpfs pm {node} && '
                     f'mkdir {scratch}; }} && exec ip netns exec "$0" "$@"')
            template = f"unshare --mount --propagation private sh -c '{mount}' {{host}} " \
                       "{command}"
            return ["--launcher", "exec", "--launcher-exec", template, "-hosts", f"{a},{b}",
                    "--iface", hosts.bridge_addr]

        for wdir in (str(scratch), "node/scratch"):  # (relative: from pmrun's directory)
            res = run([*on("none"), "-wdir", wdir, "-n", "2", "sh", "-c",
                       "echo $PMI_RANK $PMI_HOSTNAME $(pwd)"], tmp_path)
            assert res.returncode == 0, res.stderr
            assert sorted(res.stdout.splitlines()) == [f"0 {a} {scratch}", f"1 {b} {scratch}"]
        assert not scratch.exists()
        res = run([*on(b), "-wdir", str(scratch), "-n", "2", "pwd"], tmp_path)
        assert (res.returncode, res.stderr) == (
            127, f"pmrun: rank 1 (node 1, {b}) could not start: pwd: its working directory "
                 f"{scratch}: no such directory\n")
        assert_nothing_left(hosts)


def test_link_down_names_the_node_fails_the_barrier_and_leaves_nothing(
        tmp_path: Path, hosts3: NetnsHosts) -> None:
    victim = hosts3.names[2]
    proc = start_hanging_job(hosts3, tmp_path, victim, "--heartbeat", "2")
    t0 = time.monotonic()
    hosts3.link_down(2)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 255, err
    assert f"node 2 ({victim}) lost" in err
    assert took < 2 + 5, f"the loss took {took:.1f} s to end the job"
    assert_nothing_left(hosts3)


def test_kill9_of_an_agent_names_the_node_and_leaves_nothing(
        tmp_path: Path, hosts3: NetnsHosts) -> None:
    victim = hosts3.names[1]
    proc = start_hanging_job(hosts3, tmp_path, hosts3.names[2])
    agents = hosts3.agent_pids(victim)
    assert len(agents) == 1, agents
    os.kill(agents[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 255, err
    assert re.search(rf"node 1 \({victim}\) lost: agent killed by SIGKILL", err), err
    assert_nothing_left(hosts3)


def test_a_node_that_does_not_join_is_named(tmp_path: Path, hosts3: NetnsHosts) -> None:
    # The launcher command for the third host never starts an agent.
    stall = tmp_path / "stall.sh"
    stall.write_text('#!/bin/sh\nhost=$1; shift\n'
                     f'[ "$host" = {hosts3.names[2]} ] && exec sleep 300\n'
                     'exec ip netns exec "$host" "$@"\n')
    stall.chmod(0o755)
    args = ["--launcher", "exec", "--launcher-exec", f"{stall} {{host}} {{command}}",
            "-hosts", ",".join(hosts3.names), "--fanout", "2", "--iface", hosts3.bridge_addr,
            "--join-timeout", "3", "-n", "3", "true"]
    t0 = time.monotonic()
    res = run(args, tmp_path)
    assert res.returncode == 255, res.stderr
    assert f"node 2 ({hosts3.names[2]}) lost: did not join the tree within 3 s" in res.stderr
    assert time.monotonic() - t0 < 20
    assert_nothing_left(hosts3)


def test_unreachable_head_address_is_a_join_timeout_not_a_hang(
        tmp_path: Path, hosts3: NetnsHosts) -> None:
    # --iface 127.0.0.1: the namespaces cannot reach the head; the job must still end.
    args = ["--launcher", "exec", "--launcher-exec", "ip netns exec {host} {command}",
            "-hosts", hosts3.names[0], "--iface", "127.0.0.1", "--join-timeout", "3",
            "--heartbeat", "2", "-n", "1", "true"]
    res = run(args, tmp_path)
    assert res.returncode == 255
    assert f"node 0 ({hosts3.names[0]}) lost" in res.stderr
    assert_nothing_left(hosts3)
