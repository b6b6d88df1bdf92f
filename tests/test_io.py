"""Output, stdin, timeouts and signals of a job, as a user of pmrun sees them."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import pmrun_argv, pmrun_env, read_lines, script, wait_gone

Run = Callable[..., subprocess.CompletedProcess[str]]
Start = Callable[..., subprocess.Popen[bytes]]

pytestmark = pytest.mark.timeout(60)

CHATTY = """
    import os, sys
    rank = os.environ["PMI_RANK"]
    # Long lines written in small pieces: pmrun must never mix two ranks in one line.
    for i in range(200):
        for piece in range(8):
            sys.stdout.write(f"r{rank}-{i}-{piece}:" + "x" * 300)
            sys.stdout.flush()
        sys.stdout.write("\\n")
    sys.stderr.write(f"err from {rank}\\n")
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]])
def test_lines_arrive_whole_and_labelled(pmrun: Run, tmp_path: Path, opts: list[str]) -> None:
    prog = script(tmp_path, "chatty.py", CHATTY)
    r = pmrun("-n", "4", *opts, "-l", "python", str(prog))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 4 * 200
    for line in lines:
        m = re.fullmatch(r"\[(\d)\] (r(\d)-(\d+)-0:x{300}(r\3-\4-\d:x{300}){7})", line)
        assert m and m.group(1) == m.group(3), line[:120]
    assert sorted(r.stderr.splitlines()) == [f"[{i}] err from {i}" for i in range(4)]


def test_no_label_by_default(pmrun: Run) -> None:
    r = pmrun("-n", "2", "python", "-c", "print('plain')")
    assert r.returncode == 0 and r.stdout.splitlines() == ["plain", "plain"]


STDIN = """
    import hashlib, os, sys
    data = sys.stdin.buffer.read()
    print(os.environ["PMI_RANK"], len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "3"]])
def test_stdin_goes_to_rank_0_whole_and_others_read_eof(pmrun: Run, tmp_path: Path,
                                                        opts: list[str]) -> None:
    data = bytes(range(256)) * 4096 + b"tail without newline"  # 1 MiB and a bit
    prog = script(tmp_path, "stdin.py", STDIN)
    r = pmrun("-n", "3", *opts, "python", str(prog), input=data)
    assert r.returncode == 0, r.stderr
    got = {int(line.split()[0]): line.split()[1:] for line in r.stdout.splitlines()}
    assert got[0] == [str(len(data)), hashlib.sha256(data).hexdigest()]
    assert got[1] == got[2] == ["0", hashlib.sha256(b"").hexdigest()]


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "3"]])
@pytest.mark.parametrize("where", ["--stdin", "-i"])
def test_stdin_goes_to_the_rank_asked_or_to_none(pmrun: Run, tmp_path: Path, opts: list[str],
                                                 where: str) -> None:
    """Open MPI's --stdin RANK|none and srun's -i: one rank reads pmrun's stdin, or none;
    or every rank reads a file.  One node's job takes the quick path, as without them."""
    from pm.quick import parse as quick_parse

    assert quick_parse([where, "2", "-n", "3", "prog"], {}) is not None
    assert quick_parse([where, "5", "-n", "3", "prog"], {}) is None  # the full path refuses
    data = bytes(range(256)) * 512 + b"end"
    prog = script(tmp_path, "stdin.py", STDIN)
    r = pmrun("-n", "3", *opts, where, "2", "python", str(prog), input=data)
    assert r.returncode == 0, r.stderr
    got = {int(line.split()[0]): line.split()[1:] for line in r.stdout.splitlines()}
    assert got[2] == [str(len(data)), hashlib.sha256(data).hexdigest()]
    assert got[0] == got[1] == ["0", hashlib.sha256(b"").hexdigest()]
    r = pmrun("-n", "3", *opts, where, "none", "python", str(prog), input=data)
    got = {int(line.split()[0]): line.split()[1:] for line in r.stdout.splitlines()}
    assert r.returncode == 0 and set(map(tuple, got.values())) == {
        ("0", hashlib.sha256(b"").hexdigest())}, (r.stdout, r.stderr)
    # srun's and Flux's -i FILE: every rank reads the whole file (pmrun's stdin: nobody).
    (tmp_path / "in.bin").write_bytes(data)
    r = pmrun("-n", "3", *opts, where, str(tmp_path / "in.bin"), "python", str(prog),
              input=b"not this")
    got = {int(line.split()[0]): line.split()[1:] for line in r.stdout.splitlines()}
    assert r.returncode == 0 and got == {
        rank: [str(len(data)), hashlib.sha256(data).hexdigest()] for rank in range(3)}, r


MIXED = """
    import os, sys
    for i in range(300):  # stdout and stderr interleaved, unbuffered: one order to keep
        os.write(1 + i % 2, b"%s %d\\n" % (os.environ["PMI_RANK"].encode(), i))
"""


#: Writes a prompt without a new line, and the rest once the test has seen it.
PROMPT = """
    import os, sys, time
    sys.stdout.write("name? ")
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    print("done", os.environ.get("PYTHONUNBUFFERED"))
"""


