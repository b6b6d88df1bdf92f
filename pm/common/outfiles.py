"""Output files of a job: their names from a pattern (Hydra's ``-outfile-pattern``, srun's
``--output``, Open MPI's ``--output-filename``), what keeps one from taking output, and
opening them (:class:`pm.common.output_writer.Writer` writes them)."""

from __future__ import annotations

import os
import stat

#: What a file pattern's ``%X`` stands for (expand_pattern), as said in a refusal.
PATTERN_CODES = "%r or %t the rank, %j the job id, %x its name, %h or %N the host, %n or " \
                "%p the node number, %u the user, %A and %a a Slurm job array's id and " \
                "index, %% a percent sign"


def pattern_problem(option: str, pattern: str) -> str | None:
    """What is wrong with an output file pattern (a %X it does not know, its folder is
    missing), or None.  A folder of each rank's, node's or job's (``out/%r/stdout``) is made
    when the file is."""
    i = pattern.find("%")
    while 0 <= i < len(pattern) - 1:
        if pattern[i + 1] not in _CODES:
            return f"{option} {pattern}: %{pattern[i + 1]} stands for nothing ({PATTERN_CODES})"
        i = pattern.find("%", i + 2)
    if "%x" in os.path.dirname(pattern).replace("%%", ""):
        return None  # (checked again with the job's name in it: pm.options)
    folder = os.path.dirname(expand_pattern(pattern, 0, "job"))
    if not folder or os.path.isdir(folder):
        return _file_problem(option, pattern)
    if not per_rank_folder(pattern):
        return f"{option} {pattern}: no such directory {folder}"
    part = folder_in_the_way(folder)
    return f"{option} {pattern}: {part} is not a folder" if part else None


def _file_problem(option: str, pattern: str) -> str | None:
    """What keeps the one file ``pattern`` names (the same for every rank, job and node) from
    taking the job's output, or None: a directory of that name, a file that cannot be
    written (a file of /proc, one read-only for us), a folder we may not create it in.  A
    name that differs between ranks is left to the job (a rank whose file cannot be opened
    is named then, and the others' output goes on)."""
    if "{{" in pattern or any(f"%{k}" in pattern.replace("%%", "") for k in "rtjxhNnp"):
        return None  # (Flux's {{tags}}: pmrun's codes by now, checked as such: pm.options)
    path = expand_pattern(pattern, 0, "job")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        folder = os.path.dirname(path) or "."
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{option} {pattern}: cannot create a file in {folder} (permission denied)"
        return None
    except OSError as exc:
        return f"{option} {pattern}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{option} {pattern}: is a directory"
    if not stat.S_ISREG(st.st_mode):
        return None  # a terminal, /dev/null, a named pipe (whose reader may come later)
    # Opened as the job opens it (not truncated yet) and written nothing: the kernel says
    # whether it would take bytes (a file of /proc: EIO; read-only: EACCES, EROFS).
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY)
        try:
            os.write(fd, b"")
        finally:
            os.close(fd)
    except OSError as exc:
        return f"{option} {pattern}: cannot be written: {exc.strerror}"
    return None


def folder_in_the_way(folder: str) -> str | None:
    """The nearest part of ``folder`` that exists, when it is not a folder (the folders
    below it cannot be made); None when they can be."""
    part = folder
    while part and not os.path.exists(part):
        part = os.path.dirname(part)
    return part if part and not os.path.isdir(part) else None


def per_rank_folder(pattern: str) -> bool:
    """Whether the folder part of ``pattern`` names a rank, a node or the job (``%r``,
    ``%t``, ``%j``, ``%h``...): such folders cannot be there beforehand, and are made as
    needed."""
    folder = os.path.dirname(pattern).replace("%%", "")
    return any(f"%{k}" in folder for k in "rtjhNnp")


def with_job_name(pattern: str, name: str) -> str:
    """``pattern`` with srun's ``%x`` (the job's name) put in (``%%x`` stays as it is)."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            pair = pattern[i:i + 2]
            out.append(name if pair == "%x" else pair)
            i += 2
            continue
        out.append(pattern[i])
        i += 1
    return "".join(out)


def create(path: str, make_folder: bool, append: bool = False) -> int:
    """Open ``path`` for a job's output (created, truncated unless ``append``);
    ``make_folder``: with the folders it needs."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | (0 if append else os.O_TRUNC)
    try:
        return os.open(path, flags, 0o666)
    except FileNotFoundError:
        if not make_folder:
            raise
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return os.open(path, flags, 0o666)


#: The codes of a file pattern (see expand_pattern).
_CODES = frozenset("rtjxhNnpuAa%")


def expand_pattern(pattern: str, rank: int, job_id: str, spawned: int = 0, *, host: str = "",
                   node: int = 0) -> str:
    """An output file name: ``%r`` (or Slurm's ``%t``) is the rank, ``%j`` the job id
    (inside a Slurm job Slurm's, as srun's; ``%A``/``%a`` its array's id and index),
    ``%h`` (Hydra's) or ``%N`` (Slurm's) the rank's host, ``%n`` (Slurm's) or ``%p``
    (Hydra's) its node's number, ``%u`` the user, ``%%`` a percent sign; without ``%r``,
    every rank writes to the one file (of its host, with ``%h``).

    A rank of spawned job ``J`` (``spawned``) has its own file, never rank R's of the
    launched job: ``%j`` is the job id followed by ``sJ``, and a pattern with a rank
    but no ``%j`` gets ``.sJ`` at the end (``out.%r`` -> ``out.3.s1``).
    """
    slurm = os.environ.get("SLURM_JOB_ID")
    if slurm:  # inside a Slurm job, its id, as srun's %j (pmrun's own id is not the user's)
        job_id = slurm
    array = os.environ.get("SLURM_ARRAY_JOB_ID") or job_id
    index = os.environ.get("SLURM_ARRAY_TASK_ID") or "4294967294"  # (srun's, outside one)
    if spawned:
        job_id = f"{job_id}s{spawned}"
    out = []
    i = 0
    ranked = has_job = False
    while i < len(pattern):
        c = pattern[i]
        if c == "%" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            sub = ({"r": str(rank), "t": str(rank), "j": job_id, "%": "%", "h": host,
                    "N": host.split(".")[0], "n": str(node), "p": str(node), "A": array,
                    "a": index}.get(nxt)
                   if nxt != "u" else _user())
            if sub is not None:
                ranked = ranked or nxt in "rt"
                has_job = has_job or nxt in "jA"
                out.append(sub)
                i += 2
                continue
        out.append(c)
        i += 1
    if spawned and ranked and not has_job:
        out.append(f".s{spawned}")
    return "".join(out)


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
