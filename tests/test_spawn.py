"""MPI_Comm_spawn under pmrun with the real MPICH wheel and mpi4py.

Spawned jobs run on the running job's agents (one node, a local tree, namespace
hosts); parents and children merge and agree; spawn_multiple, MPIPoolExecutor,
nested spawn, a failing child, ``-l`` labels, ``--profile``, and a ``kill -9``
of pmrun while children are being spawned.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import (
    imported,
    pmrun_argv,
    pmrun_env,
    read_lines,
    script,
    wait_count,
    wait_gone,
)

from pm.proto.shm_layout import NAME_PREFIX

pytestmark = [pytest.mark.mpi, pytest.mark.timeout(120)]

#: 2 parents spawn 3 children; the 5 merge and allreduce their merged ranks.
MERGE = """
    import sys
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL:
        inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__] + sys.argv[1:],
                                     maxprocs=3)
        merged = inter.Merge(high=False)
    else:
        inter = parent
        merged = parent.Merge(high=True)
    total = merged.allreduce(merged.rank)
    who = "child" if parent != MPI.COMM_NULL else "parent"
    print(who, MPI.COMM_WORLD.rank, "of", MPI.COMM_WORLD.size, "merged", merged.size,
          "sum", total, "universe", MPI.COMM_WORLD.Get_attr(MPI.UNIVERSE_SIZE), flush=True)
    merged.Free()
    inter.Disconnect()
"""


def run(tmp_path: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pmrun_argv(*args), cwd=tmp_path, env=pmrun_env(), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def check_merge(res: subprocess.CompletedProcess[str]) -> None:
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if "merged" in line]
    assert len(lines) == 5, res.stdout + res.stderr
    assert all("merged 5 sum 10" in line for line in lines), res.stdout
    assert sum("parent" in line and "of 2" in line for line in lines) == 2
    assert sum("child" in line and "of 3" in line for line in lines) == 3


def test_spawn_merge_allreduce_one_node(tmp_path: Path) -> None:
    prog = script(tmp_path, "merge.py", MERGE)
    res = run(tmp_path, "-n", "2", sys.executable, str(prog))
    check_merge(res)


def test_a_one_node_spawn_is_served_without_asyncio(tmp_path: Path) -> None:
    """The quick phase starts and serves a one-node job's spawned jobs itself."""
    prog = script(tmp_path, "merge.py", MERGE)
    code, mods = imported(pmrun_argv("-n", "2", sys.executable, str(prog)), pmrun_env(),
                          tmp_path)
    assert code == 0
    assert "pm.agent.quick_spawns" in mods
    assert "asyncio" not in mods and "pm.agent.node" not in mods


