"""Helpers for tests that launch jobs through ``pmrun`` (used by ``conftest.py``).

Everything here is plain functions so tests and benchmarks can share them:

* :func:`pmrun_env` / :func:`pmrun_argv`: how to call ``python -m pm.cli`` from a
  source checkout (``PYTHONPATH`` = repository root, the interpreter's ``bin``
  first on ``PATH`` so ``python``, ``mpicc`` and ``mpiexec`` of the venv are found).
* :func:`mpi_missing`: why MPI tests cannot run here (``None`` when they can).
* :func:`pids_with` / :func:`wait_gone` / :func:`wait_until`: poll ``/proc``
  against a deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POLL = 0.02


def pmrun_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Our environment with PYTHONPATH at the checkout and the venv ``bin`` first on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(BIN), env.get("PATH", "")) if p)
    env.pop("MPIEXEC_TIMEOUT", None)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PM_LOOP_CHECK"] = "1"  # pmrun and its agents fail on a task or exception left
    if extra:
        env.update(extra)
    return env


def pmrun_argv(*args: str) -> list[str]:
    """``[python, -m, pm, *args]``: what the ``pmrun`` script runs (pm.quick, then pm.cli)."""
    return [sys.executable, "-m", "pm", *args]


def mpicc() -> Path | None:
    """The MPICH wheel's compiler wrapper next to the interpreter, if any."""
    path = BIN / "mpicc"
    return path if path.exists() else None


def mpiexec() -> Path | None:
    """The MPICH wheel's Hydra ``mpiexec`` next to the interpreter, if any."""
    path = BIN / "mpiexec.hydra"
    if not path.exists():
        path = BIN / "mpiexec"
    return path if path.exists() else None


def mpi_missing() -> str | None:
    """Why MPI tests must be skipped (mpi4py or the MPICH wheel missing), else None."""
    if importlib.util.find_spec("mpi4py") is None:
        return f"mpi4py is not installed in {sys.prefix}"
    try:
        importlib.metadata.version("mpich")
    except importlib.metadata.PackageNotFoundError:
        return f"the mpich wheel is not installed in {sys.prefix}"
    return None


def compile_c(source: Path, out: Path, *flags: str) -> Path:
    """Compile ``source`` with the wheel's mpicc; raises CalledProcessError with its output."""
    cc = mpicc()
    if cc is None:
        raise FileNotFoundError(f"no mpicc next to {sys.executable}")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise FileNotFoundError("no C compiler (cc) for mpicc to drive")
    subprocess.run([str(cc), "-O2", "-o", str(out), str(source), *flags],
                   check=True, capture_output=True, text=True, timeout=120,
                   env=pmrun_env())
    return out


def imported(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, set[str]]:
    """Exit status and the modules a pmrun command line (:func:`pmrun_argv`) imported
    (``-X importtime``, which the ranks do not inherit)."""
    p = subprocess.run([sys.executable, "-X", "importtime", *argv[1:]], env=env, cwd=cwd,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    mods = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    return p.returncode, mods


def loaded_bare(code: str, watched: set[str]) -> list[str]:
    """Which of ``watched`` modules ``code`` leaves loaded in a bare interpreter (``-S``: no
    site), pmrun importable from this checkout."""
    repo = str(REPO)
    out = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys\n{code}\n"
         f"print(' '.join(sorted(set({sorted(watched)!r}) & set(sys.modules))))"],
        capture_output=True, text=True, timeout=30, env={"PYTHONPATH": repo}, cwd=repo)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def cmdline(pid: int) -> list[str] | None:
    """argv of ``pid`` as /proc shows it, or None once it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None  # zombie or kernel thread: nothing left alive
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def pids_with(marker: str) -> list[int]:
    """Live processes (not zombies) whose command line contains ``marker``, except us."""
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        argv = cmdline(int(entry.name))
        if argv is not None and any(marker in a for a in argv):
            found.append(int(entry.name))
    return found


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` until it holds; AssertionError naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(POLL)


def wait_count(marker: str, count: int, timeout: float) -> list[int]:
    """Wait until at least ``count`` live processes carry ``marker``; their pids."""
    pids: list[int] = []

    def enough() -> bool:
        nonlocal pids
        pids = pids_with(marker)
        return len(pids) >= count

    wait_until(enough, timeout, f"{count} processes with {marker!r} (saw {len(pids)})")
    return pids


def wait_gone(marker: str, timeout: float) -> None:
    """Wait until no live process carries ``marker``; fail naming the survivors."""
    left: list[int] = []

    def none_left() -> bool:
        nonlocal left
        left = pids_with(marker)
        return not left

    try:
        wait_until(none_left, timeout, f"processes with {marker!r} to end")
    except AssertionError:
        names = {p: " ".join(cmdline(p) or []) for p in left}
        raise AssertionError(f"still alive after {timeout:g} s: {names}") from None


def kill_marked(marker: str) -> None:
    """SIGKILL what a failed test left behind (only processes carrying its own marker)."""
    import signal

    for pid in {*pids_with(marker), *pids_with_env(marker)}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def script(directory: Path, name: str, text: str) -> Path:
    """Write a small rank program (Python source) into ``directory``; its path."""
    import textwrap

    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def pids_with_env(marker: str) -> list[int]:
    """Live processes whose *environment* contains ``marker`` (launchers, agents, ranks)."""
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            env = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in env and cmdline(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def read_lines(stream: IO[bytes], count: int, timeout: float) -> list[bytes]:
    """Read ``count`` lines from a pipe (a Popen's stdout) within ``timeout`` seconds."""
    import select

    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while buf.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {count} lines, "
                                 f"got {buf!r}")
        chunk = os.read(fd, 65536)
        if not chunk:
            raise AssertionError(f"EOF after {buf!r}, expected {count} lines")
        buf += chunk
    return buf.splitlines(keepends=True)


