"""Jobs over real OpenSSH: one sshd per network-namespace host (tests/realcluster_util.py).

Host names exist only in the cluster's ssh configuration (``Host pm<k>h1`` /
``HostName 10.213.<k>.1``), not in DNS: pmrun must go where ssh goes.  Hosts
that are other machines use ssh without ``--launcher``, as with Hydra.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import hogs, mpi_missing, pmrun_argv, pmrun_env, script, wait_until
from realcluster_util import RealCluster

from pm.bootstrap import bootstrap_options
from pm.common.kary_tree import Tree

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

WHERE = """
    import os
    print(os.environ["PMI_RANK"], os.environ["PMI_HOSTNAME"], os.uname().nodename,
          os.readlink("/proc/self/ns/net"), flush=True)
"""

MPI_PROGRAM = """
    import os
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.rank)
    nets = comm.allgather(os.readlink("/proc/self/ns/net"))
    if comm.rank == 0:
        print("sum", total, "size", comm.size, "netns", len(set(nets)), flush=True)
"""


def run(args: list[str], cwd: Path, timeout: float = 90
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pmrun_argv(*args), cwd=cwd, env=pmrun_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_propagate_gives_the_ranks_on_ssh_hosts_this_shells_limits(ssh_cluster: RealCluster,
                                                                     tmp_path: Path) -> None:
    """srun's --propagate: sshd's limits are not the shell's; with it the ranks get ours."""
    c = ssh_cluster
    stack = 23456  # KiB, as ulimit -s says it

    def limited() -> None:  # (in pmrun's process: the shell's `ulimit -s 23456`)
        hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
        resource.setrlimit(resource.RLIMIT_STACK, (stack * 1024, hard))

    said = {}
    for opts in ([], ["--propagate"], ["--propagate=STACK"]):
        res = subprocess.run(
            pmrun_argv(*opts, "-hosts", ",".join(c.names), "--ssh", c.ssh_command(), "-n", "4",
                       "sh", "-c", "echo $(hostname) $(ulimit -s)"),
            cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True, timeout=90,
            stdin=subprocess.DEVNULL, preexec_fn=limited)
        assert res.returncode == 0, res.stderr
        rows = sorted(line.split() for line in res.stdout.splitlines())
        assert [r[0] for r in rows] == sorted(c.names), res.stdout
        said[" ".join(opts)] = {r[1] for r in rows}
    assert said["--propagate"] == said["--propagate=STACK"] == {str(stack)}, said
    assert said[""] != {str(stack)}, said  # (without it: sshd's)
    assert_clean(c)


def netns_of(cluster: RealCluster, ns: str) -> str:
    res = subprocess.run(["ip", "netns", "exec", ns, "readlink", "/proc/self/ns/net"],
                         capture_output=True, text=True, check=True, timeout=30)
    return res.stdout.strip()


def assert_clean(cluster: RealCluster) -> None:
    left = cluster.wait_clean(20)
    assert not left, f"left on the hosts: {left}"


def accepted_from(log: str) -> list[str]:
    return re.findall(r"Accepted publickey for root from (\S+)", log)


# ------------------------------------------------------------------ no cluster needed


def test_hosts_that_are_other_machines_mean_ssh() -> None:
    assert bootstrap_options({}, ["nodeA", "nodeB"])["name"] == "ssh"
    assert bootstrap_options({}, ["localhost", socket.gethostname()])["name"] == "local"
    # Hydra's -launcher-exec is the ssh program; pmrun's is a template.
    hydra = bootstrap_options({"launcher_exec": "/opt/bin/myssh"}, ["n1"])
    assert hydra["name"] == "ssh" and hydra["ssh"] == "/opt/bin/myssh"
    assert bootstrap_options({"launcher_exec": "ip netns exec {host} {command}"},
                             ["n1"])["name"] == "exec"
    assert bootstrap_options({"ssh": "ssh -F x"}, ["n1"])["name"] == "ssh"
    # --agent-python: other hosts' interpreter (Hydra's -hybrid-hosts: python3 from PATH).
    assert bootstrap_options({"agent_python": "/opt/py"}, ["n1"])["python"] == "/opt/py"
    assert "python" not in bootstrap_options({"agent_python": "/opt/py"}, ["localhost"])


@pytest.mark.skipif(subprocess.run(["which", "ssh"], capture_output=True).returncode != 0,
                    reason="no ssh client")
def test_unknown_hosts_are_named_not_run_here(tmp_path: Path) -> None:
    start = time.monotonic()
    res = run(["-hosts", "nosuchhost-xyz:2,otherbad:2", "-n", "4", "-v", "hostname"], tmp_path)
    assert res.returncode == 255, (res.stdout, res.stderr)
    assert socket.gethostname() not in res.stdout  # nothing ran on this machine
    assert re.search(r"node \d \((nosuchhost-xyz|otherbad)\) lost: .*"
                     r"Could not resolve hostname", res.stderr), res.stderr
    assert "Traceback" not in res.stderr
    assert time.monotonic() - start < 30