# Raw PMI-1: the parent spawns 2 children with a pre-put key, then publishes a name
# (which hands the job over to the agent) and says so in a file; the children, started
# and served by the quick phase, go on under the agent: a barrier, a get, an exit 3.
HANDED_OVER_CHILDREN = """
    import os, socket, sys, time
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")
    rank = int(os.environ["PMI_RANK"])
    handed = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handed")

    def ask(line):
        sock.sendall(line)
        return reader.readline().decode().split()

    ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
    kvs = ask(b"cmd=get_my_kvsname\\n")[-1].split("=")[1]
    if os.environ.get("PMI_SPAWNED") != "1":
        got = ask(b"mcmd=spawn\\nnprocs=2\\nexecname=%s\\ntotspawns=1\\nspawnssofar=1\\n"
                  b"argcnt=1\\narg1=%s\\npreput_num=1\\npreput_key_0=PARENT\\n"
                  b"preput_val_0=%s\\ninfo_num=0\\nendcmd\\n"
                  % (sys.executable.encode(), os.path.abspath(__file__).encode(),
                     kvs.encode()))
        print("spawned", *got, flush=True)
        got = ask(b"cmd=publish_name service=svc%s port=tcp://here:1\\n" % kvs.encode())
        assert got == ["cmd=publish_result", "rc=0"], got
        open(handed, "w").close()
        ask(b"cmd=finalize\\n")
        sys.exit(0)
    ask(b"cmd=put kvsname=%s key=c%d value=v%d\\n" % (kvs.encode(), rank, rank))
    assert ask(b"cmd=barrier_in\\n")[:2] == ["cmd=barrier_out", "rc=0"]
    parent = ask(b"cmd=get kvsname=%s key=PARENT\\n" % kvs.encode())[-1]
    print("child", rank, kvs, parent, flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(handed):  # the agent serves the job from now on
        assert time.monotonic() < deadline, "the parent never published its name"
        time.sleep(0.01)
    assert ask(b"cmd=barrier_in\\n")[:2] == ["cmd=barrier_out", "rc=0"]
    other = ask(b"cmd=get kvsname=%s key=c%d\\n" % (kvs.encode(), 1 - rank))[-1]
    print("child after", rank, other, flush=True)
    # Rank 1's exit code 3 fails the job and kills the rest: not before rank 0 printed.
    assert ask(b"cmd=barrier_in\\n")[:2] == ["cmd=barrier_out", "rc=0"]
    ask(b"cmd=finalize\\n")
    sys.exit(3 if rank == 1 else 0)
"""


def test_a_job_handed_over_takes_its_spawned_jobs_along(tmp_path: Path) -> None:
    prog = script(tmp_path, "handed.py", HANDED_OVER_CHILDREN)
    res = run(tmp_path, "-l", "-n", "1", sys.executable, str(prog), timeout=60)
    out = res.stdout.splitlines()
    assert "[0] spawned cmd=spawn_result rc=0 errcodes=0,0" in out, res.stdout + res.stderr
    kvs = next(line.split("value=")[1] for line in out if line.startswith("[1:0] child 0 "))
    assert f"[1:0] child 0 {kvs}_s1 value={kvs}" in out, res.stdout
    assert f"[1:1] child 1 {kvs}_s1 value={kvs}" in out, res.stdout
    assert "[1:0] child after 0 value=v1" in out and "[1:1] child after 1 value=v0" in out
    assert res.returncode == 3, res.stdout + res.stderr
    assert "rank 1 of spawned job 1 (node 0" in res.stderr and "code 3" in res.stderr, (
        res.stderr)


def test_spawn_merge_allreduce_local_tree(tmp_path: Path) -> None:
    prog = script(tmp_path, "merge.py", MERGE)
    res = run(tmp_path, "--local-nodes", "3", "--fanout", "2", "-n", "3", "-ppn", "1",
              "-l", sys.executable, str(prog))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = [line for line in res.stdout.splitlines() if "merged" in line]
    # 3 parents (one per node) and 3 children: labels say who is who.
    assert len(lines) == 6 and all("merged 6 sum 15" in line for line in lines), res.stdout
    assert sorted(line.split()[0] for line in lines) == [
        "[0]", "[1:0]", "[1:1]", "[1:2]", "[1]", "[2]"], res.stdout


def test_spawn_two_parents_on_a_local_tree(tmp_path: Path) -> None:
    prog = script(tmp_path, "merge.py", MERGE)
    res = run(tmp_path, "--local-nodes", "3", "--fanout", "2", "-n", "2", "-ppn", "1",
              sys.executable, str(prog))
    check_merge(res)