@pytest.mark.parametrize("opts", [["-u"], ["--unbuffered", "--local-nodes", "2"]])
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_unbuffered_passes_a_partial_line_on_at_once(pmrun_popen: Start, tmp_path: Path,
                                                     opts: list[str], quick: str) -> None:
    """srun's -u: a prompt without a new line reaches pmrun's stdout while the rank waits
    (a line is otherwise passed on whole), and a Python rank does not buffer it."""
    import select

    seen = tmp_path / "seen"
    prog = script(tmp_path, "prompt.py", PROMPT)
    p = pmrun_popen(*opts, "-n", "1", "python", str(prog), str(seen), env={"PM_QUICK": quick})
    assert p.stdout is not None
    got = b""
    while not got.endswith(b"? "):
        assert select.select([p.stdout], [], [], 30)[0], f"no prompt within 30 s: {got!r}"
        data = os.read(p.stdout.fileno(), 100)
        assert data, f"stdout closed after {got!r}"
        got += data
    assert got == b"name? " and p.poll() is None
    seen.touch()
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out, err) == (0, b"done 1\n", b"")


def test_unbuffered_has_no_line_to_label_and_is_parallels_beside_sources(pmrun: Run) -> None:
    r = pmrun("-u", "-l", "-n", "1", "true")
    assert (r.returncode, r.stderr) == (
        2, "pmrun: -u passes output on as it comes, not in lines: -l has no line to start\n")
    r = pmrun("-u", "-k", "echo", ":::", "a", "b")  # GNU parallel's -u (--ungroup)
    assert (r.returncode, r.stdout) == (0, "a\nb\n")


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["-l"]])
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_merge_stderr_to_stdout_keeps_each_ranks_order(pmrun: Run, tmp_path: Path,
                                                       opts: list[str], quick: str) -> None:
    prog = script(tmp_path, "mixed.py", MIXED)
    r = pmrun("--merge-stderr-to-stdout", "-n", "2", *opts, "python", str(prog),
              env={"PM_QUICK": quick})
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    lines = [line.removeprefix("[0] ").removeprefix("[1] ") for line in r.stdout.splitlines()]
    for rank in ("0", "1"):
        assert [line for line in lines if line.startswith(rank + " ")] == [
            f"{rank} {i}" for i in range(300)]
    r = pmrun("--merge-stderr-to-stdout", "--error", "e.%r", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: --merge-stderr-to-stdout leaves no stderr "
                                           "for --error to write\n")


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["--local-nodes", "3"]],
                         ids=["1node", "2nodes", "3nodes"])
def test_a_ranks_last_lines_come_before_the_line_that_says_how_it_ended(
        tmp_path: Path, opts: list[str]) -> None:
    """Output on the launcher's stdout and stderr, both one pipe, as on a terminal."""
    for _ in range(3):
        r = subprocess.run(pmrun_argv(*opts, "-l", "-n", "2", "sh", "-c",
                                      "seq 1 2000; echo last; exit 3"),
                           env=pmrun_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=50)
        assert r.returncode == 3, r.stdout[-2000:]
        lines = r.stdout.splitlines()
        said = [i for i, line in enumerate(lines) if line.startswith("pmrun: rank ")]
        assert said, r.stdout[-2000:]
        for i in said:
            rank = lines[i].split()[2]
            assert f"[{rank}] last" in lines[:i], lines[i]


def test_srun_time_limit_ends_a_hung_job(pmrun: Run, marker: str) -> None:
    """srun's -t MM:SS is --timeout in srun's words."""
    r = pmrun("-n", "2", "-t", "0:01", "python", "-c", "import time; time.sleep(120)", marker)
    assert r.returncode == 124, r.stderr
    wait_gone(marker, 10)
    r = pmrun("-n", "1", "--time", "1-0", "true")  # a day is room enough
    assert (r.returncode, r.stderr) == (0, "")
    # Flux's words: -t 1.5s (--time-limit), -l (--label-io), --cwd, -c (--cores-per-task).
    r = pmrun("-n", "2", "-t", "1.5s", "python", "-c", "import time; time.sleep(120)", marker)
    assert (r.returncode, r.stderr) == (124, "pmrun: job timed out after 1.5 s\n")
    wait_gone(marker, 10)
    r = pmrun("-n", "2", "--label-io", "--cwd", "/", "--cores-per-task", "1", "pwd")
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, ["[0] /", "[1] /"]), r.stderr


def test_srun_export_chdir_and_kill_on_bad_exit(pmrun: Run, tmp_path: Path) -> None:
    env = {"PM_A": "1", "PM_B": "2"}
    show = ["sh", "-c", 'echo "A=${PM_A-unset} B=${PM_B-unset} C=${PM_C-unset} $(pwd)"']
    for export, want in [("NONE", "A=unset B=unset C=unset"), ("PM_A,PM_C=3", "A=1 B=unset C=3"),
                         ("ALL,PM_C=3", "A=1 B=2 C=3"), ("ALL", "A=1 B=2 C=unset")]:
        r = pmrun("--export", export, "-D", "/", "-K", "-O", "-n", "1", *show, env=env)
        assert (r.returncode, r.stdout) == (0, f"{want} /\n"), (export, r.stderr)
    r = pmrun("-n", "2", "-o", "out.%t", "-e", "err.%t", "sh", "-c", "echo o; echo e >&2")
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    for rank in (0, 1):
        assert (tmp_path / f"out.{rank}").read_text() == "o\n"
        assert (tmp_path / f"err.{rank}").read_text() == "e\n"


