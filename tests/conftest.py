"""Shared fixtures for the whole test suite.

Launching jobs (helpers in ``tests/launch_util.py``, importable as ``launch_util``):

``pmrun``
    ``pmrun("-n", "4", "python", "-c", "...", input=b"...", timeout=60, env={...})``
    runs ``[sys.executable, "-m", "pm", *args]`` (what the ``pmrun`` script runs) in
    the test's ``tmp_path`` with ``PYTHONPATH`` at the checkout and the interpreter's
    ``bin`` first on ``PATH``, and returns a ``subprocess.CompletedProcess[str]`` (``returncode``,
    ``stdout``, ``stderr``; ``input`` may be bytes or str).  A job that outlives
    ``timeout`` fails the test.
``pmrun_popen``
    Same arguments, but returns the running ``subprocess.Popen`` (binary pipes
    for stdout/stderr, stdin from /dev/null unless ``stdin=`` is given) for
    signal tests; anything still running at teardown is killed and reaped.
``marker``
    A unique word to put in ranks' command lines so tests can find them in
    ``/proc`` (``launch_util.pids_with``); leftovers carrying it are killed at
    teardown so one failing test does not disturb the next.
``c_hello``
    ``tests/c/hello.c`` compiled once per session with the venv's ``mpicc``
    (skips with a reason when mpicc or a C compiler is missing).
``pmi2_client``
    ``tests/c/pmi2_client.c`` built against Slurm's libpmi2 (skips with a
    reason when it or a C compiler is missing).
``ssh_cluster`` / ``slurm_cluster``
    A :class:`realcluster_util.RealCluster` of 4 network-namespace hosts, one per
    test module: real ``sshd`` on each (``ssh_cluster``), plus a real Slurm
    cluster (``slurm_cluster``: slurmctld, a slurmd per host, munged).  Skip
    with a reason when not root or the packages are missing.

Tests marked ``@pytest.mark.mpi`` are skipped with a reason when mpi4py or the
MPICH wheel is not installed.

The suite runs in two workers (``-n 2 --dist loadgroup``, pyproject.toml): the tests on a real
cluster all in one of them, one after another; a test marked ``@pytest.mark.alone`` while no
other test runs (it judges what the whole machine holds).

The suite ends with nothing of its own running: the session makes pytest (and each worker)
the reaper of its orphaned descendants and marks its environment (``PM_TEST_SESSION``, one
mark for pytest and its workers); when the tests are over and the workers gone, any process
still alive that descends from pytest or carries the mark is listed, killed, and fails the
run.  So does any shared-memory file of pmrun's or of an
MPI library that the session made and left in ``/dev/shm`` (listed, then removed).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import inspect
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import launch_util  # (importable after the path insert)
import pytest_asyncio
from loopguard_util import LoopGuard, runners_guarded

#: The session's mark, one for pytest and all its workers (``-n``: see pytest_configure).
_SESSION_TOKEN = uuid.uuid4().hex[:16]
#: How long processes of the last test get to finish on their own before they count as left.
_SETTLE = 10.0


#: /dev/shm as the session found it: what the tests leave there besides is theirs.
_SHM_BEFORE: set[str] = set()


def _shm_names() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def _is_worker(config: pytest.Config) -> bool:
    """Whether this process runs tests for a pytest that runs several (``-n``)."""
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    global _SESSION_TOKEN
    if _is_worker(config):
        _SESSION_TOKEN = config.workerinput["pm_session"]  # type: ignore[attr-defined]
    os.environ[launch_util.SESSION_ENV] = _SESSION_TOKEN


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """A worker's session has pytest's mark (it is not a pytest that a test runs)."""
    node.workerinput["pm_session"] = _SESSION_TOKEN


def pytest_sessionstart(session: pytest.Session) -> None:
    launch_util.become_subreaper()
    if not _is_worker(session.config):
        _SHM_BEFORE.update(_shm_names())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a real cluster run one after another, in one worker (``--dist loadgroup``):
    one Slurm at a time on this machine."""
    for item in items:
        if {"ssh_cluster", "slurm_cluster"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("cluster"))


