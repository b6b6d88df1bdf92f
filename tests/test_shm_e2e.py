"""Shared-memory KVS end to end: Python ranks under pmrun on virtual nodes.

Ranks read each other's values from their node's segment without a request
on the socket; ``--kvs socket`` and a segment that cannot grow fall back to
the socket; and no segment outlives its job, however the job ends: normal
exit, a failing rank, Ctrl-C, or an agent killed with SIGKILL (then the next
agent on the node, or ``pm-agent --cleanup``, removes what it left).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from client_util import results, run_ranks, write_program
from launch_util import cmdline, pmrun_env, read_lines, wait_until

pytestmark = pytest.mark.timeout(120)

SHM = Path("/dev/shm")

#: Rank program: allgather, put + fence, get every rank's value; reports what
#: went over the socket (the requests the client wrote) and what it saw in /dev/shm.
EXCHANGE = r'''
import stat
from pm.client.sync import connect
from pm.proto import native

with connect() as pmi:
    r, n = pmi.rank, pmi.size
    s = pmi._session
    replies = []
    decode = s.gathered

    def recording(reply):
        replies.append(reply)
        return decode(reply)

    s.gathered = recording
    gathered = [v.decode() for v in pmi.allgather(f"addr-{r}")]
    pmi.put("card", f"card-{r}-" + "x" * (r * 100))
    pmi.fence()
    sent = []
    write = pmi._write
    pmi._write = lambda data: (sent.append(data), write(data))[1]
    cards = [pmi.get("card", rank=i).decode() for i in range(n)]
    requests = len(sent)
    name = pmi.info.get("shm")
    modes = {}
    if name:
        for f in os.listdir("/dev/shm"):
            if f == name or f.startswith(name + "."):
                modes[f] = oct(stat.S_IMODE(os.stat("/dev/shm/" + f).st_mode))
    report(rank=r, node=pmi.info["node"], shm=name, gathered=gathered, cards=cards,
           get_requests=requests, via_shm=bool(replies) and replies[0][0] == native.SHM_REPLY,
           modes=modes)
'''


def leftovers(job_prefix: str) -> list[str]:
    """Segments in /dev/shm of the job whose header names start with ``job_prefix``."""
    return sorted(f for f in os.listdir(SHM) if f.startswith(job_prefix))


def job_of(shm_name: str) -> str:
    """``pmrun.<job>.`` from a header name ``pmrun.<job>.<node>``."""
    return shm_name.rsplit(".", 1)[0] + "."


def test_8_ranks_on_2_nodes_exchange_through_shm(pmrun: Any, tmp_path: Path) -> None:
    n = 8
    got, proc = run_ranks(pmrun, tmp_path, "exchange.py", EXCHANGE, n,
                          "--local-nodes", "2", "-v")
    names = {res["node"]: res["shm"] for res in got.values()}
    assert sorted(names) == [0, 1] and len(set(names.values())) == 2, names
    for r, res in got.items():
        assert res["shm"] == names[res["node"]]
        assert res["gathered"] == [f"addr-{i}" for i in range(n)]
        assert res["via_shm"] is True, "the allgather result should come from shared memory"
        assert res["cards"] == [f"card-{i}-" + "x" * (i * 100) for i in range(n)]
        assert res["get_requests"] == 0, "gets after a fence must not touch the socket"
        assert res["modes"], f"rank {r} saw no segment of its node"
        assert set(res["modes"].values()) == {"0o600"}, res["modes"]
    # One job: both nodes' segments share the job prefix, and all of it is gone.
    prefix = job_of(names[0])
    assert job_of(names[1]) == prefix
    assert leftovers(prefix) == []
    # One copy per node: both nodes hold the same exchanged data in shared memory.
    per_node = re.findall(r"node (\d): (\d+) in the agent \+ (\d+) in shared memory",
                          proc.stderr)
    assert [n for n, _, _ in per_node] == ["0", "1"], proc.stderr
    assert per_node[0][2] == per_node[1][2] and int(per_node[0][2]) > 0, proc.stderr


def test_socket_kvs_serves_everything_over_the_socket(pmrun: Any, tmp_path: Path) -> None:
    n = 4
    got, _ = run_ranks(pmrun, tmp_path, "exchange.py", EXCHANGE, n,
                       "--local-nodes", "2", "--kvs", "socket")
    for res in got.values():
        assert res["shm"] is None and res["via_shm"] is False
        assert res["gathered"] == [f"addr-{i}" for i in range(n)]
        assert res["cards"] == [f"card-{i}-" + "x" * (i * 100) for i in range(n)]
        assert res["get_requests"] == n


BIG = r'''
from pm.client.sync import connect

with connect() as pmi:
    r, n = pmi.rank, pmi.size
    vals = pmi.allgather(bytes([r]) * (1 << 20))
    report(rank=r, ok=[v == bytes([i]) * (1 << 20) for i, v in enumerate(vals)],
           shm=pmi.info.get("shm"))
'''


def test_segment_limit_is_named_and_the_socket_takes_over(pmrun: Any, tmp_path: Path) -> None:
    n = 4
    prog = write_program(tmp_path, "big.py", BIG)
    proc = pmrun("-n", str(n), "python", str(prog), env={"PM_SHM_MAX_BYTES": "2M"})
    assert proc.returncode == 0, proc.stderr
    got = results(proc.stdout)
    assert sorted(got) == list(range(n))
    assert all(res["ok"] == [True] * n for res in got.values())
    assert got[0]["shm"], "the segment should open (it starts smaller than the limit)"
    assert "max_bytes=2097152" in proc.stderr and "PM_SHM_MAX_BYTES" in proc.stderr, proc.stderr
    assert leftovers(job_of(got[0]["shm"])) == []


#: A key put again after a fence: its own rank reads the new value at once (the fence's
#: copy in shared memory is the old one), every rank reads it after the next fence, also
#: once the segment could not take the change (full: the agent serves the ranks' keys).
PUT_AGAIN = r'''
import sys
from pm.client.sync import connect

with connect() as pmi:
    other = (pmi.rank + 1) % pmi.size
    pmi.put("k", b"v1")
    pmi.fence()
    first = [pmi.get("k", rank=other), pmi.get("k")]
    pmi.put("k", b"v2")
    own = pmi.get("k")
    pmi.put("big", b"x" * int(sys.argv[1]))
    pmi.fence()
    gathered = pmi.allgather(b"g%d" % pmi.rank)
    pmi.put("k", b"v3")
    pmi.fence()
    report(rank=pmi.rank, first=[v.decode() for v in first], own=own.decode(),
           later=pmi.get("k", rank=other).decode(), gathered=[v.decode() for v in gathered],
           retired=pmi._session.shm is not None and pmi._session.shm.retired)
'''


@pytest.mark.parametrize("big", [0, 1_000_000], ids=["room", "full"])
def test_a_key_put_again_is_read_new(pmrun: Any, tmp_path: Path, big: int) -> None:
    prog = write_program(tmp_path, "again.py", PUT_AGAIN)
    proc = pmrun("-n", "2", "python", str(prog), str(big), env={"PM_SHM_MAX_BYTES": "4M"})
    assert proc.returncode == 0, proc.stderr
    got = results(proc.stdout)
    for rank in (0, 1):
        assert got[rank] == {"rank": rank, "first": ["v1", "v1"], "own": "v2", "later": "v3",
                             "gathered": ["g0", "g1"], "retired": big > 0}, got
    assert ("shared-memory KVS full" in proc.stderr) == (big > 0), proc.stderr


#: Ranks that say where their segment is and who their agent is, then wait.
WAITER = r'''
from pm.client.sync import connect

with connect() as pmi:
    pmi.allgather(b"x")  # the segment now holds data
    report(rank=pmi.rank, shm=pmi.info.get("shm"), agent=os.getppid())
    if pmi.rank == pmi.size - 1 and os.environ.get("FAIL_LAST"):
        sys.exit(3)
    pmi.fence()
    # After a completed fence a get of a key nobody puts waits: the job stays up.
    pmi.get("never", rank=(pmi.rank + 1) % pmi.size)
'''


def _start_waiters(pmrun_popen: Any, tmp_path: Path, n: int, *opts: str,
                   env: dict[str, str] | None = None
                   ) -> tuple[subprocess.Popen[bytes], dict[int, dict[str, Any]]]:
    prog = write_program(tmp_path, "waiter.py", WAITER)
    p = pmrun_popen("-n", str(n), *opts, "python", str(prog), env=env)
    assert p.stdout is not None
    got = results(b"".join(read_lines(p.stdout, n, 60)).decode())
    assert sorted(got) == list(range(n))
    return p, got


def test_segments_gone_after_a_rank_fails(pmrun: Any, tmp_path: Path) -> None:
    prog = write_program(tmp_path, "waiter.py", WAITER)
    proc = pmrun("-n", "4", "--local-nodes", "2", "python", str(prog),
                 env={"FAIL_LAST": "1"})
    assert proc.returncode == 3, proc.stderr
    got = results(proc.stdout)
    assert len({res["shm"] for res in got.values()}) == 2
    assert leftovers(job_of(got[0]["shm"])) == []


def test_segments_gone_after_ctrl_c(pmrun_popen: Any, tmp_path: Path) -> None:
    p, got = _start_waiters(pmrun_popen, tmp_path, 4, "--local-nodes", "2")
    prefix = job_of(got[0]["shm"])
    assert len(leftovers(prefix)) == 4  # two headers, two generations
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=30)
    assert p.returncode != 0
    assert leftovers(prefix) == []


@pytest.mark.parametrize("cleaner", ["pm-agent --cleanup", "next job"])
def test_agent_killed_then_cleanup(pmrun: Any, pmrun_popen: Any, tmp_path: Path,
                                   cleaner: str) -> None:
    p, got = _start_waiters(pmrun_popen, tmp_path, 4, "--local-nodes", "2")
    last = got[3]
    prefix = job_of(last["shm"])
    node1 = [f for f in leftovers(prefix) if f.startswith(last["shm"])]
    assert len(node1) == 2
    os.kill(last["agent"], signal.SIGKILL)
    p.communicate(timeout=30)
    assert p.returncode != 0
    # Its locks go only when the kernel has closed its files: wait for that.
    wait_until(lambda: cmdline(last["agent"]) is None, 10, "the killed agent to be gone")
    # A dead owner's segments are stale now (the rest of the job cleaned up its own).
    stale = leftovers(prefix)
    assert set(stale) <= set(node1)
    if cleaner == "pm-agent --cleanup":
        out = subprocess.run([sys.executable, "-m", "pm.agent.main", "--cleanup"],
                             capture_output=True, text=True, timeout=30, env=pmrun_env(),
                             check=True).stdout
        for f in stale:
            assert f"removed /dev/shm/{f}" in out, out
    else:
        run_ranks(pmrun, tmp_path, "exchange.py", EXCHANGE, 1)
    wait_until(lambda: leftovers(prefix) == [], 10, f"no segment left of {prefix}")


#: Rank 2 puts without a fence; rank 0 fetches it from rank 2's node; then rank 1,
#: on rank 0's node, finds it in its node's shared memory: no request at all.
FETCHED = r'''
from pm.client.sync import connect

with connect() as pmi:
    r = pmi.rank
    s = pmi._session
    out = dict(rank=r)
    if r == 2:
        pmi.put("early", b"from rank 2")
    if r == 0:
        out["got"] = pmi.get("early", rank=2).decode()
    pmi.barrier()
    if r == 1:
        before = s._next
        out["got"] = pmi.get("early", rank=2).decode()
        out["requests"] = s._next - before
    report(**out)
'''


def test_a_value_fetched_from_another_node_is_kept_on_the_asking_node(
        pmrun: Any, tmp_path: Path) -> None:
    got, _ = run_ranks(pmrun, tmp_path, "fetched.py", FETCHED, 4, "--local-nodes", "2")
    assert got[0]["got"] == got[1]["got"] == "from rank 2"
    assert got[1]["requests"] == 0