def test_spawn_multiple_two_programs(tmp_path: Path) -> None:
    prog = script(tmp_path, "multi.py", """
        import os, sys
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            other = os.path.join(os.path.dirname(__file__), "other.py")
            inter = MPI.COMM_WORLD.Spawn_multiple(
                [sys.executable, sys.executable], args=[[__file__, "first"], [other]],
                maxprocs=[1, 2])
            merged = inter.Merge(high=False)
            print("parent sum", merged.allreduce(1), flush=True)
        else:
            inter = parent
            merged = parent.Merge(high=True)
            print("first", MPI.COMM_WORLD.rank, "appnum",
                  MPI.COMM_WORLD.Get_attr(MPI.APPNUM), merged.allreduce(1),
                  os.environ["PMI_SPAWNED"], flush=True)
        merged.Free()
        inter.Disconnect()
    """)
    script(tmp_path, "other.py", """
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        merged = parent.Merge(high=True)
        print("other", MPI.COMM_WORLD.rank, "appnum", MPI.COMM_WORLD.Get_attr(MPI.APPNUM),
              merged.allreduce(1), flush=True)
        merged.Free()
        parent.Disconnect()
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog))
    assert res.returncode == 0, res.stdout + res.stderr
    out = sorted(res.stdout.splitlines())
    assert out == ["first 0 appnum 0 4 1", "other 1 appnum 1 4", "other 2 appnum 1 4",
                   "parent sum 4"], res.stdout


def test_pool_executor_maps_100_items_without_usize(tmp_path: Path) -> None:
    prog = script(tmp_path, "pool.py", """
        from mpi4py.futures import MPIPoolExecutor

        def square(x):
            return x * x

        if __name__ == "__main__":
            with MPIPoolExecutor() as pool:
                got = list(pool.map(square, range(100)))
            print("sum", sum(got), "ok", got == [x * x for x in range(100)], flush=True)
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "sum 328350 ok True" in res.stdout


def test_nested_spawn(tmp_path: Path) -> None:
    prog = script(tmp_path, "nest.py", """
        import sys
        from mpi4py import MPI

        depth = int(sys.argv[1])
        parent = MPI.Comm.Get_parent()
        got = []
        if depth < 2:
            inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, str(depth + 1)],
                                         maxprocs=1)
            got.append(inter.bcast(None, root=0))
            inter.Disconnect()
        if parent != MPI.COMM_NULL:
            parent.bcast(f"from depth {depth}", root=MPI.ROOT)
            parent.Disconnect()
        print("depth", depth, got, flush=True)
    """)
    res = run(tmp_path, "-n", "1", "-l", sys.executable, str(prog), "0")
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(res.stdout.splitlines()) == [
        "[0] depth 0 ['from depth 1']", "[1:0] depth 1 ['from depth 2']", "[2:0] depth 2 []"]


def test_failing_child_fails_the_run_with_its_status(tmp_path: Path, marker: str) -> None:
    prog = script(tmp_path, "fail.py", """
        import os, sys, time
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, sys.argv[1]], maxprocs=2)
        elif MPI.COMM_WORLD.rank == 1:
            os._exit(5)
        time.sleep(120)  # killed when the child fails
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog), marker, timeout=60)
    assert res.returncode == 5, res.stdout + res.stderr
    assert "rank 1 of spawned job 1" in res.stderr and "code 5" in res.stderr, res.stderr
    wait_gone(marker, 10)


def test_profile_shows_spawned_jobs(tmp_path: Path) -> None:
    prog = script(tmp_path, "merge.py", MERGE)
    res = run(tmp_path, "--profile", "-", "-n", "2", sys.executable, str(prog))
    check_merge(res)
    assert "spawned job 1 (by the launched job): 3 ranks of" in res.stderr, res.stderr


def test_universe_size_is_the_nodes_slots(tmp_path: Path) -> None:
    prog = script(tmp_path, "merge.py", MERGE)
    res = run(tmp_path, "-n", "2", sys.executable, str(prog))
    check_merge(res)
    # No slots given: the job's own ranks fill the node (children and parents agree).
    assert all("universe 2" in line for line in res.stdout.splitlines()), res.stdout


@pytest.mark.parametrize("where", [["--local-nodes", "2", "-ppn", "1"], []],
                         ids=["agents", "quick-phase"])
def test_kill_9_of_pmrun_during_a_spawn_leaves_nothing(tmp_path: Path, marker: str,
                                                       where: list[str]) -> None:
    prog = script(tmp_path, "spawner.py", """
        import sys
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            while True:  # spawn after spawn until killed
                inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, sys.argv[1]],
                                             maxprocs=2)
                print("spawned", flush=True)
        else:
            import time
            time.sleep(300)
    """)
    before = set(os.listdir("/dev/shm"))
    proc = subprocess.Popen(pmrun_argv(*where, "-n", "2", sys.executable, str(prog), marker),
                            cwd=tmp_path, env=pmrun_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_count(marker, 6, 60)  # parents and some children running, more coming
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_gone(marker, 20)
        # No agent is left to remove its segments: none of pmrun's may remain.
        ours = f"-{proc.pid}-"  # job ids (and their segments) name the head's pid
        left = [n for n in set(os.listdir("/dev/shm")) - before
                if n.startswith(NAME_PREFIX) and ours in n]
        assert not left, left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_reaches_the_children_of_a_one_node_job(tmp_path: Path, marker: str) -> None:
    """pmrun's SIGTERM reaches the ranks its quick phase spawned (the job is handed over
    to the agent, which forwards it), and nothing is left."""
    prog = script(tmp_path, "term.py", """
        import signal, sys, time
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, sys.argv[1]], maxprocs=2)
        else:
            def bye(signum, frame):
                print("child", MPI.COMM_WORLD.rank, "got", signal.Signals(signum).name,
                      flush=True)
                sys.exit(0)

            signal.signal(signal.SIGTERM, bye)
            print("ready", flush=True)
        while True:
            time.sleep(1)
    """)
    proc = subprocess.Popen(pmrun_argv("-n", "1", sys.executable, str(prog), marker),
                            cwd=tmp_path, env=pmrun_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert read_lines(proc.stdout, 2, 30) == [b"ready\n"] * 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert sorted(out.decode().splitlines()) == ["child 0 got SIGTERM",
                                                     "child 1 got SIGTERM"], err
        assert proc.returncode == 128 + signal.SIGTERM, err
        wait_gone(marker, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_api_job_reports_spawned_jobs(tmp_path: Path) -> None:
    prog = script(tmp_path, "merge.py", MERGE)
    code = f"""
