"""srun's --bcast (Open MPI's --preload-binary): the programs copied to the nodes, run there
and gone after (pm.common.bcast; over real ssh in test_ssh.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from pm.common.bcast import BcastError, dest_path, read_programs

Run = Callable[..., subprocess.CompletedProcess[str]]

#: Each rank says which file it runs, and whether only its owner may run it.
PROG = '#!/bin/sh\necho "$PMI_RANK $0 $(stat -c %a "$0")"\n'


@pytest.fixture
def prog(tmp_path: Path) -> Path:
    (tmp_path / "tmp").mkdir()
    path = tmp_path / "prog"
    path.write_text(PROG)
    path.chmod(0o755)
    return path


def rows(out: str) -> list[list[str]]:
    return sorted(line.split() for line in out.splitlines())


@pytest.mark.timeout(120)
def test_each_node_runs_its_copy_and_it_goes(pmrun: Run, prog: Path, tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    r = pmrun("--bcast", "--local-nodes", "2", "-n", "2", "./prog", env={"TMPDIR": str(tmp)})
    assert r.returncode == 0, r.stderr
    got = rows(r.stdout)
    assert [g[0] for g in got] == ["0", "1"] and all(g[2] == "700" for g in got), got
    # In the node's TMPDIR, named after the job and the node (nodes sharing it: one each).
    for node, (_, path, _) in enumerate(got):
        assert Path(path).parent == tmp and path.endswith(f"-{node}-prog"), got
    assert got[0][1] != got[1][1]
    assert not list(tmp.glob("pmrun-bcast-*"))  # gone with the job
    # Open MPI's spelling; a directory of one's own (relative: from pmrun's); one file.
    (tmp_path / "d").mkdir()
    r = pmrun("--preload-binary", "--bcast=d/", "-n", "1", "./prog")
    assert r.returncode == 0 and Path(rows(r.stdout)[0][1]).parent == tmp_path / "d", r
    r = pmrun("--bcast=d/copy", "--local-nodes", "2", "-n", "2", "./prog")
    assert r.returncode == 0 and {g[1] for g in rows(r.stdout)} == {
        str(tmp_path / "d" / "copy")}, r
    assert not any((tmp_path / "d").iterdir())


@pytest.mark.timeout(120)
def test_bad_bcast_input_is_one_line(pmrun: Run, prog: Path, tmp_path: Path) -> None:
    for args, line in (
            (["--bcast", "-n", "1", "./nope"], "pmrun: --bcast: ./nope: No such file or "
                                               "directory"),
            (["--bcast", "-n", "1", "no-such-program"], "pmrun: --bcast: no-such-program: "
                                                        "command not found"),
            (["--bcast", "-n", "1", "."], "pmrun: --bcast: .: command not found"),
            (["--bcast=one", "-n", "1", "./prog", ":", "-n", "1", "true"],
             "pmrun: --bcast=one names one file, and the job runs 2 programs: give a "
             "directory (ending in /)"),
            (["--bcast=", "-n", "1", "./prog"], "pmrun: --bcast= needs a path (or no =)"),
            (["--bcast", "echo", ":::", "a"], "pmrun: --bcast is for an MPI job's ranks, "
                                              "not for task ensembles")):
        r = pmrun(*args)
        assert (r.returncode, r.stderr.splitlines()) == (2, [line]), args
    # A node where the copy cannot be written: its ranks do not start, named.
    r = pmrun("--bcast=missing/", "--local-nodes", "2", "-n", "2", "./prog")
    assert r.returncode == 127, r.stderr
    assert f"--bcast: {tmp_path}/missing/pmrun-bcast-" in r.stderr.splitlines()[0], r.stderr


def test_programs_are_read_once_and_found_as_ranks_find_them(prog: Path, tmp_path: Path
                                                             ) -> None:
    here = str(tmp_path)
    files = read_programs([("./prog", "", here), ("prog", here, "/"), ("sh", os.defpath, here)],
                          "")
    assert [(f.apps, f.name) for f in files] == [([0, 1], "prog"), ([2], "sh")]
    assert files[0].data == PROG.encode()
    with pytest.raises(BcastError, match=r"^--bcast=x names one file, and the job runs 2 "):
        read_programs([("./prog", "", here), ("sh", os.defpath, here)], "x")
    assert read_programs([("./prog", "", here), ("prog", here, "/")], "x")  # (one file)
    assert dest_path("", "job", 3, "prog", "/w").endswith("/pmrun-bcast-job-3-prog")
    assert dest_path("d/", "job", 3, "prog", "/w") == "/w/d/pmrun-bcast-job-3-prog"
    assert dest_path("/x/y", "job", 3, "prog", "/w") == "/x/y"


#: Says where the library it loads lies (its mapping), and what the library returns.
LIB_PROG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int pmt_answer(void);
int main(void) {
    char line[4096];
    FILE *f = fopen("/proc/self/maps", "r");
    while (f && fgets(line, sizeof line, f))
        if (strstr(line, "libpmt")) {
            printf("%s %d %s", getenv("PMI_RANK"), pmt_answer(), strchr(line, '/'));
            return 0;
        }
    return 1;
}
"""