def test_timeout_ends_a_hung_job(pmrun: Run, marker: str) -> None:
    r = pmrun("-n", "2", "--timeout", "1", "python", "-c",
              "import time, sys; time.sleep(120)", marker)
    assert r.returncode == 124, r.stderr
    assert re.search(r"pmrun: .*timed? ?out.*1", r.stderr, re.IGNORECASE), r.stderr
    wait_gone(marker, 10)


def test_mpiexec_timeout_variable_works_like_timeout(pmrun: Run, marker: str) -> None:
    r = pmrun("-n", "1", "python", "-c", "import time; time.sleep(120)", marker,
              env={"MPIEXEC_TIMEOUT": "1"})
    assert r.returncode == 124, r.stderr
    wait_gone(marker, 10)


LATE = """
    import os, sys, time
    if os.environ["PMI_RANK"] == "1":
        time.sleep(120)  # never reaches MPI_Init: the others wait for it there
    from mpi4py import MPI
"""


def test_report_state_on_timeout_names_each_rank_and_where_it_waits(
        pmrun: Run, tmp_path: Path, marker: str) -> None:
    prog = script(tmp_path, "late.py", LATE)
    r = pmrun("-n", "4", "--local-nodes", "2", "--timeout", "8", "--report-state-on-timeout",
              "python", str(prog), marker)
    assert r.returncode == 124, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "pmrun: job timed out after 8 s", r.stderr
    state = {int(m[1]): m for line in lines[1:] if (m := re.fullmatch(
        r"pmrun: rank (\d) \(node (\d), [^)]+\), pid \d+: ([a-z ()/]+), [\d.]+ s of CPU; (.+)",
        line))}
    assert sorted(state) == [0, 1, 2, 3], r.stderr
    assert [state[r][2] for r in range(4)] == ["0", "0", "1", "1"]
    assert state[1][3] == "sleeping" and state[1][4] == "no PMI init yet", r.stderr
    for rank in (2, 3):  # (node 1's ranks wait in the tree's fence of MPI_Init)
        assert re.fullmatch(r"in the PMI (fence|barrier) 1", state[rank][4]), r.stderr
    wait_gone(marker, 10)


#: Rank 0 waits for a key rank 1 never puts (rank 1 waits in a barrier); rank 1 spawns two
#: ranks that wait for each other's key.
WAITS = """
    import os, sys
    from pm.client.sync import connect

    with connect() as pmi:
        if "child" in sys.argv:
            pmi.get("late", rank=1 - pmi.rank)
        elif pmi.rank == 0:
            pmi.get("late", rank=1)
        else:
            pmi.spawn([sys.executable, __file__, "child", *sys.argv[1:]], 2)
            pmi.barrier()
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_report_state_names_a_get_and_the_spawned_jobs_ranks(
        pmrun: Run, tmp_path: Path, marker: str, opts: list[str]) -> None:
    prog = script(tmp_path, "waits.py", WAITS)
    r = pmrun(*opts, "-n", "2", "--timeout", "4", "--report-state-on-timeout", "python",
              str(prog), marker)
    assert r.returncode == 124, r.stderr
    state = {m[1]: m[2] for line in r.stderr.splitlines() if (m := re.fullmatch(
        r"pmrun: (rank \d(?: of spawned job \d)?) \(node \d, [^)]+\), pid \d+: [a-z ()/]+, "
        r"[\d.]+ s of CPU; (.+)", line))}
    assert state == {
        "rank 0": "PMI initialized, in a get of rank 1's key 'late'",
        "rank 1": "in the PMI barrier 1",
        "rank 0 of spawned job 1": "PMI initialized, in a get of rank 1's key 'late'",
        "rank 1 of spawned job 1": "PMI initialized, in a get of rank 0's key 'late'"}, r.stderr
    wait_gone(marker, 10)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_get_stack_traces_shows_each_running_ranks_threads(pmrun: Run, marker: str) -> None:
    r = pmrun("-n", "2", "--timeout", "2", "--get-stack-traces", "python", "-c",
              "import time; time.sleep(120)", marker)
    assert r.returncode == 124, r.stderr
    for rank in (0, 1):
        head = re.search(rf"^pmrun: rank {rank} \(node 0, [^)]+\), pid (\d+): sleeping.*\n"
                         rf"pmrun: rank {rank} \(node 0, [^)]+\), pid \1: stack:\n"
                         r"pmrun:   Thread 1 .*\n(pmrun:   #\d+ .*\n)+", r.stderr, re.M)
        assert head, r.stderr
    assert "sleep" in r.stderr, r.stderr  # (the frames are the sleep's)
    wait_gone(marker, 10)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_one_gdb_takes_several_ranks_stacks_in_turn(pmrun: Run, marker: str) -> None:
    # 6 ranks, a gdb a CPU: each attaches to several ranks, one after the other.
    r = pmrun("-n", "6", "--timeout", "2", "--get-stack-traces", "python", "-c",
              "import time; time.sleep(120)", marker, timeout=90)
    assert r.returncode == 124, r.stderr
    for rank in range(6):
        assert re.search(rf"^pmrun: rank {rank} \(node 0, [^)]+\), pid \d+: stack:\n"
                         r"pmrun:   Thread 1 .*\n(pmrun:   #\d+ .*\n)+", r.stderr, re.M), \
            r.stderr
    wait_gone(marker, 10)


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")
def test_a_rank_gone_before_its_stack_is_named_and_the_next_one_taken() -> None:
    import asyncio

    from pm.agent.state_report import stacks

    gone = subprocess.Popen(["true"])
    gone.wait()
    alive = subprocess.Popen(["sleep", "60"])
    try:
        got = asyncio.run(stacks([gone.pid, alive.pid]))
    finally:
        alive.kill()
        alive.wait()
    assert got[gone.pid] == ["no stack: gdb: ptrace: No such process."], got
    assert got[alive.pid][0].startswith("Thread 1 ") and \
        any(line.startswith("#0 ") for line in got[alive.pid]), got


def test_report_state_without_a_timeout_is_refused_in_one_line(pmrun: Run) -> None:
    r = pmrun("-n", "1", "--get-stack-traces", "true")
    assert r.returncode == 2
    assert r.stderr == ("pmrun: --get-stack-traces acts at the job's timeout: give --timeout "
                        "SECONDS (or MPIEXEC_TIMEOUT)\n")


STUBBORN = """
    import os, signal, sys, time
    # Ignores the first SIGINT, as a rank busy in a long computation might.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("up", os.environ["PMI_RANK"], flush=True)
    time.sleep(300)
