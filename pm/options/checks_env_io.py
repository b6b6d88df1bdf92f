"""Value checkers of the ranks' environment and of their input and output: Flux's
--env rules, srun's --export and --propagate, Open MPI's --prepend-env and --tune; the
rank that reads stdin, output file patterns and line prefixes, Open MPI's --output
directives and --display items, Flux's shell options.

Each takes (text, option as the user spelled it) and returns the value, or raises
UsageError naming the option and what was wrong (:mod:`pm.options.checks`).
"""

from __future__ import annotations

import os

from pm.options.checks import MOST_RANKS, readable_file, writable_file
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping


def stdin_rank(value: str, opt: str) -> str:
    """``--stdin``/``-i``: the rank that reads pmrun's stdin, ``all`` (every rank reads it:
    Open MPI's ``--stdin all``, srun's ``-i all``), ``none``, or a file every rank reads
    (srun's and Flux's ``-i FILE``; ``file:`` before the path when it is a number or
    all)."""
    if value.lower() == "none":
        return "none"
    if value.isdecimal() and int(value) < MOST_RANKS:
        return str(int(value))
    if value.lower() == "all":
        return "all"
    path = value.removeprefix("file:")
    if not path:
        raise UsageError(f"{opt} takes the rank that reads pmrun's stdin, all, none, or a file "
                         f"every rank reads, not {value!r}")
    return "file:" + os.path.abspath(readable_file(path, opt))


def srun_export(value: str, opt: str) -> str:
    """srun's ``--export``: ALL, NONE, or NAME[=VALUE],... (after ALL, or alone)."""
    for item in value.split(","):
        name = item.partition("=")[0]
        if item.upper() in ("ALL", "NONE") and "=" not in item:
            continue
        if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdecimal():
            raise UsageError(f"{opt} takes ALL, NONE or NAME[=VALUE] separated by commas; "
                             f"{item!r} is not a variable")
    return value


def flux_env_rule(value: str, opt: str) -> str:
    """Flux's ``--env RULE`` (``VAR=VAL``, ``-PATTERN``, ``PATTERN``), ``--env-remove
    PATTERN`` as the rule ``-PATTERN``."""
    if not value or value in ("-", "="):
        raise UsageError(f"{opt} takes VAR=VALUE or a pattern of names, not {value!r}")
    if value.startswith("^") and opt == "--env":
        _rules_file(value[1:], f"{opt} {value}")
    if opt in ("--unset-env", "-unset-env") and (value.startswith("-") or "=" in value):
        raise UsageError(f"{opt} takes a name or a pattern of names, not {value!r}")
    return "-" + value if opt in ("--env-remove", "--unset-env", "-unset-env") else value


def flux_env_file(value: str, opt: str) -> str:
    """Flux's ``--env-file FILE``: the rule ``^FILE`` (FILE's rules, read in their turn)."""
    _rules_file(value, f"{opt} {value}")
    return "^" + value


def excluded_names(value: str, opt: str) -> str:
    """Intel MPI's ``-genvexcl A,B``: one Flux rule that removes exactly those names."""
    names = [n for n in value.split(",") if n]
    if not names or not all(n.isidentifier() for n in names):
        raise UsageError(f"{opt} takes names of variables, A,B, not {value!r}")
    return "-/^(?:" + "|".join(names) + ")$/"


def _rules_file(path: str, what: str) -> None:
    """A file of Flux's --env rules that can be read (else UsageError naming ``what``)."""
    if not path:
        raise UsageError(f"{what}: name the file of rules")
    try:
        with open(os.path.expanduser(path), "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{what}: {exc.strerror or exc}") from None


def _env_edit(opt: str, spelled: str, value: str, old: str | None, first: bool
              ) -> tuple[str, str]:
    """Open MPI 5's ``--prepend-env NAME[c] VALUE`` (``--append-env``): NAME, and VALUE
    before (after) NAME's value so far with the separator c between (VALUE alone if it has
    none)."""
    var, sep = spelled[:-3], spelled[-2:-1]
    if spelled[-3:-2] != "[" or spelled[-1:] != "]" or not var.isidentifier():
        raise UsageError(f"{opt} {spelled}: give the name and its separator, as NAME[:] VALUE")
    if old:
        value = value + sep + old if first else old + sep + value
    return var, value


def report_to(value: str, opt: str) -> str:
    """Open MPI's ``--report-pid``: ``-`` (stdout), ``+`` (stderr) or a file to write."""
    return value if value in ("-", "+") else writable_file(value, opt)


def out_pattern(value: str, opt: str) -> str:
    if (opt == "--output" and _directives(value)) or (opt == "-o" and _flux_option(value)):
        # Open MPI 5's --output tag, Flux's -o cpu-affinity=... (pm.options.compat)
        return value
    from pm.common.outfiles import pattern_problem

    problem = pattern_problem(opt, value)
    if problem:
        raise UsageError(problem)
    return value


