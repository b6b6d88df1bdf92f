"""srun's ``--bcast`` (Open MPI's ``--preload-binary``): the job's programs, copied to its nodes.

The head reads each program once (:func:`read_programs`: found as the ranks would find it,
through the job's ``PATH`` from the launcher's directory) and the plan carries it to every
agent (:attr:`pm.proto.plan.JobPlan.bcast`); each agent writes its copy (:func:`place`),
and its ranks run that copy.  Where it goes (:func:`dest_path`): the node's temporary
directory (``TMPDIR``, else ``/tmp``) by default, a directory given with a trailing ``/``,
or exactly the path given (one program).  A copy is written under another name and renamed
into place, so nodes sharing a file system never see each other's half-written copy, and
it is removed when the job ends there (by the ranks' guardian if the agent is killed).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence

from pm.proto.plan import BcastFile

#: The largest program a job copies to its nodes (it travels in the job's plan).
MOST = 1 << 30


class BcastError(Exception):
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


def read_programs(programs: Sequence[tuple[str, str, str]], dest: str) -> list[BcastFile]:
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
        out.append(BcastFile(apps, names[where], data))
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


def place(f: BcastFile, path: str) -> None:
    """Write ``f`` at ``path``, for its owner to run (a new file renamed into place);
    OSError says why not."""
    part = f"{path}.{os.getpid()}.part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            out.write(f.data)
        os.rename(part, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
