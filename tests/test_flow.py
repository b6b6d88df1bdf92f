"""Nothing lost, nothing stuck: stdin from a file or a pipe arrives whole, every output line
is kept across the quick path's hand-over, and a slow reader slows the ranks instead of
starving the tree of heartbeats."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from launch_util import pmrun_argv, pmrun_env, script

pytestmark = pytest.mark.timeout(120)

STDIN = """
    import hashlib, os, sys
    data = sys.stdin.buffer.read()
    print(os.environ["PMI_RANK"], len(data), hashlib.sha256(data).hexdigest(), flush=True)
"""

#: Well beyond the head's stdin window (1 MiB), so the window must reopen many times.
BIG = 24 << 20


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("stdin") / "big.bin"
    data = os.urandom(1 << 20) * (BIG >> 20)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("source", ["file", "pipe"])
@pytest.mark.parametrize("opts", [["-n", "2"], ["-n", "1", "--local-nodes", "2"],
                                  ["-n", "3", "--local-nodes", "3"]])
def test_stdin_arrives_whole_from_a_file_and_a_pipe(tmp_path: Path, big_file: tuple[Path, str],
                                                    source: str, opts: list[str]) -> None:
    path, digest = big_file
    prog = script(tmp_path, "stdin.py", STDIN)
    argv = " ".join(pmrun_argv(*opts, "python", str(prog)))
    # Through `| cat` as in the report: pmrun's stdout is a pipe too.
    feed = f"{argv} < {path}" if source == "file" else f"cat {path} | {argv}"
    for _ in range(3):  # it used to deliver anything from 0 to 100 %
        p = subprocess.run(["bash", "-c", f"{feed} | cat; exit ${{PIPESTATUS[0]}}"],
                           cwd=tmp_path, env=pmrun_env(), capture_output=True, text=True,
                           timeout=90)
        assert p.returncode == 0, p.stderr
        got = {int(line.split()[0]): line.split()[1:] for line in p.stdout.splitlines()}
        assert got[0] == [str(BIG), digest]


HANDOVER = """
    import os, socket, sys
    rank = os.environ["PMI_RANK"]
    print(f"before {rank}", flush=True)
    print(f"err before {rank}", file=sys.stderr, flush=True)
    # The first PMI request hands the job from pmrun's quick path to the agent.
    pmi = socket.socket(fileno=int(os.environ["PMI_FD"]))
    f = pmi.makefile("rwb")
    for cmd in (b"cmd=init pmi_version=1 pmi_subversion=1\\n", b"cmd=barrier_in\\n",
                b"cmd=finalize\\n"):
        f.write(cmd)
        f.flush()
        assert f.readline()
    print(f"after {rank}", flush=True)
"""


@pytest.mark.parametrize("quick", ["1", "0"])
def test_output_files_keep_every_line_across_the_hand_over(tmp_path: Path, quick: str) -> None:
    prog = script(tmp_path, "handover.py", HANDOVER)
    p = subprocess.run(pmrun_argv("-n", "3", "--output", str(tmp_path / "out.%r"),
                                  "--error", str(tmp_path / "err.log"), "python", str(prog)),
                       cwd=tmp_path, env=pmrun_env({"PM_QUICK": quick}),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "" and p.stderr == ""
    for rank in range(3):
        assert (tmp_path / f"out.{rank}").read_text() == f"before {rank}\nafter {rank}\n"
    assert sorted((tmp_path / "err.log").read_text().splitlines()) == [
        f"err before {r}" for r in range(3)]
