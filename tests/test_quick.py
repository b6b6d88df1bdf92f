"""pmrun's quick path (pm.quick): one-node jobs start before asyncio is imported, and the
full path takes the running ranks over when they need it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import (
    cmdline,
    imported,
    pids_with,
    pmrun_argv,
    pmrun_env,
    read_lines,
    script,
    wait_gone,
    wait_until,
)

from pm.cli import parse as full_parse
from pm.quick import parse as quick_parse
from pm.quick_serve import spins as quick_spins

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(60)


def test_a_job_that_never_speaks_pmi_ends_without_asyncio(tmp_path: Path) -> None:
    env = pmrun_env()
    # The first job on a machine may discover and cache the topology (the full path).
    first = subprocess.run(pmrun_argv("-n", "1", "true"), env=env, cwd=tmp_path,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    code, mods = imported(pmrun_argv("-n", "4", "true"), env, tmp_path)
    assert code == 0
    assert "pm.quick" in mods and "asyncio" not in mods and "pm.agent.node" not in mods
    # The same job with the quick path off goes through the agent (the check can fail).
    code, mods = imported(pmrun_argv("-n", "4", "true"), {**env, "PM_QUICK": "0"}, tmp_path)
    assert code == 0 and "asyncio" in mods and "pm.agent.node" in mods


ENV_DUMP = """
    import json, os
    print(json.dumps(dict(os.environ)), flush=True)
"""


@pytest.mark.parametrize(
    "extra", [[], ["-ppn", "2"], ["-genvlist", "PATH,PYTHONPATH,SOME_USER_VAR"]])
def test_ranks_get_the_same_environment_either_way(pmrun: Run, tmp_path: Path,
                                                   extra: list[str]) -> None:
    prog = script(tmp_path, "env.py", ENV_DUMP)
    args = ("-n", "3", "-l", *extra, "-genv", "FOO", "g", "-env", "BAR", "a", "-wdir",
            str(tmp_path), "python", str(prog))
    got = []
    for extra in ({}, {"PM_QUICK": "0"}):
        r = pmrun(*args, env={"PM_QUICK": "1", **extra, "SOME_USER_VAR": "x"})
        assert r.returncode == 0, r.stderr
        envs = {}
        for line in r.stdout.splitlines():
            label, _, text = line.partition(" ")
            env = json.loads(text)
            assert env["FOO"] == "g" and env["BAR"] == "a" and env["SOME_USER_VAR"] == "x"
            xml = env.pop("HWLOC_XMLFILE", None)  # a copy per job: the path differs
            assert xml is None or Path(xml).name.startswith("pm-topo-")
            env.pop("PM_QUICK", None)
            envs[label] = env
        got.append(envs)
    quick, full = got
    assert sorted(quick) == ["[0]", "[1]", "[2]"]
    assert quick == full


PART_THEN_PMI = """
    import os, sys, time
    sys.stdout.write("part-")
    sys.stdout.flush()
    time.sleep(0.2)  # the quick path reads the partial line before the rank speaks PMI
    from pm.client import sync
    pmi = sync.connect()
    pmi.put("k", os.environ["PMI_RANK"])
    pmi.fence()
    print("rest", pmi.get("k", rank=(pmi.rank + 1) % pmi.size).decode(), flush=True)
    pmi.finalize()
