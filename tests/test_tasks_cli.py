"""``pmrun --tasks`` as a GNU parallel user meets it: lines run by ``sh -c``, ``-j N``
(default one task per core), and a progress line that says what tasks wait for."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import pty
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pm.ensemble.timeouts import parse_termseq

sys.path.insert(0, str(Path(__file__).parent))
from launch_util import pids_with, pmrun_argv, pmrun_env

Run = Callable[..., subprocess.CompletedProcess[str]]
Popen = Callable[..., subprocess.Popen[bytes]]

pytestmark = pytest.mark.timeout(60)

CORES = len(os.sched_getaffinity(0))


def _most_at_once(stderr: str) -> int:
    """The most tasks running together, from ``-v -v`` start/exit lines."""
    running = most = 0
    for m in re.finditer(r"^pmrun: \[task \d+\] (started|exited)", stderr, re.M):
        running += 1 if m.group(1) == "started" else -1
        most = max(most, running)
    return most


def test_lines_run_through_sh_like_gnu_parallel(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text(
        "sleep 0.1; echo two\n"
        "echo one | tr o O\n"
        "[mem=10M] for i in 1 2; do echo $i; done > out.$PMRUN_TASK; cat out.2\n"
        "echo 'a;b' \"$((6 * 7))\" # a comment\n"
        "exit 3\n")
    r = pmrun("--tasks", "t.txt")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(
        ["[task 0] two", "[task 1] One", "[task 2] 1", "[task 2] 2", "[task 3] a;b 42"])
    assert r.stderr.splitlines()[0] == "5 tasks: 4 succeeded, 1 failed, 0 retries"
    assert "task 4 (line 5): exit codes 3: exit 3" in r.stderr


def test_j1_runs_one_task_at_a_time(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("sleep 0.2\n" * 3)
    r = pmrun("-v", "-v", "-j", "1", "--tasks", "t.txt")
    assert r.returncode == 0, r.stderr
    assert _most_at_once(r.stderr) == 1, r.stderr


def test_default_is_one_task_per_core(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("sleep 0.4\n" * (CORES + 2))
    # Declared bounds: no first measurement to wait for, cores are the only limit.
    r = pmrun("-v", "-v", "--mem-per-task", "1M", "--tasks", "t.txt")
    assert r.returncode == 0, r.stderr
    assert _most_at_once(r.stderr) == CORES, r.stderr
    # -j 0: memory is the only limit.
    r = pmrun("-v", "-v", "-j", "0", "--mem-per-task", "1M", "--tasks", "t.txt")
    assert r.returncode == 0, r.stderr
    assert _most_at_once(r.stderr) == CORES + 2, r.stderr


@pytest.mark.parametrize("value", ["x", "2.5", "+", "%", "1.%", "+-1"])
def test_a_bad_j_is_one_line(pmrun: Run, tmp_path: Path, value: str) -> None:
    (tmp_path / "t.txt").write_text("true\n")
    r = pmrun("-j", value, "--tasks", "t.txt")
    assert r.returncode == 2
    assert r.stderr == ("pmrun: -j takes a whole number of tasks at once per host "
                        "(0: no limit), +N, -N or N% of its CPU threads, or a file that "
                        f"says one, not {value!r}\n")
    assert r.stdout == ""


@pytest.mark.parametrize(("value", "slots"), [
    ("+1", CORES + 1), ("-1", max(CORES - 1, 1)), ("50%", -(-CORES // 2)),
    ("150%", -(-CORES * 3 // 2)), ("0.1%", 1)])
def test_j_counts_cpu_threads_as_gnu_parallel(pmrun: Run, tmp_path: Path, value: str,
                                              slots: int) -> None:
    # +N, -N, N% of the CPU threads, rounded up; the tasks take every slot at once
    # (no bounds declared: they start together once the first was measured).
    if value == "-1" and CORES == 1:
        pytest.skip("one CPU thread: -j -1 leaves none")
    n = slots + 1  # (one more than the slots: it waits for one)
    r = pmrun("-j", value, "sleep 1.5; echo {%}", ":::", *map(str, range(n)))
    assert r.returncode == 0, r.stderr
    assert sorted(set(map(int, r.stdout.split()))) == list(range(1, slots + 1)), r.stdout
    if PARALLEL is not None and value == "150%":  # (one comparison: parallel takes seconds)
        want = parallel(tmp_path, "-j", value, "sleep 1.5; echo {%}", ":::",
                        *map(str, range(n)))
        assert sorted(set(want.stdout.split())) == sorted(set(r.stdout.split()))


@pytest.mark.parametrize("value", ["-9999", "0%"])
def test_a_j_that_leaves_no_slot_is_one_line(pmrun: Run, value: str) -> None:
    r = pmrun("-j", value, "echo", ":::", "a")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == f"pmrun: -j {value}: {CORES} CPU threads here leave no job slot\n"


def test_j_file_is_read_again_as_tasks_end(pmrun: Run, tmp_path: Path) -> None:
    # GNU parallel's -j FILE: the first task (alone: the file says 1) writes 3 there; the
    # tasks after it run three at once.
    (tmp_path / "procs").write_text("1\n")
    task = "if [ {} = 0 ]; then echo 3 > procs; else sleep 1.5; fi; echo {%}"
    r = pmrun("-j", str(tmp_path / "procs"), task, ":::", *map(str, range(5)))
    assert r.returncode == 0, r.stderr
    assert sorted(set(r.stdout.split())) == ["1", "2", "3"], r.stdout
    # A file that says nothing -j takes is refused in one line.
    (tmp_path / "procs").write_text("many\n")
    r = pmrun("-j", str(tmp_path / "procs"), "echo", ":::", "a")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == (f"pmrun: -j {tmp_path / 'procs'}: the file says no number of tasks "
                        "(N, +N, -N or N%)\n")


def test_arguments_on_stdin_with_an_ensembles_option(pmrun: Run, tmp_path: Path) -> None:
    # ls | parallel -j 2 CMD: an ensemble's option and no input source, the arguments are
    # stdin's lines (without such an option, pmrun CMD is an MPI job of CMD).
    r = pmrun("-j", "2", "-k", "echo", input="a\nb c\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\nb c\n", "")
    if PARALLEL is not None:
        want = parallel(tmp_path, "-j", "2", "-k", "echo", input="a\nb c\n")
        assert r.stdout == want.stdout
    r = pmrun("--tag", "echo", "x", input="1\n2\n")
    assert sorted(r.stdout.splitlines()) == ["1\tx 1", "2\tx 2"]
    # An MPI job's option beside it: an MPI job, the ensemble's option refused.
    r = pmrun("-n", "2", "-j", "2", "echo", input="a\n")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("pmrun: -j is for task ensembles (pmrun CMD ::: ARGS, --tasks FILE), "
                        "not for an MPI job's ranks\n")


def test_arguments_are_not_read_from_a_terminal(tmp_path: Path) -> None:
    # Where GNU parallel would wait for lines typed at the terminal, one line says what
    # the option wants.
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(pmrun_argv("-j", "2", "echo"), stdin=follower,
                              capture_output=True, text=True, env=pmrun_env(), cwd=tmp_path,
                              timeout=30)
    finally:
        os.close(follower)
        os.close(leader)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == ("pmrun: -j is for task ensembles: give their arguments (pmrun -j "
                           "... CMD ::: ARGS, or on stdin: ... | pmrun -j ... CMD), or --tasks "
                           "FILE; stdin is a terminal\n")


def test_short_tasks_of_one_command_take_every_slot(pmrun: Run) -> None:
    # Tasks that end before any memory sample: the first one's size, as the kernel counted
    # it at its end, lets the rest start together (they ran one at a time: 10 s for
    # these 200, where GNU parallel takes 1.5 s).
    r = pmrun("-v", "-v", "-j", "4", "sleep 0.05; : {}", ":::", *map(str, range(200)))
    assert r.returncode == 0, r.stderr
    assert _most_at_once(r.stderr) == 4, r.stderr


def _progress_on_a_terminal(tmp_path: Path, *args: str) -> str:
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(pmrun_argv(*args), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=follower,
                                env=pmrun_env(), cwd=tmp_path)
        os.close(follower)
        follower = -1
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return b"".join(chunks).decode(errors="replace")


def test_progress_line_says_tasks_wait_for_a_core(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("sleep 1\n" * (CORES + 2))  # long enough to be drawn
    text = _progress_on_a_terminal(tmp_path, "--mem-per-task", "1M", "--tasks", "t.txt")
    assert re.search(rf"\rtasks: 0/{CORES + 2} done, {CORES} running, 2 queued, "
                     r"waiting for a core\x1b", text), text
    assert "blocked on memory" not in text
    text = _progress_on_a_terminal(tmp_path, "-j", "1", "--mem-per-task", "1M",
                                   "--tasks", "t.txt")
    assert re.search(rf"\rtasks: 0/{CORES + 2} done, 1 running, {CORES + 1} queued, "
                     r"waiting for a free slot\x1b", text), text


@pytest.mark.timeout(90)
def test_tasks_on_other_hosts_run_one_per_core_of_each(pmrun: Run, tmp_path: Path) -> None:
    """Hosts reached through a launcher (here this machine under other names): each
    host's cores come with its memory probe's first sample."""
    (tmp_path / "t.txt").write_text("sleep 0.5\n" * (2 * CORES + 1))
    r = pmrun("--launcher", "exec", "--launcher-exec", "env {command}", "--iface", "127.0.0.1",
              "-hosts", "n1,n2", "-v", "-v", "--mem-per-task", "1M", "--tasks", "t.txt",
              timeout=80)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "never retrieved" not in r.stderr, r.stderr
    host_of: dict[str, str] = {}
    running = {"n1": 0, "n2": 0}
    most = dict(running)
    for m in re.finditer(r"^pmrun: \[task (\d+)\] (started on node \d+ \((\w+)\)|exited)",
                         r.stderr, re.M):
        if m.group(3):
            host_of[m.group(1)] = m.group(3)
            running[m.group(3)] += 1
            most[m.group(3)] = max(most[m.group(3)], running[m.group(3)])
        else:
            running[host_of[m.group(1)]] -= 1
    assert most == {"n1": CORES, "n2": CORES}, r.stderr
    assert f"{2 * CORES + 1} tasks: {2 * CORES + 1} succeeded, 0 failed, 0 retries" in r.stderr


def test_arguments_after_three_colons_fill_each_lines_braces(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("echo x{}y\necho line2\n")
    r = pmrun("--tasks", "t.txt", ":::", "1", "b c", "it's")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted([
        "[task 0] x1y", "[task 1] xb cy", "[task 2] xit'sy",
        "[task 3] line2 1", "[task 4] line2 b c", "[task 5] line2 it's"])


@pytest.mark.parametrize(("tail", "message"), [
    (["./app", "1"], "--tasks runs the lines of t.txt, not './app': put the command in the "
                     "file (arguments for its {} go after :::)"),
])
def test_a_program_beside_tasks_is_refused(pmrun: Run, tmp_path: Path, tail: list[str],
                                           message: str) -> None:
    (tmp_path / "t.txt").write_text("true\n")
    r = pmrun("--tasks", "t.txt", *tail)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {message}\n")


PARALLEL = shutil.which("parallel")


def parallel(tmp_path: Path, *args: str, input: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    """GNU parallel's own run of ``args`` in ``tmp_path`` (its home there: no citation
    notice, no ~/.parallel of the user's)."""
    assert PARALLEL is not None
    want = subprocess.run([PARALLEL, "--will-cite", *args], cwd=tmp_path, input=input,
                          capture_output=True, text=True, timeout=30,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert want.returncode == 0, want.stderr
    return want


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("tail", [
    ["echo", "{#}", "{}", ":::", "a", "b c", ":::", "1", "2"],
    ["echo", "{2}", "{1/.}", "{1//}", "{1.}", ":::", "d/x.tar.gz", "y", ":::+", "p", "q", "r"],
    ["echo", "X", "::::", "args.txt", ":::", "z"],
    ["echo {} > out.{#}; cat out.{#}", ":::", "it's", "a;b"],
    ["--colsep", ",", "echo", "{2}-{1}", "::::", "params.csv"],
    ["--colsep", r"\s*,\s*", "echo", ":::", "x , y", "z"],
    ["--tag", "echo", ":::", "a", "b c", ":::", "1"],
    ["--tagstring", "<{2}>{#}{1/}", "echo", "{1}", ":::", "d/x", "y", ":::", "p"],
    ["echo {}; echo to-stderr {} >&2; echo {} again", ":::", "a", "b"],
    ["-a", "args.txt", "echo", ":::", "x"],
    ["-0", "echo", "::::", "nul.txt"],
    ["-d", ",", "-a", "params.csv", "echo", "[{}]"],
    ["--header", ":", "echo", "{b}", "{a}", "{a.}", ":::", "a", "1.x", "2", ":::", "b", "x"],
    ["--header", ":", "--colsep", ",", "echo", "{val}-{name}", "::::", "named.csv"],
    ["-N", "2", "echo", "{1}-{2}", ":::", "a", "b", "c"],
    ["-N2", "echo", ":::", "a", "b", "c", "d", "e"],
    ["-N0", "echo", "foo", ":::", "1", "2"],
    ["--max-args", "3", "echo", "[{}]", "::::", "args.txt"],
    ["-j2", "-m", "echo", ":::", "1", "2", "3", "4", "5"],
    ["-j3", "-m", "echo", "a{}b", "x", ":::", "1", "2", "3", "4", "5", "6", "7"],
    ["-j2", "-X", "echo", "pre-{}-post", "{#}", ":::", "1", "2", "3", "4", "5"],
    ["-j2", "-X", "echo", "{.}", "{/}", "c", ":::", "d/a.x", "b.y", "c z"],
    # (A perl expression is one word, its blanks and all: repeated per argument.)
    ["-j1", "-X", "echo", "x{= $_=uc =}y", "{.}", ":::", "a.1", "b.2"],
    ["-j4", "-m", "echo", "::::", "many.txt"],
    ["--xargs", "echo", "[{}]", "::::", "many.txt"],
    ["echo", "{-1}", "{1}", "{-2.}", "{-1/}", ":::", "a.x", "b.y", ":::", "c", "d/e"],
    ["-N", "3", "echo", "{-1}", "{-3}", ":::", "1", "2", "3", "4"],
    # -q: the words as given, the arguments put in as they are.
    ["-q", "printf", "%s|%s\n", "a  b", ":::", "x y", "$HOME", "*"],
    ["-q", "sh", "-c", "echo $0 $1; echo 'in;side'", "{}", "{#}", ":::", "a;b", "c"],
    ["-q", "--tag", "echo", "{.}", "", ":::", "x.y", "p q.r"],
    ["-j1", "-q", "echo", "slot={%}", ":::", "a", "b"],
    ["echo {} $PARALLEL_SEQ $PARALLEL_SSHLOGIN $PARALLEL_SSHHOST", ":::", "a", "b"],
    ["-q", "-N2", "echo", "{1}+{2}", ":::", "a", "b", "c"],
    ["-q", "--header", ":", "echo", "<{x}>", ":::", "x", "1", "2 3"],
    ["-q", "printf", "[%s]\n", "x{}y", "{}", "p {} q", ":::", "a", "", ":::", "b c", "'"],
    # -r, --trim, -E, --link: what becomes of the arguments.
    ["-r", "echo", "x{}y", "::::", "gaps.txt", ":::", "1"],
    ["--trim", "lr", "-r", "echo", "x{}y", ":::", " a ", "  ", "b "],
    ["-E", "stop", "echo", "::::", "gaps.txt"],
    ["--link", "echo", ":::", "a", "b", "c", ":::", "1", "2"],
    ["--xapply", "echo", "{2}{1}", ":::", "a", "b", ":::+", "p", "q", ":::", "1", "2", "3"],
    ["--colsep", " ", "echo", "{2}-{1}-{5}", "::::", "rows.txt"],
    ["-C", ",", "echo", "{2}", "::::", "params.csv"],
    ["-I", "ZZ", "echo", "ZZ.txt", "{}", "{.}", ":::", "a.b", "c"],  # {} as it is
    ["-q", "-I", "@", "echo", "@ {}", ":::", "x y"],
    # -L: N lines a task, a line that ends in a blank going on on the next.
    ["-L", "2", "echo", "{2}/{1}", "::::", "blanks.txt"],
    ["--max-lines", "1", "echo", "::::", "blanks.txt"],
    # --plus: paths, job figures, bash-like edits with regular expressions.
    ["--plus", "echo", "{+/}", "{+.}", "{+..}", "{+...}", "{..}", "{...}", "{/..}", "{/...}",
     "{##}", "{0#}", ":::", "a/b/c.tar.gz", "d.txt", "", "noext", "A.B.C.D.z", "x", "y", "z",
     "w", "v"],
    ["--plus", "echo", "{:-X}", "{:2}", "{:1:3}", "{#a}", "{##a*/}", "{%.gz}", "{%%.*}",
     "{%.*}", "{%%.*z}", ":::", "a/b/c.tar.gz", "d.txt", "", "A.B.C.D.z"],
    ["--plus", "echo", "{/a/Z}", "{//a/Z}", "{/#a/Q}", "{/%z/Q}", "{^d}", "{^^a}", "{,D}",
     "{,,D}", "{1%.gz}", ":::", "a/b/c.tar.gz", "d.txt", "A.B.C.D.z"],
    ["--plus", "-q", "echo", "{..}", "{2##.*/}", ":::", "a.b.c", ":::", "x/y z"],
    ["echo", "{..}", ":::", "a.b.c"],  # (without --plus: as written)
    ["--plus", "-j1", "echo", "{}", "{host}", "{sshlogin}", "{slot}", ":::", "a", "b"],
    # {= perl expression =}: $_ the argument, changed; @arg, seq(), total_jobs(), skip(),
    # uq(), Q(); {=N ... =} of source N.
    ["echo", "{= s/\\.gz$// =}", "{=1 $_=uc =}", ":::", "x.gz", "y z.gz", "it's"],
    ["echo", "{= $_=$arg[1] =}", "{#}", "{= $_=seq().'/'.total_jobs() =}", ":::", "a", "b",
     ":::", "c"],
    ["echo", "{= uq(); $_='a  b' =}", "{= $_='a  b' =}", "{= $_=Q($_) =}", "x{= =}y", ":::",
     "p q"],
    ["echo", "{=2 s/c/C/ =}-{=1 s/a/A/ =}", "{= $_ = $job->seq() =}", ":::", "a", ":::", "c"],
    ["-q", "printf", "<%s>\\n", "{= s/ /_/g =}", ":::", "a b", "c"],
    # --arg-sep, --arg-file-sep: other words start the sources; ::: is then an argument.
    ["--arg-sep", ",,", "echo", ",,", "a", "b", ",,+", "1", "2"],
    ["--arg-sep", ",,", "echo", ":::", ",,", "a", "b"],
    ["--arg-sep", ",,", "echo", ",,", "x", ":::", "y", "::::", "args.txt"],
    ["--arg-file-sep", "//", "echo", "//", "args.txt", ":::", "1", "2"],
    ["--arg-file-sep", "//", "echo", "::::", ":::", "a"],
    ["--arg-file-sep", "//", "-a", "args.txt", "echo", "//", "params.csv"],
    ["--arg-file-sep", "//", "echo", "//", "args.txt", "//+", "params.csv"],
    # --color, --ctag, --ctagstring: each task's lines in its color (a carriage return too).
    ["--ctag", "echo", ":::", "a", "b c"],
    ["--color", "printf", r"a\rb\nc-%s\n", ":::", "1", "2"],
    ["--ctagstring", "<{#}>", "sh", "-c", "echo {}; echo err >&2", ":::", "x"],
])
def test_a_command_with_sources_runs_as_gnu_parallel_runs_it(pmrun: Run, tmp_path: Path,
                                                             tail: list[str]) -> None:
    (tmp_path / "args.txt").write_text("l1\nl 2\n")
    (tmp_path / "params.csv").write_text("a,1\nb c,2\n")
    (tmp_path / "nul.txt").write_bytes(b"n 1\0n\n2\0")
    (tmp_path / "named.csv").write_text("name,val\nfoo,1\nbar,2\n")
    (tmp_path / "many.txt").write_text("".join(f"{i}\n" for i in range(1, 101)))
    (tmp_path / "gaps.txt").write_text("a\n\n  \nb\nstop\nc\n")
    (tmp_path / "rows.txt").write_text("a b\nc\nd e f\n")
    (tmp_path / "blanks.txt").write_text("a b \nc\nd\ne\t\nf \ng\nh\n")
    assert PARALLEL is not None
    want = parallel(tmp_path, "-k", *tail)
    r = pmrun("-k", *tail)
    assert r.returncode == 0, r.stderr
    # Both streams byte for byte: no summary once every task succeeded, as parallel.
    assert (r.stdout, r.stderr) == (want.stdout, want.stderr)
    # -v: each run's command line before its output, as parallel's; and the summary.
    want = parallel(tmp_path, "-v", "-k", *tail)
    r = pmrun("-v", "-k", *tail)
    if "{%}" not in " ".join(tail):  # (the slot: see README)
        assert r.stdout == want.stdout
    assert any(re.fullmatch(r"(\d+) tasks?: \1 succeeded, 0 failed, 0 retries", line)
               for line in r.stderr.splitlines()), r.stderr


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
def test_colorfailed_shows_a_failed_task_white_on_red_as_gnu_parallel(pmrun: Run,
                                                                      tmp_path: Path) -> None:
    tail = ["-k", "--cf", "echo {}; exit {}", ":::", "0", "3", "0"]
    assert PARALLEL is not None
    want = subprocess.run([PARALLEL, "--will-cite", *tail], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "HOME": str(tmp_path)})
    r = pmrun(*tail)
    assert (r.returncode, r.stdout) == (1, want.stdout)
    assert r.stdout.splitlines()[1] == "\033[48;5;196;38;5;231m\033[K3\033[m"


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
def test_a_perl_expression_skips_a_task_as_gnu_parallel(pmrun: Run, tmp_path: Path) -> None:
    """skip(): the task is left out, its number not reused (parallel also counts it failed,
    exit status 1: pmrun's is 0, the task was left out as asked)."""
    tail = ["-k", "echo", "{#}", "{= skip() if $_ eq 'b' =}", ":::", "a", "b", "c"]
    want = subprocess.run([PARALLEL or "", "--will-cite", *tail], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path, env={**os.environ, "HOME": str(tmp_path)})
    r = pmrun(*tail)
    assert (r.returncode, r.stdout, want.stdout) == (0, "1 a\n3 c\n", "1 a\n3 c\n"), r.stderr
    r = pmrun("-k", "--tagstring", "{= skip() =}{#}", "echo", ":::", "x")  # (a tag: runs,
    assert (r.returncode, r.stdout) == (0, "\tx\n"), r.stderr  # untagged)


