"""GNU parallel's command line as parallel runs it: ``pmrun CMD ::: ARGS`` is one command
template (several lines, a ``[`` first), and what becomes of it is parallel's (the expected
outputs below are what GNU parallel 20221122 prints for the same command lines)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from pm.ensemble.scheduler import parse_command, parse_tasks

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
