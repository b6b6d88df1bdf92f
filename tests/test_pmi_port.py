"""Hydra's -pmi-port: ranks reach their node's agent at PMI_PORT as PMI_ID, not through an
inherited PMI_FD (a program started through a wrapper that closes inherited descriptors)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from launch_util import mpi_missing

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(120)

#: An MPI program run by a wrapper whose subprocess closes every inherited descriptor (as
#: Python's subprocess does by default): PMI_FD is gone by the time MPI_Init reads it.
WRAPPED = """
import subprocess, sys
prog = "from mpi4py import MPI; c = MPI.COMM_WORLD; print(c.rank, c.size, c.allreduce(c.rank))"
sys.exit(subprocess.run([sys.executable, "-c", prog]).returncode)
"""

REPO = Path(__file__).resolve().parent.parent
IMPI = REPO / ".ci" / "impi" / "bin" / "python"


@pytest.mark.skipif(mpi_missing() is not None, reason=str(mpi_missing()))
@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_a_wrapped_mpi_program_finds_its_agent_at_the_port(pmrun: Run, tmp_path: Path,
                                                             opts: list[str]) -> None:
    (tmp_path / "wrap.py").write_text(WRAPPED)
    r = pmrun("-pmi-port", *opts, "-n", "4", sys.executable, "wrap.py")
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"{i} 4 6" for i in range(4)]
    # Without it the wrapped program has lost its socket: MPI_Init fails.
    r = pmrun(*opts, "-n", "2", sys.executable, "wrap.py")
    assert r.returncode != 0 and "PMI_Init" in r.stderr


def test_the_ranks_are_told_the_port_not_an_fd(pmrun: Run) -> None:
    r = pmrun("-pmi-port", "--local-nodes", "2", "-n", "2", "sh", "-c",
              'echo "$PMI_RANK ${PMI_FD-none} $PMI_ID ${PMI_PORT%:*}"')
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 none 0 127.0.0.1", "1 none 1 127.0.0.1"]


@pytest.mark.skipif(not os.access(IMPI, os.X_OK), reason="Intel MPI not installed (.ci/impi)")
def test_intel_mpi_at_the_port(pmrun: Run, tmp_path: Path) -> None:
    (tmp_path / "wrap.py").write_text(WRAPPED)
    r = pmrun("-pmi-port", "-n", "3", str(IMPI), "wrap.py", timeout=100)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"{i} 3 3" for i in range(3)]


#: Rank 1 knocks at the port the wrong ways (before and after it connects as itself); every
#: rank then takes part in an allgather through pmrun's own client.
KNOCKS = """
import os, socket, sys
from pm.client.sync import connect

def knock(hello):
    host, port = os.environ["PMI_PORT"].split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(hello)
        s.settimeout(30)
        try:
            assert s.recv(100) == b"", hello  # closed, unanswered
        except ConnectionResetError:  # (closed with the hello unread)
            pass

mine = os.environ["PMI_RANK"] == "1"
if mine:
    knock(b"hello there\\n")
    knock(b"cmd=initack pmiid=99\\n")
with connect() as pmi:
    if mine:
        knock(b"cmd=initack pmiid=1\\n")
    print(pmi.rank, pmi.allgather(str(pmi.rank).encode()), flush=True)
"""


def test_wrong_knocks_are_named_and_the_ranks_still_connect(pmrun: Run, tmp_path: Path
                                                             ) -> None:
    (tmp_path / "knock.py").write_text(KNOCKS)
    r = pmrun("-pmi-port", "-n", "2", sys.executable, "knock.py")
    assert sorted(r.stdout.splitlines()) == [f"{i} [b'0', b'1']" for i in range(2)], r.stderr
    assert r.returncode == 0, r.stderr
    wrong = "pmrun: -pmi-port: a connection {}: closed".format
    assert r.stderr.splitlines() == [
        wrong("did not start with cmd=initack pmiid=RANK ('hello there'): the port serves "
              "PMI-1 clients given PMI_ID"),
        wrong("named rank 99, which is not one of this node's ranks waiting for its "
              "connection"),
        wrong("named rank 1, which is not one of this node's ranks waiting for its "
              "connection")]


#: A connection as rank 0 from another user (argv: host, port): exits 0 once it is closed.
OTHER = ("import socket, sys\n"
         "s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n"
         "s.sendall(b'cmd=initack pmiid=0\\n')\n"
         "s.settimeout(30)\n"
         "try:\n    data = s.recv(9)\nexcept ConnectionResetError:\n    data = b''\n"
         "sys.exit(data != b'')\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_users_connection_is_closed(pmrun: Run, tmp_path: Path) -> None:
    prog = ("import os, subprocess, sys\n"
            "h, p = os.environ['PMI_PORT'].split(':')\n"
            "sys.exit(subprocess.run(['setpriv', '--reuid=65534', '--regid=65534', "
            f"'--clear-groups', '/usr/bin/python3', '-S', '-c', {OTHER!r}, h, p]).returncode)\n"
            "")
    (tmp_path / "other.py").write_text(prog)
    r = pmrun("-pmi-port", "-n", "1", sys.executable, "other.py")
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "pmrun: -pmi-port: a connection from a process of another user: closed"]