"""


def test_second_ctrl_c_kills_at_once(pmrun_popen: Start, tmp_path: Path, marker: str) -> None:
    prog = script(tmp_path, "stubborn.py", STUBBORN)
    p = pmrun_popen("-n", "2", "--local-nodes", "2", "python", str(prog), marker)
    assert p.stdout is not None
    read_lines(p.stdout, 2, 30)
    assert p.stderr is not None
    p.send_signal(signal.SIGINT)
    # The ranks ignore it; pmrun says what it did and what a second Ctrl-C does.
    assert b"forwarding SIGINT" in read_lines(p.stderr, 1, 10)[0]
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=20)
    assert p.returncode != 0
    assert re.search(r"killed by SIGKILL|killing", err.decode()), err.decode()
    wait_gone(marker, 10)


ALARMED = """
    import os, signal, sys, time
    def said(signum, frame):
        print("rank", os.environ["PMI_RANK"], "got", signal.Signals(signum).name, flush=True)
        sys.exit(0)
    signal.signal(signal.SIGALRM, said)
    signal.signal(signal.SIGWINCH, said)
    print("up", flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize(("args", "sig"), [
    (["--forward-signals", "SIGXCPU,28", "--local-nodes", "2"], signal.SIGWINCH),
    (["--local-nodes", "2"], signal.SIGALRM),  # (as srun does, always)
    ([], signal.SIGALRM),  # (one node: the quick path hands the job over)
])
def test_forward_signals_adds_signals_every_rank_gets(pmrun_popen: Start, tmp_path: Path,
                                                     marker: str, args: list[str],
                                                     sig: signal.Signals) -> None:
    prog = script(tmp_path, "alarmed.py", ALARMED)
    p = pmrun_popen(*args, "-n", "2", "python", str(prog), marker)
    assert p.stdout is not None
    assert read_lines(p.stdout, 2, 30) == [b"up\n", b"up\n"]
    p.send_signal(sig)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err.decode()
    assert sorted(out.decode().splitlines()) == [f"rank {r} got {sig.name}" for r in (0, 1)]
    wait_gone(marker, 10)


@pytest.mark.parametrize(("value", "said"), [
    ("SIGKILL", "--forward-signals: SIGKILL cannot be forwarded (it cannot be caught)"),
    ("USR1,CHLD", "--forward-signals: SIGCHLD cannot be forwarded (pmrun's own)"),
    ("14,SIGNOPE", "--forward-signals takes signals by name or number (SIGUSR1,SIGALRM or "
                   "10,14), not 'SIGNOPE'"),
])
def test_forward_signals_refuses_what_it_cannot_forward(pmrun: Run, value: str,
                                                        said: str) -> None:
    r = pmrun("--forward-signals", value, "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, f"pmrun: {said}\n")


WARNED = """
    import os, signal, sys, time
    t0 = float(sys.argv[1])
    def said(signum, frame):
        print(os.environ["PMI_RANK"], signal.Signals(signum).name, time.time() - t0,
              flush=True)
        sys.exit(0)
    signal.signal(signal.SIGUSR1, said)
    time.sleep(300)
"""


def test_signal_before_the_time_limit_reaches_every_rank_then(pmrun: Run, tmp_path: Path,
                                                                marker: str) -> None:
    prog = script(tmp_path, "warned.py", WARNED)
    r = pmrun("--timeout", "30", "--signal=R:USR1@26", "-n", "2", "--local-nodes", "2",
              "python", str(prog), str(time.time()), marker)
    assert r.returncode == 0, r.stderr  # (each rank ended by its handler, before the limit)
    got = sorted(line.split() for line in r.stdout.splitlines())
    assert [g[:2] for g in got] == [["0", "SIGUSR1"], ["1", "SIGUSR1"]], r.stdout
    assert all(3.9 <= float(g[2]) < 25 for g in got), r.stdout  # 4 s in, not at the start


@pytest.mark.parametrize(("args", "said"), [
    (["--signal", "USR1"], "--signal: a signal before the time limit needs a time limit "
                           "(--timeout SECONDS, -t MINUTES)"),
    (["-t", "5", "--signal", "B:USR1"], "--signal B:USR1: B: signals a batch script's shell, "
     "which pmrun does not run (give SIG@TIME: every rank gets it)"),
    (["-t", "5", "--signal", "USR1@soon"], "--signal USR1@soon: TIME is seconds (or 30s, 2m, "
                                           "1h), not 'soon'"),
    (["-t", "5", "--signal", "NOPE@5"], "--signal takes [R:]SIG[@TIME] (USR1@60, SIGTERM@2m), "
                                        "not 'NOPE@5'"),
])
def test_signal_before_the_time_limit_refuses_what_it_cannot_do(pmrun: Run, args: list[str],
                                                                said: str) -> None:
    r = pmrun(*args, "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, f"pmrun: {said}\n")


def test_sigterm_to_pmrun_is_forwarded(pmrun_popen: Start, tmp_path: Path,
                                       marker: str) -> None:
    prog = script(tmp_path, "sleep.py", """
        import os, time
        print("up", os.environ["PMI_RANK"], flush=True)
        time.sleep(300)
    """)
    p = pmrun_popen("-n", "3", "python", str(prog), marker)
    assert p.stdout is not None
    read_lines(p.stdout, 3, 30)
    p.send_signal(signal.SIGTERM)
    _out, err = p.communicate(timeout=20)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert re.search(r"rank \d \(node 0, [^)]*\) killed by SIGTERM", err.decode()), err
    wait_gone(marker, 10)


@pytest.mark.parametrize("opts", [["--local-nodes", "2"], ["-genv", "X", "1"]])
def test_rank_0_reads_eof_when_pmrun_has_no_stdin(pmrun: Run, opts: list[str]) -> None:
    # stdin is /dev/null here: `cat` on rank 0 must end, not wait for ever.
    r = pmrun("-n", "2", *opts, "-l", "sh", "-c", "cat; echo done", env={"PM_QUICK": "0"},
              timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["[0] done", "[1] done"]


@pytest.mark.parametrize("quick", ["1", "0"])
def test_closed_stdout_is_no_crash(tmp_path: Path, quick: str) -> None:
    # `pmrun ... >&-`: the ranks' output has nowhere to go: said once, as the ranks' writes
    # fail (SIGPIPE), and the job's status is 1 (tests/test_output_exact.py).
    argv = " ".join(pmrun_argv("-n", "2", "sh", "-c", "'echo out; echo err >&2'"))
    p = subprocess.run(["sh", "-c", f"exec {argv} >&-"], cwd=tmp_path,
                       env=pmrun_env({"PM_QUICK": quick}), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    assert [line for line in lines if line.startswith("pmrun:")] == [
        "pmrun: cannot write to stdout: it was closed when pmrun started: what goes there "
        "from now on is lost"], p.stderr
    # (The ranks' stderr still goes; a rank ended by SIGPIPE first writes none.)
    assert {line for line in lines if not line.startswith("pmrun:")} <= {"err"}, p.stderr


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["-genv", "PM_X", "1"]])
def test_output_files_per_rank_and_shared(pmrun: Run, tmp_path: Path, opts: list[str]) -> None:
    prog = "echo out $PMI_RANK; echo err $PMI_RANK >&2"
    r = pmrun("-n", "3", *opts, "--output", str(tmp_path / "out.%r"),
              "-errfile-pattern", str(tmp_path / "err-%%.log"), "sh", "-c", prog,
              env={"PM_QUICK": "0" if opts[:1] == ["-genv"] else "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == ""
    for rank in range(3):
        assert (tmp_path / f"out.{rank}").read_text() == f"out {rank}\n"
    # No %r: the ranks share one file, line by line.
    assert sorted((tmp_path / "err-%.log").read_text().splitlines()) == [
        "err 0", "err 1", "err 2"]


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["-genv", "PM_X", "1"]])
def test_open_mpi_output_filename_writes_each_ranks_streams_in_its_folder(
        pmrun: Run, tmp_path: Path, opts: list[str]) -> None:
    prog = "echo out $PMI_RANK; echo err $PMI_RANK >&2"
    r = pmrun("-n", "3", *opts, "--output-filename", str(tmp_path / "o"), "sh", "-c", prog,
              env={"PM_QUICK": "0" if opts[:1] == ["-genv"] else "1"})
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    # Open MPI's layout: DIR/1/rank.R/stdout and stderr, the folders made by pmrun.
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) \
        == [f"o/1/rank.{r}/{s}" for r in range(3) for s in ("stderr", "stdout")]
    for rank in range(3):
        assert (tmp_path / f"o/1/rank.{rank}/stdout").read_text() == f"out {rank}\n"
        assert (tmp_path / f"o/1/rank.{rank}/stderr").read_text() == f"err {rank}\n"
    # ':nocopy' (Open MPI's: not also to the terminal) is what pmrun does anyway; merged,
    # both streams go to stdout.
    r = pmrun("-n", "1", "--merge-stderr-to-stdout", "--output-filename",
              f"{tmp_path / 'm'}:nocopy", "sh", "-c", "echo a; echo b >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert (tmp_path / "m/1/rank.0/stdout").read_text() == "a\nb\n"
    assert not (tmp_path / "m/1/rank.0/stderr").exists()
    # A folder per rank in an --output pattern is made too; a folder above it must be one.
    r = pmrun("-n", "2", "--output", str(tmp_path / "p/%r/out"), "sh", "-c", "echo $PMI_RANK")
    assert r.returncode == 0 and (tmp_path / "p/1/out").read_text() == "1\n", r.stderr
    (tmp_path / "f").write_text("")
    r = pmrun("--output-filename", str(tmp_path / "f/x"), "true")
    assert (r.returncode, r.stderr) == (
        2, f"pmrun: --output-filename {tmp_path / 'f/x'}: {tmp_path / 'f'} is not a folder\n")
    r = pmrun("--output", str(tmp_path / "f/%r/out"), "true")
    assert (r.returncode, r.stderr) == (
        2, f"pmrun: --output {tmp_path / 'f/%r/out'}: {tmp_path / 'f'} is not a folder\n")


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["quick", "2nodes"])
def test_output_patterns_name_the_host_and_node(pmrun: Run, tmp_path: Path,
                                                opts: list[str]) -> None:
    # Hydra's -errfile-pattern err.%r-%h, srun's -o out.%N.%t; %n/%p the node's number,
    # %u the user; a folder per host is made too.
    import pwd

    host = os.uname().nodename
    user = pwd.getpwuid(os.getuid()).pw_name
    r = pmrun("-n", "3", *opts, "--output", str(tmp_path / "%h/out.%N.%t.%n"),
              "-errfile-pattern", str(tmp_path / "err.%r-%p.%u"), "sh", "-c",
              "echo out $PMI_RANK; echo err $PMI_RANK >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    node = [0, 0, 1] if opts else [0, 0, 0]
    for rank in range(3):
        assert (tmp_path / f"{host}/out.{host.split('.')[0]}.{rank}.{node[rank]}"
                ).read_text() == f"out {rank}\n"
        assert (tmp_path / f"err.{rank}-{node[rank]}.{user}").read_text() == f"err {rank}\n"
    r = pmrun("--output", str(tmp_path / "out.%z"), "true")
    assert (r.returncode, r.stderr) == (
        2, f"pmrun: --output {tmp_path / 'out.%z'}: %z stands for nothing (%r or %t the "
        "rank, %j the job id, %x its name, %h or %N the host, %n or %p the node number, %u "
        "the user, %A and %a a Slurm job array's id and index, %% a percent sign)\n")


def test_output_patterns_inside_slurm_name_slurm_s_job(monkeypatch: pytest.MonkeyPatch) -> None:
    # srun's -o out.%j.%t and a job array's out.%A_%a: Slurm's ids, not pmrun's own.
    from pm.common.outfiles import expand_pattern

    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert expand_pattern("o.%j.%t.%A", 1, "vm-1-ab") == "o.vm-1-ab.1.vm-1-ab"
    assert expand_pattern("o.%a", 1, "vm-1-ab") == "o.4294967294"  # (srun's, outside arrays)
    monkeypatch.setenv("SLURM_JOB_ID", "54")
    assert expand_pattern("o.%j.%t", 1, "vm-1-ab") == "o.54.1"
    assert expand_pattern("o.%j.%t", 1, "vm-1-ab", spawned=2) == "o.54s2.1"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "50")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert expand_pattern("o.%A_%a.%t", 0, "vm-1-ab") == "o.50_3.0"


@pytest.mark.parametrize("opts", [["-l"], ["--local-nodes", "2"]])
def test_timestamp_output_starts_every_line_with_the_time(pmrun: Run, opts: list[str]) -> None:
    r = pmrun("-n", "2", "--timestamp-output", *opts, "sh", "-c", "echo out; echo err >&2")
    assert r.returncode == 0, r.stderr
    label = r"\[[01]\] " if opts == ["-l"] else ""
    stamp = r"\[\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] "
    for stream, word in ((r.stdout, "out"), (r.stderr, "err")):
        lines = stream.splitlines()
        assert len(lines) == 2 and all(re.fullmatch(stamp + label + word, line)
                                       for line in lines), stream


def test_open_mode_append_keeps_what_the_files_held(pmrun: Run, tmp_path: Path) -> None:
    out, err = str(tmp_path / "out.%t"), str(tmp_path / "err.%t")
    for word, mode in (("one", []), ("two", ["--open-mode=append"]),
                       ("three", ["--open-mode", "a"])):
        r = pmrun(*mode, "-n", "2", "-o", out, "-e", err, "python", "-c",
                  f"import sys; print('{word}'); print('{word}', file=sys.stderr)")
        assert r.returncode == 0, r.stderr
    for rank in (0, 1):
        for name in ("out", "err"):
            assert (tmp_path / f"{name}.{rank}").read_text() == "one\ntwo\nthree\n"
    r = pmrun("--open-mode=truncate", "-n", "1", "-o", out, "echo", "four")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.0").read_text() == "four\n"
    r = pmrun("--open-mode=keep", "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: --open-mode takes append or truncate, not "
                                           "'keep'\n")


PROLOG = """#!/bin/sh
echo "export GREETING=hello, rank $PMI_RANK"
echo "export 9BAD=x"
echo "unset DROPME"
echo "print prolog of rank $PMI_RANK"
echo "this line means nothing"
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]])
def test_task_prolog_sets_each_ranks_environment_first(pmrun: Run, tmp_path: Path,
                                                       opts: list[str]) -> None:
    prolog = tmp_path / "prolog.sh"
    prolog.write_text(PROLOG)
    prolog.chmod(0o755)
    r = pmrun("--task-prolog", str(prolog), "-n", "2", *opts, "-l", "python", "-c",
              "import os; print(os.environ['GREETING'], os.environ.get('DROPME'), "
              "'9BAD' in os.environ)", env={"DROPME": "1"})
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert [ln for ln in lines if "prolog" in ln] == ["[0] prolog of rank 0",
                                                      "[1] prolog of rank 1"], r.stdout
    said = [ln for ln in lines if "prolog" not in ln]
    assert said == ["[0] hello, rank 0 None False", "[1] hello, rank 1 None False"], r.stdout


def test_task_prolog_that_fails_ends_its_rank_with_its_status(pmrun: Run,
                                                              tmp_path: Path) -> None:
    prolog = tmp_path / "fails.sh"
    prolog.write_text("#!/bin/sh\nexit 3\n")
    prolog.chmod(0o755)
    r = pmrun("--task-prolog", str(prolog), "-n", "2", "echo", "never")
    assert r.returncode == 3 and r.stdout == "", r.stderr
    assert f"pmrun: --task-prolog {prolog} failed with status 3" in r.stderr.splitlines()
    assert re.search(r"^pmrun: rank [01] \(node 0, [^)]*\) exited with code 3$", r.stderr,
                     re.M), r.stderr


def _hook(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_prolog_and_epilog_run_here_before_and_after_the_job(pmrun: Run,
                                                             tmp_path: Path) -> None:
    log = tmp_path / "log"
    prolog = _hook(tmp_path, "prolog", f'echo "prolog $*" >> {log}')
    epilog = _hook(tmp_path, "epilog", f'echo "epilog $*" >> {log}; exit 4')
    r = pmrun("--prolog", prolog, "--epilog", epilog, "-n", "2", "--local-nodes", "2",
              "sh", "-c", f"echo rank >> {log}")
    assert r.returncode == 0, r.stderr  # (the job's status, not the epilog's)
    assert log.read_text().splitlines() == [
        f"prolog sh -c echo rank >> {log}", "rank", "rank", f"epilog sh -c echo rank >> {log}"]
    assert r.stderr.splitlines()[-1] == f"pmrun: --epilog {epilog} failed with status 4"


@pytest.mark.parametrize(("body", "code", "how"), [
    ("exit 5", 5, "failed with status 5"),
    ("kill -TERM $$", 143, "failed with status 143"),
])
def test_a_prolog_that_fails_keeps_the_job_from_starting(pmrun: Run, tmp_path: Path,
                                                         body: str, code: int,
                                                         how: str) -> None:
    prolog = _hook(tmp_path, "prolog", body)
    r = pmrun("--prolog", prolog, "-n", "2", "touch", str(tmp_path / "ran"))
    assert (r.returncode, r.stderr) == (
        code, f"pmrun: --prolog {prolog} {how}: the job is not started\n")
    assert not (tmp_path / "ran").exists()


def test_task_epilog_runs_after_each_rank_with_its_environment(pmrun: Run,
                                                                tmp_path: Path) -> None:
    log = tmp_path / "log"
    epilog = _hook(tmp_path, "epilog", f'echo "$PMI_RANK $GREETING" >> {log}\n'
                                       '[ "$PMI_RANK" = 1 ] && exit 2; exit 0')
    r = pmrun("--task-epilog", epilog, "-n", "3", "--local-nodes", "2", "-genv", "GREETING",
              "hi", "sh", "-c", f'echo "ran $PMI_RANK" >> {log}')
    assert r.returncode == 0, r.stderr  # (an epilog's failure is said, not the job's)
    lines = log.read_text().splitlines()
    for rank in range(3):  # each after its rank
        assert lines.index(f"ran {rank}") < lines.index(f"{rank} hi"), lines
    assert re.search(rf"^pmrun: rank 1 \(node \d, [^)]*\): --task-epilog {epilog} failed "
                     r"with status 2$", r.stderr, re.M), r.stderr


def test_output_file_pattern_in_a_missing_folder_is_a_usage_error(pmrun: Run) -> None:
    r = pmrun("-n", "1", "--output", "/no/such/folder/out.%r", "true")
    assert r.returncode == 2
    assert "no such directory /no/such/folder" in r.stderr


def test_an_output_file_that_cannot_be_opened_is_said_once(pmrun: Run, tmp_path: Path) -> None:
    folder = tmp_path / "d"
    folder.mkdir()
    # The one file of every rank a directory: refused before the job starts.
    r = pmrun("-n", "2", "-l", "--output", str(folder), "sh", "-c", "echo a; echo b")
    assert (r.returncode, r.stderr) == (2, f"pmrun: --output {folder}: is a directory\n")
    # A node's file (%h), found a directory once the ranks write: said once, the job goes on
    # (its status 1: output was lost).
    (folder / os.uname().nodename).mkdir()
    r = pmrun("-n", "2", "-l", "--output", f"{folder}/%h", "sh", "-c", "echo a; echo b")
    assert r.returncode == 1, r.stderr
    (line,) = r.stderr.splitlines()  # the ranks share the (unopenable) file: one message
    assert "output is lost: cannot open" in line and str(folder) in line


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["-genv", "PM_X", "1"]])
def test_a_closed_output_pipe_ends_the_job_as_in_a_shell_pipeline(tmp_path: Path,
                                                                  opts: list[str]) -> None:
    # `pmrun -n 2 yes | head -1`: the ranks get SIGPIPE, pmrun exits 128+SIGPIPE.
    argv = " ".join(pmrun_argv("-n", "2", *opts, "yes"))
    quick = "0" if opts[:1] == ["-genv"] else "1"
    p = subprocess.run(["bash", "-c", f"{argv} | head -1; exit ${{PIPESTATUS[0]}}"],
                       cwd=tmp_path, env=pmrun_env({"PM_QUICK": quick}),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 128 + signal.SIGPIPE, p.stderr
    assert p.stdout == "y\n"
    assert "killed by SIGPIPE" in p.stderr


PY_FLOOD = """
    while True:
        print("x" * 99)
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["-genv", "PM_X", "1"]])
def test_a_closed_output_pipe_ends_ranks_that_ignore_sigpipe(tmp_path: Path, marker: str,
                                                             opts: list[str]) -> None:
    # Python ignores SIGPIPE: its writes must fail (EPIPE) instead of waiting for ever on
    # a pipe nobody reads any more, so that `| head` ends the job.
    prog = script(tmp_path, "flood.py", PY_FLOOD)
    argv = " ".join(pmrun_argv("-n", "2", *opts, "python", str(prog), marker))
    quick = "0" if opts[:1] == ["-genv"] else "1"
    p = subprocess.run(["bash", "-c", f"{argv} | head -c 1000; exit ${{PIPESTATUS[0]}}"],
                       cwd=tmp_path, env=pmrun_env({"PM_QUICK": quick}),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=40)
    assert p.returncode == 128 + signal.SIGPIPE, p.stderr
    assert p.stdout == ("x" * 99 + "\n") * 10
    causes = [line for line in p.stderr.splitlines() if line.startswith("pmrun:")]
    assert len(causes) == 1 and "output was closed" in causes[0], p.stderr
    wait_gone(marker, 10)


