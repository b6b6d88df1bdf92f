"""GNU parallel's command line as parallel runs it: ``pmrun CMD ::: ARGS`` is one command
template (several lines, a ``[`` first), and what becomes of it is parallel's (the expected
outputs below are what GNU parallel 20221122 prints for the same command lines)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pm.ensemble.inputs import MAX_ARG_STRLEN, line_limit
from pm.ensemble.taskspec import parse_command, parse_tasks

sys.path.insert(0, str(Path(__file__).parent))
from launch_util import pids_with

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(60)


def test_a_command_of_several_lines_is_one_script_per_argument(pmrun: Run) -> None:
    r = pmrun("-k", "echo a\necho {}", ":::", "b", "c")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\nb\na\nc\n", "")
    r = pmrun("if true\nthen echo {}\nfi", ":::", "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "b\n", "")
    # Arguments on stdin, read as they come: the same one script an argument.
    r = pmrun("-k", "echo a\necho {}", input="x\ny\n")
    assert (r.returncode, r.stdout, r.stderr) == (0, "a\nx\na\ny\n", "")
    # -v shows the script as it runs, and the summary counts a task an argument.
    r = pmrun("-v", "-k", "echo a\necho {}", ":::", "b", "c")
    assert r.stdout == "echo a\necho b\na\nb\necho a\necho c\na\nc\n"
    assert "2 tasks: 2 succeeded, 0 failed, 0 retries" in r.stderr


def test_a_command_line_is_never_a_tasks_files_options_block() -> None:
    spec = parse_command("[mem=2G] echo {}")
    assert (spec.argv[1:], spec.mem, spec.line) == (("-c", "[mem=2G] echo {}"), None,
                                                    "[mem=2G] echo {}")
    assert parse_command("[[ {} == a* ]] && echo yes {}").argv[-1].startswith("[[ {}")
    # (A here document's quote is the shell's business, as with parallel.)
    assert parse_command("cat <<E\nit's\nE").argv[-1] == "cat <<E\nit's\nE"
    # The tasks file keeps its format: a command a line, an options block first.
    first, second = parse_tasks("[mem=2G] echo a\necho b\n")
    assert (first.mem, first.argv[-1], second.argv[-1]) == (2 << 30, "echo a", "echo b")


def test_tasks_run_in_the_users_shell_as_gnu_parallels(pmrun: Run, tmp_path: Path) -> None:
    bash = {"SHELL": "/bin/bash", "PARALLEL_SHELL": ""}
    r = pmrun("x=(1 2 3); echo ${x[1]} {}", ":::", "q", env=bash)
    assert (r.returncode, r.stdout, r.stderr) == (0, "2 q\n", "")
    r = pmrun("-k", "[[ {} == a* ]] && echo yes {}", ":::", "ab", "cd", env=bash)
    assert (r.returncode, r.stdout) == (1, "yes ab\n"), r.stderr
    # Arguments on stdin, --pipe: the same shell.
    r = pmrun("-k", "x=(1 2); echo ${x[1]}{}", input="a\n", env=bash)
    assert (r.returncode, r.stdout) == (0, "2a\n"), r.stderr
    r = pmrun("--pipe", "x=(1 2); echo ${x[1]}; wc -l", input="a\nb\n", env=bash)
    assert (r.returncode, r.stdout) == (0, "2\n2\n"), r.stderr
    # $PARALLEL_SHELL first, then $SHELL, then /bin/sh.
    r = pmrun("echo $0 {}", ":::", "a", env={"SHELL": "/bin/bash", "PARALLEL_SHELL": "/bin/sh"})
    assert (r.returncode, r.stdout) == (0, "/bin/sh a\n"), r.stderr
    r = pmrun("echo $0 {}", ":::", "a", env={"SHELL": "", "PARALLEL_SHELL": ""})
    assert (r.returncode, r.stdout) == (0, "/bin/sh a\n"), r.stderr
    # -v and --dry-run show the command line, not the shell.
    r = pmrun("-v", "echo {}", ":::", "a", env=bash)
    assert r.stdout == "echo a\na\n"
    r = pmrun("--dry-run", "echo {}", ":::", "a", env={"SHELL": "/no/such/shell"})
    assert (r.returncode, r.stdout) == (0, "echo a\n")
    # A shell that is not there: one line, nothing run.
    r = pmrun("touch x{}", ":::", "a", env={"SHELL": "/no/such/shell", "PARALLEL_SHELL": ""})
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", "pmrun: $SHELL is /no/such/shell, which is no program that can run the tasks "
               "(set SHELL to a shell, e.g. SHELL=/bin/bash)\n")
    assert not (tmp_path / "xa").exists()
    # A tasks file's lines run in sh -c, as README says.
    (tmp_path / "t.txt").write_text("echo $0\n")
    r = pmrun("--tasks", "t.txt", env=bash)
    assert (r.returncode, r.stdout) == (0, "[task 0] sh\n"), r.stderr


def test_a_command_starting_with_brackets_runs_in_the_shell(pmrun: Run) -> None:
    r = pmrun("-k", "[[ {} == a* ]] && echo yes {} || echo no", ":::", "ab", "cd",
              env={"SHELL": "/bin/bash", "PARALLEL_SHELL": ""})
    assert (r.returncode, r.stdout, r.stderr) == (0, "yes ab\nno\n", "")


def test_many_arguments_are_cut_into_lines_exec_takes(pmrun: Run) -> None:
    """Linux takes no argument string of more than 128 KiB: a line of -X's is cut below
    that (its quoting and repeated words counted), every argument run once."""
    numbers = "".join(f"{i}\n" for i in range(1, 60001))
    for command in (["echo"], ["echo", "p{}q"]):
        r = pmrun("-j1", "-X", *command, input=numbers)
        assert (r.returncode, r.stderr) == (0, ""), r.stderr[-2000:]
        lines = r.stdout.splitlines()
        assert len(lines) > 1 and max(map(len, lines)) < 131072
        got = [w.removeprefix("p").removesuffix("q") for line in lines for w in line.split()]
        assert sorted(map(int, got)) == list(range(1, 60001))
    r = pmrun("-k", "--xargs", "echo", "'{}'", input="x" * 70000 + "\n" + "y" * 70000 + "\n")
    assert r.returncode == 0 and r.stdout.split() == ["x" * 70000, "y" * 70000]


def test_max_chars_bounds_a_line_of_many_arguments_as_gnu_parallels(pmrun: Run) -> None:
    numbers = "".join(f"{i}\n" for i in range(1, 21))
    r = pmrun("-k", "--xargs", "-s", "20", "echo", input=numbers)
    assert (r.returncode, r.stdout) == (0, "1 2 3 4 5 6 7\n8 9 10 11 12\n13 14 15 16 17\n"
                                           "18 19 20\n"), r.stderr
    r = pmrun("-k", "-j1", "--max-chars", "12", "-m", "echo", ":::", *map(str, range(1, 11)))
    assert (r.returncode, r.stdout) == (0, "1 2 3\n4 5 6\n7 8 9\n10\n"), r.stderr
    r = pmrun("-k", "-s", "12", "echo", ":::", "1", "2")  # (a task an argument: taken)
    assert (r.returncode, r.stdout) == (0, "1\n2\n"), r.stderr
    assert line_limit({}, 20) == 19 and line_limit({}) == MAX_ARG_STRLEN - 1
    for bad in ("0", "x", "-1"):
        r = pmrun("-s", bad, "echo", ":::", "1")
        assert (r.returncode, r.stdout, r.stderr) == (
            2, "", "pmrun: -s (--max-chars) takes the most bytes of a command line, a whole "
                   f"number of at least 1, not '{bad}'\n")


def test_input_lines_end_at_newlines_alone_as_gnu_parallels(pmrun: Run,
                                                           tmp_path: Path) -> None:
    # A CRLF line keeps its "\r"; a vertical tab, a form feed, U+2028 are an argument's.
    (tmp_path / "in.txt").write_bytes(b"a\r\nb\x0bc\xe2\x80\xa8d\x0ce\x1cf\xc2\x85\nlast")
    want = "<a\r>\n<b\x0bc\u2028d\x0ce\x1cf\x85>\n<last>\n"
    for args in (["printf '<%s>\\n' {}", "::::", "in.txt"],
                 ["-a", "in.txt", "printf '<%s>\\n' {}"]):
        r = pmrun("-k", *args)
        assert (r.returncode, r.stdout) == (0, want), r.stderr
    r = pmrun("-k", "printf '<%s>\\n' {}", input=(tmp_path / "in.txt").read_bytes())
    assert (r.returncode, r.stdout) == (0, want), r.stderr
    r = pmrun("-k", "echo {} | od -c", input="a\r\n")
    assert r.stdout.split() == ["0000000", "a", "\\r", "\\n", "0000003"]


@pytest.mark.parametrize(("retries", "runs"), [("0", 1), ("1", 1), ("2", 2), ("3", 3)])
def test_retries_n_is_n_runs_in_all_as_gnu_parallels(pmrun: Run, retries: str,
                                                    runs: int) -> None:
    r = pmrun("--lb", "--retries", retries, "echo run $PMRUN_TASK_ATTEMPT; exit 1", ":::", "x")
    assert r.returncode == 1
    assert r.stdout == "".join(f"run {k}\n" for k in range(1, runs + 1))
    assert f"1 task: 0 succeeded, 1 failed, {runs - 1} retr" in r.stderr
    # A task that succeeds on its last run: done.
    r = pmrun("--retries", retries, "test $PMRUN_TASK_ATTEMPT = {}", ":::", str(runs))
    assert (r.returncode, r.stdout) == (0, ""), r.stderr


_ROW = re.compile(r"(\d+)\t(\S+)\t\d+\.\d{3}\t +\d+\.\d{3}\t(\d+)\t(\d+)\t(-?\d+)\t(\d+)\t(.*)")


def _rows(text: str) -> list[tuple[str, ...]]:
    """(Seq, Host, Send, Receive, Exitval, Signal, Command) of each job log line in
    ``text``, its other lines as they are."""
    return [m.groups() if (m := _ROW.fullmatch(line)) else (line,)
            for line in text.splitlines()]


HEADER = ("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand",)


def test_joblog_appends_to_plus_file_and_writes_minus_on_stdout(pmrun: Run,
                                                               tmp_path: Path) -> None:
    # -: the header first, each task's line right after its output (-k: in order).
    r = pmrun("-k", "-j2", "--joblog", "-", "sleep 0.{}; echo {}", ":::", "3", "1")
    assert r.returncode == 0, r.stderr
    assert _rows(r.stdout) == [HEADER, ("3",), ("1", ":", "0", "2", "0", "0",
                                                "sleep 0.3; echo 3"),
                               ("1",), ("2", ":", "0", "2", "0", "0", "sleep 0.1; echo 1")]
    # +FILE: appended to, no header of its own (none in a new file either: parallel's).
    r = pmrun("--joblog", "log", "echo", ":::", "a")
    r = pmrun("--joblog", "+log", "echo", ":::", "b")
    assert r.returncode == 0, r.stderr
    assert _rows((tmp_path / "log").read_text()) == [
        HEADER, ("1", ":", "0", "2", "0", "0", "echo a"), ("1", ":", "0", "2", "0", "0",
                                                           "echo b")]
    r = pmrun("--joblog", "+new", "echo", ":::", "c")
    assert _rows((tmp_path / "new").read_text()) == [("1", ":", "0", "2", "0", "0", "echo c")]
    assert not (tmp_path / "+log").exists() and not (tmp_path / "-").exists()
    # --resume reads the file of +FILE.
    r = pmrun("--joblog", "+log", "--resume", "echo", ":::", "a", "z")
    assert (r.returncode, r.stdout) == (0, "z\n"), r.stderr


def test_joblog_columns_as_gnu_parallels(pmrun: Run, tmp_path: Path) -> None:
    # Host ":" for this machine; Receive: stdout's bytes only; --pipe: Send, the block's.
    r = pmrun("--joblog", "log", "echo {}; echo to-stderr >&2", ":::", "abc")
    assert r.returncode == 0, r.stderr
    assert _rows((tmp_path / "log").read_text())[1:] == [
        ("1", ":", "0", "4", "0", "0", "echo abc; echo to-stderr >&2")]
    numbers = "".join(f"{i}\n" for i in range(1, 1001))
    r = pmrun("-k", "--pipe", "--block", "1k", "--joblog", "log", "wc -l", input=numbers)
    assert r.returncode == 0, r.stderr
    assert sorted(row[:4] for row in _rows((tmp_path / "log").read_text())[1:]) == [
        ("1", ":", "1000", "4"), ("2", ":", "1000", "4"), ("3", ":", "1000", "4"),
        ("4", ":", "893", "4")]


def test_messages_name_a_task_by_its_seq(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("exit {}", ":::", "0", "1", "2")
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("3 tasks: 1 succeeded, 2 failed, 0 retries\n"
                        "  task 2: exit codes 1: exit 1\n  task 3: exit codes 2: exit 2\n")
    r = pmrun("--timeout", "0.3", "--joblog", "log", "sleep {}", ":::", "0", "30")
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == "pmrun: [task 2] timed out after 0.3 s: terminated"
    assert r.stderr.endswith("  task 2: exit codes 143: sleep 30\n"), r.stderr
    assert _rows((tmp_path / "log").read_text())[2][0] == "2"  # (the same number)
    # A tasks file's task: its index and its line, as the [task N] prefix of its output.
    (tmp_path / "t.txt").write_text("# first\ntrue\nexit 4\n")
    r = pmrun("--tasks", "t.txt")
    assert r.stderr == ("2 tasks: 1 succeeded, 1 failed, 0 retries\n"
                        "  task 1 (line 3): exit codes 4: exit 4\n")


def test_trim_with_colsep_trims_each_column_as_gnu_parallels(pmrun: Run) -> None:
    r = pmrun("-k", "--colsep", " +", "--trim", "lr", "echo", "{1}-{2}", input=" d e\n")
    assert (r.returncode, r.stdout) == (0, "-d\n"), r.stderr
    r = pmrun("-k", "--colsep", ",", "--trim", "l", "echo", "[{1}]", "[{2}]", ":::",
              " a , b ")
    assert (r.returncode, r.stdout) == (0, "[a ] [b ]\n"), r.stderr
    r = pmrun("-k", "--csv", "--trim", "r", "echo", "[{1}]", "[{2}]", ":::", " a , b ")
    assert (r.returncode, r.stdout) == (0, "[ a] [ b]\n"), r.stderr


def test_skip_first_line_skips_the_first_sources_first_argument(pmrun: Run,
                                                               tmp_path: Path) -> None:
    (tmp_path / "xy").write_text("x\ny\n")
    for tail, want in ([[":::", "a", "b", "c"], "b\nc\n"],
                       [[":::", "a", "b", ":::", "1", "2"], "b 1\nb 2\n"],
                       [["::::", "xy", ":::", "1", "2"], "y 1\ny 2\n"],
                       [[":::", "1", "2", "::::", "xy"], "2 x\n2 y\n"]):
        r = pmrun("-k", "--skip-first-line", "echo", *tail)
        assert (r.returncode, r.stdout) == (0, want), (tail, r.stderr)
    for many in ([], ["-j1", "-X"]):  # stdin's arguments as they come, or all read first
        r = pmrun("-k", "--skip-first-line", *many, "echo", input="header\na\nb\n")
        assert (r.returncode, r.stdout) == (0, "a b\n" if many else "a\nb\n"), r.stderr


def test_sources_without_arguments_and_strings_beyond_them_as_gnu_parallels(
        pmrun: Run, tmp_path: Path) -> None:
    for tail in ([":::"], ["::::"], ["--arg-sep", ",,", "echo", ",,"]):
        argv = tail if tail[0] == "--arg-sep" else ["echo", *tail]
        r = pmrun(*argv)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), argv
    r = pmrun("--joblog", "log", "touch x", ":::")  # (nothing runs)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert not (tmp_path / "x").exists()
    r = pmrun("echo", ":::", "a", ":::")  # (beside another: one empty argument)
    assert (r.returncode, r.stdout) == (0, "a \n"), r.stderr
    r = pmrun("-k", "echo", "[{3}]", "[{2}]", "{1}", ":::", "a", "b")
    assert (r.returncode, r.stdout, r.stderr) == (0, "[] [] a\n[] [] b\n", "")


def test_a_last_line_without_its_newline_stays_so_as_gnu_parallels(pmrun: Run,
                                                                  tmp_path: Path) -> None:
    for options, want in ([["--lb"], "cxcy"], [["--tag"], "x\tcxy\tcy"],
                          [["--lb", "--tag"], "x\tcxy\tcy"], [["-u", "-j1"], "cxcy"]):
        r = pmrun("-k", *options, "printf c{}", ":::", "x", "y")
        assert (r.returncode, r.stdout) == (0, want), (options, r.stderr)
    r = pmrun("-k", "--tagstring", "<{}>", "printf 'a\\nc{}'", ":::", "x", "y")
    assert (r.returncode, r.stdout) == (0, "<x>\ta\n<x>\tcx<y>\ta\n<y>\tcy"), r.stderr
    # --pipe --tag: the tag is the empty argument, as parallel's.
    r = pmrun("--pipe", "--tag", "cat", input="1\n2\n")
    assert (r.returncode, r.stdout) == (0, "\t1\n\t2\n"), r.stderr
    # A tasks file's output keeps a line a task: the next [task N] never joins it.
    (tmp_path / "t.txt").write_text("printf a\necho b\n")
    r = pmrun("-j1", "--tasks", "t.txt")
    assert (r.returncode, r.stdout) == (0, "[task 0] a\n[task 1] b\n"), r.stderr


def test_v_shows_the_command_lines_and_the_summary_and_memory_when_asked(pmrun: Run) -> None:
    r = pmrun("-v", "echo", ":::", "a")
    assert (r.returncode, r.stdout, r.stderr) == (
        0, "echo a\na\n", "1 task: 1 succeeded, 0 failed, 0 retries\n")
    for asked in (["--mem-per-task", "1M"], ["-v"]):  # memory control, or -vv
        r = pmrun("-v", *asked, "echo", ":::", "a")
        assert r.returncode == 0, r.stderr
        assert re.search(r"^pmrun: memory watermarks: high ", r.stderr, re.M), r.stderr
        assert re.search(r"^node \S+: peak memory in use ", r.stderr, re.M), r.stderr


class _Mine(Exception):
    """The caller's own exception, raised by its on_event."""


