"""A rank that misbehaves on its PMI socket fails alone: the others are served meanwhile."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(90)

#: A rank's PMI-1 socket, and a request answered (as an MPI library asks: one at a time).
ASK = """
import os, socket, sys
s = socket.socket(fileno=int(os.environ["PMI_FD"]))
def ask(line):
    s.sendall(line)
    reply = b""
    while not reply.endswith(b"\\n"):
        reply += s.recv(4096)
    return reply
"""

#: Rank 1 sends 100,000 gets without reading a reply (its socket fills up the other way:
#: the same get, which pmrun's one-node loop answers from a cache of replies, and then
#: others), then exits; the others init, get and finalize as an MPI library would.
FLOOD = ASK + """
rank = os.environ["PMI_RANK"]
if rank == "1":
    ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
    kvs = ask(b"cmd=get_my_kvsname\\n").split(b"kvsname=")[1].strip()
    ask(b"cmd=get kvsname=%s key=nosuch\\n" % kvs)
    s.sendall(b"cmd=get kvsname=%s key=nosuch\\n" % kvs * 50_000)
    s.sendall(b"".join(b"cmd=get kvsname=x key=k%d\\n" % i for i in range(50_000)))
    sys.exit(0)
ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
ask(b"cmd=get_my_kvsname\\n")
ask(b"cmd=finalize\\n")
print("served", rank, flush=True)
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_a_rank_that_reads_no_reply_does_not_stop_the_others(pmrun: Run, tmp_path: Path,
                                                              opts: list[str]) -> None:
    (tmp_path / "flood.py").write_text(FLOOD)
    r = pmrun(*opts, "-n", "4", sys.executable, "flood.py", timeout=60)
    assert sorted(r.stdout.splitlines()) == ["served 0", "served 2", "served 3"], r.stderr
    assert r.returncode == 1, r.stderr
    assert "rank 1 (node " in r.stderr and "exited without calling PMI finalize" in r.stderr


#: Rank 1 finalizes without the barrier the others wait in, and then asks for a barrier
#: after its finalize (refused: the others may be gone); the others wait in the barrier.
SKIPS = ASK + """
ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
if os.environ["PMI_RANK"] == "1":
    ask(b"cmd=finalize\\n")
    print(ask(b"cmd=barrier_in\\n").decode().strip(), flush=True)
    sys.exit(0)
ask(b"cmd=barrier_in\\n")
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"], ["--env", "PM_QUICK=0"]],
                         ids=["1node", "2nodes", "1node-agent"])
def test_a_rank_that_finalizes_instead_of_joining_a_barrier_is_named(
        pmrun: Run, tmp_path: Path, opts: list[str]) -> None:
    (tmp_path / "skips.py").write_text(SKIPS)
    env = {"PM_QUICK": "0"} if "PM_QUICK=0" in opts else None
    args = [o for o in opts if o not in ("--env", "PM_QUICK=0")]
    r = pmrun(*args, "-n", "4", sys.executable, "skips.py", env=env, timeout=60)
    assert r.stdout == "cmd=barrier_out rc=1 msg=barrier_after_finalize\n", r.stderr
    assert r.returncode == 1, r.stderr
    assert "pmrun: rank 1: bad PMI request: barrier after finalize" in r.stderr.splitlines()
    assert re.search(r"pmrun: rank 1 \(node 0, \S+\) finalized and exited with code 0 without "
                     r"joining the ranks' PMI fence 1, in which rank \d waits: it can never "
                     r"complete", r.stderr), r.stderr



#: Rank 1 finalizes and exits (its pid in a file) before the others enter a barrier: they
#: wait until it has ended.
LEAVES = ASK + """
import time
ask(b"cmd=init pmi_version=1 pmi_subversion=1\\n")
if os.environ["PMI_RANK"] == "1":
    ask(b"cmd=finalize\\n")
    with open("pid.tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename("pid.tmp", "pid")
    sys.exit(0)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    try:
        pid = open("pid").read()
    except OSError:
        continue
    try:
        with open("/proc/%s/stat" % pid) as f:
            if f.read().rpartition(")")[2].split()[0] == "Z":
                break  # a zombie: ended, not reaped yet
    except OSError:
        break  # reaped
ask(b"cmd=barrier_in\\n")
"""


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_a_rank_that_finalized_and_left_before_a_barrier_is_named(
        pmrun: Run, tmp_path: Path, opts: list[str]) -> None:
    (tmp_path / "leaves.py").write_text(LEAVES)
    r = pmrun(*opts, "-n", "4", sys.executable, "leaves.py", timeout=60)
    assert r.returncode == 1, r.stderr
    assert re.search(r"pmrun: rank 1 \(node 0, \S+\) finalized and exited with code 0 without "
                     r"joining the ranks' PMI fence 1, in which rank \d waits: it can never "
                     r"complete", r.stderr), r.stderr
