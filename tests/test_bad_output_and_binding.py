"""Bad output files and bindings: one line, the right exit status, and nothing left behind.

* A binding naming CPUs this machine lacks (``--bind-to user:``, ``--cpu-list``,
  ``--cpu-bind map_cpu:``, a rankfile's ``slot=``) on a job whose one node is this
  machine is a bad option value: refused before anything starts (exit 2), on both of
  pmrun's paths, and no copy of the topology (``pm-topo-*``) is left in the temporary
  directory.  On a job of several nodes it is the node's refusal (exit 255), again
  leaving no copy.
* ``--output``/``--error``/``--joblog`` naming one file that takes no bytes (a file of
  /proc, a full device) or a directory are refused up front (exit 2); a file of one rank's
  (a pattern with ``%r``) that cannot be opened or written is named when it happens, in
  the same words, and the job goes on.
* pmrun's own stdout that cannot be written (EIO, ENOSPC) is said in one line: no
  traceback, no hang.

Each run gets a temporary directory of its own (``TMPDIR``): what it leaves there is its
own, whatever other pmrun runs do in /tmp meanwhile.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pm.agent.topology import discover, format_cpuset

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(120)

PATHS = pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])

_TOPO = discover()
#: A CPU number this machine does not have, and the usable ones, as pmrun says them.
MISSING = max(99, max(_TOPO.pus) + 1)
USABLE = format_cpuset(frozenset(_TOPO.pus))
NOT_USABLE = f"cpu {MISSING} is not usable on this node (usable: {USABLE})"


def run_in(pmrun: Run, tmp_path: Path, *args: str, quick: str = "1",
           timeout: float = 60.0) -> tuple[subprocess.CompletedProcess[str], Path]:
    """pmrun with a temporary directory of its own: the result, and that directory."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    r = pmrun(*args, env={"PM_QUICK": quick, "TMPDIR": str(tmp)}, timeout=timeout)
    return r, tmp


def topo_copies(tmp: Path) -> list[str]:
    """The job copies of the topology in ``tmp`` (pm.agent.topo_share's names)."""
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("pm-topo-"))


# ------------------------------------------------------------------ bindings


@PATHS
@pytest.mark.parametrize(("option", "value"), [
    ("--bind-to", f"user:{MISSING}"),
    ("--cpu-list", f"{MISSING}"),
    ("--cpu-bind", f"map_cpu:{MISSING}"),
])
def test_a_binding_naming_cpus_this_machine_lacks_is_refused_up_front(
        pmrun: Run, tmp_path: Path, quick: str, option: str, value: str) -> None:
    r, tmp = run_in(pmrun, tmp_path, option, value, "-n", "2", "true", quick=quick)
    said = f"{option}={value}" if option == "--cpu-bind" else f"{option} {value}"
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: {said}: {NOT_USABLE}\n")
    assert topo_copies(tmp) == []


@PATHS
def test_every_missing_cpu_is_named_at_once(pmrun: Run, tmp_path: Path, quick: str) -> None:
    """--cpu-list 0-(N+1) on a machine of CPUs 0-N: both missing ones in one line."""
    top = max(_TOPO.pus)
    if frozenset(_TOPO.pus) != frozenset(range(top + 1)):
        pytest.skip(f"this machine's usable cpus are not a range from 0 ({USABLE})")
    r, tmp = run_in(pmrun, tmp_path, "--cpu-list", f"0-{top + 2}", "-n", "1", "true",
                    quick=quick)
    assert (r.returncode, r.stderr) == (
        2, f"pmrun: --cpu-list 0-{top + 2}: cpus {top + 1}-{top + 2} are not usable on this "
           f"node (usable: {USABLE})\n")
    assert topo_copies(tmp) == []


@PATHS
def test_a_rankfile_slot_this_machine_lacks_is_refused_up_front(
        pmrun: Run, tmp_path: Path, quick: str) -> None:
    (tmp_path / "ranks").write_text(f"rank 0=+n0 slot={MISSING}\nrank 1=+n0 slot=0\n")
    r, tmp = run_in(pmrun, tmp_path, "-rf", "ranks", "-n", "2", "true", quick=quick)
    host = os.uname().nodename
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"pmrun: rankfile: rank 0 on node 0 ({host}): slot={MISSING}: core {MISSING} "
               f"does not exist on this node (it has {len(_TOPO.cores)})\n")
    assert topo_copies(tmp) == []


def test_a_binding_is_still_applied_and_its_copy_removed(pmrun: Run, tmp_path: Path) -> None:
    """The refusal's order (bind, then copy the topology) keeps a good binding working."""
    cpu = min(_TOPO.pus)
    for quick in ("1", "0"):
        r, tmp = run_in(pmrun, tmp_path, "--bind-to", f"user:{cpu}", "-n", "1", "sh", "-c",
                        "grep Cpus_allowed_list /proc/self/status | cut -f2; "
                        "test -f \"$HWLOC_XMLFILE\" && echo copy", quick=quick)
        assert (r.returncode, r.stdout, r.stderr) == (0, f"{cpu}\ncopy\n", ""), quick
        assert topo_copies(tmp) == [], quick


def test_on_a_job_of_several_nodes_it_is_the_nodes_refusal(pmrun: Run, tmp_path: Path
                                                            ) -> None:
    """Other nodes' agents have started by the time node 0 binds: the node is lost (255),
    and its copy of the topology is not made."""
    r, tmp = run_in(pmrun, tmp_path, "--local-nodes", "2", "--bind-to", f"user:{MISSING}",
                    "-n", "2", "true", quick="0")
    assert r.returncode == 255, r.stderr
    # (node 1's agent says nothing of leaving: pmrun went before the job started)
    assert r.stderr == f"pmrun: --bind-to user:{MISSING}: {NOT_USABLE}\n"
    assert topo_copies(tmp) == []