def _shm_mapped() -> set[str]:
    """Names of the /dev/shm files some live process maps (a job of another session on
    this machine, still running: not ours to judge)."""
    names: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    at = line.find("/dev/shm/")
                    if at >= 0:
                        names.add(line[at + 9:].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:
            continue
    return names


def _shm_left() -> list[str]:
    """pmrun's and MPI libraries' shared-memory files the session made and left (removed
    now), but for those a live process maps."""
    from pm.agent.shm_reaper import MPI_PREFIXES

    left = sorted(n for n in _shm_names() - _SHM_BEFORE
                  if n.startswith((*MPI_PREFIXES, "pmrun.")))
    if left:
        mapped = _shm_mapped()
        left = [n for n in left if n not in mapped]
    for name in left:
        with contextlib.suppress(OSError):
            os.unlink(f"/dev/shm/{name}")
    return left


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[None]:
    """Fail the run if anything the tests started is still running (then kill it), or
    left shared-memory files behind (then remove them).  Checked once, by pytest itself
    after its workers are gone, if it had any (what a worker leaves comes to pytest: it
    reaps orphans as they do)."""
    yield
    if not _is_worker(session.config):
        for kind in ("turn", "run"):  # the workers' locks (_machine_share)
            with contextlib.suppress(OSError):
                _lock_path(kind).unlink()
        _check_left(session)


def _check_left(session: pytest.Session) -> None:
    import signal
    import time

    deadline = time.monotonic() + _SETTLE
    left = launch_util.session_leftovers(_SESSION_TOKEN)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # a poll against a deadline: agents and ranks of the last test exit
        left = launch_util.session_leftovers(_SESSION_TOKEN)
    files = _shm_left()
    if files:
        text = f"the test session left {len(files)} file(s) in /dev/shm (now removed): " \
               + ", ".join(files)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "files left behind", red=True)
            reporter.write_line(text)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    launch_util.session_leftovers(_SESSION_TOKEN)  # reap what was ours
    lines = "\n".join(f"  {pid}: {cmd}" for pid, cmd in left.items())
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    text = f"the test session left {len(left)} process(es) running (now killed):\n{lines}"
    if reporter is not None:
        reporter.write_sep("=", "processes left behind", red=True)
        reporter.write_line(text)
    else:
        sys.stderr.write(text + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _loop_guard(request: pytest.FixtureRequest) -> Iterator[LoopGuard]:
    """Fail a test that leaves, on an event loop of this process, a task nobody owns or an
    exception nobody handled (see ``loopguard_util``): async tests' loops, and the loops
    ``pm.run`` & co. start with ``asyncio.run``/``uvloop.run``.  Torn down last, after
    the test's loop is closed: an exception never retrieved shows only then."""
    guard = LoopGuard()
    request.node.stash[_GUARD] = guard
    with runners_guarded(guard):
        yield guard
    found = guard.finish()
    if found:
        pytest.fail("left on the event loop:\n  " + "\n  ".join(found), pytrace=False)


@pytest.fixture(autouse=True)
def _async_test_guarded(request: pytest.FixtureRequest, _loop_guard: LoopGuard) -> None:
    """An async test's loop is watched from before its fixtures start to after they end
    (set up after ``_loop_guard``, so torn down before it)."""
    if inspect.iscoroutinefunction(getattr(request.node, "obj", None)):
        request.getfixturevalue("_async_loop_guard")


_GUARD = pytest.StashKey[LoopGuard]()


@pytest_asyncio.fixture
async def _async_loop_guard(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """The async test's loop, watched from before its fixtures start to after they end."""
    import asyncio

    guard = request.node.stash[_GUARD]
    guard.watch(asyncio.get_running_loop())
    yield
    await guard.check_tasks()


def _lock_path(kind: str) -> Path:
    import tempfile

    return Path(tempfile.gettempdir()) / f"pm-test-{_SESSION_TOKEN}.{kind}"


@pytest.fixture(autouse=True)
def _machine_share(request: pytest.FixtureRequest) -> Iterator[None]:
    """With workers (``-n``), a test marked ``alone`` runs while no other test does (it
    judges what this whole machine holds, say /dev/shm); the others run side by side.  A
    readers-writer lock over the workers (flock): the others share it, an ``alone`` test
    takes it for itself, and the turnstile lets no new test in while one waits for it."""
    import fcntl

    if not _is_worker(request.config):
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    with open(_lock_path("turn"), "a") as turn, open(_lock_path("run"), "a") as run:
        fcntl.flock(turn, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turn, fcntl.LOCK_UN)
        yield


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("mpi") is not None:
        why = launch_util.mpi_missing()
        if why:
            pytest.skip(why)


class PmrunRunner:
    """Callable behind the ``pmrun`` fixture (see the module docstring)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(self, *args: str, input: bytes | str | None = None, timeout: float = 60.0,
                 env: Mapping[str, str] | None = None, cwd: Path | str | None = None
                 ) -> subprocess.CompletedProcess[str]:
        data = input.encode() if isinstance(input, str) else input
        try:
            proc = subprocess.run(
                launch_util.pmrun_argv(*args), input=data,
                stdin=None if data is not None else subprocess.DEVNULL,
                capture_output=True, timeout=timeout, env=launch_util.pmrun_env(env),
                cwd=str(cwd or self.cwd))
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"")[-2000:].decode(errors="replace")
            err = (exc.stderr or b"")[-2000:].decode(errors="replace")
            pytest.fail(f"pmrun {' '.join(args)} did not end within {timeout:g} s\n"
                        f"stdout: {out}\nstderr: {err}")
        return subprocess.CompletedProcess(
            proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"))


class PmrunStarter:
    """Callable behind the ``pmrun_popen`` fixture; reaps what it started."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.procs: list[subprocess.Popen[bytes]] = []

    def __call__(self, *args: str, env: Mapping[str, str] | None = None,
                 stdin: int | None = subprocess.DEVNULL, cwd: Path | str | None = None
                 ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            launch_util.pmrun_argv(*args), stdin=stdin, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=launch_util.pmrun_env(env), cwd=str(cwd or self.cwd))
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
                proc.communicate(timeout=10)


@pytest.fixture
def pmrun(tmp_path: Path) -> PmrunRunner:
    """Run pmrun to completion in ``tmp_path``; see the module docstring."""
    return PmrunRunner(tmp_path)


@pytest.fixture
def pmrun_popen(tmp_path: Path) -> Iterator[PmrunStarter]:
    """Start pmrun in the background in ``tmp_path``; see the module docstring."""
    starter = PmrunStarter(tmp_path)
    yield starter
    starter.close()


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique word for ranks' command lines; processes left carrying it are killed."""
    word = f"pmtest-{uuid.uuid4().hex[:12]}"
    yield word
    launch_util.kill_marked(word)


@pytest.fixture(scope="session")
def c_hello(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/hello.c built with the venv's mpicc (session-wide)."""
    if launch_util.mpicc() is None:
        pytest.skip(f"no mpicc next to {sys.executable} (MPICH wheel not installed)")
    out = tmp_path_factory.mktemp("c") / "hello"
    try:
        return launch_util.compile_c(Path(__file__).parent / "c" / "hello.c", out)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"mpicc failed: {exc.stderr}")


@pytest.fixture(scope="session")
def pmi2_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/c/pmi2_client.c built against Slurm's libpmi2 (session-wide), or skip."""
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on PATH")
    if ctypes.util.find_library("pmi2") is None or not Path("/usr/include/slurm/pmi2.h").exists():
        pytest.skip("Slurm's libpmi2 (Debian libpmi2-0-dev) is not installed")
    out = tmp_path_factory.mktemp("pmi2c") / "pmi2_client"
    proc = subprocess.run([cc, "-O1", "-o", str(out), str(Path(__file__).parent / "c" /
                                                        "pmi2_client.c"), "-lpmi2"],
                          capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        pytest.fail(f"building pmi2_client failed:\n{proc.stderr}")
    return out


def _cluster(slurm: bool) -> Iterator[object]:
    from realcluster_util import real_cluster, realcluster_missing

    why = realcluster_missing(slurm=slurm, ssh=True)
    if why:
        pytest.skip(why)
    with real_cluster(4, slurm=slurm, ssh=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def ssh_cluster() -> Iterator[object]:
    """4 namespace hosts, each with its own sshd (see realcluster_util), per module."""
    yield from _cluster(slurm=False)


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[object]:
    """4 namespace hosts with a Slurm cluster and sshds (see realcluster_util), per module."""
    yield from _cluster(slurm=True)
