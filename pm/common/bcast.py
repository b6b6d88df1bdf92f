"""srun's ``--bcast`` (Open MPI's ``--preload-binary``): the job's programs, copied to its nodes.

The head reads each program once (:func:`read_programs`: found as the ranks would find it,
through the job's ``PATH`` from the launcher's directory) and the plan carries it to every
agent (:attr:`pm.proto.plan.JobPlan.bcast`); each agent writes its copy (:func:`place`),
and its ranks run that copy.  Where it goes (:func:`dest_path`): the node's temporary
directory (``TMPDIR``, else ``/tmp``) by default, a directory given with a trailing ``/``,
or exactly the path given (one program).  A copy is written under another name and renamed
into place, so nodes sharing a file system never see each other's half-written copy, and
it is removed when the job ends there (by the ranks' guardian if the agent is killed).
With ``--send-libs`` the shared libraries it loads from outside the system's folders go
along (:func:`shared_libs`), into a folder beside the copy (:func:`libs_dir`) that its
ranks' ``LD_LIBRARY_PATH`` starts with.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pm.proto.errors import PMError
from pm.proto.plan import BcastFile

if TYPE_CHECKING:
    from pm.jobspec import JobSpec

#: The largest program a job copies to its nodes (it travels in the job's plan).
MOST = 1 << 30
#: Where --send-libs does not look: the system's libraries, on every node already (srun's
#: BcastExclude default).
SYSTEM_LIBS = ("/lib/", "/usr/lib/", "/lib64/", "/usr/lib64/")


class BcastError(PMError):
    """A program that cannot be copied: the message names it and why."""


def which(prog: str, path: str, cwd: str) -> str | None:
    """``prog`` as a rank would run it: a path with a slash as it is (from ``cwd``), else
    the first executable file of that name on ``path``."""
    if "/" in prog:
        return os.path.join(cwd, prog)
    for d in path.split(os.pathsep):
        cand = os.path.join(cwd, d or ".", prog)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def programs_of(spec: JobSpec) -> list[BcastFile]:
    """What ``spec``'s --bcast copies: each program found through its ranks' PATH, from
    their directory (:func:`read_programs`)."""
    env, app_envs = spec.plan_env()
    default = env.get("PATH", os.environ.get("PATH", os.defpath))
    here = os.getcwd()
    return read_programs(
        [(a.argv[0], e.get("PATH", default), os.path.join(here, a.wdir or spec.wdir or ""))
         for a, e in zip(spec.apps, app_envs, strict=True)], spec.bcast or "",
        libs=spec.send_libs)


def read_programs(programs: Sequence[tuple[str, str, str]], dest: str, libs: bool = False
                  ) -> list[BcastFile]:
    """Each program (argv[0], the ``PATH`` its ranks get, their directory) read for the
    plan, once per file however many programs run it; :class:`BcastError` names the first
    one that cannot be (not found, not a file, unreadable, over :data:`MOST`), or a
    ``dest`` that names one file for several."""
    found: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    for app, (prog, path, cwd) in enumerate(programs):
        where = which(prog, path, cwd)
        if where is None:
            raise BcastError(f"--bcast: {prog}: command not found")
        real = os.path.realpath(where)
        found.setdefault(real, []).append(app)
        names.setdefault(real, os.path.basename(where))
    if dest and not dest.endswith("/") and len(found) > 1:
        raise BcastError(f"--bcast={dest} names one file, and the job runs {len(found)} "
                         "programs: give a directory (ending in /)")
    out = []
    for where, apps in found.items():
        prog = programs[apps[0]][0]
        try:
            with open(where, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise BcastError(f"--bcast: {prog}: not a file")
                if st.st_size > MOST:
                    raise BcastError(f"--bcast: {prog}: {st.st_size} bytes, over the "
                                     f"{MOST >> 20} MiB a job copies")
                data = f.read()
        except OSError as exc:
            raise BcastError(f"--bcast: {prog}: {exc.strerror or exc}") from None
        out.append(BcastFile(apps, names[where], data,
                             shared_libs(where, prog) if libs and data[:4] == b"\x7fELF" else {}))
    return out


def shared_libs(path: str, prog: str) -> dict[str, bytes]:
    """srun's --send-libs: the shared libraries program ``path`` loads from outside
    :data:`SYSTEM_LIBS`, as the dynamic loader finds them here (``ldd``): soname ->
    contents.  :class:`BcastError` if they cannot be found or read."""
    import subprocess

    try:
        res = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BcastError(f"--send-libs: {prog}: ldd: {exc}") from None
    if res.returncode and "not a dynamic executable" in res.stdout + res.stderr:
        return {}  # (static: nothing to send)
    out = {}
    for line in res.stdout.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if not arrow or "/" in name:
            continue  # (the loader itself; a library named by its path is found by it)
        found = rest.rpartition(" (")[0] if rest.endswith(")") else rest
        if not found.startswith("/"):
            raise BcastError(f"--send-libs: {prog}: {name} is not found here ({found or '?'})")
        real = os.path.realpath(found)
        if found.startswith(SYSTEM_LIBS) or real.startswith(SYSTEM_LIBS):
            continue
        try:
            with open(real, "rb") as f:
                out[name] = f.read()
        except OSError as exc:
            raise BcastError(f"--send-libs: {prog}: {found}: {exc.strerror or exc}") from None
    return out


def dest_path(dest: str, job_id: str, node: int, name: str, cwd: str) -> str:
    """Where node ``node``'s copy of program ``name`` goes (see the module's docstring): in a
    directory, named after the job and the node, so that nodes sharing the directory each
    have their own (as srun names them)."""
    if dest and not dest.endswith("/"):
        return os.path.join(cwd, dest)
    base = os.path.join(cwd, dest) if dest else _tmpdir()
    return os.path.join(base, f"pmrun-bcast-{job_id}-{node}-{name}")


def _tmpdir() -> str:
    tmp = os.environ.get("TMPDIR", "")
    return tmp if tmp.startswith("/") and os.path.isdir(tmp) else "/tmp"


def libs_dir(path: str) -> str:
    """The folder of the libraries --send-libs sent with the copy at ``path``."""
    return f"{path}.libs"


def place(f: BcastFile, path: str) -> None:
    """Write ``f`` at ``path``, for its owner to run (a new file renamed into place), and
    its libraries in :func:`libs_dir`; OSError says why not."""
    if f.libs:
        folder = libs_dir(path)
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        for name, data in f.libs.items():
            _write(os.path.join(folder, os.path.basename(name)), data)
    _write(path, f.data)


def _write(path: str, data: bytes) -> None:
    part = f"{path}.{os.getpid()}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            out.write(data)
        os.rename(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