@pytest.mark.timeout(120)
def test_send_libs_sends_the_programs_own_libraries(pmrun: Run, tmp_path: Path) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("no gcc")
    lib = tmp_path / "lib"
    lib.mkdir()
    (tmp_path / "lib.c").write_text("int pmt_answer(void) { return 42; }\n")
    (tmp_path / "prog.c").write_text(LIB_PROG)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib / "libpmt.so.1"),
                    "-Wl,-soname,libpmt.so.1", str(tmp_path / "lib.c")], check=True, timeout=60)
    subprocess.run(["gcc", "-o", str(tmp_path / "prog"), str(tmp_path / "prog.c"), f"-L{lib}",
                    "-l:libpmt.so.1"], check=True, timeout=60)
    (tmp_path / "tmp").mkdir()
    env = {"LD_LIBRARY_PATH": str(lib), "TMPDIR": str(tmp_path / "tmp")}
    r = pmrun("--bcast", "--send-libs", "--local-nodes", "2", "-n", "2", "./prog", env=env)
    assert r.returncode == 0, r.stderr
    got = rows(r.stdout)
    assert [g[:2] for g in got] == [["0", "42"], ["1", "42"]], got
    for node, (_, _, path) in enumerate(got):  # each node's copy of the library, loaded
        folder = Path(path).parent
        assert folder.parent == tmp_path / "tmp" and folder.name.endswith(f"-{node}-prog.libs")
        assert Path(path).name == "libpmt.so.1"
    assert not list((tmp_path / "tmp").glob("pmrun-bcast-*"))  # gone with the job
    # Without it the original is loaded; a library not found here is named.
    r = pmrun("--bcast", "--send-libs=no", "-n", "1", "./prog", env=env)
    assert r.returncode == 0 and rows(r.stdout)[0][2] == str(lib / "libpmt.so.1"), r
    r = pmrun("--bcast", "--send-libs", "-n", "1", "./prog")
    assert (r.returncode, r.stderr) == (2, "pmrun: --send-libs: ./prog: libpmt.so.1 is not "
                                           "found here (not found)\n")
    for args, line in ((["--send-libs"], "pmrun: --send-libs sends the libraries of the "
                                         "programs --bcast copies: give --bcast too"),
                       (["--bcast", "--send-libs=maybe"], "pmrun: --send-libs takes =yes, "
                                                          "=no or nothing, not 'maybe'")):
        r = pmrun(*args, "-n", "1", "./prog")
        assert (r.returncode, r.stderr.splitlines()) == (2, [line]), args


@pytest.mark.timeout(120)
def test_pm_run_copies_too(prog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capfd: pytest.CaptureFixture[str]) -> None:
    import pm
    from pm.common.bcast import BcastError as Refused

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    assert pm.run(["./prog"], n=2, local_nodes=2, bcast="").returncode == 0
    got = rows(capfd.readouterr().out)
    assert [Path(g[1]).parent for g in got] == [tmp_path / "tmp"] * 2, got
    with pytest.raises(Refused, match=r"^--bcast: \./nope: No such file or directory$"):
        pm.run(["./nope"], n=1, bcast="")