"""


def test_a_partial_line_survives_the_take_over(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "part.py", PART_THEN_PMI)
    r = pmrun("-n", "3", "-l", "python", str(prog))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"[{i}] part-rest {(i + 1) % 3}" for i in range(3)]


GETS_THEN_GONE = """
import os
fd = int(os.environ["PMI_FD"])
# More replies than the socket holds: the quick phase is still writing them when the
# rank is gone (an end of stream or a broken pipe under the writer, never a traceback).
os.write(fd, b"cmd=get key=x\\n" * 20000)
os._exit(0)
"""


def test_a_rank_gone_while_its_replies_are_written(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "gone.py", GETS_THEN_GONE)
    r = pmrun("-n", "2", "python", str(prog))
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 0, r.stderr


def test_output_held_open_by_a_grandchild(pmrun: Run, marker: str) -> None:
    # The rank exits at once; a background process it left keeps its stdout open.
    t0 = time.monotonic()
    r = pmrun("-n", "2", "sh", "-c",
              f"python -c 'import time; time.sleep(30)' {marker} & echo hi")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hi", "hi"]
    assert time.monotonic() - t0 < 20  # the job does not wait for the grandchild
    wait_gone(marker, 10)  # the guardian took it along with the job


def test_nothing_is_left_in_the_temporary_directory(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = pmrun_env({"TMPDIR": str(tmp)})
    for _ in range(2):  # the first discovers the topology (full path), the second is quick
        code, mods = imported(pmrun_argv("-n", "2", "true"), env, tmp_path)
        assert code == 0
    assert "asyncio" not in mods
    left = sorted(p.name for p in tmp.iterdir())
    assert left == [f"pmrun-{os.getuid()}"], left  # the topology cache only


QUICK_CASES = [
    ["-n", "4", "true"],
    ["-np", "2", "-l", "echo", "a", "-n", "5"],
    ["--np=3", "--label", "x"],
    ["-genv", "A", "1", "-env", "B", "2", "-genvall", "prog", ":x"],
    ["--timeout", "2.5", "-n", "1", "prog"],
    ["--timeout=7", "-prepend-rank", "prog"],
    ["--output", "o.%r", "-errfile-pattern", "e.%j", "prog"],
    ["-genvnone", "-genv", "A", "1", "prog"],
    ["-genvlist", "HOME,PATH", "-genvall", "-genvlist", "PATH", "prog"],
    ["-ppn", "2", "--fanout", "4", "-n", "4", "prog"],
]
FULL_CASES = [  # valid, but for the full path
    ["-n", "2", "a", ":", "-n", "1", "b"],  # MPMD
    ["--local-nodes", "2", "-n", "2", "true"],
    ["-hosts", "a,b", "true"],
    ["-v", "true"],
    ["--profile", "p.json", "true"],
    ["--help"],
]
# Refused by both paths the same way: tests/test_cli_first_contact.py.
@pytest.mark.parametrize("argv", QUICK_CASES)
def test_quick_options_mean_what_the_full_parser_says(argv: list[str]) -> None:
    q = quick_parse(argv, {})
    assert q is not None
    spec = full_parse(argv).spec
    (app,) = spec.apps
    assert (q.n, q.argv, q.genv, q.app_env, q.wdir, q.label, q.timeout, q.output, q.error,
            q.env_mode, q.genvlist) == (
        app.n, app.argv, spec.genv, app.env, app.wdir, spec.label, spec.timeout, spec.output,
        spec.error, spec.env_mode, spec.genvlist)


@pytest.mark.parametrize("argv", FULL_CASES)
def test_everything_else_is_left_to_the_full_parser(argv: list[str]) -> None:
    assert quick_parse(argv, {}) is None


def test_environment_that_sends_a_job_to_the_full_path() -> None:
    assert quick_parse(["true"], {"PM_QUICK": "0"}) is None
    assert quick_parse(["true"], {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1"}) is None
    q = quick_parse(["true"], {"MPIEXEC_TIMEOUT": "9"})
    assert q is not None and q.timeout == 9.0


Start = Callable[..., subprocess.Popen[bytes]]

SLEEPY = """
    import os, signal, sys, time
    if sys.argv[1] == "stubborn":  # a rank busy in a long computation ignores Ctrl-C
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("up", os.environ["PMI_RANK"], flush=True)
    time.sleep(300)
"""


@pytest.mark.alone  # (its segment, held by nobody, is any other ending MPI job's)
def test_a_job_without_pmi_leaves_other_jobs_segments_alone(pmrun_popen: Start,
                                                           tmp_path: Path, marker: str) -> None:
    """An MPI segment another job makes on the node while a job that speaks no PMI runs is
    not that job's: it stays, though nobody maps or holds it when the job ends."""
    seg = Path(f"/dev/shm/mpich_shm_{marker}")
    up = tmp_path / "up"
    p = pmrun_popen("-n", "2", "sh", "-c",
                    f"touch {up}; while [ ! -e {seg} ]; do sleep 0.01; done; echo done")
    try:
        wait_until(up.exists, 30, "the ranks to start")
        seg.write_bytes(b"segment")  # after the job's look at /dev/shm, held by nobody
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert out == b"done\ndone\n"
        assert seg.read_bytes() == b"segment"
    finally:
        seg.unlink(missing_ok=True)