#: Set by conftest.py for the whole test session: every process the suite starts inherits it.
SESSION_ENV = "PM_TEST_SESSION"


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux prctl); True if so.

    A daemon a test started (an MPICH singleton's ``hydra_pmi_proxy``, a double-forked
    helper) then stays our child instead of becoming init's, where nobody would look.
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = raw[raw.rfind(b")") + 2:].split()
    return fields[0].decode(), int(fields[1])


def session_leftovers(token: str) -> dict[int, str]:
    """Live processes of this test session other than us: our descendants (orphans came
    to us, see :func:`become_subreaper`) and whatever carries the session's token in its
    environment (launched through Slurm, say).  Reaps the zombies among our children."""
    me = os.getpid()
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is None:
                continue
            if st[0] == "Z":
                if st[1] == me:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(int(entry.name), os.WNOHANG)
                continue
            parent[int(entry.name)] = st[1]
    ours: set[int] = set()

    def descends(pid: int) -> bool:
        seen = 0
        while pid in parent and seen < 64:
            pid = parent[pid]
            if pid == me:
                return True
            seen += 1
        return False

    ours = {p for p in parent if p != me and descends(p)}
    ours.update(p for p in pids_with_env(f"{SESSION_ENV}={token}") if p != me)
    return {p: " ".join(cmdline(p) or ["?"])[:200] for p in sorted(ours) if cmdline(p)}


def first_cause(stderr: str) -> str:
    """The first ``pmrun:`` line of ``stderr`` that is not a progress notice (a wait for
    nodes to join, which a loaded machine can print before a job fails)."""
    return next(line for line in stderr.splitlines()
                if line.startswith("pmrun:") and " not joined after " not in line)


def assert_never_started_named(r: subprocess.CompletedProcess[str], collective: str) -> None:
    """``r`` is a 2-rank job whose rank 1 never started MPI while rank 0 did: it failed with
    one line of pmrun's naming rank 1, at its exit or at the ``collective`` it never joined
    (then perhaps what the killed rank says as it ends: its MPI library's own words)."""
    import re

    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert re.fullmatch(rf"pmrun: rank 1 \(node [01], \S+\) exited with code 0 (before PMI "
                        rf"init, which rank 0 called: its MPI_Init would wait for it for ever|"
                        rf"without joining the ranks' PMI {collective} 1, in which rank 0 "
                        rf"waits: it can never complete)", r.stderr.partition("\n")[0]), r.stderr
    assert r.stderr.count("pmrun:") == 1, r.stderr


@contextlib.contextmanager
def hogs(count: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes that are always runnable: the machine's load is at least
    ``count`` (namespace hosts share it) while they live."""
    procs = [subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"])
             for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()