@pytest.mark.parametrize("nodes", ["1", "2"])
@pytest.mark.parametrize("given", [["--cpu-list", f"0,{MISSING}"],
                                   [f"--cpu-bind=map_cpu:{MISSING}"],
                                   [f"--cpu-bind=mask_cpu:{1 << MISSING:#x}"]],
                         ids=["cpu-list", "map_cpu", "mask_cpu"])
def test_the_refusal_names_the_option_as_given(pmrun: Run, tmp_path: Path, given: list[str],
                                               nodes: str) -> None:
    r, _ = run_in(pmrun, tmp_path, "--local-nodes", nodes, *given, "-n", "2", "true")
    assert r.returncode == (2 if nodes == "1" else 255), r.stderr
    assert r.stderr == f"pmrun: {' '.join(given)}: {NOT_USABLE}\n"


# ------------------------------------------------------------------ output files


@PATHS
@pytest.mark.parametrize("option", ["--output", "--error"])
def test_an_output_file_that_takes_no_bytes_is_refused(pmrun: Run, tmp_path: Path,
                                                        quick: str, option: str) -> None:
    r, _ = run_in(pmrun, tmp_path, option, "/proc/version", "-n", "2", "echo", "hi",
                  quick=quick)
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"pmrun: {option} /proc/version: cannot be written: Input/output error\n")


@PATHS
@pytest.mark.parametrize("name", ["folder", "folder/", "folder%%"])
def test_an_output_file_that_is_a_directory_is_refused(pmrun: Run, tmp_path: Path,
                                                       quick: str, name: str) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder%").mkdir()
    path = str(tmp_path / name)
    r, _ = run_in(pmrun, tmp_path, "--output", path, "-n", "2", "echo", "hi", quick=quick)
    assert (r.returncode, r.stdout, r.stderr) == (2, "", f"pmrun: --output {path}: is a "
                                                         "directory\n")


@PATHS
def test_a_ranks_own_file_is_named_when_it_cannot_be_opened_or_written(
        pmrun: Run, tmp_path: Path, quick: str) -> None:
    """Names that differ between ranks are not refused up front (their folders may be made
    as needed): the rank whose file cannot be opened or written is named, the others'
    output goes on, and so does the job; its status is 1, not success: output was lost."""
    (tmp_path / "out.0").mkdir()  # rank 0's file is a folder
    (tmp_path / "err.1").symlink_to("/dev/full")  # rank 1's takes no byte
    r, _ = run_in(pmrun, tmp_path, "--output", "out.%r", "--error", "err.%r", "-n", "2",
                  "sh", "-c", "echo out; echo err >&2", quick=quick)
    assert r.returncode == 1, r.stderr
    assert sorted(r.stderr.splitlines()) == [
        "pmrun: rank 0's output is lost: cannot open out.0: Is a directory",
        "pmrun: rank 1's error output is lost: cannot write err.1: No space left on device"]
    assert (tmp_path / "out.1").read_text() == "out\n"
    assert (tmp_path / "err.0").read_text() == "err\n"
    # A rank that failed first: the job's status is its own.
    r, _ = run_in(pmrun, tmp_path, "--output", "out.%r", "-n", "2", "sh", "-c",
                  "echo out; exit 3", quick=quick)
    assert r.returncode == 3, r.stderr
    # Folders of each rank's, made as needed: still fine.
    r, _ = run_in(pmrun, tmp_path, "--output", "per/%r/out", "-n", "2", "echo", "hi",
                  quick=quick)
    assert (r.returncode, r.stderr) == (0, "")
    assert [(tmp_path / f"per/{i}/out").read_text() for i in (0, 1)] == ["hi\n", "hi\n"]


@PATHS
def test_pmruns_stdout_that_cannot_be_written_is_said_in_one_line(tmp_path: Path,
                                                                 quick: str) -> None:
    """Not a traceback of the writing thread, nor a run that never ends."""
    from launch_util import pmrun_argv, pmrun_env

    with open("/dev/full", "wb") as full:
        r = subprocess.run(pmrun_argv("-n", "1", "echo", "hi"), stdout=full,
                           stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                           timeout=60, env=pmrun_env({"PM_QUICK": quick}), cwd=tmp_path)
    lines = r.stderr.splitlines()
    assert lines[0] == ("pmrun: cannot write to stdout: No space left on device: what goes "
                        "there from now on is lost"), r.stderr
    # The rank may have ended before its output was found unwritable, or be ended by the
    # SIGPIPE its lost stdout gets (as with a reader gone): the job's status is 1 either way,
    # that one line its cause.
    assert (r.returncode, lines[1:]) == (1, []), r.stderr


# ------------------------------------------------------------------ --joblog


@pytest.mark.parametrize(("path", "why"), [("/proc/version", "Input/output error"),
                                           ("/dev/full", "No space left on device")])
def test_a_joblog_that_takes_no_bytes_is_refused_before_any_task(
        pmrun: Run, tmp_path: Path, path: str, why: str) -> None:
    r = pmrun("--joblog", path, "echo", "{}", ":::", "a", "b")
    assert (r.returncode, r.stdout, r.stderr) == (
        2, "", f"pmrun: --joblog {path}: cannot be written: {why}\n")