import asyncio, sys
sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})
import pm

async def main():
    async with pm.Cluster() as cluster:
        job = await cluster.launch([sys.executable, {str(prog)!r}], n=2)
        lines = [(who, line) async for who, _s, line in job.output()]
        res = await job.wait()
    kids = res.spawned[1]
    print("RC", res.returncode, "KIDS", kids["size"], sorted(kids["ranks"]),
          all(r.ok for r in kids["ranks"].values()),
          sorted(str(w) for w, _ in lines))

asyncio.run(main())
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=pmrun_env(),
                         capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "RC 0 KIDS 3 [0, 1, 2] True ['0', '1', '1:0', '1:1', '1:2']" in res.stdout, res.stdout


def test_host_info_key_and_an_unknown_host(tmp_path: Path) -> None:
    prog = script(tmp_path, "hosts.py", """
        import socket, sys
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            here = MPI.Info.Create()
            here.Set("host", socket.gethostname())
            inter = MPI.COMM_SELF.Spawn(sys.executable, args=[__file__], maxprocs=2, info=here)
            print("spawned", inter.Get_remote_size(), flush=True)
            inter.Barrier()
            inter.Disconnect()
            elsewhere = MPI.Info.Create()
            elsewhere.Set("host", "no-such-node-anywhere")
            try:
                MPI.COMM_SELF.Spawn(sys.executable, args=[__file__], maxprocs=1,
                                    info=elsewhere)
                print("spawned on a host that is not ours", flush=True)
            except MPI.Exception:
                print("refused", flush=True)
        else:
            parent.Barrier()
            parent.Disconnect()
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog))
    assert "spawned 2" in res.stdout and "refused" in res.stdout, res.stdout + res.stderr
    assert "no-such-node-anywhere is not one of the job's nodes" in res.stderr


@pytest.mark.parametrize("opts", [[], ["--env", "PM_QUICK=0"], ["--local-nodes", "2"]],
                         ids=["quick", "agent", "2nodes"])
def test_a_wdir_that_is_no_directory_fails_the_spawn_not_the_job(tmp_path: Path,
                                                                  opts: list[str]) -> None:
    prog = script(tmp_path, "wdir.py", """
        import sys
        from mpi4py import MPI

        info = MPI.Info.Create()
        info.Set("wdir", "/no/such/dir")
        try:
            MPI.COMM_SELF.Spawn(sys.executable, args=["-c", "pass"], maxprocs=1, info=info)
            print("spawned", flush=True)
        except MPI.Exception:
            print("refused", flush=True)
    """)
    env = pmrun_env({"PM_QUICK": "0"} if "PM_QUICK=0" in opts else None)
    args = [o for o in opts if o not in ("--env", "PM_QUICK=0")]
    res = subprocess.run(pmrun_argv(*args, "-n", "1", sys.executable, str(prog)), cwd=tmp_path,
                         env=env, text=True, capture_output=True, timeout=90,
                         stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout) == (0, "refused\n"), res.stderr
    assert res.stderr == (f"pmrun: rank 0: spawn refused: cannot spawn {sys.executable}: its "
                          "working directory /no/such/dir: no such directory\n")


#: Under --local-nodes 3 -ppn 1 rank R runs on node R, a child of that node's agent: rank 0
#: spawns with the host info key naming one node (``<host>-<N>``), each child answers with
#: its parent process (its agent), and rank 0 checks it is node N's.  spawn_multiple places
#: each command on its own named node; a node the run does not have is refused.
ON_NAMED_NODES = """
    import os, socket, sys
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent != MPI.COMM_NULL:
        parent.send(os.getppid(), dest=0)
        parent.Barrier()
        parent.Disconnect()
        sys.exit(0)
    agents = MPI.COMM_WORLD.allgather(os.getppid())  # rank R's is node R's agent
    if MPI.COMM_WORLD.rank == 0:
        me = socket.gethostname()

        def spawn(hosts, nprocs):
            infos = []
            for h in hosts:
                infos.append(MPI.Info.Create())
                infos[-1].Set("host", h)
            inter = MPI.COMM_SELF.Spawn_multiple([sys.executable] * len(hosts),
                                                 [[__file__]] * len(hosts), nprocs, info=infos)
            got = [inter.recv(source=i) for i in range(sum(nprocs))]
            inter.Barrier()
            inter.Disconnect()
            return [agents.index(p) if p in agents else None for p in got]

        print("on node 2:", spawn([f"{me}-2"], [2]), flush=True)
        print("on nodes 1 and 0:", spawn([f"{me}-1", f"{me}-0"], [1, 1]), flush=True)
        print("on the host:", sorted(set(spawn([me], [3]))), flush=True)
        try:
            spawn([f"{me}-7"], [1])
            print("spawned on a node the run does not have", flush=True)
        except MPI.Exception:
            print("node 7 refused", flush=True)
    MPI.COMM_WORLD.Barrier()
"""


def test_host_info_key_names_a_node_under_local_nodes(tmp_path: Path) -> None:
    prog = script(tmp_path, "nodes.py", ON_NAMED_NODES)
    res = run(tmp_path, "--local-nodes", "3", "-ppn", "1", "-n", "3", sys.executable, str(prog))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "on node 2: [2, 2]", "on nodes 1 and 0: [1, 0]", "on the host: [0, 1, 2]",
        "node 7 refused"], res.stdout + res.stderr
    # One line says why, naming the node and what the run has.
    why = [line for line in res.stderr.splitlines() if "-7 is not" in line]
    assert len(why) == 1 and "-7 is not one of the job's nodes" in why[0], res.stderr
    assert "one node: " in why[0] and "-0 to " in why[0] and why[0].endswith("-2)"), why


def test_spawned_jobs_that_ended_leave_no_guardian(tmp_path: Path) -> None:
    # Spawned ranks on a node where the launched job has ranks join their guardian's
    # process group (pm.agent.spawn.Guardian): no guardian is started, or left, per spawned
    # job -- a pool or a manager spawns again and again.
    prog = script(tmp_path, "again.py", """
        import os, sys, time
        from mpi4py import MPI

        def guardians(agent):
            out = 0
            for d in os.listdir("/proc"):
                try:
                    with open(f"/proc/{d}/stat") as f:
                        st = f.read().rsplit(")", 1)[1].split()
                    with open(f"/proc/{d}/cmdline", "rb") as f:
                        argv0 = f.read().split(b"\\0")[0]
                except (OSError, IndexError):
                    continue
                out += st[0] != "Z" and int(st[1]) == agent and argv0 == b"pm-guardian"
            return out

        def topology():
            return os.path.exists(os.environ.get("HWLOC_XMLFILE", "/nonexistent"))

        parent = MPI.Comm.Get_parent()
        if parent != MPI.COMM_NULL:
            parent.gather(topology(), root=0)
            parent.gather(os.getpgrp(), root=0)
            parent.Disconnect()
            sys.exit(0)
        groups = set()
        for i in range(6):
            inter = MPI.COMM_SELF.Spawn(sys.executable, args=[__file__], maxprocs=2)
            inter.gather(None, root=MPI.ROOT)
            groups.update(inter.gather(None, root=MPI.ROOT))
            inter.Disconnect()
        print("same group", groups == {os.getpgrp()}, flush=True)
        deadline = time.monotonic() + 20
        # The launched job's guardian only.
        while guardians(os.getppid()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        print("guardians", guardians(os.getppid()), flush=True)
        # The node's topology copy (the launched job's) outlives the spawned jobs that
        # read it: the next one's ranks read it too.
        inter = MPI.COMM_SELF.Spawn(sys.executable, args=[__file__], maxprocs=2)
        print("topology", topology(), inter.gather(None, root=MPI.ROOT), flush=True)
        inter.gather(None, root=MPI.ROOT)
        inter.Disconnect()
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines() == [
        "same group True", "guardians 1", "topology True [True, True]"], res.stdout + res.stderr


def test_children_that_outlive_their_parent_are_ended(tmp_path: Path, marker: str) -> None:
    prog = script(tmp_path, "orphan.py", """
        import sys, time
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, sys.argv[1]],
                                         maxprocs=2)
            inter.Disconnect()
            print("parent done", flush=True)
        else:
            parent.Disconnect()
            time.sleep(300)  # never ends on its own
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog), marker, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "parent done" in res.stdout
    assert "spawned job 1 outlived the launched job" in res.stderr, res.stderr
    wait_gone(marker, 10)


def test_a_spawned_jobs_output_arrives_whole(tmp_path: Path) -> None:
    prog = script(tmp_path, "chatty.py", """
        import sys
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__], maxprocs=2)
        else:
            inter = parent
            line = f"{MPI.COMM_WORLD.rank} " + "x" * 200 + "\\n"
            for _ in range(40000):  # 8 MB each, beyond the output window
                sys.stdout.write(line)
            sys.stdout.flush()
        inter.Barrier()
        inter.Disconnect()
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 80000 and all(len(line) == 202 for line in lines)
    assert sum(line.startswith("1 ") for line in lines) == 40000


def test_abort_in_a_spawned_job_ends_the_run(tmp_path: Path, marker: str) -> None:
    prog = script(tmp_path, "abort.py", """
        import sys, time
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent == MPI.COMM_NULL:
            MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, sys.argv[1]], maxprocs=2)
            time.sleep(120)
        elif MPI.COMM_WORLD.rank == 1:
            MPI.COMM_WORLD.Abort(7)
        time.sleep(120)
    """)
    res = run(tmp_path, "-n", "1", sys.executable, str(prog), marker, timeout=60)
    assert res.returncode == 7, res.stdout + res.stderr
    assert "rank 1 of spawned job 1" in res.stderr and "abort with code 7" in res.stderr
    wait_gone(marker, 10)


#: A parent spawns ``argv[1]`` children; each rank says who it is, its rank and its CPUs.
WHO = """
    import os, sys
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL:
        inter = MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__, "0"],
                                     maxprocs=int(sys.argv[1]))
    else:
        inter = parent
    who = "child" if parent != MPI.COMM_NULL else "parent"
    print(who, MPI.COMM_WORLD.rank, sorted(os.sched_getaffinity(0)), flush=True)
    inter.Disconnect()
"""


def written(path: Path) -> str:
    """What a rank wrote to its --output file, less the UCX library's own diagnostics: the
    MPICH wheel's UCX reports on stderr (which the file holds too) when a peer it maps
    memory of has just exited ("mm_posix.c ... UCX ERROR open(/proc/PID/fd/N)")."""
    return "".join(line for line in path.read_text().splitlines(keepends=True)
                   if " UCX " not in line)


def test_spawned_ranks_are_bound_and_write_their_own_output_files(tmp_path: Path) -> None:
    # --bind-to core on a node with the parent on the first core: the child takes the next
    # one, as if launched with it; --output out.%r: the child's rank 0 writes out.0.s1, not
    # the parent's out.0.
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cpus")
    prog = script(tmp_path, "bound.py", WHO)
    res = run(tmp_path, "-n", "1", "--bind-to", "core", "--output", "out.%r", sys.executable,
              str(prog), "1")
    assert res.returncode == 0, res.stdout + res.stderr
    parent = written(tmp_path / "out.0")
    child = written(tmp_path / "out.0.s1")
    assert parent.startswith("parent 0 ["), parent
    assert child.startswith("child 0 ["), child
    parent_cpus, child_cpus = (ast.literal_eval(x.split(" ", 2)[2]) for x in (parent, child))
    assert len(parent_cpus) == 1 and len(child_cpus) == 1, parent + child  # one core each
    assert parent_cpus != child_cpus, parent + child


def test_a_one_node_jobs_spawned_ranks_write_their_own_output_files(tmp_path: Path) -> None:
    # The quick phase's writer (no binding: the job never leaves it): --output out.%r gives
    # spawned job 1's rank R the file out.R.s1, never the launched rank R's.
    prog = script(tmp_path, "files.py", WHO)
    res = run(tmp_path, "-n", "1", "--output", "out.%r", sys.executable, str(prog), "2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout == ""
    files = {p.name: written(p).rsplit(" [", 1)[0] for p in tmp_path.glob("out.*")}
    assert files == {"out.0": "parent 0", "out.0.s1": "child 0", "out.1.s1": "child 1"}


#: A spawned child writes to stderr: with --merge-stderr-to-stdout that comes on stdout.
CHILD_STDERR = """
    import sys
    from mpi4py import MPI

    parent = MPI.Comm.Get_parent()
    if parent == MPI.COMM_NULL:
        MPI.COMM_WORLD.Spawn(sys.executable, args=[__file__], maxprocs=1).Disconnect()
    else:
        sys.stderr.write("child's stderr\\n")
        sys.stderr.flush()
        parent.Disconnect()
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]])
def test_spawned_ranks_merge_stderr_as_the_launched_ones(tmp_path: Path,
                                                         opts: list[str]) -> None:
    prog = script(tmp_path, "child_stderr.py", CHILD_STDERR)
    res = run(tmp_path, "--merge-stderr-to-stdout", *opts, "-n", "1", sys.executable, str(prog))
    assert res.returncode == 0, res.stderr
    assert (res.stdout, res.stderr) == ("child's stderr\n", "")