def test_output_of_ranks_that_ended_while_others_started_is_whole(pmrun: Run) -> None:
    """Ranks that end before the loop starts (the job's first ranks, while the last ones
    start) are seen to their end without it: every line, the partial last one too."""
    res = pmrun("-n", "24", "sh", "-c",
                'echo "out $PMI_RANK"; printf "err $PMI_RANK" >&2', timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == sorted(f"out {r}" for r in range(24))
    assert sorted(res.stderr.splitlines()) == sorted(f"err {r}" for r in range(24))


def test_kill9_of_pmrun_before_any_pmi_leaves_nothing(pmrun_popen: Start, tmp_path: Path,
                                                      marker: str) -> None:
    prog = script(tmp_path, "sleepy.py", SLEEPY)
    p = pmrun_popen("-n", "3", "python", str(prog), "plain", marker)
    assert p.stdout is not None
    read_lines(p.stdout, 3, 30)
    ranks = [pid for pid in pids_with(marker) if pid != p.pid]
    assert len(ranks) == 3
    (guardian,) = {os.getpgid(pid) for pid in ranks}
    assert (cmdline(guardian) or [""])[0] == "pm-guardian"
    p.kill()
    p.wait(10)
    wait_gone(marker, 10)
    wait_until(lambda: cmdline(guardian) is None, 10, "the guardian to end")


def test_kill9_of_pmrun_leaves_no_topology_copy(pmrun_popen: Start, tmp_path: Path,
                                                marker: str) -> None:
    """The job's copy of the node's topology (HWLOC_XMLFILE) goes with a pmrun killed by
    SIGKILL on the quick path too: its ranks' guardian removes it."""
    assert subprocess.run(pmrun_argv("-n", "1", "true"), env=pmrun_env(),
                          timeout=60).returncode == 0  # the node's topology is cached now
    prog = script(tmp_path, "xml.py", """
        import os, sys, time
        print("xml", os.environ.get("HWLOC_XMLFILE", ""), os.getppid(), flush=True)
        time.sleep(300)
    """)
    p = pmrun_popen("-n", "1", "python", str(prog), marker)
    assert p.stdout is not None
    (line,) = read_lines(p.stdout, 1, 30)
    _, xml, parent = line.decode().split()
    assert int(parent) == p.pid, "not started on the quick path"
    assert xml and os.path.exists(xml)
    p.kill()
    p.wait(10)
    wait_gone(marker, 10)
    wait_until(lambda: not os.path.exists(xml), 10, "the topology copy to go")


def test_second_ctrl_c_before_any_pmi_kills_at_once(pmrun_popen: Start, tmp_path: Path,
                                                    marker: str) -> None:
    prog = script(tmp_path, "sleepy.py", SLEEPY)
    p = pmrun_popen("-n", "2", "python", str(prog), "stubborn", marker)
    assert p.stdout is not None and p.stderr is not None
    read_lines(p.stdout, 2, 30)
    p.send_signal(signal.SIGINT)  # arrives in the quick path: the full path forwards it
    assert b"forwarding SIGINT" in read_lines(p.stderr, 1, 20)[0]
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGINT, err
    assert b"interrupted twice" in err
    wait_gone(marker, 10)


def test_quit_on_interrupt_kills_at_the_first_ctrl_c(pmrun_popen: Start, tmp_path: Path,
                                                     marker: str) -> None:
    """srun's --quit-on-interrupt: ranks that ignore SIGINT are killed at the first Ctrl-C."""
    prog = script(tmp_path, "sleepy.py", SLEEPY)
    p = pmrun_popen("--quit-on-interrupt", "-n", "2", "python", str(prog), "stubborn", marker)
    assert p.stdout is not None
    read_lines(p.stdout, 2, 30)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGINT, err
    assert err.decode().splitlines()[0] == "pmrun: SIGINT (--quit-on-interrupt): killing the job"
    wait_gone(marker, 10)


def test_timeout_ends_a_job_that_never_stops_printing(pmrun: Run) -> None:
    t0 = time.monotonic()
    r = pmrun("--timeout", "1", "-n", "2", "sh", "-c", "while :; do echo x; done", timeout=30)
    assert r.returncode == 124, r.stderr[-500:]
    assert "timed out after 1 s" in r.stderr
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize("quick", ["1", "0"])
def test_too_few_descriptors_for_the_ranks_is_said_plainly(tmp_path: Path, quick: str) -> None:
    argv = " ".join(pmrun_argv("-n", "100", "true"))
    p = subprocess.run(["sh", "-c", f"ulimit -n 256 && exec {argv}"], cwd=tmp_path,
                       env=pmrun_env({"PM_QUICK": quick}), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 127, p.stderr
    assert "Traceback" not in p.stderr
    (line,) = p.stderr.splitlines()
    assert "rank 0 (node 0" in line and "file descriptors" in line and "ulimit -n" in line


def test_a_program_that_cannot_be_executed_is_named_once(pmrun: Run, tmp_path: Path) -> None:
    # Executable, found, but its interpreter is missing: posix_spawn itself fails.
    prog = tmp_path / "bad"
    prog.write_text("#!/no/such/interpreter\n")
    prog.chmod(0o755)
    r = pmrun("-n", "3", str(prog))
    assert r.returncode == 127, r.stderr
    assert "Traceback" not in r.stderr
    assert re.search(r"rank 0 \(node 0, [^)]*\) could not start: .*bad", r.stderr), r.stderr


@pytest.mark.parametrize("where", [(), ("--local-nodes", "2")])
@pytest.mark.parametrize(("prog", "why"), [("./no-such-program", "no such file"),
                                           ("./d", "is a directory"),
                                           ("./plain", "not executable")])
def test_a_missing_program_is_one_line_however_many_ranks(pmrun: Run, tmp_path: Path,
                                                          where: tuple[str, ...], prog: str,
                                                          why: str) -> None:
    (tmp_path / "plain").write_text("echo\n")
    (tmp_path / "d").mkdir()
    r = pmrun("-n", "8", *where, prog)
    # (as a shell's: 127 for no such program, 126 for one that cannot run)
    assert r.returncode == (127 if why == "no such file" else 126), r.stderr
    host = os.uname().nodename
    assert r.stderr.splitlines() == [
        f"pmrun: rank 0 (node 0, {host}) could not start: {prog}: {why}"
    ], r.stderr


def test_an_mpi_job_on_one_node_is_served_without_asyncio(tmp_path: Path,
                                                          c_hello: Path) -> None:
    """MPI_Init is served PMI by the quick phase itself: no asyncio, no agent import."""
    env = pmrun_env()
    code, mods = imported(pmrun_argv("-n", "3", str(c_hello)), env, tmp_path)
    assert code == 0
    assert "pm.agent.pmi_quick" in mods
    assert "asyncio" not in mods and "pm.agent.node" not in mods
    r = subprocess.run(pmrun_argv("-n", "3", str(c_hello)), env=env, cwd=tmp_path,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello from 3 ranks"), r.stdout


# Rank 0 waits in a barrier while rank 1 publishes a name (which the quick phase leaves to
# the agent), after sending the start of that request with a put: the agent must take
# over the KVS, the barrier rank 0 is in and rank 1's half-received line.
HANDOVER_STATE = """
    import os, socket
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")
    rank = int(os.environ["PMI_RANK"])

    def ask(line):
        sock.sendall(line)
        return reader.readline().decode().split()

    ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
    kvs = ask(b"cmd=get_my_kvsname\\n")[-1].split("=")[1].encode()
    ask(b"cmd=put kvsname=%s key=first%d value=v%d\\n" % (kvs, rank, rank))
    assert ask(b"cmd=barrier_in\\n")[:2] == ["cmd=barrier_out", "rc=0"]
    if rank == 1:
        got = ask(b"cmd=put kvsname=%s key=late value=L\\ncmd=publish_na" % kvs)
        assert got == ["cmd=put_result", "rc=0"], got
        got = ask(b"me service=svc%s port=tcp://here:1\\n" % kvs[-8:])
        assert got == ["cmd=publish_result", "rc=0"], got
    assert ask(b"cmd=barrier_in\\n")[:2] == ["cmd=barrier_out", "rc=0"]
    other = 1 - rank
    values = [ask(b"cmd=get kvsname=%s key=%s\\n" % (kvs, k))[-1]
              for k in (b"first%d" % other, b"late")]
    print(rank, *values, flush=True)
    ask(b"cmd=finalize\\n")
"""


def test_the_take_over_keeps_what_the_quick_phase_served(pmrun: Run, tmp_path: Path) -> None:
    prog = script(tmp_path, "state.py", HANDOVER_STATE)
    for _ in range(3):
        r = pmrun("-n", "2", "python", str(prog))
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.splitlines()) == ["0 value=v1 value=L", "1 value=v0 value=L"]


# A rank that asks for a value many times, then makes no request for a while: pmrun
# polls after each request (pm.quick_serve.SPIN_NS, with fewer ranks than CPUs), then sleeps.
QUIET_RANK = """
    import os, socket, time
    sock = socket.socket(fileno=int(os.environ["PMI_FD"]))
    reader = sock.makefile("rb")

    def ask(line):
        sock.sendall(line)
        return reader.readline()

    def cpu(pid):  # user + system time, in clock ticks
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
    kvs = ask(b"cmd=get_my_kvsname\\n").split(b"kvsname=")[1].strip()
    ask(b"cmd=put kvsname=%s key=k value=v\\n" % kvs)
    ask(b"cmd=barrier_in\\n")
    for _ in range(2000):
        assert ask(b"cmd=get kvsname=%s key=k\\n" % kvs) == b"cmd=get_result rc=0 value=v\\n"
    before = cpu(os.getppid())
    time.sleep(0.5)  # (the rank's work, without a request)
    print(cpu(os.getppid()) - before, os.sysconf("SC_CLK_TCK"), flush=True)
    ask(b"cmd=finalize\\n")
"""


def test_pmrun_sleeps_while_ranks_make_no_request(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("-n", "1", "python", str(script(tmp_path, "quiet.py", QUIET_RANK)))
    assert r.returncode == 0, r.stderr
    ticks, per_s = map(int, r.stdout.split())
    assert ticks / per_s < 0.1  # of the rank's 0.5 s without a request


def test_pmrun_polls_after_requests_only_with_cpus_to_spare() -> None:
    cpus = len(os.sched_getaffinity(0))
    assert quick_spins(cpus) is False
    assert quick_spins(cpus - 1) is (cpus > 1)


def test_second_ctrl_c_while_the_output_waits_for_its_reader_kills_at_once(
        pmrun_popen: Start, marker: str) -> None:
    # `pmrun ... | less` with less not reading: the quick path's write of the ranks' output
    # waits; a second Ctrl-C still ends the job at once (the first is noted for later).
    p = pmrun_popen("-n", "1", "sh", "-c", f"while :; do echo {marker}; done")
    assert p.stdout is not None and p.stderr is not None

    def blocked() -> bool:  # (pmrun's own write to the full pipe: nobody reads it)
        with open(f"/proc/{p.pid}/wchan") as f:
            return f.read().endswith("pipe_write")  # (newer kernels: anon_pipe_write)

    def delivered() -> bool:  # (a second SIGINT sent while one is pending is the same one)
        with open(f"/proc/{p.pid}/status") as f:
            pending = [int(line.split()[1], 16) for line in f
                       if line.startswith(("SigPnd:", "ShdPnd:"))]
        return not any(mask & (1 << (signal.SIGINT - 1)) for mask in pending)

    wait_until(blocked, 30, "pmrun's write to wait for its reader")
    p.send_signal(signal.SIGINT)
    wait_until(delivered, 10, "the first SIGINT to reach pmrun")
    p.send_signal(signal.SIGINT)
    assert p.wait(20) == 128 + signal.SIGINT
    assert p.stderr.read() == b"pmrun: interrupted twice: killing the job\n"
    wait_gone(marker, 10)


def test_sigquit_is_forwarded_like_ctrl_c(pmrun_popen: Start, tmp_path: Path) -> None:
    # Ctrl-\ (SIGQUIT), as Hydra does: every rank gets it and the job goes on its way.
    prog = script(tmp_path, "quit.py", """
        import os, signal, sys, time
        def got(signum, frame):
            print("rank", os.environ["PMI_RANK"], "got", signal.Signals(signum).name,
                  flush=True)
            sys.exit(0)
        signal.signal(signal.SIGQUIT, got)
        print("ready", flush=True)
        time.sleep(60)
    """)
    for opts in ([], ["--local-nodes", "2"]):
        p = pmrun_popen("-n", "2", *opts, "python", str(prog))
        assert p.stdout is not None
        read_lines(p.stdout, 2, 30)
        p.send_signal(signal.SIGQUIT)
        out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        assert sorted(out.decode().splitlines()) == ["rank 0 got SIGQUIT", "rank 1 got SIGQUIT"]


def test_a_ctrl_c_while_pmrun_imports_ends_it_as_sigint_without_a_traceback() -> None:
    # The pmrun script, with a Ctrl-C arriving as it imports pmrun's quick path (before
    # pmrun has handlers of its own): it ends by SIGINT, as a shell reports it (130).
    run = ("import builtins, os, runpy, signal, sys\n"
           # (as a shell's foreground job has it: a background one starts with SIGINT ignored)
           "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
           "sys.argv = ['pmrun', '-n', '1', 'true']\n"
           "real = builtins.__import__\n"
           "def imp(name, *args, **kw):\n"
           "    if name == 'pm.quick':\n"
           "        os.kill(os.getpid(), signal.SIGINT)\n"
           "    return real(name, *args, **kw)\n"
           "builtins.__import__ = imp\n"
           f"runpy.run_path({str(Path(__file__).parent.parent / 'scripts' / 'pmrun')!r})\n")
    r = subprocess.run([sys.executable, "-c", run], env=pmrun_env(), capture_output=True,
                       text=True, timeout=60)
    assert (r.returncode, r.stderr) == (-signal.SIGINT, ""), r.stderr