@pytest.mark.parametrize("kind", ["watermarks", "start", "exit"])
def test_an_on_event_exception_reaches_the_caller_of_run_tasks(kind: str, marker: str,
                                                               tmp_path: Path) -> None:
    """Whichever event the callback raises at, run_tasks raises the caller's exception
    once the tasks ended: the running one is killed, none more starts, nothing is left."""
    import pm

    seen: list[str] = []

    def on_event(e: pm.ensemble.Event) -> None:
        seen.append(e.kind)
        if e.kind == kind and (kind != "start" or seen.count("start") == 2):
            raise _Mine(kind)

    slow = [sys.executable, "-c", "import time; time.sleep(60)", marker]
    with pytest.raises(_Mine, match=kind):
        pm.run_tasks([slow, ["true"], ["sh", "-c", f"touch {tmp_path}/never", marker]],
                     output="capture", jobs=2, mem_per_task="1M", on_event=on_event)
    assert pids_with(marker) == []
    assert seen.count(kind) == 1 or kind == "start"  # (told no more once it raised)
    assert not (tmp_path / "never").exists()


def test_tasks_on_another_host_run_in_the_same_shell(pmrun: Run) -> None:
    # A host reached through a launcher (this machine under another name): its runner
    # starts the task with the shell chosen here.
    r = pmrun("--launcher", "exec", "--launcher-exec", "env {command}", "--iface", "127.0.0.1",
              "-hosts", "n1", "x=(1 2 3); echo ${x[1]} {} $0", ":::", "q",
              env={"SHELL": "/bin/bash", "PARALLEL_SHELL": ""})
    assert (r.returncode, r.stdout) == (0, "2 q /bin/bash\n"), r.stderr