# ------------------------------------------------------------------ Hydra's -output-from
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_output_from_shows_those_ranks_alone(pmrun: Run, quick: str) -> None:
    show = 'echo "out $PMI_RANK"; echo "err $PMI_RANK" >&2'
    r = pmrun("-output-from", "1", "-n", "3", "sh", "-c", show, env={"PM_QUICK": quick})
    assert (r.returncode, r.stdout, r.stderr) == (0, "out 1\n", "err 1\n")
    r = pmrun("--output-from", "0,2-3", "-n", "4", "-l", "sh", "-c", show,
              env={"PM_QUICK": quick})
    assert r.returncode == 0 and sorted(r.stdout.splitlines()) == ["[0] out 0", "[2] out 2",
                                                                    "[3] out 3"], r.stderr
    r = pmrun("-output-from", "1-0", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: -output-from '1-0' is not ranks (0, or "
                                           "0-3,5)\n")


def test_output_discarded_holds_no_rank_back(pmrun: Run) -> None:
    """Ranks on other nodes writing much more than the nodes' output credit: what is not
    shown counts as written, so they go on (and so does the rank that is shown)."""
    flood = 'if [ "$PMI_RANK" = 0 ]; then echo done; else head -c 8000000 /dev/zero; fi'
    r = pmrun("--local-nodes", "2", "-ppn", "1", "-output-from", "0", "-n", "2", "sh", "-c",
              flood, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "done\n", "")