# ------------------------------------------------------------------ real sshds


@pytest.mark.mpi
@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
def test_fanout_2_tree_over_four_ssh_hosts(ssh_cluster: RealCluster, tmp_path: Path) -> None:
    c = ssh_cluster
    before = [len(c.sshd_log(i)) for i in range(4)]
    prog = script(tmp_path, "where.py", WHERE)
    # No --launcher, no --iface: names go through ssh's configuration, the head's
    # address is found on the route ssh would take.
    res = run(["-hosts", ",".join(c.names), "--ssh", c.ssh_command(), "--fanout", "2",
               "-n", "8", sys.executable, str(prog)], tmp_path)
    assert res.returncode == 0, res.stderr
    rows = sorted(line.split() for line in res.stdout.splitlines())
    assert [int(r[0]) for r in rows] == list(range(8))
    for _, host, nodename, net in rows:
        assert nodename == host  # the sshd's namespace host, not this machine
        assert net == netns_of(c, host)
    # Tree of fan-out 2 over 4 hosts: 0 -> {1 -> 2, 3}.  The head itself ssh'd to
    # vertex 0 and to vertex 0's children at once; vertex 2 was reached from
    # vertex 1's host.
    tree = Tree(4, 2)
    assert tree.parent(2) == 1 and tree.parent(1) == 0 and tree.parent(3) == 0
    logs = [c.sshd_log(i)[before[i]:] for i in range(4)]
    assert accepted_from(logs[0]) == [c.bridge_addr]
    assert accepted_from(logs[1]) == [c.bridge_addr]
    assert accepted_from(logs[3]) == [c.bridge_addr]
    assert accepted_from(logs[2]) == [c.hosts.addr(1)]
    assert_clean(c)

    mpi = script(tmp_path, "mpi.py", MPI_PROGRAM)
    res = run(["-hosts", ",".join(c.names), "--ssh", c.ssh_command(), "--fanout", "2",
               "-genv", "FI_PROVIDER", "tcp", "-n", "8", sys.executable, str(mpi)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert "sum 28 size 8 netns 4" in res.stdout
    assert_clean(c)


def test_hostfile_and_hydras_launcher_exec(ssh_cluster: RealCluster, tmp_path: Path) -> None:
    c = ssh_cluster
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{c.names[2]}:2\n{c.names[3]}:2\n")
    prog = script(tmp_path, "where.py", WHERE)
    # The README's words: pmrun -f hosts --ssh '...' ./app (no -n: the file's 4 slots),
    # and Hydra's -launcher-exec PROGRAM.
    for how in (["--ssh", c.ssh_command()], ["-launcher-exec", str(c.ssh_wrapper)]):
        res = run(["-f", str(hostfile), *how, sys.executable, str(prog)], tmp_path)
        assert res.returncode == 0, res.stderr
        hosts = sorted(line.split()[2] for line in res.stdout.splitlines())
        assert hosts == sorted([c.names[2], c.names[2], c.names[3], c.names[3]]), how
        assert_clean(c)


def test_ranks_run_in_pmruns_directory_on_every_host(ssh_cluster: RealCluster,
                                                     tmp_path: Path) -> None:
    # As with Hydra, mpirun and srun: a relative program, and the files a rank opens, are
    # found where pmrun was started, not in the home directory ssh lands in.
    c = ssh_cluster
    prog = tmp_path / "where.sh"
    prog.write_text('#!/bin/sh\necho "$PMI_RANK $(pwd) $(hostname)"\n')
    prog.chmod(0o755)
    hosts = f"{c.names[0]}:1,{c.names[1]}:1"
    res = run(["-hosts", hosts, "-n", "2", "--ssh", c.ssh_command(), "./where.sh"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == [
        f"0 {tmp_path} {c.names[0]}", f"1 {tmp_path} {c.names[1]}"], res.stdout
    res = run(["-hosts", hosts, "-n", "2", "--ssh", c.ssh_command(), "-wdir", "/", "sh", "-c",
               "pwd"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["/", "/"], res.stdout
    assert_clean(c)


def test_ranks_are_dealt_to_the_host_list_as_hydra_deals_them(ssh_cluster: RealCluster,
                                                              tmp_path: Path) -> None:
    # Hydra's placement over these sshds: each entry of the list takes its count (1
    # without one), in order, round and round; without -n, a rank per count.
    c = ssh_cluster
    h1, h2, h3 = c.names[:3]
    prog = script(tmp_path, "where.py", WHERE)
    (tmp_path / "hf").write_text(f"{h1}\n{h2}\n{h3}\n")
    for where, want in ((["-f", "hf"], [h1, h2, h3]),
                        (["-hosts", f"{h1},{h2}:3", "-n", "5"], [h1, h2, h2, h2, h1]),
                        (["-hosts", f"{h1},{h2},{h1},{h2}", "-n", "4"], [h1, h2, h1, h2])):
        res = run([*where, "--ssh", c.ssh_command(), sys.executable, str(prog)], tmp_path)
        assert res.returncode == 0, res.stderr
        rows = sorted((line.split() for line in res.stdout.splitlines()),
                      key=lambda r: int(r[0]))
        assert [r[2] for r in rows] == want, where
    assert_clean(c)


def test_a_wdir_that_only_the_hosts_have_is_theirs(ssh_cluster: RealCluster,
                                                   tmp_path: Path) -> None:
    # Hydra's -wdir over ssh: a node-local scratch directory (a tmpfs in the first two
    # hosts' sshd's mount namespace) that this machine lacks is where their ranks run; a
    # host without it is named in one line, the job's status 127.
    c = ssh_cluster
    node = tmp_path / "node"
    node.mkdir()
    scratch = node / "scratch"
    sshds = [int((c.dir / "run" / f"sshd.{name}.pid").read_text()) for name in c.names[:2]]
    for pid in sshds:
        subprocess.run(["nsenter", "-t", str(pid), "-m", "sh", "-c",
                        f"mount -t tmpfs pm {node} && mkdir {scratch}"], check=True, timeout=30)
    try:
        assert not scratch.exists()
        hosts = f"{c.names[0]},{c.names[1]}"
        res = run(["-hosts", hosts, "--ssh", c.ssh_command(), "-wdir", str(scratch), "-n", "2",
                   "pwd"], tmp_path)
        assert (res.returncode, res.stdout) == (0, f"{scratch}\n" * 2), res.stderr
        hosts = f"{c.names[0]},{c.names[2]}"
        res = run(["-hosts", hosts, "--ssh", c.ssh_command(), "-wdir", str(scratch), "-n", "2",
                   "pwd"], tmp_path)
        assert (res.returncode, res.stderr) == (
            127, f"pmrun: rank 1 (node 1, {c.names[2]}) could not start: pwd: its working "
                 f"directory {scratch}: no such directory\n")
    finally:
        for pid in sshds:
            subprocess.run(["nsenter", "-t", str(pid), "-m", "umount", str(node)],
                           check=False, timeout=30)
    assert_clean(c)


def test_bcast_runs_a_copy_of_the_program_on_every_host(ssh_cluster: RealCluster,
                                                        tmp_path: Path) -> None:
    # srun's --bcast: each host runs its own copy of the program (in its /tmp: these hosts
    # share this machine's file system, so the copies tell by their names), gone after.
    c = ssh_cluster
    prog = tmp_path / "prog"
    prog.write_text('#!/bin/sh\necho "$PMI_RANK $(hostname) $0"\n')
    prog.chmod(0o755)
    before = set(Path("/tmp").glob("pmrun-bcast-*"))
    hosts = f"{c.names[0]}:1,{c.names[1]}:1"
    res = run(["-hosts", hosts, "-n", "2", "--ssh", c.ssh_command(), "--bcast", "./prog"],
              tmp_path)
    assert res.returncode == 0, res.stderr
    got = sorted(line.split() for line in res.stdout.splitlines())
    assert [g[:2] for g in got] == [["0", c.names[0]], ["1", c.names[1]]], got
    assert all(g[2].startswith("/tmp/pmrun-bcast-") and g[2].endswith(f"-{i}-prog")
               for i, g in enumerate(got)), got
    assert set(Path("/tmp").glob("pmrun-bcast-*")) == before
    assert_clean(c)


def test_pty_gives_a_terminal_on_the_host(ssh_cluster: RealCluster, tmp_path: Path) -> None:
    # srun's --pty over ssh: an interactive shell on another host, from pmrun's terminal.
    from pty_util import on_terminal

    c = ssh_cluster
    t = on_terminal(["--pty", "-hosts", c.names[1], "--ssh", c.ssh_command(), "-n", "1", "sh",
                     "-c", "tty; hostname; stty size; echo ready; read x; echo got $x"],
                    [(b"ready", b"there\r")], cwd=tmp_path, size=(40, 100))
    lines = t.text.split("\r\n")
    assert t.code == 0, t.text
    assert lines[0].startswith("/dev/pts/") and lines[1:] == [
        c.names[1], "40 100", "ready", "there", "got there", ""], t.text
    assert t.after == t.before
    # pmrun's terminal resized: so is the rank's, over there.
    prog = "trap 'exit 0' INT; echo ready; while :; do stty size; sleep 0.05; done"
    t = on_terminal(["--pty", "-hosts", c.names[1], "--ssh", c.ssh_command(), "-n", "1", "sh",
                     "-c", prog], [(b"ready", (50, 70)), (b"50 70", b"\x03")], cwd=tmp_path)
    assert t.code == 0 and "50 70" in t.text.split("\r\n"), t.text
    assert_clean(c)


def test_a_gnu_parallel_ensemble_over_ssh_hosts(ssh_cluster: RealCluster,
                                                tmp_path: Path) -> None:
    c = ssh_cluster
    # GNU parallel's -S host1,host2 habit: each task in a namespace host, by ssh.
    res = run(["-hosts", ",".join(c.names[:2]), "--ssh", c.ssh_command(), "-j", "1",
               "echo {} $(hostname) $(readlink /proc/self/ns/net)", ":::", *"abcd"], tmp_path)
    assert res.returncode == 0, res.stderr
    rows = sorted(line.split() for line in res.stdout.splitlines())
    assert [r[0] for r in rows] == list("abcd"), res.stdout
    for _, host, net in rows:
        assert host in c.names[:2] and net == netns_of(c, host), rows
    assert res.stderr == ""  # (as parallel: every task succeeded)
    # The bytes as the task wrote them: a 3 MB line, and an end without a newline.
    res = run(["-S", f"1/{c.names[1]}", "--ssh", c.ssh_command(),
               "head -c 3000000 /dev/zero; printf {}", ":::", "end"], tmp_path)
    assert (res.returncode, res.stdout) == (0, "\0" * 3000000 + "end"), res.stderr
    # --pipe: blocks of our stdin, each the stdin of a run on either host.
    data = "".join(f"{i}\n" for i in range(100000))
    res = subprocess.run(pmrun_argv("-S", f"1/{c.names[0]},1/{c.names[1]}", "--ssh",
                                    c.ssh_command(), "--pipe", "--block", "100k", "-k",
                                    "cat; hostname >&2"),
                         input=data, cwd=tmp_path, env=pmrun_env(), capture_output=True,
                         text=True, timeout=90)
    assert (res.returncode, res.stdout == data) == (0, True), res.stderr
    assert set(res.stderr.splitlines()[:-1]) == set(c.names[:2]), res.stderr
    assert_clean(c)


def test_load_and_limit_gate_the_tasks_of_ssh_hosts(ssh_cluster: RealCluster,
                                                    tmp_path: Path) -> None:
    """--load is judged on each host from its runner's samples (the namespace hosts share
    this machine's load); --limit's command runs here once per host, SSHLOGIN naming it."""
    c = ssh_cluster
    runs, ran = tmp_path / "runs", tmp_path / "ran"
    with hogs(6) as procs:
        job = subprocess.Popen(
            pmrun_argv("-S", ",".join(c.names[:2]), "--ssh", c.ssh_command(), "--load", "6",
                       "--limit", f'echo "$SSHLOGIN" >> {runs}', f"echo {{}} $(hostname) >> {ran}",
                       ":::", *"abcd"),
            cwd=tmp_path, env=pmrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL)
        try:
            # Both hosts' runners sample (each sample asks the limit again): no task starts.
            wait_until(lambda: runs.exists() and all(
                runs.read_text().split().count(h) >= 3 for h in c.names[:2]), 60,
                "the limit asked for both hosts")
            assert not ran.exists()
            for p in procs:
                p.kill()
            out, err = job.communicate(timeout=60)
        finally:
            job.kill()
            job.wait()
    assert (job.returncode, out, err) == (0, "", "")
    rows = sorted(line.split() for line in ran.read_text().splitlines())
    assert [r[0] for r in rows] == list("abcd"), rows
    assert {r[1] for r in rows} <= set(c.names[:2]), rows
    assert set(runs.read_text().split()) == set(c.names[:2])
    assert_clean(c)


def test_files_go_with_tasks_to_ssh_hosts_and_come_back(ssh_cluster: RealCluster,
                                                        tmp_path: Path) -> None:
    """GNU parallel's --basefile, --trc and --return: the hosts share this machine's
    filesystem, so their tasks' working directory (--wd) is one of its own."""
    c = ssh_cluster
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    for x, n in (("a", 3), ("b", 5)):
        (here / f"{x}.txt").write_text("line\n" * n)
    (here / "count.sh").write_text('#!/bin/sh\nwc -l < "$1"\n')
    (here / "count.sh").chmod(0o755)
    res = run(["-S", ",".join(c.names[:2]), "--ssh", c.ssh_command(), "--wd", str(there),
               "--bf", "count.sh", "--trc", "{.}.n", "--return", "out/{.}.host",
               "mkdir -p out; ./count.sh {} > {.}.n; hostname > out/{.}.host",
               ":::", "a.txt", "b.txt"], here)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert [(here / f"{x}.n").read_text() for x in "ab"] == ["3\n", "5\n"]
    assert {(here / "out" / f"{x}.host").read_text().strip() for x in "ab"} <= set(c.names[:2])
    # --cleanup: what was put there and brought back is gone (the base file at the end);
    # the directory the task made itself stays, as with parallel.
    assert sorted(str(p.relative_to(there)) for p in there.rglob("*")) == ["out"]
    # Without --wd a file's path there is its path here: on this shared filesystem that is
    # the user's own file, which --cleanup leaves (and the result brought back, too).
    res = run(["-S", c.names[0], "--ssh", c.ssh_command(), "--trc", "{}.out",
               "wc -c < {} > {}.out", ":::", "a.txt"], here)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    assert (here / "a.txt").read_text() == "line\n" * 3
    assert (here / "a.txt.out").read_text() == "15\n"
    # A file that is not here: named on the task's stderr, the task runs all the same.
    res = run(["-S", c.names[0], "--ssh", c.ssh_command(), "--wd", str(there),
               "--transferfile", "{}", "echo ran {}", ":::", "nothing.txt"], here)
    assert (res.returncode, res.stdout) == (0, "ran nothing.txt\n"), res.stderr
    assert "pmrun: --transferfile nothing.txt: No such file or directory" in res.stderr
    assert_clean(c)


def test_a_large_file_goes_to_its_host_a_piece_at_a_time(ssh_cluster: RealCluster,
                                                         tmp_path: Path) -> None:
    """A file put on a host (--transferfile) is read as the runner there takes it: pmrun's
    peak memory stays far below the file's size, and the file arrives whole."""
    c = ssh_cluster
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    there.mkdir()
    size = 128 << 20
    digest = hashlib.md5()
    with open(here / "big.bin", "wb") as f:
        for _ in range(size >> 20):
            block = os.urandom(1 << 20)
            digest.update(block)
            f.write(block)
    wrapper = tmp_path / "maxrss.py"  # (pmrun's peak RSS and its ssh client's: wait4's)
    wrapper.write_text("import os, subprocess, sys\n"
                       "p = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)\n"
                       "_, status, usage = os.wait4(p.pid, 0)\n"
                       "sys.stderr.write(f'maxrss {usage.ru_maxrss}\\n')\n"
                       "sys.exit(os.waitstatus_to_exitcode(status))\n")
    res = subprocess.run(
        [sys.executable, str(wrapper), *pmrun_argv(
            "-S", c.names[0], "--ssh", c.ssh_command(), "--wd", str(there),
            "--transferfile", "{}", "md5sum {}", ":::", "big.bin")],
        cwd=here, env=pmrun_env(), capture_output=True, text=True, timeout=90,
        stdin=subprocess.DEVNULL)
    err, _, peak_line = res.stderr.rpartition("maxrss ")
    peak = int(peak_line)
    assert (res.returncode, err) == (0, ""), res.stderr
    assert res.stdout == f"{digest.hexdigest()}  big.bin\n"
    assert peak * 1024 < size // 2, f"pmrun's peak RSS {peak} kB for a {size >> 20} MiB file"
    assert_clean(c)


def test_a_task_knows_its_host_as_gnu_parallels_does(ssh_cluster: RealCluster,
                                                     tmp_path: Path) -> None:
    c = ssh_cluster
    tail = ["-S", c.names[1], "--ssh", c.ssh_command(), "--plus",
            "echo {} {host} {sshlogin} $PARALLEL_SSHHOST $PARALLEL_SSHLOGIN", ":::", "a"]
    res = run(tail, tmp_path)
    assert (res.returncode, res.stdout) == (0, f"a {' '.join([c.names[1]] * 4)}\n"), res.stderr
    parallel = shutil.which("parallel")
    if parallel is not None:
        want = subprocess.run([parallel, "--will-cite", *tail], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60,
                              env={**pmrun_env(), "HOME": str(tmp_path)},
                              stdin=subprocess.DEVNULL)
        assert (want.returncode, want.stdout) == (0, res.stdout), want.stderr
    assert_clean(c)


def test_onall_and_nonall_over_ssh_hosts_as_gnu_parallel(ssh_cluster: RealCluster,
                                                         tmp_path: Path) -> None:
    c = ssh_cluster
    hosts = ",".join(reversed(c.names[:3]))
    # --nonall: the command once on each host, in that host's namespace.
    res = run(["--nonall", "--tag", "-S", hosts, "--ssh", c.ssh_command(),
               "readlink /proc/self/ns/net"], tmp_path)
    assert (res.returncode, res.stderr) == (0, ""), res.stderr
    got = dict(line.split("\t") for line in res.stdout.splitlines())
    assert got == {h: netns_of(c, h) for h in c.names[:3]}, res.stdout
    # --onall: every argument on every host, each host's output whole, -k: hosts by name;
    # GNU parallel's own run over the same sshds prints the same.
    tail = ["--onall", "-k", "--tag", "-S", hosts, "--ssh", c.ssh_command(),
            "echo {} {#} $(hostname); test {} != b", ":::", "a", "b", "c"]
    res = run(["--joblog", "log", *tail], tmp_path)
    assert res.returncode == 3, res.stderr  # (b failed on every host: 3 hosts failed)
    assert res.stdout.splitlines() == [f"{h}\t{x} {n} {h}" for h in sorted(c.names[:3])
                                       for n, x in enumerate("abc", 1)], res.stdout
    rows = [line.split("\t") for line in (tmp_path / "log").read_text().splitlines()[1:]]
    assert sorted((r[0], r[6]) for r in rows) == sorted([("1", "0"), ("2", "1"), ("3", "0")]
                                                        * 3), rows
    parallel = shutil.which("parallel")
    if parallel is not None:
        want = subprocess.run([parallel, "--will-cite", *tail],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={**pmrun_env(), "HOME": str(tmp_path)},
                              stdin=subprocess.DEVNULL)
        assert (want.returncode, want.stdout) == (res.returncode, res.stdout), want.stderr
    assert_clean(c)


def test_an_ensembles_tasks_on_a_host_share_one_runner_and_a_lost_host_is_named(
        ssh_cluster: RealCluster, tmp_path: Path) -> None:
    c = ssh_cluster
    # Every task on a host is started by that host's one runner: one ssh session per host
    # for the whole ensemble, not one per task as GNU parallel -S makes.
    res = run(["-S", f"2/{c.names[0]},2/{c.names[1]}", "--ssh", c.ssh_command(),
               "echo {} $(hostname) $PPID $(tr '\\0' ' ' < /proc/$PPID/cmdline)",
               ":::", *map(str, range(12))], tmp_path)
    assert res.returncode == 0, res.stderr
    parents: dict[str, set[str]] = {}
    for line in res.stdout.splitlines():
        _, host, ppid, *cmd = line.split()
        assert cmd[-2:] == ["runner", "0.1"] and "pm.ensemble.remote" in line, line
        parents.setdefault(host, set()).add(ppid)
    assert sorted(parents) == sorted(c.names[:2]), res.stdout
    assert all(len(p) == 1 for p in parents.values()), parents
    assert_clean(c)

    # A host whose runner is killed while its task runs is named once; the task runs again
    # on the other host (--retries 2: two runs at most), and the killed one leaves nothing
    # behind.
    proc = subprocess.Popen(
        pmrun_argv("-S", f"1/{c.names[0]},1/{c.names[1]}", "--ssh", c.ssh_command(),
                   "--retries", "2", "--lb", "echo up {} $(hostname) $PPID; sleep 2", ":::",
                   "a", "b"),
        cwd=tmp_path, env=pmrun_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        first = [proc.stdout.readline().split(), proc.stdout.readline().split()]
        victim = next(w for w in first if w[1] == "a")
        subprocess.run(["kill", "-KILL", victim[3]], check=True, timeout=10)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    again = [line.split() for line in out.splitlines()]
    assert [w[1:3] for w in again] == [["a", next(h for h in c.names[:2] if h != victim[2])]]
    assert err.splitlines() == [
        f"pmrun: node {victim[2]} lost: its task runner was killed by SIGKILL",
        "2 tasks: 2 succeeded, 0 failed, 1 retry"], err
    assert_clean(c)


@pytest.mark.parametrize("case", ["refused key", "host key"])
def test_ssh_refusals_are_named_in_one_line(ssh_cluster: RealCluster, tmp_path: Path,
                                            case: str) -> None:
    c = ssh_cluster
    if case == "refused key":
        config = c.ssh_config_variant("refused", identity=c.refused_key)
        expected = "Permission denied (publickey)"
    else:
        config = c.ssh_config_variant("hostkey", wrong_host_key=True)
        expected = "Host key verification failed"
    res = run(["-hosts", ",".join(c.names[:3]), "--ssh", f"ssh -F {config}", "-n", "3",
               "true"], tmp_path)
    assert res.returncode == 255
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert re.fullmatch(rf"pmrun: node \d \({c.names[0][:-1]}\d\) lost: .*{re.escape(expected)}.*",
                        lines[0]), lines
    assert_clean(c)


def test_bootstrap_exec_args_reach_ssh(ssh_cluster: RealCluster, tmp_path: Path) -> None:
    # Intel MPI's -bootstrap-exec-args: after ssh's own options; an option ssh refuses
    # shows they got there.
    c = ssh_cluster
    hosts = ",".join(c.names[:2])
    res = run(["-hosts", hosts, "--ssh", c.ssh_command(), "-bootstrap-exec-args",
               "-o ConnectionAttempts=2", "-n", "2", "hostname"], tmp_path)
    assert (res.returncode, sorted(res.stdout.split())) == (0, c.names[:2]), res.stderr
    res = run(["-hosts", hosts, "--ssh", c.ssh_command(), "-bootstrap-exec-args",
               "-o NoSuchOption=1", "-n", "2", "hostname"], tmp_path)
    lost = [line for line in res.stderr.splitlines() if " lost: " in line]
    assert res.returncode == 255 and "Bad configuration option: nosuchoption" in lost[0], \
        res.stderr
    assert_clean(c)


def test_ranks_on_ssh_hosts_get_pmruns_umask(ssh_cluster: RealCluster, tmp_path: Path
                                             ) -> None:
    # As srun's tasks do: not the ssh session's (022 here), but the umask pmrun runs with;
    # -umask sets another.
    c = ssh_cluster
    show = ["-hosts", ",".join(c.names[:2]), "--ssh", c.ssh_command(), "-n", "2", "sh", "-c",
            "echo $(hostname) $(umask)"]
    res = subprocess.run(["sh", "-c", 'umask 0027; exec "$@"', "sh", *pmrun_argv(*show)],
                         cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                         timeout=90, stdin=subprocess.DEVNULL)
    assert (res.returncode, sorted(res.stdout.splitlines())) == (
        0, [f"{h} 0027" for h in c.names[:2]]), res.stderr
    res = run(["-umask", "0002", *show], tmp_path)
    assert (res.returncode, sorted(res.stdout.splitlines())) == (
        0, [f"{h} 0002" for h in c.names[:2]]), res.stderr
    assert_clean(c)


def test_agent_python_runs_the_agents_of_other_hosts(ssh_cluster: RealCluster,
                                                     tmp_path: Path) -> None:
    c = ssh_cluster
    # Hosts that do not share this interpreter's path: another path to a Python with
    # pmrun runs every agent there (each rank's parent), the ensemble's runner too.
    (tmp_path / "bin").mkdir()
    python = tmp_path / "bin" / "python"
    python.symlink_to(sys.executable)
    show = "echo $(hostname) $(tr '\\0' ' ' < /proc/$PPID/cmdline)"
    res = run(["-hosts", ",".join(c.names[:2]), "--ssh", c.ssh_command(), "--agent-python",
               str(python), "-n", "2", "sh", "-c", show], tmp_path)
    assert res.returncode == 0, res.stderr
    rows = sorted(line.split()[:2] for line in res.stdout.splitlines())
    assert rows == [[h, str(python)] for h in c.names[:2]], res.stdout
    res = run(["-S", c.names[0], "--ssh", c.ssh_command(), "--agent-python", str(python),
               "echo {} $(tr '\\0' ' ' < /proc/$PPID/cmdline)", ":::", "a"], tmp_path)
    assert (res.returncode, res.stdout.split()[:2]) == (0, ["a", str(python)]), res.stderr
    # No such Python there: the node is lost, and why, in one line.
    res = run(["-hosts", c.names[0], "--ssh", c.ssh_command(), "--agent-python",
               "/opt/no/python", "-n", "1", "true"], tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 255 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"pmrun: node 0 ({c.names[0]}) lost: ") and \
        "/opt/no/python" in lines[0], lines
    assert_clean(c)


def test_unreachable_host_is_named_within_the_join_timeout(ssh_cluster: RealCluster,
                                                          tmp_path: Path) -> None:
    c = ssh_cluster
    c.hosts.link_down(1)
    try:
        start = time.monotonic()
        res = run(["-hosts", ",".join(c.names[:3]), "--ssh", c.ssh_command(),
                   "--join-timeout", "12", "-n", "3", "true"], tmp_path)
        took = time.monotonic() - start
    finally:
        subprocess.run(["ip", "link", "set", c.hosts.veth(1), "up"], check=True, timeout=30)
    assert res.returncode == 255
    assert f"node 1 ({c.names[1]}) lost" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert took < 12 + 10, took
    assert_clean(c)


def test_ssh_options_pmrun_adds_keep_the_users_choices(tmp_path: Path) -> None:
    """-T -x ControlMaster=no for an OpenSSH client; the cheap key exchange first only
    where neither the configuration nor --ssh chose one; nothing for another program."""
    from pm.bootstrap.ssh import SLOW_KEX, tuning

    plain = tmp_path / "plain"
    plain.write_text("Host *\n    User nobody\n")
    chosen = tmp_path / "chosen"
    chosen.write_text("Host picky\n    KexAlgorithms sntrup761x25519-sha512@openssh.com\n")
    default = subprocess.run(["ssh", "-F", "none", "-G", "h"], capture_output=True, text=True,
                             check=True, timeout=30).stdout
    kex = next(line.split()[1] for line in default.splitlines()
               if line.startswith("kexalgorithms "))
    extra = tuning(["ssh", "-F", str(plain)], "anyhost")
    assert extra[:4] == ["-T", "-x", "-o", "ControlMaster=no"]
    if kex.split(",")[0] in SLOW_KEX:  # OpenSSH 9: a post-quantum hybrid first
        assert extra[4] == "-o"
        ours = extra[5].removeprefix("KexAlgorithms=").split(",")
        assert sorted(ours) == sorted(kex.split(","))  # the same, reordered
        assert ours[0] not in SLOW_KEX and ours[-1] in SLOW_KEX
    # The configuration chose (for some host, here or in a file it includes); --ssh chose.
    assert not any(w.startswith("KexAlgorithms") for w in tuning(["ssh", "-F", str(chosen)],
                                                                 "picky"))
    including = tmp_path / "including"
    including.write_text(f"Include {chosen}\nHost *\n    User nobody\n")
    assert not any(w.startswith("KexAlgorithms") for w in tuning(
        ["ssh", "-F", str(including)], "other"))
    assert not any(w.startswith("KexAlgorithms") for w in tuning(
        ["ssh", "-F", str(plain), "-o", "KexAlgorithms=curve25519-sha256"], "anyhost"))
    assert tuning(["ssh", "-T", "-x", "-F", str(plain)], "h")[:2] == ["-o", "ControlMaster=no"]
    assert tuning(["ssh", "-Y", "-t", "-F", str(plain)], "h")[:2] == ["-o", "ControlMaster=no"]
    # Not OpenSSH (no -G): nothing added; a missing program: nothing either.
    assert tuning(["true"], "h") == [] and tuning([str(tmp_path / "nossh")], "h") == []


def test_default_fanout_over_ssh_is_the_measured_one() -> None:
    from pm.bootstrap.ssh import DEFAULT_FANOUT
    from pm.cli import parse
    from pm.cli_nodes import nodes_of

    nodes = nodes_of(parse(["-hosts", "nodeA,nodeB", "true"]))
    assert nodes.fanout == DEFAULT_FANOUT == 16  # type: ignore[attr-defined]
    nodes = nodes_of(parse(["-hosts", "nodeA,nodeB", "--fanout", "32", "true"]))
    assert nodes.fanout == 32  # type: ignore[attr-defined]
    assert nodes_of(parse(["--local-nodes", "2", "true"])).fanout == 32  # type: ignore[attr-defined]


def test_enable_x_gives_the_ranks_the_display_ssh_forwards(ssh_cluster: RealCluster,
                                                           tmp_path: Path) -> None:
    """Hydra's -enable-x: ssh -X to each host, whose ranks get the display sshd forwards
    to them (localhost:N), never this machine's (a display name means a display of the
    rank's own host); without it they get none."""
    c = ssh_cluster
    hosts = f"{c.names[0]}:1,{c.names[1]}:1"
    env = {**pmrun_env(), "DISPLAY": ":77"}

    def displays(*opts: str) -> dict[str, str]:
        res = subprocess.run(
            pmrun_argv(*opts, "-hosts", hosts, "-n", "2", "--ssh", c.ssh_command(), "sh", "-c",
                       'echo "$PMI_RANK ${DISPLAY:-none}"'),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
            stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        return dict(line.split() for line in res.stdout.splitlines())

    got = displays("-enable-x")
    assert sorted(got) == ["0", "1"], got
    assert all(re.fullmatch(r"localhost:\d+\.0", d) for d in got.values()), got
    assert displays() == displays("-disable-x") == {"0": "none", "1": "none"}
    assert_clean(c)



ENV_SHOW = ('echo "$PMI_HOSTNAME|$USER|$LOGNAME|$SHELL|${PATH%%:*}|${LAUNCHER_ONLY-unset}|'
            '${LISTED-unset}|${SET-unset}|${SSH_CONNECTION-unset}"')


def test_ranks_on_ssh_hosts_start_from_the_ssh_sessions_environment(ssh_cluster: RealCluster,
                                                                    tmp_path: Path) -> None:
    """As Hydra's: a rank starts from its proxy's environment, the ssh session's (USER,
    LOGNAME, SHELL, PATH, SSH_CONNECTION...), and gets what the launcher passes over it:
    nothing under -genvnone, the names listed under -genvlist/-envlist, all of pmrun's by
    default (a variable of the host's alone still there), -genv's in every mode.  srun's
    --export A gives A alone, nothing of the host's, as under srun."""
    c = ssh_cluster
    hosts = f"{c.names[0]}:1,{c.names[1]}:1"
    env = pmrun_env({"PATH": f"/opt/only-here/bin:{os.environ['PATH']}", "USER": "launcher",
                     "LOGNAME": "launcher", "SHELL": "/bin/launcher-sh", "LAUNCHER_ONLY": "1",
                     "LISTED": "l"})
    env.pop("SSH_CONNECTION", None)

    def ranks(job: list[str], program: list[str], host: bool = True) -> list[list[str]]:
        """Each rank's USER .. SET, by host; its SSH_CONNECTION: its host's session's (or,
        ``host`` False, none)."""
        res = subprocess.run(
            pmrun_argv(*job, "-hosts", hosts, "--ssh", c.ssh_command(), "-genv", "SET", "g",
                       *program, "-n", "2", "sh", "-c", ENV_SHOW),
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90,
            stdin=subprocess.DEVNULL)
        assert res.returncode == 0, res.stderr
        rows = sorted(line.split("|") for line in res.stdout.splitlines())
        assert [r[0] for r in rows] == c.names[:2], res.stdout
        for name, *_, session in rows:  # (client, its port, server, its port)
            want = [c.hosts.addr(c.names.index(name))] if host else []
            assert session.split()[2:3] == want, rows
        return [r[1:-1] for r in rows]

    login = ["root", "root", pwd.getpwuid(0).pw_shell]
    for job, program, listed in ((["-genvnone"], [], "unset"),
                                 (["-genvlist", "LISTED"], [], "l"),
                                 ([], ["-envlist", "LISTED"], "l")):
        got = ranks(job, program)
        assert all(r[:3] == login and r[3] != "/opt/only-here/bin" for r in got), got
        assert [r[4:] for r in got] == [["unset", listed, "g"]] * 2, got
    # By default all of pmrun's environment, over the session's.
    assert ranks([], []) == [["launcher", "launcher", "/bin/launcher-sh", "/opt/only-here/bin",
                              "1", "l", "g"]] * 2
    got = ranks(["--export", "LISTED"], [], host=False)
    assert [r[:3] + r[4:] for r in got] == [["", "", "", "unset", "l", "g"]] * 2, got
    assert_clean(c)
