"""A long wait for nodes says what it waits for, every 5 s, until ``--join-timeout``.

The hosts are this machine, reached through an ``--launcher-exec`` template
that never starts the agent of the hosts it is told to stall (a node that does
not come up); the others start at once.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

Run = Callable[..., subprocess.CompletedProcess[str]]

pytestmark = pytest.mark.timeout(40)


def _stalling(tmp_path: Path, stalled: list[str]) -> list[str]:
    script = tmp_path / "stall.sh"
    cases = "|".join(stalled)
    script.write_text(f'#!/bin/sh\nhost=$1; shift\ncase "$host" in {cases}) exec sleep 300;; esac\n'
                      'exec "$@"\n')
    script.chmod(0o755)
    return ["--launcher", "exec", "--launcher-exec", f"{script} {{host}} {{command}}",
            "--iface", "127.0.0.1"]


def test_the_head_names_its_missing_node_every_5_s(pmrun: Run, tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = pmrun(*_stalling(tmp_path, ["n1"]), "-hosts", "n1,n2", "--join-timeout", "7",
              "-n", "2", "true")
    assert r.returncode == 255, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "not joined" in ln]
    assert lines == ["pmrun: 1 node has not joined after 5 s (--join-timeout 7 s): node 0 (n1)"]
    assert "pmrun: node 0 (n1) lost: did not join the tree within 7 s" in r.stderr
    assert time.monotonic() - t0 < 20


def test_a_line_names_the_first_few_of_many_missing_nodes(pmrun: Run, tmp_path: Path) -> None:
    hosts = [f"n{i}" for i in range(1, 8)]
    r = pmrun(*_stalling(tmp_path, hosts[1:]), "-hosts", ",".join(hosts), "--fanout", "6",
              "--join-timeout", "6", "-n", "7", "true")
    assert r.returncode == 255, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "not joined" in ln]
    assert len(lines) == 1, r.stderr
    # Node 0's agent waits for its six children; it speaks on pmrun's stderr, as pmrun.
    assert re.fullmatch(r"pmrun: 6 nodes have not joined after 5 s "
                        r"\(--join-timeout 6 s\): node 1 \(n2\), "
                        r"node 2 \(n3\), node 3 \(n4\), node 4 \(n5\) and 2 more",
                        lines[0]), lines
    assert "lost: did not join the tree within 6 s" in r.stderr


def test_a_subtree_done_early_waits_for_the_others_quietly(pmrun: Run, tmp_path: Path) -> None:
    # Node 1's rank ends at once, node 2's after 7 s (more than the 5 s heartbeat): node 1's
    # agent stays until the job is over and must keep hearing from its parent meanwhile.
    r = pmrun(*_stalling(tmp_path, ["none"]), "-hosts", "n1,n2,n3", "--fanout", "2", "-n", "3",
              "sh", "-c", '[ "$PMI_RANK" = 2 ] && sleep 7; echo done $PMI_RANK', timeout=30)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["done 0", "done 1", "done 2"]
    # Nothing to say: no lost parent, and no loopback warning under --iface 127.0.0.1.
    assert r.stderr == ""


def test_a_launch_command_that_fails_is_named_once(pmrun: Run, tmp_path: Path) -> None:
    script = tmp_path / "fail.sh"
    script.write_text("#!/bin/sh\necho 'no such container' >&2\nexit 3\n")
    script.chmod(0o755)
    r = pmrun("--launcher", "exec", "--launcher-exec", f"{script} {{host}} {{command}}",
              "--iface", "127.0.0.1", "-hosts", "n1", "-n", "1", "true")
    assert r.returncode == 255, r.stderr
    # The command's words once, in the reason for the node's loss; not also as they came.
    assert r.stderr.splitlines() == [
        "pmrun: node 0 (n1) lost: agent exited with code 3 before joining the tree: "
        "no such container"], r.stderr


def test_a_host_that_does_not_resolve_is_named_in_the_loopback_warning(pmrun: Run) -> None:
    r = pmrun("--launcher", "ssh", "-hosts", "nosuchhost.invalid", "-n", "1", "true")
    assert r.returncode == 255, r.stderr
    assert r.stderr.splitlines()[0] == (
        "pmrun: nosuchhost.invalid does not resolve here: listening for agents on loopback: "
        "agents on other hosts cannot reach it (give -localhost ADDRESS: this machine's "
        "address they reach)"), r.stderr
    assert "pmrun: node 0 (nosuchhost.invalid) lost: agent exited with code 255 before " \
           "joining the tree: ssh: Could not resolve hostname" in r.stderr