def test_tasks_run_in_the_working_directory_given(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    r = pmrun("--wd", str(tmp_path / "d"), "pwd; : {}", ":::", "1")
    assert (r.returncode, r.stdout) == (0, f"{tmp_path / 'd'}\n"), r.stderr
    (tmp_path / "tasks").write_text("pwd\n")
    for argv in (["--workdir", str(tmp_path / "d"), "--tasks", str(tmp_path / "tasks")],
                 ["--tasks", str(tmp_path / "tasks"), "-wdir", str(tmp_path / "d")]):
        r = pmrun(*argv)
        assert (r.returncode, r.stdout) == (0, f"[task 0] {tmp_path / 'd'}\n"), r.stderr


def test_the_command_s_environment_options_hold_for_every_task(pmrun: Run) -> None:
    env = {"OUTER": "here"}
    r = pmrun("-env", "A", "1", "-envnone", "echo ${OUTER:-unset} $A {}", ":::", "x",
              env=env)
    assert (r.returncode, r.stdout) == (0, "unset 1 x\n"), r.stderr
    r = pmrun("-envlist", "OUTER", "echo ${OUTER:-unset} ${HOME:-nohome} {}", ":::", "x",
              env=env)
    assert (r.returncode, r.stdout) == (0, "here nohome x\n"), r.stderr


def test_delay_spaces_the_starts(pmrun: Run) -> None:
    # (The time each run's first command reads: an interpreter's start-up, 30-60 ms on a
    # loaded machine, would blur the spacing, so date's.)
    r = pmrun("--delay", "0.3", "-j", "3", "-k", "date +%s.%N # {}", ":::", "1", "2", "3")
    assert r.returncode == 0, r.stderr
    starts = [float(x) for x in r.stdout.split()]
    assert len(starts) == 3 and all(b - a >= 0.27 for a, b in itertools.pairwise(starts)), starts


def test_shuf_starts_the_tasks_in_another_order_each_keeping_its_number(pmrun: Run) -> None:
    args = [str(i) for i in range(1, 21)]
    r = pmrun("--shuf", "-j", "1", "echo {} {#}", ":::", *args)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert all(a == n for a, n in rows) and sorted(int(a) for a, _ in rows) == list(
        range(1, 21)), rows
    assert [a for a, _ in rows] != args  # (the same order: 1 in 20!)


def test_output_comes_whole_per_task_unless_line_buffered(pmrun: Run) -> None:
    # Two tasks at once, their lines interleaved in time: b1 comes between a1 and a2.
    lines = "if [ {} = a ]; then echo a1; sleep 0.6; echo a2; else sleep 0.3; echo b1; " \
            "sleep 0.6; echo b2; fi"
    group = pmrun("-j", "2", "--mem-per-task", "1M", lines, ":::", "a", "b")
    assert (group.returncode, group.stdout) == (0, "a1\na2\nb1\nb2\n"), group.stderr
    line = pmrun("--lb", "-j", "2", "--mem-per-task", "1M", lines, ":::", "a", "b")
    assert (line.returncode, line.stdout) == (0, "a1\nb1\na2\nb2\n"), line.stderr


def test_grouped_output_is_stdout_then_stderr_and_the_last_runs_only(tmp_path: Path) -> None:
    # Merged streams, as in a terminal: a task's stdout, then its stderr, as one block.
    # With --retries only the last run's output shows (GNU parallel's way).
    r = subprocess.run(pmrun_argv("--retries", "3", "echo err $PMRUN_TASK_ATTEMPT >&2; echo out "
                                  "$PMRUN_TASK_ATTEMPT; exit 1 # {}", ":::", "x"),
                       cwd=tmp_path, env=pmrun_env(), stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, text=True)
    assert r.returncode == 1
    assert r.stdout.splitlines()[:3] == ["out 3", "err 3",
                                         "1 task: 0 succeeded, 1 failed, 2 retries"], r.stdout


def test_a_tasks_bytes_come_out_as_it_wrote_them(pmrun: Run) -> None:
    # A line past what a rank's line may be (1 MiB), and an end without a newline.
    r = pmrun("head -c 3000000 /dev/zero; printf {}", ":::", "end")
    assert (r.returncode, r.stdout) == (0, "\0" * 3000000 + "end"), r.stderr
    r = pmrun("--lb", "printf {}", ":::", "no-newline")  # (as written: parallel's)
    assert (r.returncode, r.stdout) == (0, "no-newline"), r.stderr


def test_the_job_logs_receive_counts_the_last_runs_bytes(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("--retries", "2", "--joblog", "log", "echo 12345; exit 1", ":::", "x")
    assert (r.returncode, r.stdout) == (1, "12345\n"), r.stderr
    rows = (tmp_path / "log").read_text().splitlines()[1:]
    assert [row.split("\t")[5] for row in rows] == ["6"], rows


def test_a_big_grouped_output_is_spooled_and_comes_back_whole(pmrun: Run) -> None:
    # 3 MiB a task, held until it ends: past what is held in memory, in a temporary file.
    prog = f"{sys.executable} -c \"import sys; [print(str(i) * 1000) for i in range(3000)]\""
    r = pmrun("-k", "-j", "2", "--mem-per-task", "1M", "--tag", prog + " {}", ":::", "a", "b")
    assert r.returncode == 0, r.stderr
    want = "".join(f"{t}\t{i}\n".replace(f"\t{i}\n", f"\t{str(i) * 1000}\n")
                   for t in "ab" for i in range(3000))
    assert r.stdout == want


def test_tasks_files_keep_their_task_prefix_unless_told(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("echo one\n")
    r = pmrun("--tasks", "t.txt")
    assert (r.returncode, r.stdout) == (0, "[task 0] one\n"), r.stderr
    r = pmrun("--tasks", "t.txt", "--tag")
    assert (r.returncode, r.stdout) == (0, "echo one\tone\n"), r.stderr
    r = pmrun("--tasks", "t.txt", "--group")
    assert (r.returncode, r.stdout) == (0, "one\n"), r.stderr
    r = pmrun("--tagstring", "<{3}>", "echo", ":::", "a")  # (empty, as parallel's)
    assert (r.returncode, r.stdout) == (0, "<>\ta\n"), r.stderr


def _tree(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in sorted(top.rglob("*"))
            if p.is_file()}


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("tail", [
    ["echo {1}{2}; echo e >&2", ":::", "a", "b", ":::", "x", "y/z"],
    ["--header", ":", "echo", ":::", "a", "p\\q", ":::", "bb", "x"],
])
def test_results_are_files_as_gnu_parallel_writes_them(pmrun: Run, tmp_path: Path,
                                                       tail: list[str]) -> None:
    assert PARALLEL is not None
    want = parallel(tmp_path, "--results", "theirs", *tail)
    assert want.stdout == "", want.stderr
    r = pmrun("--results", "ours", *tail)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert _tree(tmp_path / "ours") == _tree(tmp_path / "theirs")
    # A retried task's files hold its last run.
    r = pmrun("--results", "again", "--retries", "2", "echo $PMRUN_TASK_ATTEMPT; exit 1 # {}",
              ":::", "t")
    assert r.returncode == 1
    assert _tree(tmp_path / "again") == {"1/t/seq": b"1", "1/t/stdout": b"2\n",
                                         "1/t/stderr": b""}


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("name", ["{1}-{2}.txt", "{1}/{2}/", "{#}-{2.}"])
def test_results_named_by_replacement_strings_are_gnu_parallels_files(pmrun: Run,
                                                                      tmp_path: Path,
                                                                      name: str) -> None:
    """A --results name with replacement strings: each task's stdout in that file, its
    stderr and number in .err and .seq beside it; a name ending in / a folder of them."""
    tail = ["echo {1}{2}; echo e >&2", ":::", "a", "b", ":::", "x.c", "y/z"]
    want = parallel(tmp_path, "--results", f"theirs/{name}", *tail)
    assert want.stdout == "", want.stderr
    r = pmrun("--results", f"ours/{name}", *tail)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    assert _tree(tmp_path / "ours") == _tree(tmp_path / "theirs") != {}


def _table(path: Path) -> list[list[str]]:
    """A --results table's rows, the times (Starttime, JobRuntime) left out."""
    if path.suffix == ".json":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for row in rows:
            assert isinstance(row.pop("Starttime"), float) and row.pop("JobRuntime") >= 0
        return [[json.dumps(row)] for row in rows]
    text = path.read_text()
    csv.field_size_limit(1 << 24)
    rows = list(csv.reader(io.StringIO(text), delimiter="\t" if path.suffix == ".tsv" else ","))
    for row in rows[1:]:
        assert float(row.pop(2)) > 0 and float(row.pop(2)) >= 0, row
    return [rows[0][:2] + rows[0][4:], *rows[1:]]


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize(("name", "header"), [("t.csv", False), ("t.tsv", False),
                                              ("t.json", False), ("t.csv", True)])
def test_results_as_a_table_are_gnu_parallels(pmrun: Run, tmp_path: Path, name: str,
                                              header: bool) -> None:
    """--results NAME.csv (.tsv, .json): GNU parallel's table, a row per task with its
    arguments and output (quoted as parallel quotes them), nothing printed; the output
    held meanwhile goes with the run."""
    tail = ["-j", "1", *(["--header", ":"] if header else []),
            "printf '%s' {1}{2}; echo 'e \"1\"' >&2", ":::", *(["A"] if header else []),
            "x y", 'q"q', *([] if header else ["t\tt"]), "", ":::",
            *(["B"] if header else []), "c,c", "\\n"]
    want = parallel(tmp_path, "--results", f"theirs.{name}", *tail)
    assert want.stdout == "", want.stderr
    (tmp_path / "held").mkdir()
    r = pmrun("--tmpdir", "held", "--results", f"ours.{name}", *tail)
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    ours, theirs = _table(tmp_path / f"ours.{name}"), _table(tmp_path / f"theirs.{name}")
    assert ours == theirs and len(ours) >= 7, (ours, theirs)
    assert not list((tmp_path / "held").iterdir())


def test_results_table_names_exit_status_and_signal(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("--results", "t.csv", "-j", "1", "case {} in k) kill -9 $$;; *) exit {};; esac",
              ":::", "3", "k", "0")
    assert (r.returncode, r.stdout) == (2, ""), r.stderr
    rows = _table(tmp_path / "t.csv")
    assert [row[:6] + row[7:8] for row in rows[1:]] == [["1", ":", "0", "0", "3", "0", "3"],
                                                        ["2", ":", "0", "0", "0", "9", "k"],
                                                        ["3", ":", "0", "0", "0", "0", "0"]]
    # A retried task's row holds its last run; output past a MiB is held all the same.
    r = pmrun("--results", "r.csv", "--retries", "2",
              "head -c 1500000 /dev/zero | tr '\\0' x; echo; echo $PMRUN_TASK_ATTEMPT; exit 1 # {}",
              ":::", "t")
    assert r.returncode == 1 and r.stdout == "", r.stderr
    rows = _table(tmp_path / "r.csv")
    assert len(rows) == 2 and rows[1][-2] == "x" * 1500000 + "\n2\n", rows[1][-1]
    r = pmrun("--results", "no/such/t.csv", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: --results no/such/t.csv: No such file or "
                                           "directory\n")


def test_results_that_cannot_be_stored_are_named_and_nothing_hangs(pmrun: Run,
                                                                   tmp_path: Path) -> None:
    (tmp_path / "f").write_text("a file\n")
    for where in ("f", "f/x/y"):  # checked before anything runs
        r = pmrun("--results", where, "echo", ":::", "a", "b")
        assert (r.returncode, r.stderr) == (2, f"pmrun: --results {where}: {tmp_path / 'f'} "
                                               "is not a directory\n")
    (tmp_path / "r" / "1").mkdir(parents=True)
    (tmp_path / "r" / "1" / "a").write_text("in the way\n")  # where task 0's files go
    r = pmrun("-j", "1", "--results", "r", "echo", ":::", "a", "b", "c")
    # (3 failed, as the summary says: the one whose output had nowhere to go, 2 not run)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "pmrun: task 1's output cannot be stored: r/1/a: File exists", lines
    assert "task 3: not run: task 1's output cannot be stored" in r.stderr
    assert not (tmp_path / "r" / "1" / "b").exists()  # nothing more started


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("cut", [["--recstart", ">"], ["--recend", ";"],
                                 ["--recend", ";", "--recstart", ">"], ["--recend", "\\n"]])
def test_pipe_cuts_between_records_as_gnu_parallel_does(pmrun: Run, tmp_path: Path,
                                                        cut: list[str]) -> None:
    assert PARALLEL is not None
    for data in (">a\nx\n>b\ny\n>c\nz\n", "a;>b;c;>d;", "a\n>b\nc\n>d\n"):
        tail = ["--pipe", "--block", "1", *cut, "-k", "echo BLOCK; cat; echo"]
        want = parallel(tmp_path, *tail, input=data)
        r = pmrun(*tail, input=data)
        assert (r.returncode, r.stdout) == (0, want.stdout), (data, r.stderr)
    r = pmrun("--recend", ";", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: --recend is for --pipe (how stdin is cut "
                                           "into blocks)\n")


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("cut", [[], ["--recstart", "5"], ["--recend", "0"],
                                 ["-N", "3"], ["-N", "50", "--recstart", "1"],
                                 ["--regexp", "--recstart", "[57]"],
                                 ["--regexp", "--recend", "[05]\\n", "--recstart", "1"],
                                 ["--regexp", "--recend", ""], ["-L", "7"],
                                 ["-L", "4", "-N", "3"]])
def test_pipe_blocks_end_where_gnu_parallels_do(pmrun: Run, tmp_path: Path,
                                                cut: list[str]) -> None:
    """A block ends at the last record boundary within the next multiple of --block bytes;
    a record longer than that makes the block grow (a warning each time, as parallel's)."""
    assert PARALLEL is not None
    data = "".join(f"{i}\n" for i in range(1, 301))
    for block in ("100", "37"):
        tail = ["--pipe", "--block", block, *cut, "-k", "wc -c"]
        want = parallel(tmp_path, *tail, input=data)
        r = pmrun(*tail, input=data)
        assert (r.returncode, r.stdout) == (0, want.stdout), (block, r.stderr)
        grew = [line for line in r.stderr.splitlines() if "--block grows to" in line]
        assert len(grew) == len(want.stderr.splitlines()) and grew == r.stderr.splitlines()


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
def test_pipe_header_goes_before_every_block_as_gnu_parallels(pmrun: Run,
                                                              tmp_path: Path) -> None:
    assert PARALLEL is not None
    data = "".join(f"{i}\n" for i in range(1, 61))
    for header in (":", "2"):  # stdin's first lines before every block
        tail = ["--pipe", "--block", "10", "--header", header, "-k", "echo B; cat"]
        want = parallel(tmp_path, *tail, input=data)
        r = pmrun(*tail, input=data)
        assert (r.returncode, r.stdout) == (0, want.stdout), (header, r.stderr)
    # Input that ends within the header, or right after it: as parallel (fewer lines than
    # the header, or a last one without its new line, run as one block; a whole header
    # and nothing after it runs nothing).
    for short in ("h1\n", "h1", "h1\nh2", "h1\nh2\n", "", "h1\nh2\nd"):
        tail = ["--pipe", "--header", "2", "-k", "echo B; cat"]
        want = parallel(tmp_path, *tail, input=short)
        r = pmrun(*tail, input=short)
        assert (r.returncode, r.stdout) == (0, want.stdout), (short, r.stderr)
    r = pmrun("--pipe", "--regexp", "--recstart", "[", "cat", input="x\n")
    assert (r.returncode, r.stderr) == (2, "pmrun: --recstart [: not a regular expression "
                                           "(unterminated character set at position 0)\n")
    r = pmrun("--regexp", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: --regexp is for --pipe (how stdin is cut "
                                           "into blocks)\n")
    r = pmrun("--pipe", "-N", "2", "--regexp", "--recstart", "x", "cat", input="x\n")
    assert (r.returncode, r.stderr) == (2, "pmrun: -N 2 records a block is for --pipe, with "
                                           "--recstart/--recend as they are written\n")


def test_bytes_no_program_can_take_are_named_not_a_defect(pmrun: Run, tmp_path: Path) -> None:
    """Input files hold anything: a NUL byte (no argument can), bytes that are not UTF-8."""
    (tmp_path / "nul").write_bytes(b"a\x00b\necho ok\n")
    (tmp_path / "args").write_bytes(b"a\x00b\nok\n")
    (tmp_path / "latin1").write_bytes(b"echo caf\xe9\n")
    r = pmrun("--tasks", "nul")
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert ("[task 0] pmrun: 'sh': an argument or environment variable holds a NUL byte, "
            "which no program can be given") in r.stderr
    assert r.stdout == "[task 1] ok\n"
    assert "1 succeeded, 1 failed" in r.stderr
    r = pmrun("--results", "res", "echo", "::::", "args")
    assert r.returncode == 1 and "internal error" not in r.stderr, r.stderr
    assert (tmp_path / "res" / "1" / "ok" / "stdout").read_text() == "ok\n"
    assert (tmp_path / "res" / "1" / "a\\000b" / "seq").exists()
    r = subprocess.run(pmrun_argv("--tasks", "latin1"), capture_output=True, timeout=30,
                       env=pmrun_env(), cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, b"[task 0] caf\xe9\n"), r.stderr


def test_pipe_gives_each_run_a_block_of_whole_lines(pmrun: Run) -> None:
    data = "".join(f"{i}\n" for i in range(100000))  # 589 kB
    r = pmrun("--pipe", "--block", "100k", "-k", "cat", input=data)
    assert (r.returncode, r.stdout == data) == (0, True), r.stderr
    r = pmrun("--pipe", "--block", "100k", "-k", "--tag", "wc -l; tail -c 1 | od -c | head -1",
              input=data)
    assert r.returncode == 0, r.stderr
    counts = [int(line.split("\t")[1]) for line in r.stdout.splitlines()[::2]]
    assert len(counts) == 6 and sum(counts) == 100000, r.stdout  # blocks of <= 100 KiB
    assert r.stderr == ""
    # -q: the command's words as given, a new line within one too.
    r = pmrun("--pipe", "--block", "1", "-k", "-q", "sh", "-c", "wc -l; echo \"$0\"",
              "a  'b'\n$c", input="1\n2\n")
    assert (r.returncode, r.stdout) == (0, "1\na  'b'\n$c\n" * 2), r.stderr


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("block", ["-1", "-3", "50k", "1", ""])
def test_pipepart_cuts_a_file_as_gnu_parallel_does(pmrun: Run, tmp_path: Path,
                                                   block: str) -> None:
    """--pipepart -a FILE: blocks of the file; --block -N: N blocks for each task slot."""
    assert PARALLEL is not None
    data = "".join(f"{i}\n" for i in range(30000)) if block != "1" else "a\nbb\nccc\n"
    (tmp_path / "data").write_text(data)
    size = ["--block", block] if block else []  # (default: 10 blocks for each task slot)
    tail = ["--pipepart", "-a", "data", *size, "-j", "2", "-k", "wc -l"]
    want = parallel(tmp_path, *tail)
    r = pmrun(*tail)
    assert (r.returncode, r.stdout) == (0, want.stdout), r.stderr
    assert len(r.stdout.splitlines()) == {"-1": 2, "-3": 6, "": 20, "1": 3}.get(block, 4)
    r = pmrun("--pipepart", *size, "-k", "cat", "::::", "data")  # the other spelling
    assert (r.returncode, r.stdout == data) == (0, True), r.stderr


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("tail", [
    ["--cat", "--block", "1k", "wc -l < {}; wc -c {} | cut -d' ' -f1"],
    ["--fifo", "--block", "1k", "wc -l < {}"],
    ["--pipe", "--cat", "--block", "2k", "cat"],  # (no {}: the file appended)
    ["--fifo", "--block", "3k", "sort -r {}"],
    ["--pipepart", "-a", "data", "--block", "-2", "--cat", "-j2", "tail -n1 {}"],
])
def test_cat_and_fifo_give_the_block_as_a_file_as_gnu_parallel(pmrun: Run, tmp_path: Path,
                                                             tail: list[str]) -> None:
    data = "".join(f"{i}\n" for i in range(2000))
    (tmp_path / "data").write_text(data)
    want = parallel(tmp_path, "-k", *tail, input=data)
    (tmp_path / "tmp").mkdir()
    r = pmrun("-k", "--tmpdir", str(tmp_path / "tmp"), *tail, input=data)
    assert (r.returncode, r.stdout, r.stderr) == (0, want.stdout, ""), r.stderr
    assert list((tmp_path / "tmp").iterdir()) == []  # each file gone


def test_cat_and_fifo_files_are_private_and_go_however_the_run_ends(pmrun: Run,
                                                                    tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = pmrun("--cat", "--tmpdir", str(tmp), "stat -c %a {}; exit 3", input="x\n")
    assert (r.returncode, r.stdout) == (1, "600\n"), r.stderr
    assert "exit codes 3" in r.stderr
    r = pmrun("--fifo", "--tmpdir", str(tmp), "stat -c %a%F {}; cat {}", input="x\n")
    assert (r.returncode, r.stdout) == (0, "600fifo\nx\n"), r.stderr
    # A command that never opens the pipe ends; so does the writer waiting for it.
    r = pmrun("--fifo", "--tmpdir", str(tmp), "exit 4 # {}", input="x\n", timeout=30)
    assert r.returncode == 1 and "exit codes 4" in r.stderr, r.stderr
    # Killed (--timeout: SIGTERM to the run's processes): its file goes all the same.
    r = pmrun("--cat", "--tmpdir", str(tmp), "--timeout", "0.5", "test -s {} && sleep 30",
              input="x\n")
    assert r.returncode == 1 and "timed out after 0.5 s" in r.stderr, r.stderr
    assert list(tmp.iterdir()) == []
    r = pmrun("--cat", "--fifo", "cat")
    assert (r.returncode, r.stderr) == (2, "pmrun: --cat and --fifo: give one of them (a file, "
                                           "or a named pipe)\n")


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
def test_pipe_lines_number_their_runs_as_gnu_parallel(pmrun: Run, tmp_path: Path) -> None:
    """{#} is a run's number, {} nothing; -v prints each run's line."""
    data = "".join(f"{i}\n" for i in range(10))
    tail = ["-k", "--pipe", "-N", "3", "cat > o.{#}; echo [{}] {#} $(wc -l < o.{#})"]
    want = parallel(tmp_path, *tail, input=data)
    r = pmrun(*tail, input=data)
    assert (r.returncode, r.stdout) == (0, want.stdout), r.stderr
    assert want.stdout.splitlines()[-1] == "[] 4 1"
    want = parallel(tmp_path, "-v", *tail, input=data)
    r = pmrun("-v", *tail, input=data)
    assert (r.returncode, r.stdout) == (0, want.stdout), r.stderr
    r = pmrun("--pipe", "echo [{2}]", input="1\n")  # (empty, as parallel's)
    assert (r.returncode, r.stdout) == (0, "[]\n"), r.stderr


def test_roundrobin_feeds_block_after_block_to_a_run_per_slot(pmrun: Run,
                                                               tmp_path: Path) -> None:
    data = "".join(f"{i}\n" for i in range(60000))
    r = pmrun("--roundrobin", "-j", "3", "--block", "10k", "cat > out.{#}; wc -l < out.{#}",
              input=data)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr  # (no bound said to be overrun)
    counts = list(map(int, r.stdout.split()))
    assert len(counts) == 3 and sum(counts) == 60000, counts  # three runs, every line once
    parts = [(tmp_path / f"out.{k}").read_text() for k in (1, 2, 3)]
    assert sorted("".join(parts).splitlines(), key=int) == data.splitlines()
    for part in parts:  # each run read whole blocks, in their order
        lines = list(map(int, part.split()))
        assert lines == sorted(lines)
    if PARALLEL is not None:  # (the same lines, shared as parallel shares them)
        want = parallel(tmp_path, "--pipe", "--roundrobin", "-j", "3", "--block", "10k",
                        "wc -l", input=data)
        assert sum(map(int, want.stdout.split())) == sum(counts)


def test_roundrobin_ends_when_its_runs_leave_and_refuses_what_it_cannot_do(
        pmrun: Run) -> None:
    data = "".join(f"{i}\n" for i in range(60000))
    r = pmrun("--roundrobin", "-j", "2", "--block", "10k", "head -1", input=data)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) == 2 and "0" in r.stdout.split()
    r = pmrun("--roundrobin", "-j", "2", "--block", "10k", "exit 3", input=data)  # (read none)
    assert r.returncode == 2 and "2 tasks: 0 succeeded, 2 failed" in r.stderr, r.stderr
    for argv, clash in [(["--retries", "2"], "--retries"), (["-S", "host1"], "-S"),
                        (["--cat"], "--cat")]:
        r = pmrun("--roundrobin", *argv, "cat")
        assert (r.returncode, r.stderr) == (2, "pmrun: --roundrobin feeds runs on this machine "
                                               f"block after block, as they read: not with "
                                               f"{clash}\n")


def test_termseq_ends_a_task_with_its_signals(pmrun: Run, tmp_path: Path) -> None:
    assert parse_termseq("TERM,200,SIGINT,100,9,25") == [
        (signal.SIGTERM, 0.2), (signal.SIGINT, 0.1), (signal.SIGKILL, 0.025)]
    for bad in ("TERM", "TERM,x", "FOO,1", "TERM,-1", ""):
        with pytest.raises(ValueError, match="--termseq"):
            parse_termseq(bad)
    # --timeout and --halt now end a task with SIGINT here: its trap says so.
    trap = 'trap "echo got INT {}; exit 3" INT; touch ready; sleep 30 & wait'
    r = pmrun("--timeout", "0.5", "--termseq", "INT,100,KILL,25", trap, ":::", "a")
    assert (r.returncode, r.stdout) == (1, "got INT a\n"), r.stderr
    line = f"if [ {{}} = 1 ]; then until [ -e ready ]; do sleep 0.01; done; exit 1; fi; {trap}"
    (tmp_path / "ready").unlink()  # (the run above made it)
    r = pmrun("-j2", "--halt", "now,fail=1", "--termseq", "INT,100,KILL,25", line,
              ":::", "1", "2", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (1, "got INT 2\n"), r.stderr
    r = pmrun("--termseq", "TERM,x", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: --termseq TERM,x: cannot read TERM,x as a "
                                           "signal and the milliseconds to wait after it\n")


def test_csv_rows_give_their_fields_as_columns(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text('name,what\na,"b,c"\n"x ""q""",y\n')
    r = pmrun("-k", "--csv", "--header", ":", "echo", "{what}/{1}", "::::", "t.csv")
    assert (r.returncode, r.stdout) == (0, 'b,c/a\ny/x "q"\n'), r.stderr
    r = pmrun("--csv", "--colsep", ";", "echo", "{2}", ":::", 'a;"b;c"')
    assert (r.returncode, r.stdout) == (0, "b;c\n"), r.stderr
    r = pmrun("--csv", "--colsep", ";;", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: --csv: --colsep is the one character "
                                           "between the fields, not ';;'\n")


def test_gnu_parallels_other_spellings_are_taken(pmrun: Run, pmrun_popen: Popen,
                                                tmp_path: Path) -> None:
    # -k: a waits for b's end, and comes first all the same.
    line = "if [ {} = a ]; then until [ -e flag ]; do sleep 0.01; done; fi; echo {}; touch flag"
    r = pmrun("-k", "-j2", line, ":::", "a", "b", cwd=tmp_path)
    assert (r.returncode, r.stdout) == (0, "a\nb\n"), r.stderr
    # --nok undoes -k (given earlier, in an alias say): b's line comes as b ends, while a
    # waits (until the line is out).
    line = "if [ {} = a ]; then until [ -e out ]; do sleep 0.01; done; fi; echo {}"
    proc = pmrun_popen("-k", "--nok", "-j2", line, ":::", "a", "b", cwd=tmp_path)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    (tmp_path / "out").touch()
    rest, err = proc.communicate(timeout=60)
    assert (proc.returncode, first + rest) == (0, b"b\na\n"), err
    r = pmrun("--shellquote", "--linebuffer", "--filter-hosts", "--sshdelay", "0.2", "echo",
              ":::", "ab")
    assert (r.returncode, r.stdout) == (0, "'echo ab'\n"), r.stderr


def test_a_task_knows_the_pid_of_the_pmrun_that_runs_it(tmp_path: Path) -> None:
    proc = subprocess.Popen(pmrun_argv("echo $PARALLEL_PID", ":::", "x"), cwd=tmp_path,
                            env=pmrun_env(), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, f"{proc.pid} x\n")


def test_short_options_written_together_as_gnu_parallel_takes_them(pmrun: Run) -> None:
    for argv in (["-kj2"], ["-kj", "2"], ["-kN1"], ["-k", "-N1"]):
        r = pmrun(*argv, "echo", ":::", "a", "b", "c")
        assert (r.returncode, r.stdout, r.stderr) == (0, "a\nb\nc\n", ""), argv
    r = pmrun("-kZ", "echo", ":::", "a")  # (-Z is no option: the word is named as given)
    assert (r.returncode, r.stderr) == (2, "pmrun: unknown option -kZ (see pmrun --help)\n")
    # A word of another launcher's on an MPI job (-mode) reads as -m -o de: it is named.
    r = pmrun("-mode", "local", "-n", "1", "true")
    assert (r.returncode, r.stderr) == (2, "pmrun: unknown option -mode (as short options "
                                           "written together, -m is for task ensembles: "
                                           "pmrun CMD ::: ARGS)\n")

@pytest.mark.parametrize("tail", [
    ["--seqreplace", "<n>", "--slotreplace", "<s>", "-j1", "echo", "<n>", "<s>", "{#}", ":::",
     "a", "b"],
    ["--er", ",e", "--bnr", ",b", "--dnr", ",d", "--bner", ",be", "echo", ",e", ",b", ",d",
     ",be", "{.}", ":::", "/x/y/z.tar.gz"],
    ["-I", ",,", "--seqreplace", ",n", "echo", ",,", ",n", "{}", ":::", "a"],
])
def test_replacement_strings_renamed_as_gnu_parallel(pmrun: Run, tmp_path: Path,
                                                     tail: list[str]) -> None:
    want = {"<n>": "1 1 {#}\n2 1 {#}\n", ",e": "/x/y/z.tar z.tar.gz /x/y z.tar {.}\n",
            ",,": "a 1 {}\n"}[tail[1]]
    r = pmrun("-k", *tail)
    assert (r.returncode, r.stdout, r.stderr) == (0, want, ""), r.stderr
    if PARALLEL is not None:
        assert parallel(tmp_path, "-k", *tail).stdout == want

def test_shell_quote_prints_and_skip_first_line_drops(pmrun: Run, tmp_path: Path) -> None:
    tail = ["--shell-quote", "-k", "echo", "a b", ":::", "x", "c'd"]
    r = pmrun(*tail)
    # (The argument quoted in the line, then the line quoted: as parallel prints it.)
    want = "'echo a b x'\n'echo a b '\"'\"'c'\"'\"'\"'\"'\"'\"'\"'\"'d'\"'\"\n"
    assert (r.returncode, r.stdout, r.stderr) == (0, want, "")
    if PARALLEL is not None:
        assert parallel(tmp_path, *tail).stdout == want
    r = pmrun("--skip-first-line", "-k", "echo", input="header\n1\n2\n")
    assert (r.returncode, r.stdout) == (0, "1\n2\n"), r.stderr


@pytest.mark.parametrize(("tail", "given", "want"), [
    # Without a command: each task's arguments quoted as one word (GNU parallel's way of
    # quoting strings), from sources or from stdin.
    ([":::", "a b", "c$d"], None, "'a b'\n'c$d'\n"),
    ([":::", "a", ":::", "b c"], None, "'a b c'\n"),
    (["--colsep", ",", ":::", "a,b c"], None, "'a b c'\n"),
    ([], "x y\nc'd\n", "'x y'\n'c'\"'\"'d'\n"),
])
def test_shell_quote_without_a_command_quotes_the_arguments(
        pmrun: Run, tmp_path: Path, tail: list[str], given: str | None, want: str) -> None:
    r = pmrun("--shellquote", "-k", *tail, input=given)
    assert (r.returncode, r.stdout, r.stderr) == (0, want, "")
    if PARALLEL is not None:
        assert parallel(tmp_path, "--shellquote", "-k", *tail, input=given).stdout == want

@pytest.mark.parametrize(("flag", "unit"), [("--use-cores-instead-of-threads", "cores"),
                                            ("--use-sockets-instead-of-threads", "packages"),
                                            ("--use-cpus-instead-of-cores", "packages")])
def test_cpu_counts_in_cores_or_sockets(pmrun: Run, flag: str, unit: str) -> None:
    from pm.agent.topology import discover

    allowed = os.sched_getaffinity(0)
    topo = discover(use_hwloc=False)
    count = sum(1 for cpus in getattr(topo, unit) if cpus & allowed)
    r = pmrun(flag, "-j", "200%", "echo {%}; sleep 0.2", ":::", *map(str, range(12)))
    assert r.returncode == 0, r.stderr
    assert len(set(r.stdout.split())) == 2 * count, (r.stdout, count)

def test_process_slot_var_is_the_slot_less_one(pmrun: Run) -> None:
    r = pmrun("-j", "2", "--process-slot-var", "GPU", "-k", "echo {} $GPU {%}", ":::", "a", "b",
              "c")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()]
    assert [row[0] for row in rows] == ["a", "b", "c"]
    assert all(int(gpu) == int(slot) - 1 and gpu in ("0", "1") for _, gpu, slot in rows), rows
    r = pmrun("--process-slot-var", "A=B", "echo", ":::", "x")
    assert (r.returncode, r.stderr) == (2, "pmrun: --process-slot-var takes an environment "
                                           "variable's name, not 'A=B'\n")

def test_tee_gives_all_of_stdin_to_a_run_per_argument(pmrun: Run, tmp_path: Path) -> None:
    data = "".join(f"{i}\n" for i in range(1, 200001))
    r = pmrun("--tee", "--tag", "--block", "64k", "grep {1} | wc {2}", ":::", "1", "2", ":::",
              "-l", "-c", input=data)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    got = dict(line.rsplit("\t", 1) for line in r.stdout.splitlines())
    lines = data.splitlines()
    want = {f"{d} {w}": str(len(hits) if w == "-l" else sum(len(x) + 1 for x in hits))
            for d in "12" for w in ("-l", "-c")
            for hits in [[x for x in lines if d in x]]}
    assert got == want
    if PARALLEL is not None:  # (GNU parallel's own answer)
        same = parallel(tmp_path, "--pipe", "--tee", "--tag", "grep {1} | wc {2}", ":::", "1",
                        "2", ":::", "-l", "-c", input=data)
        assert dict(line.rsplit("\t", 1) for line in same.stdout.splitlines()) == want


def test_tee_runs_every_command_at_once_and_goes_on_past_a_run_that_left(
        pmrun: Run) -> None:
    data = "".join(f"{i}\n" for i in range(300000))
    # A run that reads one line and leaves, another that reads all: no hang, no loss.
    r = pmrun("--tee", "-k", "--block", "16k", "sh -c {}", ":::", "head -1", "wc -l",
              input=data)
    assert (r.returncode, r.stdout, r.stderr) == (0, "0\n300000\n", ""), r
    # Each waits for the others' first line: only a run of all at once ends.
    r = pmrun("--tee", "read x; echo {} $x", ":::", "a", "b", "c", input=data, timeout=30)
    assert (r.returncode, sorted(r.stdout.splitlines())) == (0, ["a 0", "b 0", "c 0"]), r
    for argv, message in [
        (["-j", "1", "wc", ":::", "a", "b"],
         "--tee runs all 2 commands at once: -j 1 gives 1 task slots (try -j 0)"),
        (["wc"], "--tee runs the command once per argument, each reading all of stdin: "
                 "give them (pmrun --tee CMD ::: A B)"),
        (["--roundrobin", "wc", ":::", "a"], "--tee gives all of stdin to a run per argument, "
                                             "as they read it: not with --roundrobin"),
    ]:
        r = pmrun("--tee", *argv, input="x\n")
        assert (r.returncode, r.stderr) == (2, f"pmrun: {message}\n"), r.stderr

def test_shard_gives_each_value_s_lines_to_one_run(pmrun: Run, tmp_path: Path) -> None:
    keys = [f"k{i % 37}" for i in range(30000)]
    data = "".join(f"{i},{k}\n" for i, k in enumerate(keys))
    r = pmrun("--shard", "2", "--colsep", ",", "-j", "3", "--block", "32k",
              "cat > out.{#}", input=data)
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    parts = [(tmp_path / f"out.{k}").read_text().splitlines() for k in (1, 2, 3)]
    assert sorted(itertools.chain(*parts), key=lambda x: int(x.split(",")[0])) == data.splitlines()
    owners = [{line.split(",")[1] for line in part} for part in parts]
    assert all(not (a & b) for a, b in itertools.combinations(owners, 2)), owners
    assert sum(map(bool, owners)) >= 2  # (37 values over 3 runs: not all to one)
    # --bin: the number modulo the runs; a column named by --header :, a tab by default.
    rows = "n\tword\n" + "".join(f"{i}\tw{i}\n" for i in range(10))
    r = pmrun("--header", ":", "--bin", "n", "-j", "2", "-k", "cat; echo --", input=rows)
    runs = r.stdout.split("--\n")[:2]
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert sorted(runs) == sorted(["".join(f"{i}\tw{i}\n" for i in range(k, 10, 2))
                                   for k in (0, 1)]), r.stdout


TABLE = "123,1\n123,2\n12-3,1\n221,3\n221,1\n2/21,5\n"


def test_group_by_makes_records_of_lines_alike_in_a_column(pmrun: Run,
                                                          tmp_path: Path) -> None:
    # GNU parallel's own example: one group a run (-N1), and two a run under a header.
    r = pmrun("--pipe", "--colsep", ",", "--group-by", "1", "-k", "-N1", "wc -l", input=TABLE)
    assert (r.returncode, r.stdout.split(), r.stderr) == (0, ["2", "1", "2", "1"], "")
    table = "UserID,Consumption\n" + TABLE
    tail = ["--pipe", "--colsep", ",", "--header", ":", "--group-by", "UserID", "-k", "-N2",
            "cat; echo --"]
    r = pmrun(*tail, input=table)
    want = ("UserID,Consumption\n123,1\n123,2\n12-3,1\n--\n"
            "UserID,Consumption\n221,3\n221,1\n2/21,5\n--\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, want, "")
    if PARALLEL is not None:
        assert parallel(tmp_path, *tail, input=table).stdout == want
    # Blocks of whole groups: no group is cut in two.
    rows = "".join(f"{i // 1000}\t{i}\n" for i in range(100000))
    r = pmrun("--group-by", "1", "--block", "100k", "-k", "cut -f1 | uniq -c", input=rows)
    assert r.returncode == 0, r.stderr
    counts = [line.split() for line in r.stdout.splitlines()]
    assert sorted(int(key) for _, key in counts) == list(range(100))  # each key in one run
    assert all(n == "1000" for n, _ in counts)
    r = pmrun("--group-by", "x", "cat", input=TABLE)
    assert (r.returncode, r.stderr) == (2, "pmrun: --group-by x: a column's name needs "
                                           "--header : (the first line names the columns)\n")
    r = pmrun("--group-by", "1", "-L", "2", "cat", input=TABLE)
    assert (r.returncode, r.stderr) == (2, "pmrun: --group-by makes records of stdin's lines "
                                           "alike in a column: not with -L\n")

@pytest.mark.parametrize(("argv", "message"), [
    (["--shard", "1 $_%=10"], "--shard '1 $_%=10': pmrun takes the column's value as it is (a "
                              "number from 1, or a --header : name), not a perl expression on "
                              "it"),
    (["--shard", "name"], "--shard name: a column's name needs --header : (the first line "
                          "names the columns)"),
    (["--bin", "0"], "--bin takes a column: a number from 1, or a name with --header :"),
    (["--shard", "1", "--bin", "1"], "--shard and --bin: give one of them"),
    (["--shard", "1", "-j", "0"], "--shard deals the lines to a run per task slot: give -j N, "
                                  "not -j 0"),
    (["--shard", "1", "--roundrobin"], "--shard deals the lines of stdin to runs on this "
                                       "machine as they read: not with --roundrobin"),
    (["--header", ":", "--shard", "nope"], "--shard/--bin nope: no such column in the header "
                                           "(a, b)"),
])
def test_shard_refuses_what_it_cannot_do(pmrun: Run, argv: list[str], message: str) -> None:
    r = pmrun(*argv, "cat", input="a\tb\n1\t2\n")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {message}\n")

def test_pipepart_refuses_what_it_cannot_cut(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "data").write_text("a\n")
    for argv, message in [
        (["--pipepart", "cat"], "--pipepart cuts one file into blocks: give it with -a FILE "
                                "(or CMD :::: FILE)"),
        (["--pipepart", "-a", "data", "-a", "data", "cat"],
         "--pipepart cuts one file into blocks: give it with -a FILE (or CMD :::: FILE)"),
        (["--pipepart", "-a", "-", "cat"], "--pipepart cuts a file, not stdin: give -a FILE, "
                                           "or use --pipe"),
        (["--pipepart", "-a", "data", "cat", ":::", "x"],
         "--pipepart gives each task a block of the file: not :::"),
        (["--pipepart", "::::", "data"], "--pipepart runs a command on each block: give it "
                                       "(pmrun --pipepart CMD)"),
        (["--pipe", "--block", "-1", "cat"], "--block -1 (blocks a task slot) is for "
         "--pipepart: --pipe reads stdin, whose size is not known ahead"),
        (["--pipepart", "-a", "data", "--block", "-0", "cat"],
         "--block -N takes N from 1 to 16777216 blocks a task slot, not '-0'"),
    ]:
        r = pmrun(*argv)
        assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {message}\n"), argv
    (tmp_path / "empty").write_text("")
    r = pmrun("--pipepart", "-a", "empty", "--block", "-1", "echo", "ran")
    assert (r.returncode, r.stdout) == (0, ""), r.stderr  # nothing to cut: nothing runs


def test_pipe_reads_only_what_its_tasks_take(tmp_path: Path) -> None:
    # Endless input: the ensemble stops after 2 runs, so must the reading.
    with subprocess.Popen(["yes"], stdout=subprocess.PIPE) as yes:
        r = subprocess.run(pmrun_argv("--pipe", "--block", "1k", "--halt", "now,done=2",
                                      "head -c 10 > /dev/null"),
                           stdin=yes.stdout, cwd=tmp_path, env=pmrun_env(), capture_output=True,
                           text=True, timeout=60)
        yes.kill()
    assert r.stderr.startswith("pmrun: --halt now,done=2: 2 tasks ended"), r.stderr


def test_pipe_ends_at_ctrl_c_while_waiting_for_input(pmrun_popen: Popen) -> None:
    # (A block is cut once --block bytes came: "first\n" is one.)
    proc = pmrun_popen("-v", "-v", "--pipe", "--block", "6", "cat", stdin=subprocess.PIPE)
    assert proc.stderr is not None and proc.stdin is not None
    proc.stdin.write(b"first\n")
    proc.stdin.flush()
    while b"[task 1] exited" not in proc.stderr.readline():  # pmrun is up, a block done
        assert proc.poll() is None
    proc.stdin.write(b"a partial line: no newline yet")
    proc.stdin.flush()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert out == b"cat\nfirst\n"  # (-v: the command line first, as GNU parallel's)
    lines = err.decode().splitlines()  # (with -v: the node's memory last)
    assert lines[-3:-1] == ["pmrun: SIGINT: starting no more tasks",
                            "1 task: 1 succeeded, 0 failed, 0 retries"], lines


def test_parallels_progress_options_are_taken(pmrun: Run) -> None:
    for option in ("--bar", "--eta", "--progress"):
        r = pmrun(option, "echo", ":::", "a")
        assert (r.returncode, r.stdout) == (0, "a\n"), r.stderr
        r = pmrun(option, "-n", "1", "true")  # an MPI job: refused in one line
        assert r.returncode == 2 and r.stderr.startswith(f"pmrun: {option} is for task "), r.stderr


@pytest.mark.parametrize("option", ["--memfree", "--memsuspend"])
def test_memfree_keeps_that_much_of_a_nodes_memory_free(pmrun: Run, option: str) -> None:
    # (--memsuspend admits as --memfree does; what it stops: test_memory_e2e)
    from pm.agent.admission import parse_size

    r = pmrun("-v", option, "1G", "true", ":::", "1")
    assert r.returncode == 0, r.stderr
    m = re.search(r"memory watermarks: high ([\d.]+ \w+), low [\d.]+ \w+ of ([\d.]+ \w+)",
                  r.stderr)
    assert m, r.stderr
    high, total = (parse_size(m[i].replace(" ", "")) for i in (1, 2))
    assert abs(total - high - (1 << 30)) < total // 100, r.stderr  # (figures rounded)
    r = pmrun(option, "100T", "true", ":::", "1")
    assert r.returncode == 2 and r.stderr.startswith(f"pmrun: {option} 100 TiB is all of node ")
    r = pmrun(option, "1G", "--mem-high", "50%", "true", ":::", "1")
    assert (r.returncode, r.stderr) == (2, f"pmrun: {option} sets the high watermark: give it "
                                           "or --mem-high\n")


def test_job_slots_are_numbered_within_j(pmrun: Run, tmp_path: Path) -> None:
    # Declared bounds: no first measurement to wait for, -j is the only limit.
    r = pmrun("-j", "2", "--mem-per-task", "1M", "--tag",
              "sleep 0.2; echo {%} $PARALLEL_SEQ {#}", ":::", *"abcdef")
    assert r.returncode == 0, r.stderr
    rows = [(ord(m[1]) - ord("a"), int(m[2]), int(m[3]), int(m[4]))
            for m in re.finditer(r"^(\w)\t(\d+) (\d+) (\d+)$", r.stdout, re.M)]
    assert sorted(seq for _, _, seq, _ in rows) == [1, 2, 3, 4, 5, 6], r.stdout
    assert all(seq == task + 1 == number for task, _, seq, number in rows), r.stdout
    assert {slot for _, slot, _, _ in rows} == {1, 2}, r.stdout


@pytest.mark.parametrize(("argv", "message"), [
    ([":::", "a"], "::: gives arguments to a command: put the command before it "
                   "(pmrun CMD ::: ...) or give --tasks FILE"),
    (["-n", "2", "echo", ":::", "a"], "-n is the number of an MPI job's ranks: here each line "
                                      "and combination of arguments is one task (-j N: N at once)"),
    (["echo", "::::", "missing"], ":::: missing: No such file or directory"),
    (["echo", ":::+", "a"], ":::+ pairs its source with the one before it: there is none"),
    (["-a", "missing", "echo"], "-a missing: no such file"),
    (["-a", "-", "::::", "x"], "-a FILE gives arguments to a command: put the command after the "
                               "options (pmrun -a FILE CMD) or give --tasks FILE"),
    (["-d", "ab", "echo", ":::", "a"], "-d takes one character (or \\n, \\t, \\0), not 'ab'"),
    (["--slf", "empty.txt", "echo", ":::", "a"], "--slf empty.txt: names no host"),
    (["--header", ":", "echo", ":::", "a"], "--header: ::: has a name but no argument"),
    (["--pipe", "echo", ":::", "a"], "--pipe gives each task a block of stdin: not :::"),
    (["--pipe", "--results", "r", "cat"], "--pipe gives each task a block of stdin: not "
                                          "--results"),
    (["--pipe", "--block", "0", "cat"], "--block takes a size in bytes (e.g. 1M), not '0'"),
    (["--arg-sep", "::::", "echo", "::::", "a"], "--arg-sep and --arg-file-sep are both "
     "'::::': sources of arguments and of files need words of their own"),
    (["--arg-sep", "", "echo", "a"], "--arg-sep takes a word that starts an input source (as "
                                     ":::), not ''"),
    (["--arg-file-sep", "x+", "echo", "a"], "--arg-file-sep takes a word that starts an input "
                                            "source (as :::), not 'x+'"),
    (["--arg-sep", ",,", "-n", "2", "hostname"], "--arg-sep is for task ensembles (pmrun CMD "
     "::: ARGS, --tasks FILE), not for an MPI job's ranks"),
    (["echo", "{= s/(/ =}", ":::", "a"], "echo {= s/(/ =}: {= s/(/ =}: perl says: Substitution "
     "replacement not terminated"),
    (["echo", "{= $_ = slot() =}", ":::", "a"], "echo {= $_ = slot() =}: {= $_ = slot() =}: "
     "perl says: slot() is not known when pmrun fills a task's line: use {%}"),
    (["echo", "{= die 'no' =}", ":::", "a"], "echo {= die 'no' =}: {= die 'no' =}: perl says: no"),
])
def test_a_bad_command_with_sources_is_named(pmrun: Run, tmp_path: Path, argv: list[str],
                                             message: str) -> None:
    (tmp_path / "empty.txt").write_text("# no host\n")
    r = pmrun(*argv)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {message}\n")


def _log_rows(path: Path) -> list[tuple[int, int, str]]:
    """(Seq, Exitval, Command) of each line of a job log, its header checked."""
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == ["Seq", "Host", "Starttime", "JobRuntime", "Send", "Receive",
                                    "Exitval", "Signal", "Command"]
    return [(int(f[0]), int(f[6]), f[8]) for f in (line.split("\t") for line in lines[1:])]


def test_resume_failed_reruns_what_failed_and_resume_what_did_not_run(pmrun: Run,
                                                                      tmp_path: Path) -> None:
    line = "test -e ok.{} || { touch ok.{}; exit 1; }; echo {}"  # fails once per argument
    r = pmrun("--joblog", "log", line, ":::", "a", "b")
    assert r.returncode == 2, r.stderr  # (2 failed)
    assert sorted(_log_rows(tmp_path / "log")) == [(1, 1, line.replace("{}", "a")),
                                                   (2, 1, line.replace("{}", "b"))]
    r = pmrun("--resume-failed", "--joblog", "log", "--dry-run", line, ":::", "a", "b", "c")
    assert (r.returncode, r.stdout.splitlines()) == (0, [line.replace("{}", x) for x in "abc"])
    r = pmrun("--resume-failed", "--joblog", "log", line, ":::", "a", "b")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["a", "b"]
    assert [row[:2] for row in _log_rows(tmp_path / "log")][2:] in ([(1, 0), (2, 0)],
                                                                    [(2, 0), (1, 0)])
    r = pmrun("--resume", "--joblog", "log", line, ":::", "a", "b", "c")  # c fails once
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert "task 3: exit codes 1" in r.stderr
    r = pmrun("--resume", "--joblog", "log", line, ":::", "a", "b", "c")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_retry_failed_reruns_the_logs_failed_commands(pmrun: Run, tmp_path: Path) -> None:
    # GNU parallel's --retry-failed: the commands come from the log (a command line given
    # is not used), each under its number there, the new lines appended.
    line = "test -e ok.{} || { touch ok.{}; exit 3; }; echo {}"  # fails once per argument
    (tmp_path / "ok.a").touch()
    r = pmrun("--joblog", "log", "-k", line, ":::", "a", "b", "c")
    assert (r.returncode, r.stdout) == (2, "a\n"), r.stderr  # (2 failed)
    (tmp_path / "ok.c").unlink()  # b and c failed: b would now succeed, c not yet
    r = pmrun("--retry-failed", "--joblog", "log", "--dry-run")
    assert (r.returncode, r.stdout) == (0, "".join(f"{line.replace('{}', x)}\n"
                                                   for x in "bc")), r.stderr
    r = pmrun("--retry-failed", "--joblog", "log", "-k", "echo not this", ":::", "x")
    assert (r.returncode, r.stdout) == (1, "b\n"), r.stderr
    assert "task 3: exit codes 3" in r.stderr  # (c, its number in the log)
    rows = _log_rows(tmp_path / "log")
    assert rows[3:] == [(2, 0, line.replace("{}", "b")), (3, 3, line.replace("{}", "c"))]
    shutil.copy(tmp_path / "log", tmp_path / "log.parallel")
    r = pmrun("--retry-failed", "--joblog", "log")  # only c had failed last time
    assert (r.returncode, r.stdout) == (0, "c\n"), r.stderr
    r = pmrun("--retry-failed", "--joblog", "log")  # nothing failed: nothing runs
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert len(_log_rows(tmp_path / "log")) == 6
    if PARALLEL is not None:  # (parallel's own run of the same log)
        assert parallel(tmp_path, "--retry-failed", "--joblog", "log.parallel").stdout == "c\n"
    # What --retry-failed needs, and what it is not with.
    for args, said in ((["--retry-failed"], "--retry-failed runs again the commands that "
                        "failed in the log of --joblog FILE: give it"),
                       (["--retry-failed", "--resume", "--joblog", "log"],
                        "--retry-failed runs the failed commands of the job log: not with "
                        "--resume")):
        r = pmrun(*args)
        assert (r.returncode, r.stderr) == (2, f"pmrun: {said}\n")


def test_an_interrupted_run_resumes_where_it_stopped(pmrun: Run, pmrun_popen: Popen,
                                                     tmp_path: Path) -> None:
    args = [str(i) for i in range(1, 7)]
    proc = pmrun_popen("-j", "1", "--joblog", "log", "sleep 0.2; echo {}", ":::", *args)
    assert proc.stdout is not None
    seen = [proc.stdout.readline(), proc.stdout.readline()]
    assert seen == [b"1\n", b"2\n"]
    proc.send_signal(signal.SIGTERM)  # as Slurm does at an allocation's time limit
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    first = {seq for seq, code, _ in _log_rows(tmp_path / "log") if code == 0}
    assert {1, 2} <= first < set(range(1, 7)), (tmp_path / "log").read_text()
    r = pmrun("-j", "1", "--resume", "--joblog", "log", "sleep 0.2; echo {}", ":::", *args)
    assert r.returncode == 0, r.stderr
    rerun = {int(line) for line in r.stdout.splitlines()}
    done = {seq for seq, code, _ in _log_rows(tmp_path / "log") if code == 0}
    assert rerun == set(range(1, 7)) - first and done == set(range(1, 7)), r.stdout


@pytest.mark.parametrize("option", [["-j", "2"], ["--retries", "1"], ["--mem-per-task", "1G"],
                                    ["--joblog", "log"], ["--resume"], ["--dry-run"], ["-k"],
                                    ["--halt", "2"], ["--colsep", ","]])
def test_an_ensembles_option_on_an_mpi_job_is_refused(pmrun: Run, option: list[str]) -> None:
    r = pmrun(*option, "-n", "1", "true")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {option[0]} is for task "
                                                  "ensembles (pmrun CMD ::: ARGS, --tasks "
                                                  "FILE), not for an MPI job's ranks\n")


def test_timeout_ends_each_task_that_overruns_it(pmrun: Run, tmp_path: Path) -> None:
    # One task ignores SIGTERM: SIGKILL follows.  The quick one is untouched.
    r = pmrun("--timeout", "0.5", "--mem-per-task", "1M", "--joblog", "log",
              "if [ {} = slow ]; then trap '' TERM; sleep 30; fi; echo {}", ":::",
              "quick", "slow")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "quick\n"
    assert "pmrun: [task 2] timed out after 0.5 s: terminated\n" in r.stderr
    assert "pmrun: [task 2] timed out after 0.5 s: killed\n" in r.stderr
    assert "task 2: exit codes 137" in r.stderr
    rows = {seq: code for seq, code, _ in _log_rows(tmp_path / "log")}
    assert rows == {1: 0, 2: 0}  # (a kill is a signal, not an exit status)
    signals = [line.split("\t")[7] for line in (tmp_path / "log").read_text().splitlines()]
    assert signals[1:] in (["0", "9"], ["9", "0"])


def test_timeout_as_a_percentage_of_the_median_successful_run(pmrun: Run) -> None:
    """GNU parallel's --timeout 200%: no limit until a task succeeded; then twice the
    median successful run, for the tasks that run already too (the slow one started
    first).  A failed run does not count."""
    start = time.monotonic()
    r = pmrun("-j", "3", "--timeout", "200%", "--mem-per-task", "1M",
              "sleep {} && echo {}", ":::", "30", "0.3", "fail")
    took = time.monotonic() - start
    assert r.returncode == 2, r.stderr
    assert r.stdout == "0.3\n", r.stderr
    m = re.search(r"pmrun: \[task 1\] timed out after ([0-9.]+) s \(200% of the median "
                  r"successful run, ([0-9.]+) s\): terminated\n", r.stderr)
    assert m is not None, r.stderr
    assert float(m[1]) == pytest.approx(2 * float(m[2]), rel=0.01)
    assert 0.3 <= float(m[2]) < 10, r.stderr
    assert took < 20, r.stderr


@pytest.mark.parametrize("options,args,status", [
    ([], ["1", "2", "0", "3"], 3),                              # how many failed
    ([], [str(k) for k in range(1, 106)], 101),                  # more than 100
    (["-j1", "--halt", "now,fail=1"], ["3", "0"], 3),           # the failed task's
    (["-j1", "--halt", "now,done=1"], ["4", "0"], 4),           # the ended task's
    (["-j1", "--halt", "soon,fail=2"], ["3", "4", "5"], 2),     # how many failed
    (["-j1", "--halt", "now,success=1"], ["3", "0", "5"], 0),  # found
    (["-j1", "--halt", "now,fail=50%"], ["3", "0", "5", "0"], 50),  # the failed share
    (["-j1", "--halt", "now,fail=1"], ["9"], 137),              # its signal's
])
def test_exit_status_is_gnu_parallels(pmrun: Run, options: list[str], args: list[str],
                                      status: int) -> None:
    r = pmrun(*options, "--mem-per-task", "1M", "[ {} != 9 ] || kill -9 $$; exit {}", ":::",
              *args)
    assert r.returncode == status, r.stderr


def test_timeout_takes_gnu_parallels_time_postfixes(pmrun: Run) -> None:
    r = pmrun("--timeout", "0.01m", "sleep {}; echo {}", ":::", "0", "30")
    assert r.returncode == 1 and r.stdout == "0\n", r.stderr
    assert "pmrun: [task 2] timed out after 0.6 s: terminated\n" in r.stderr


@pytest.mark.parametrize("option", [["--bind-to", "core"], ["-l"], ["--output", "out.%r"],
                                    ["--kvs", "socket"], ["--mpi", "pmix"], ["-usize", "4"]])
def test_a_ranks_option_on_an_ensemble_is_refused(pmrun: Run, option: list[str]) -> None:
    r = pmrun(*option, "echo", ":::", "a")
    hint = (" (their output: --tag, --tagstring, --group, --lb)"
            if option[0] in ("-l", "--output") else "")
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {option[0]} is for an MPI "
                                                  f"job's ranks, not for task ensembles{hint}\n")


def test_keep_order_writes_output_in_task_order(pmrun: Run) -> None:
    # The last task ends first; with -k its lines still come last.
    for mode in ("--group", "--lb"):
        r = pmrun("-k", mode, "-j", "3", "--mem-per-task", "1M",
                  "sleep 0.{}; echo {}; echo {} again", ":::", "6", "3", "1")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["6", "6 again", "3", "3 again", "1", "1 again"]


def test_an_interrupted_task_is_not_retried(pmrun_popen: Popen) -> None:
    # One process prints and waits: a shell that is between two commands (echo; sleep)
    # when SIGINT comes starts the next one all the same, and ends only after it.
    proc = pmrun_popen("--retries", "2", "--lb", f"{sys.executable} -c \"import time; "
                       "print('started', {}, flush=True); time.sleep(30)\"", ":::", "1")
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started 1\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGINT, err
    assert out == b"" and err.decode().splitlines()[-2:] == [
        "1 task: 0 succeeded, 1 failed, 0 retries",
        f"  task 1: exit codes 130: {sys.executable} -c \"import time; "
        "print('started', 1, flush=True); time.sleep(30)\""], err


def test_halt_now_on_the_first_failure_kills_the_rest(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("-j", "2", "--mem-per-task", "1M", "--halt", "now,fail=1", "--joblog", "log",
              "sleep {}; exit 3", ":::", "0.1", "30", "0.2", "0.3")
    assert r.returncode == 3, r.stderr  # (the failed task's)
    lines = r.stderr.splitlines()
    assert lines[0] == "pmrun: --halt now,fail=1: 1 task failed: killing the running tasks"
    assert lines[1] == "4 tasks: 0 succeeded, 4 failed, 0 retries"
    assert "  task 2: exit codes 137: sleep 30; exit 3" in lines  # killed
    assert "  task 3: not run: --halt now,fail=1: sleep 0.2; exit 3" in lines
    assert "  task 4: not run: --halt now,fail=1: sleep 0.3; exit 3" in lines
    assert sorted(seq for seq, _, _ in _log_rows(tmp_path / "log")) == [1, 2]  # what ran


def test_halt_soon_on_successes_ends_well(pmrun: Run) -> None:
    r = pmrun("-j", "1", "--halt", "soon,success=2", "exit {}", ":::", "1", "0", "2", "0", "0")
    assert r.returncode == 0, r.stderr  # found what was looked for
    assert r.stderr.splitlines()[:2] == [
        "pmrun: --halt soon,success=2: 2 tasks succeeded: starting no more",
        "5 tasks: 2 succeeded, 3 failed, 0 retries"]
    assert "  task 5: not run: --halt soon,success=2: exit 0" in r.stderr


@pytest.mark.parametrize("value", ["now,fail", "soon,fail=0", "later,fail=1", "now,fail=101%",
                                   "now,oops=1", ""])
def test_a_bad_halt_is_named(pmrun: Run, value: str) -> None:
    r = pmrun("--halt", value, "true", ":::", "a")
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.startswith("pmrun: --halt takes never, or soon|now,fail|success|done=N")


def test_sshlogin_sets_tasks_at_once_per_host(pmrun: Run) -> None:
    # GNU parallel's -S 1/: (one job at a time, on this machine).
    r = pmrun("-v", "-v", "-S", "1/:", "--mem-per-task", "1M", "sleep 0.2; echo {}",
              ":::", "a", "b", "c")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["a", "b", "c", *(f"sleep 0.2; echo {x}"
                                                               for x in "abc")]
    assert _most_at_once(r.stderr) == 1, r.stderr
    r = pmrun("-S", "x/n1", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: -S takes [N/]HOST,... (N tasks at once on "
                                           "HOST), not 'x/n1'\n")


def test_a_task_failing_on_another_host_is_said_once(pmrun: Run) -> None:
    # Hosts reached through a launcher: the ensemble names how each task ended, the
    # job that ran it on its host says nothing of its own.
    r = pmrun("--launcher", "exec", "--launcher-exec", "env {command}", "--iface", "127.0.0.1",
              "-hosts", "n1", "exit {}", ":::", "3")
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr == ("1 task: 0 succeeded, 1 failed, 0 retries\n"
                        "  task 1: exit codes 3: exit 3\n")
    r = pmrun("--launcher", "exec", "--launcher-exec", "false {command}", "--iface",
              "127.0.0.1", "-hosts", "n1", "--join-timeout", "5", "echo", ":::", "a")
    assert r.returncode == 1
    assert r.stderr.count("node n1 lost: agent exited with code 1 before joining the tree"
                          ) == 1, r.stderr
    assert r.stderr.endswith("  task 1: no node left to run it: echo a\n"), r.stderr


def test_progress_line_estimates_the_time_left(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("sleep 0.3\n" * 4)
    text = _progress_on_a_terminal(tmp_path, "-j", "1", "--mem-per-task", "1M",
                                   "--tasks", "t.txt")
    # After the first task (0.3 s), three are left: about 1 s.
    m = re.search(r"\rtasks: 1/4 done, 1 running, 2 queued, waiting for a free slot, "
                  r"about (\d+) s left\x1b", text)
    assert m is not None and 0 <= int(m[1]) <= 3, text


def test_arguments_that_are_not_utf8_reach_the_task_unchanged(pmrun: Run,
                                                              tmp_path: Path) -> None:
    (tmp_path / "names").write_bytes(b"caf\xe9.dat\n")  # a Latin-1 file name
    r = pmrun("--joblog", "log", "printf %s {} > got", "::::", "names")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "got").read_bytes() == b"caf\xe9.dat"
    assert (tmp_path / "log").read_bytes().endswith(b"\tprintf %s 'caf\xe9.dat' > got\n")


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("option", ["--number-of-threads", "--number-of-cores",
                                    "--number-of-cpus", "--number-of-sockets"])
def test_number_of_cpus_as_gnu_parallel_counts_them(pmrun: Run, tmp_path: Path,
                                                   option: str) -> None:
    r = pmrun(option)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == parallel(tmp_path, option).stdout


def test_will_cite_is_taken(pmrun: Run) -> None:
    r = pmrun("--will-cite", "--no-notice", "echo", ":::", "a")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\n", "")


def test_nice_runs_every_command_of_a_line_at_that_niceness(pmrun: Run, tmp_path: Path) -> None:
    # The line's sh and what it starts (a pipeline's every stage) at niceness 7.
    line = "cut -d' ' -f19 /proc/self/stat | cat; echo {}"
    r = pmrun("--nice", "7", "-k", line, ":::", "a", "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "7\na\n7\nb\n", "")
    if PARALLEL is not None:
        assert r.stdout == parallel(tmp_path, "--nice", "7", "-k", line, ":::", "a", "b").stdout


def test_nice_leaves_the_line_that_is_shown_and_logged(pmrun: Run, tmp_path: Path) -> None:
    # -v, --dry-run and the job log's Command show the line, not the nice that runs it.
    log = tmp_path / "log"
    r = pmrun("--nice", "5", "-v", "--joblog", str(log), "echo {}", ":::", "a")
    assert (r.returncode, r.stdout) == (0, "echo a\na\n"), r.stderr
    assert log.read_text().splitlines()[1].split("\t")[8] == "echo a"
    dry = pmrun("--nice", "5", "--dry-run", "echo {}", ":::", "a")
    assert (dry.returncode, dry.stdout) == (0, "echo a\n"), dry.stderr
    # --pipe's {#}, and --cat's file, in the line that runs at that niceness.
    piped = pmrun("--nice", "5", "--pipe", "echo {#} $(nice)", input="x\n")
    assert (piped.returncode, piped.stdout) == (0, "1 5\n"), piped.stderr
    if PARALLEL is not None:
        assert r.stdout == parallel(tmp_path, "--nice", "5", "-v", "echo {}", ":::", "a").stdout
        assert dry.stdout == parallel(tmp_path, "--nice", "5", "--dry-run", "echo {}", ":::",
                                      "a").stdout


def test_files_prints_where_each_task_s_stdout_is(pmrun: Run, tmp_path: Path) -> None:
    # GNU parallel's --files: a new file of --tmpdir a task, its name printed (in task
    # order with -k, after the tag with --tag); stderr printed as without it (parallel
    # drops it).
    store = tmp_path / "store"
    store.mkdir()
    line = "echo out {}; echo err {} >&2"
    r = pmrun("--files", "--tmpdir", str(store), "-k", "--tag", line, ":::", "a", "b")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stderr.splitlines()) == ["a\terr a", "b\terr b"]
    rows = [row.split("\t") for row in r.stdout.splitlines()]
    assert [tag for tag, _ in rows] == ["a", "b"]
    assert [Path(name).parent for _, name in rows] == [store, store]
    assert [Path(name).read_text() for _, name in rows] == ["out a\n", "out b\n"]
    assert sorted(p.name for p in store.iterdir()) == sorted(Path(n).name for _, n in rows)
    if PARALLEL is not None:
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        want = parallel(tmp_path, "--files", "--tmpdir", str(theirs), "-k", "--tag", line,
                        ":::", "a", "b")
        assert [Path(row.split("\t")[1]).read_text() for row in want.stdout.splitlines()] == [
            Path(name).read_text() for _, name in rows]
    r = pmrun("--files", "--results", "r", "echo", ":::", "a")
    assert (r.returncode, r.stderr) == (2, "pmrun: --files and --results both store the "
                                           "output: give one of them\n")


@pytest.mark.parametrize(("tail", "want"), [
    (["echo", "{choose_k}", ":::", "A", "B", "C", ":::", "A", "B", "C"], "A B\nA C\nB C\n"),
    (["echo", "{#}", "{uniq}", ":::", "A", "B", "A", ":::", "A", "B"],
     "2 A B\n3 B A\n6 A B\n"),
    (["echo", "{#}", "{2}{choose_k}", ":::", "1", "2", "3", ":::", "1", "2", "3"],
     "2 21 2\n3 31 3\n6 32 3\n"),
])
def test_plus_choose_k_and_uniq_leave_tasks_out_as_gnu_parallel(
        pmrun: Run, tmp_path: Path, tail: list[str], want: str) -> None:
    # (A task left out keeps its number: {#} counts every combination.  parallel also
    # counts those failed in its exit status; pmrun does not, as for any skip().)
    r = pmrun("--plus", "-k", *tail)
    assert (r.returncode, r.stdout, r.stderr) == (0, want, ""), r.stderr
    if PARALLEL is not None:
        theirs = subprocess.run([PARALLEL, "--will-cite", "--plus", "-k", *tail], cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        assert theirs.stdout == want, theirs.stderr

@pytest.mark.parametrize(("tail", "want"), [
    # A string of the user's own (of every source's argument), and its positional form
    # ({2..}: of source 2's).
    (["--rpl", r"{..} s:\.[^.]+$::", "echo {..} {2..}", ":::", "a.b.c", ":::", "x.y.z"],
     "a.b x.y x.y\n"),
    # (regexp) groups in the string are $$1, $$2 in the expression.
    (["--rpl", r"{/(\.\S+)/(\.\S+)} s/$$1/$$2/g;", "echo {/.tar/.gz}", ":::", "UU.tar.gz"],
     "UU.gz.gz\n"),
    # The longest first (% is part of %%); a built-in string redefined; -q's words.
    (["--rpl", "% s/a/b/", "--rpl", "%% s/b/a/", "echo % %%", ":::", "ab"], "bb aa\n"),
    (["--rpl", "{} s/x/y/", "echo {}", ":::", "xx"], "yx\n"),
    (["--rpl", "{u} $_=uc", "--tagstring", "{u}", "echo", ":::", "ab"], "AB\tab\n"),
    (["-q", "--rpl", "{u} $_=uc", "printf", "%s\\n", "{u} x", ":::", "ab"], "AB x\n"),
    # ... and -N's long name.
    (["--max-replace-args", "2", "echo", "{1}-{2}", ":::", "1", "2", "3", "4"], "1-2\n3-4\n"),
])
def test_rpl_strings_of_ones_own_as_gnu_parallel(pmrun: Run, tmp_path: Path,
                                                 tail: list[str], want: str) -> None:
    r = pmrun("-k", *tail)
    assert (r.returncode, r.stdout, r.stderr) == (0, want, ""), r.stderr
    if PARALLEL is not None:
        assert parallel(tmp_path, "-k", *tail).stdout == want


def test_rpl_without_its_expression_is_refused(pmrun: Run) -> None:
    r = pmrun("--rpl", "{x}", "echo", ":::", "a")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("pmrun: --rpl '{x}': give the string and its perl expression, e.g. "
                        "--rpl '{..} s:\\.[^.]+$::'\n")


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
def test_plus_slot_strings_as_gnu_parallel(pmrun: Run, tmp_path: Path) -> None:
    # {0%} and {slot}: the job slot (zero-padded to the slots' width), as the shell reads it.
    for text in ("{0%}", "{slot}"):
        tail = ["--plus", "-j", "2", "echo", text, ":::", *map(str, range(12))]
        r = pmrun(*tail)
        assert r.returncode == 0, r.stderr
        assert sorted(set(r.stdout.split())) == sorted(set(parallel(tmp_path, *tail)
                                                           .stdout.split())) == ["1", "2"]
    r = pmrun("--plus", "echo", "{%[}", ":::", "a")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith("pmrun: echo {%[}: {%[}: not a regular expression (")


# ------------------------------------------------------------ --onall, --nonall

HERE = socket.gethostname()


def test_onall_runs_every_task_on_every_host_grouped_by_host(pmrun: Run,
                                                              tmp_path: Path) -> None:
    hosts = f"{HERE},localhost"  # (two names of this machine: two hosts to pmrun)
    first, second = sorted([HERE, "localhost"])  # (GNU parallel's order: by name)
    r = pmrun("--onall", "-k", "--tag", "-hosts", hosts, "echo {}; exit {}", ":::", "0", "3")
    assert r.returncode == 2, r.stderr  # (both hosts' runs failed)
    assert r.stdout.splitlines() == [f"{first}\t0", f"{first}\t3", f"{second}\t0",
                                     f"{second}\t3"], r.stdout
    assert r.stderr.count("task 2: exit codes 3") == 2, r.stderr
    # stdin's arguments read once, for every host; the joblogs one, with every host's.
    r = pmrun("--onall", "-k", "--tag", "-hosts", hosts, "--joblog", "log", "echo",
              input="x\ny\n")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    assert r.stdout.splitlines() == [f"{first}\tx", f"{first}\ty", f"{second}\tx",
                                     f"{second}\ty"], r.stdout
    log = (tmp_path / "log").read_text().splitlines()
    assert log[0].startswith("Seq\tHost") and len(log) == 5, log
    assert sorted(row.split("\t")[0] for row in log[1:]) == ["1", "1", "2", "2"], log


def test_nonall_runs_the_command_once_on_every_host(pmrun: Run, tmp_path: Path) -> None:
    # -j 1: one host at a time (each run's start and end, in nanoseconds).
    r = pmrun("--nonall", "-j", "1", "-hosts", f"{HERE},localhost",
              "echo $(date +%s%N) {}; sleep 0.3; echo $(date +%s%N)")
    assert (r.returncode, r.stderr) == (0, ""), r.stderr
    times = [int(line.split()[0]) for line in r.stdout.splitlines()]
    assert len(times) == 4 and all("{}" not in x for x in r.stdout.splitlines()), r.stdout
    runs = sorted(zip(times[::2], times[1::2], strict=True))
    assert runs[0][1] <= runs[1][0], runs  # (the second started once the first ended)
    r = pmrun("--nonall", "-hosts", f"{HERE},localhost", "exit 0")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    for argv, message in [
        (["--nonall", "echo", ":::", "a"], "--nonall runs the command once on every host, "
         "without arguments: not ::: (--onall runs each argument on every host)"),
        (["--nonall", "-N", "2", "echo"], "--nonall runs the command without arguments: "
         "not -N 2"),
        (["--onall", "--pipe", "cat"], "--onall runs every task on every host: not with "
         "--pipe"),
        (["--onall", "-n", "2", "echo", ":::", "a"], None),
    ]:
        r = pmrun(*argv)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert message is None or r.stderr == f"pmrun: {message}\n", r.stderr


@pytest.mark.skipif(PARALLEL is None, reason="GNU parallel is not installed")
@pytest.mark.parametrize("tail", [
    ["--onall", "echo {} {#}", ":::", "a", "b"],
    ["--onall", "--tag", "-k", "echo", ":::", "a", "b", ":::", "1", "2"],
    ["--nonall", "echo hi {}"],
    ["--nonall", "--tag", "pwd"],
])
def test_onall_as_gnu_parallel(pmrun: Run, tmp_path: Path, tail: list[str]) -> None:
    want = parallel(tmp_path, "-S", ":", *tail)
    got = pmrun("-S", ":", *tail)
    assert (got.returncode, got.stderr) == (0, ""), got.stderr
    # (parallel tags with the -S word as written, ':'; pmrun with the host, localhost)
    assert got.stdout.replace("localhost\t", ":\t") == want.stdout


def test_onall_interrupted_ends_every_host_s_run(pmrun_popen: Popen, marker: str) -> None:
    proc = pmrun_popen("--nonall", "--lb", "-hosts", f"{HERE},localhost",
                       f"echo up; sleep 60; : {marker}")
    assert proc.stdout is not None
    assert [proc.stdout.readline(), proc.stdout.readline()] == [b"up\n", b"up\n"]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert b"Traceback" not in err
    deadline = time.monotonic() + 10
    while pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pids_with(marker)


def test_a_reader_that_goes_away_ends_the_tasks(tmp_path: Path) -> None:
    # `pmrun ... | head -1` where head has its line: the tasks' output has nowhere to go,
    # and what still runs is ended (else held output of tasks that never end grows).
    marker = f"pm-gone-{os.getpid()}"
    # (sleep not the last command: a shell that runs the last one in its place, as bash
    # does, would leave no process with the marker)
    proc = subprocess.Popen(pmrun_argv("-j", "3", f"echo {{}}; sleep 30; : # {marker}", ":::",
                                       "1", "2", "3"),
                            cwd=tmp_path, env=pmrun_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while len(pids_with(marker)) < 3:  # (each task's sh)
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.02)
    assert proc.stdout is not None
    proc.stdout.close()  # (nothing was written: --group holds it till a task ends)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signal.SIGPIPE, err
    assert err.decode().splitlines()[0] == ("pmrun: standard output closed: killing the "
                                            "running tasks, starting no more"), err
    assert not pids_with(marker)