def prepend_pattern(value: str, opt: str) -> str:
    i = 0
    while i < len(value):
        if value[i] == "%":
            if i + 1 >= len(value):
                raise UsageError(f"{opt} {value!r}: a '%' ends the pattern (%% is a percent sign)")
            if value[i + 1] not in PREPEND_KEYS:
                raise UsageError(f"{opt} {value!r}: unknown %{value[i + 1]} (the pattern takes "
                                 "%r rank, %h host, %p node, %g job, %% percent)")
            i += 1
        i += 1
    return value


#: What -prepend-pattern's %-letters stand for (Hydra's): rank, host, proxy (node), process group.
PREPEND_KEYS = "rhpg%"


def prepend_of(values: Mapping[str, object]) -> str | None:
    """The -prepend-pattern of parsed options; None for none or -l's ``[rank] ``."""
    pattern = values.get("prepend")
    return pattern if isinstance(pattern, str) and pattern != LABEL else None


#: -l's prefix, as a -prepend-pattern.
LABEL = "[%r] "


def prepend_prefix(pattern: str, rank: int, host: str, node: int, job: int = 0) -> bytes:
    """A rank's -prepend-pattern prefix (the pattern was checked by :func:`prepend_pattern`)."""
    subs = {"r": str(rank), "h": host, "p": str(node), "g": str(job), "%": "%"}
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "%" and i + 1 < len(pattern):
            out.append(subs.get(pattern[i + 1], pattern[i:i + 2]))
            i += 2
        else:
            out.append(pattern[i])
            i += 1
    return "".join(out).encode(errors="surrogateescape")


#: Open MPI 5's ``--display`` items, as the options pmrun has for them.
_DISPLAY = {"map": "print_rank_map", "map-devel": "print_rank_map", "bind": "report_bindings",
            "allocation": "display_allocation"}
#: Open MPI 5's ``--output`` directives (``dir=DIR`` aside), as pmrun's options.
_OUTPUT = {"tag": ("prepend", LABEL), "tag-detailed": ("prepend", LABEL),
           "tag-fullname": ("prepend", LABEL), "timestamp": ("timestamp_output", True),
           "merge-stderr-to-stdout": ("merge_stderr", True)}


def _directives(value: str) -> bool:
    """Whether an ``--output`` value is Open MPI 5's directives, not a file pattern."""
    return all(i in _OUTPUT or i.startswith(("dir=", "file=")) or i == "xml"
               for i in value.split(","))


def display_items(value: str, opt: str) -> str:
    for item in value.lower().split(","):
        if item not in _DISPLAY:
            raise UsageError(f"{opt} {value}: of Open MPI's items pmrun shows map (the rank "
                             "map), bind (the bindings) and allocation (the hosts and their "
                             f"slots), not {item!r}")
    return value


#: Flux's shell options (``flux run -o NAME[=VALUE]``), which its ``-o`` takes where srun's
#: and Hydra's takes a file pattern.
_FLUX_SHELL = frozenset({"verbose", "nosetpgrp", "initrc", "userrc", "pty", "cpu-affinity",
                         "gpu-affinity", "mpi", "pmi", "stage-in", "signal", "exit-timeout",
                         "exit-on-error", "taskmap", "hwloc", "rlimit", "output", "input",
                         "pty.interactive", "pty.capture", "pty.ranks", "hwloc.xmlfile"})


def _flux_option(value: str) -> bool:
    name = value.partition("=")[0]
    return name in _FLUX_SHELL or name.split(".")[0] in ("output", "input", "pmi-simple")


def tune_files(value: str, opt: str) -> str:
    """Open MPI's ``--tune FILE[,FILE]`` (``--am``): files that can be read."""
    for path in value.split(","):
        readable_file(path, opt)
    return value


def output_from(value: str, opt: str) -> str:
    """Hydra's ``-output-from RANK`` (and a list of them: ``0,4-7``)."""
    from pm.common.output import rank_ranges

    try:
        rank_ranges(value)
    except ValueError as exc:
        raise UsageError(f"{opt} {exc}") from None
    return value


def open_mode(value: str, opt: str) -> str:
    """srun's ``--open-mode``: append or truncate (its first letters will do, as srun's)."""
    for mode in ("append", "truncate"):
        if value and mode.startswith(value.lower()):
            return mode
    raise UsageError(f"{opt} takes append or truncate, not {value!r}")


#: srun's --propagate names (pm.agent.rlimits.LIMITS).
RLIMIT_NAMES = ("AS", "CORE", "CPU", "DATA", "FSIZE", "MEMLOCK", "NOFILE", "NPROC", "RSS",
                "STACK")


def propagate_list(value: str, opt: str) -> str:
    """srun's ``--propagate=LIST``: ALL, NONE, or limits (``STACK,CORE``; ``RLIMIT_STACK``)."""
    names = [w.strip().upper().removeprefix("RLIMIT_") for w in value.split(",")]
    if names == ["ALL"]:
        return ",".join(RLIMIT_NAMES)
    if names == ["NONE"]:
        return ""
    bad = next((n for n in names if n not in RLIMIT_NAMES), None)
    if bad is not None:
        raise UsageError(f"{opt} takes ALL, NONE or limits among {','.join(RLIMIT_NAMES)}, "
                         f"not {bad!r}")
    return ",".join(dict.fromkeys(names))
