"""pmrun's command line options: one table, one parser, one way to refuse a bad value.

Both of pmrun's paths read the command line through :func:`parse`: the quick
path (:mod:`pm.quick`, which runs before asyncio is imported) and the full
one (:mod:`pm.cli`, which turns the result into a JobSpec).  :func:`quick_ok`
says whether the quick path may run the job; a bad value is refused here,
before either path starts anything, with one line (``pmrun: ...``) and exit
status 2 (:func:`refuse`).  ``pmrun --help`` is written from the same table.

Kept free of heavy imports (no dataclasses, typing or re at import time):
checkers that need more import it when the option is used.
"""

from __future__ import annotations

import os

from pm.proto.errors import UsageError, defect, missing_dependency, too_many

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable, Mapping

    Check = Callable[[str, str], object]

#: The most ranks of one job, and processes on one host for -n/-ppn.
MOST_RANKS = 1 << 24
#: The most agents --local-nodes starts on this machine.
MOST_LOCAL_NODES = 1024

#: Exit status of a command line pmrun refuses.
EXIT_USAGE = 2
#: The exit status when pmrun itself failed (sysexits' EX_SOFTWARE).
EXIT_INTERNAL = 70
#: The exit status when a dependency of pmrun's is not installed (sysexits' EX_UNAVAILABLE).
EXIT_MISSING = 69


# ------------------------------------------------------------------ value checkers
# Each takes (text, option as the user spelled it) and returns the value, or raises
# UsageError naming the option and what was wrong.
def whole(minimum: int = 1, most: int | None = None) -> Check:
    def check(text: str, opt: str) -> int:
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdecimal()):  # (not int()'s " 2", "2_0", "+2")
            raise UsageError(f"{opt} takes a whole number, not {text!r}")
        value = int(text)
        if value < minimum:
            raise UsageError(f"{opt} must be at least {minimum}")
        if most is not None and value > most:
            raise UsageError(too_many(opt, text, most))
        return value

    return check


def wait_seconds(text: str, opt: str) -> float:
    """srun's ``-W``: whole seconds, 0 for no limit."""
    if not text.isdecimal():
        raise UsageError(f"{opt} takes whole seconds (0: no limit), not {text!r}")
    return float(text)


def niceness(text: str, opt: str) -> int:
    """A process's niceness, -20 (first) to 19 (last)."""
    try:
        value = int(text)
    except ValueError:
        value = 99
    if not -20 <= value <= 19:
        raise UsageError(f"{opt} takes a niceness from -20 to 19, not {text!r}")
    return value


def signed_seconds(text: str, opt: str) -> float:
    """A number of seconds, not 0, either sign (GNU parallel's --semaphore-timeout)."""
    sign = -1.0 if text.startswith("-") else 1.0
    return sign * seconds(text.removeprefix("-"), opt)


def seconds(text: str, opt: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{opt} takes seconds, not {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise UsageError(f"{opt} must be a positive number of seconds, not {text!r}")
    return value


#: Flux's duration units (its "FSD": ``30s``, ``1.5m``, ``2h``, ``1d``), in seconds.
_FSD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def fsd_seconds(text: str) -> float | None:
    """Flux's duration with its unit (``30s``, ``1.5m``, ``2h``, ``1d``) in seconds; None
    when ``text`` is not one."""
    unit = _FSD_UNITS.get(text[-1:])
    return float(text[:-1]) * unit if unit is not None and _is_number(text[:-1]) else None


def slurm_time(text: str, opt: str) -> float | None:
    """srun's ``-t``/``--time``: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS, in
    seconds; UNLIMITED or INFINITE: none.  Flux's ``-t``/``--time-limit`` too: a number of
    minutes, or of s, m, h or d (``1.5h``), which no srun time is."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    value = fsd_seconds(text)
    if value is not None:
        if not value >= 1 or value == float("inf"):
            raise UsageError(f"{opt} must be at least a second, not {text!r}")
        return value
    days, dash, rest = text.partition("-")
    if not dash:
        days, rest = "0", text
    parts = rest.split(":")
    if not (days.isdecimal() and 1 <= len(parts) <= 3 and all(p.isdecimal() for p in parts)):
        raise UsageError(f"{opt} takes a time limit as srun's (MM, MM:SS, HH:MM:SS, D-HH, "
                         f"D-HH:MM, D-HH:MM:SS or UNLIMITED) or Flux's (30s, 10m, 1.5h, "
                         f"1d), not {text!r}")
    nums = [int(p) for p in parts]
    if dash:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, secs = nums + [0] * (3 - len(nums))
        hours += int(days) * 24
    elif len(nums) == 3:  # HH:MM:SS
        hours, minutes, secs = nums
    else:  # MM, MM:SS
        hours, minutes, secs = 0, nums[0], (nums[1] if len(nums) == 2 else 0)
    value = (hours * 60 + minutes) * 60 + secs
    if value < 1:
        raise UsageError(f"{opt} must be at least a second, not {text!r}")
    return float(value)


def _is_number(text: str) -> bool:
    return bool(text) and text.replace(".", "", 1).isdecimal()


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


def _postfixed_seconds(text: str) -> float | None:
    """GNU parallel's time with postfixes (``90``, ``1.5m``, ``1h30m``, ``2d``) in seconds;
    None when ``text`` is not one."""
    if _is_number(text):
        return float(text)
    total, digits = 0.0, ""
    for c in text.lower():
        if c in _FSD_UNITS:
            if not _is_number(digits):
                return None
            total, digits = total + float(digits) * _FSD_UNITS[c], ""
        else:
            digits += c
    return total if text and not digits else None


def duration(text: str, opt: str) -> float:
    """GNU parallel's duration: seconds, or numbers with s, m, h or d (``--delay 1.5m``,
    ``1h30m``)."""
    value = _postfixed_seconds(text)
    if value is None:
        raise UsageError(f"{opt} takes seconds (or 2m, 1h30m...), not {text!r}")
    return value


def settle_time(text: str, opt: str) -> str:
    """``--mem-settle``: seconds (:func:`duration`), or ``off``."""
    if text != "off":
        duration(text, opt)
    return text


def run_timeout(text: str, opt: str) -> float | str:
    """``--timeout``: a positive duration (:func:`duration`) in seconds, or GNU parallel's
    percentage of the median successful task's run (``200%``, kept as text)."""
    if text.endswith("%"):
        if not _is_number(text[:-1]) or not float(text[:-1]) > 0:
            raise UsageError(f"{opt} takes seconds or a percentage (200%), not {text!r}")
        return text
    value = duration(text, opt)
    if not value > 0:
        raise UsageError(f"{opt} must be a positive number of seconds, not {text!r}")
    return value


def number(minimum: float) -> Check:
    """A number of seconds from ``minimum`` (kept as text: the launcher reads it)."""

    def check(text: str, opt: str) -> str:
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{opt} takes a number, not {text!r}") from None
        if not value >= minimum or value == float("inf"):
            raise UsageError(f"{opt} must be at least {minimum:g}, not {text!r}")
        return text

    return check


def choice(*allowed: str) -> Check:
    def check(text: str, opt: str) -> str:
        if text not in allowed:
            raise UsageError(f"{opt} takes {_or(allowed)}, not {text!r}")
        return text

    return check


def header_lines(value: str, opt: str) -> str:
    """GNU parallel's ``--header``: ``:`` (the first line), or a number of lines (--pipe)."""
    if value != ":" and not value.isdecimal():
        raise UsageError(f"{opt} takes : (the first line) or, with --pipe, a number of "
                         f"lines, not {value!r}")
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


def separator(value: str, opt: str) -> str:
    """``--arg-sep``, ``--arg-file-sep``: a word of its own, not an option's."""
    if not value or value.strip() != value or value.startswith("-") or value.endswith("+"):
        raise UsageError(f"{opt} takes a word that starts an input source (as :::), not "
                         f"{value!r}")
    return value


#: Open MPI's --rank-by objects: a node's ranks numbered consecutively (by whichever of
#: its objects: pmrun binds a node's ranks in that order), or one a node in turn.
_RANK_BY = {"slot": "block", "hwthread": "block", "core": "block", "l1cache": "block",
            "l2cache": "block", "l3cache": "block", "package": "block", "socket": "block",
            "numa": "block", "board": "block", "fill": "block", "span": "block",
            "node": "cyclic"}


def rank_by(value: str, opt: str) -> str:
    """Open MPI's ``--rank-by OBJECT[:SPAN|:FILL]``: block or cyclic (:data:`_RANK_BY`)."""
    word = value.split(":")[0].lower()
    if word not in _RANK_BY:
        raise UsageError(f"{opt} takes {_or(sorted(_RANK_BY))}, not {value!r}")
    return _RANK_BY[word]


def report_to(value: str, opt: str) -> str:
    """Open MPI's ``--report-pid``: ``-`` (stdout), ``+`` (stderr) or a file to write."""
    return value if value in ("-", "+") else writable_file(value, opt)


def cpu_list(value: str, opt: str) -> str:
    """Open MPI's ``--cpu-list 0,2-3``: CPU numbers and ranges, as ``--bind-to user:``."""
    from pm.agent.topology import MOST_CPUS

    cpus: list[str] = []
    for part in value.split(","):
        lo, dash, hi = part.partition("-")
        if not (lo.isdecimal() and (not dash or (hi.isdecimal() and int(hi) >= int(lo)))):
            raise UsageError(f"{opt} takes CPU numbers and ranges (0,2-3), not {value!r}")
        if int(hi if dash else lo) >= MOST_CPUS:
            raise UsageError(f"{opt} {value}: no machine has a CPU {hi if dash else lo} "
                             f"(they go up to {MOST_CPUS - 1} at most)")
        cpus += map(str, range(int(lo), int(hi if dash else lo) + 1))
    return ",".join(cpus)


def _runs(cpus: str) -> str:
    """:func:`cpu_list`'s words again, runs of consecutive CPUs as ranges (pure)."""
    out: list[list[int]] = []
    for cpu in map(int, cpus.split(",")):
        if out and cpu == out[-1][1] + 1:
            out[-1][1] = cpu
        else:
            out.append([cpu, cpu])
    return ",".join(f"{lo}-{hi}" if hi > lo else str(lo) for lo, hi in out)


def mpi_kind(value: str, opt: str) -> str:
    """``--mpi``: pmrun's auto, pmix, pmi, none; srun's plugin names as they mean here
    (``pmi2``: PMI only; ``pmix_v4``: PMIx)."""
    if value in ("auto", "pmix", "pmi", "none", "list"):  # list: srun's --mpi=list
        return value
    if value == "pmi2":
        return "pmi"
    if value.startswith("pmix_v") and value[6:].isdecimal():
        return "pmix"
    raise UsageError(f"{opt} takes auto, pmix, pmi or none (srun's pmi2, pmix_vN), not "
                     f"{value!r}")


def _or(words: tuple[str, ...] | list[str]) -> str:
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def shard_column(value: str, opt: str) -> str:
    """GNU parallel's ``--shard``/``--bin``/``--group-by`` COLUMN: a number from 1, or a
    column's name."""
    column, _, perl = value.strip().partition(" ")
    if perl.strip():
        raise UsageError(f"{opt} {value!r}: pmrun takes the column's value as it is (a "
                         "number from 1, or a --header : name), not a perl expression on it")
    if not column or column == "0" or column.startswith("-"):
        raise UsageError(f"{opt} takes a column: a number from 1, or a name with --header :")
    return column


def text(value: str, opt: str) -> str:
    if not value:
        raise UsageError(f"{opt} takes a value, not an empty string")
    return value


#: GNU parallel's short --halt values.
_HALT_SHORT = {"0": "never", "1": "soon,fail=1", "2": "now,fail=1", "-1": "soon,success=1",
               "-2": "now,success=1"}


def halt_policy(value: str, opt: str) -> str:
    """GNU parallel's ``--halt``: ``never``, or ``soon|now,fail|success|done=N|P%`` (also
    0, 1, 2, -1, -2), as ``when,why=N`` or ``when,why=P%``."""
    given = _HALT_SHORT.get(value.strip(), value.strip())
    if given == "never":
        return given
    when, _, rule = given.partition(",")
    why, _, count = rule.partition("=")
    digits = count[:-1] if count.endswith("%") else count
    ok = when in ("soon", "now") and why in ("fail", "success", "done") and digits.isdecimal()
    if not ok or int(digits) < 1 or (count.endswith("%") and int(digits) > 100):
        raise UsageError(f"{opt} takes never, or soon|now,fail|success|done=N (or N%), "
                         f"e.g. now,fail=1 (also 0, 1, 2, -1, -2), not {value!r}")
    return given


def regex(value: str, opt: str) -> str:
    """A regular expression (checked here, used by whoever takes the option)."""
    import re

    try:
        re.compile(value)
    except re.error as exc:
        raise UsageError(f"{opt} {value!r}: not a regular expression ({exc})") from None
    if not value:
        raise UsageError(f"{opt} takes a value, not an empty string")
    return value


def _bcast_dest(value: str, opt: str) -> str:
    if not value:
        raise UsageError(f"{opt}= needs a path (or no =)")
    return value


def _yes_no(value: str, opt: str) -> bool:
    if value.lower() not in ("yes", "no"):
        raise UsageError(f"{opt} takes =yes, =no or nothing, not {value!r}")
    return value.lower() == "yes"


def _off(value: str, opt: str) -> None:
    if value.lower() != "off":
        raise UsageError(f"{opt} takes =off or nothing, not {value!r}")


#: srun's flags that take an optional ``=VALUE`` (the option's value from it; None: unset).
_OPTIONAL_VALUE: dict[str, Callable[[str, str], object]] = {
    "--bcast": _bcast_dest, "--send-libs": _yes_no, "--no-kill": _off,
    "--propagate": lambda value, opt: propagate_list(value, opt)}


def umask_value(value: str, opt: str) -> int:
    """A file mode creation mask, in octal as umask writes it (022, 0027)."""
    try:
        mask = int(value, 8)
    except ValueError:
        mask = -1
    if not 0 <= mask <= 0o777:
        raise UsageError(f"{opt} takes a mask in octal, 022 or 0027, not {value!r}")
    return mask


def directory(value: str, opt: str) -> str:
    """A directory here: its absolute path; refused when it is none."""
    if not os.path.isdir(value):
        why = "not a directory" if os.path.exists(value) else "no such directory"
        raise UsageError(f"{opt} {value}: {why}")
    return os.path.abspath(value)


def ranks_directory(value: str, opt: str) -> str:
    """A directory of the ranks' (-wdir, --path, --prefix): its absolute path, a relative
    one from pmrun's directory (as Hydra makes it).  Whether it is a directory is checked
    once the command line is read, and here only when every rank runs on this machine
    (:func:`_ranks_directories`): a node's scratch directory need not exist where pmrun
    runs."""
    return os.path.abspath(value)


def results_dir(value: str, opt: str) -> str:
    """A directory pmrun makes if need be (GNU parallel's ``--results``): refused when it,
    or the nearest part of its path that exists, is not a directory."""
    text(value, opt)
    if value.endswith((".csv", ".tsv", ".json")) and "{" not in value:
        raise UsageError(f"{opt} {value}: GNU parallel's table of results (CSV, TSV, JSON) "
                         "is not written by pmrun: give a folder, or a name with "
                         "replacement strings")
    # (One with replacement strings: the folder its fixed start names.)
    part = os.path.abspath(value.split("{", 1)[0] or ".")
    while not os.path.exists(part):
        part = os.path.dirname(part)
    if not os.path.isdir(part):
        raise UsageError(f"{opt} {value}: {part} is not a directory")
    return value


def readable_or_stdin(value: str, opt: str) -> str:
    return value if value == "-" else readable_file(value, opt)


#: What each pipe named on the command line held, read once (``-f <(...)`` reads as empty
#: the second time; the quick check and the full path both look).
_TEXTS: dict[str, str] = {}


def file_text(path: str) -> str:
    """The text of ``path`` (a pipe's as it was first read); raises ``OSError``,
    ``UnicodeDecodeError``."""
    text = _TEXTS.get(path)
    if text is None:
        with open(path) as f:
            text = f.read()
        if not os.path.isfile(path):
            _TEXTS[path] = text
    return text


def readable_file(value: str, opt: str) -> str:
    """A file to read: a regular one, or a pipe (``-a <(seq 10)``, ``-f /dev/stdin``)."""
    if not os.path.exists(value):
        raise UsageError(f"{opt} {value}: no such file")
    if os.path.isdir(value):
        raise UsageError(f"{opt} {value}: is a directory")
    if not os.access(value, os.R_OK):
        raise UsageError(f"{opt} {value}: cannot be read (permission denied)")
    return value


def writable_file(value: str, opt: str) -> str:
    """A file pmrun will write at the end of the job: checked now, not after the job."""
    if not value:
        raise UsageError(f"{opt} takes a file to write, not ''")
    if value.startswith("-") and len(value) > 1:  # (--profile -n 8: not a file named -n)
        raise UsageError(f"{opt} takes a file to write, not the option {value} (./{value} "
                         "names a file so called)")
    folder = os.path.dirname(value) or "."
    if os.path.isdir(value):
        raise UsageError(f"{opt} {value}: is a directory")
    if not os.path.isdir(folder):
        why = "not a directory:" if os.path.exists(folder) else "no such directory"
        raise UsageError(f"{opt} {value}: {why} {folder}")
    if os.path.exists(value) and not os.access(value, os.W_OK):
        raise UsageError(f"{opt} {value}: cannot be written (permission denied)")
    if not os.path.exists(value) and not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{opt} {value}: cannot create a file in {folder} (permission denied)")
    return value


def env_name(value: str, opt: str) -> str:
    """One environment variable's name."""
    if not value or "=" in value or "\0" in value or value[0].isdecimal():
        raise UsageError(f"{opt} takes an environment variable's name, not {value!r}")
    return value


def env_names(value: str, opt: str) -> list[str]:
    names = [v for v in value.split(",") if v]
    for name in names:
        if "=" in name:
            raise UsageError(f"{opt} takes variable names separated by commas, not {name!r}")
    return names


def out_pattern(value: str, opt: str) -> str:
    if (opt == "--output" and _directives(value)) or (opt == "-o" and _flux_option(value)):
        return value  # Open MPI 5's --output tag, Flux's -o cpu-affinity=... (_open_mpi_output)
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


def iface(value: str, opt: str) -> str:
    """An interface name (it must exist here: the head listens on it too) or an address."""
    import socket

    text(value, opt)
    names = [name for _, name in socket.if_nameindex()]
    if value not in names and not _is_address(value):
        some = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        raise UsageError(f"{opt} {value}: no such interface here ({some}) and not an "
                         "IP address")
    return value


def local_address(value: str, opt: str) -> str:
    """Hydra's ``-localhost HOST``: the launching node's address (the name resolved here)."""
    import socket

    text(value, opt)
    if _is_address(value):
        return value
    try:
        return str(socket.getaddrinfo(value, None, socket.AF_INET)[0][4][0])
    except (OSError, UnicodeError):
        raise UsageError(f"{opt} {value}: not an address, and no address for that name "
                         "here") from None


def _is_address(value: str) -> bool:
    import socket

    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, value)
        except OSError:
            continue
        return True
    return False


def bind_to(value: str, opt: str) -> str:
    return _binding(value, opt, "parse_bind", "--bind-to")


#: srun's --cpu-bind types as pmrun's --bind-to targets.
_SRUN_BIND = {"none": "none", "no": "none", "cores": "core", "threads": "hwthread",
              "sockets": "package", "ldoms": "numa", "rank": "core"}


def srun_cpu_bind(value: str, opt: str) -> str:
    """srun's ``--cpu-bind=[quiet|verbose,]TYPE``, checked (:func:`cpu_bind_of` reads it)."""
    cpu_bind_of(value, opt)
    return value


def cpu_bind_of(value: str, opt: str) -> tuple[str, bool]:
    """srun's ``--cpu-bind`` as pmrun's ``--bind-to`` value, and whether it says verbose:
    none, cores, threads, sockets, ldoms, ``map_cpu:0,2`` (a CPU each rank),
    ``mask_cpu:0x3,0xc`` (a mask each rank).  UsageError for what pmrun cannot do."""
    verbose = False
    rest = value
    while True:
        word, sep, tail = rest.partition(",")
        if word.lower() in ("verbose", "v", "quiet", "q") and sep:
            verbose = verbose or word.lower() in ("verbose", "v")
            rest = tail
            continue
        break
    kind, colon, body = rest.partition(":")
    kind = kind.lower()
    if kind in ("verbose", "v", "quiet", "q") and not colon:
        return "core", kind in ("verbose", "v")  # srun's default type: cores
    if kind in _SRUN_BIND and not colon:
        return _SRUN_BIND[kind], verbose
    try:
        if kind == "map_cpu" and body:
            ranks = [c.replace("*", "x") for c in body.split(",")]
            if all(r.partition("x")[0].isdecimal() for r in ranks):
                return _binding("user:" + ",".join(ranks), opt, "parse_bind", "--bind-to"), verbose
        if kind == "mask_cpu" and body:
            sets = []
            for mask in body.split(","):
                bits = int(mask, 16)
                if bits <= 0:
                    raise ValueError(mask)
                sets.append("+".join(str(b) for b in range(bits.bit_length()) if bits >> b & 1))
            return "user:" + ",".join(sets), verbose
    except ValueError:
        pass
    raise UsageError(f"{opt} takes srun's none, cores, threads, sockets, ldoms, map_cpu:LIST "
                     f"or mask_cpu:LIST (verbose, before them), not {value!r}")


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


def _flux_shell_option(out: Parsed) -> None:
    """Flux's ``-o cpu-affinity=per-task`` (``off``, ``on``), ``-o pmi=LIST``, ``-o
    verbose``, as pmrun's --bind-to, --mpi, -v; another Flux shell option is refused in
    one line (it was a file named ``cpu-affinity=per-task`` for the ranks' stdout)."""
    values = out.values
    given = values.get("output")
    if (not isinstance(given, str) or out.used.get(BY_NAME["-o"]) != "-o"
            or not _flux_option(given)):
        return
    del values["output"]
    name, _, value = given.partition("=")
    if name == "cpu-affinity" and value in ("per-task", "on", "off"):
        values.setdefault("bind_to", "core" if value == "per-task" else "none")
    elif name == "pmi" and value:
        values.setdefault("mpi", "pmix" if "pmix" in value.split(",") else "pmi")
    elif name == "verbose":
        out.verbose += 1
        out.used.setdefault(BY_NAME["-v"], "-o verbose")  # (as -v: the full path says it)
    else:
        raise UsageError(f"-o {given}: of Flux's shell options pmrun takes cpu-affinity="
                         "per-task|on|off, pmi=LIST and verbose (an -o pattern names files: "
                         "-o out.%t)")


def _open_mpi_output(out: Parsed) -> None:
    """Open MPI 5's ``--output`` directives and ``--display`` items as pmrun's options: a
    ``--output`` value made of directives only (``tag,timestamp``) is Open MPI's, any
    other a file pattern (srun's ``--output``, Hydra's ``-outfile-pattern``)."""
    values = out.values
    for item in str(values.pop("display", "")).lower().split(","):
        if item:
            values[_DISPLAY[item]] = True
    given = values.get("output")
    if (not isinstance(given, str) or out.used.get(BY_NAME["--output"]) != "--output"
            or not _directives(given)):
        return
    items = given.split(",")
    del values["output"]
    for item in items:
        if item in _OUTPUT:
            key, value = _OUTPUT[item]
            values.setdefault(key, value)
        elif item.startswith("dir="):
            values["output_filename"] = item[4:]
        else:
            raise UsageError(f"--output {given}: of Open MPI's directives pmrun takes tag, "
                             f"timestamp, merge-stderr-to-stdout and dir=DIR, not {item!r} "
                             f"(an --output pattern names files: --output out.%r)")


def _pe_of(value: str) -> tuple[str, str]:
    """Open MPI's ``TARGET:PE=N`` (N cores per rank) as (TARGET, N); (value, "") without."""
    head, sep, last = value.rpartition(":")
    if sep and last[:3].upper() == "PE=":
        return head, last[3:]
    return value, ""


#: Open MPI's ppr:N:RESOURCE objects, as pmrun's topology names them.
PPR_OBJECTS = {"node": "node", "package": "package", "socket": "package", "numa": "numa",
               "l3cache": "l3cache", "core": "core", "hwthread": "hwthread"}


def _ppr(value: str, opt: str) -> str:
    """Open MPI 4's ``--ppr N:OBJECT``, as ``--map-by ppr:N:OBJECT``."""
    try:
        return map_by(f"ppr:{value}", opt)
    except UsageError:
        raise UsageError(f"{opt} {value!r}: Open MPI's N:RESOURCE takes a count and "
                         f"{_or(sorted(PPR_OBJECTS))}") from None


def map_by(value: str, opt: str) -> str:
    # Open MPI's :OVERSUBSCRIBE means nothing here: pmrun never refuses more ranks than cores.
    value = ":".join(w for w in value.split(":") if w.upper() != "OVERSUBSCRIBE") or "core"
    target, pe = _pe_of(value)
    if target != value:
        if not pe.isdecimal() or int(pe) < 1:
            raise UsageError(f"{opt} {value!r}: PE= takes a number of cores per rank")
        map_by(target, opt)
        return value
    if value.lower().startswith("ppr:"):  # Open MPI's N ranks per node, package, core...
        count, _, per = value[4:].partition(":")
        if per.lower() not in PPR_OBJECTS or not count.isdecimal() or \
                not 1 <= int(count) <= MOST_RANKS:
            raise UsageError(f"{opt} {value!r}: Open MPI's ppr:N:RESOURCE takes a count and "
                             f"{_or(sorted(PPR_OBJECTS))}")
        return value
    if value.lower() == "node":  # Open MPI's: a rank a node, round and round (cyclic)
        return value
    if value.lower().startswith("rankfile"):  # Open MPI 5's rankfile:file=FILE
        key, _, path = value[len("rankfile:"):].partition("=")
        if value[8:9] != ":" or key.lower() != "file" or not path:
            raise UsageError(f"{opt} {value!r}: Open MPI's rankfile mapping is "
                             "rankfile:file=FILE")
        try:
            readable_file(path, opt)
        except UsageError as exc:
            raise UsageError(f"{opt} {value}: {str(exc).rsplit(': ', 1)[-1]}") from None
        return value
    return _binding(value, opt, "parse_map", "--map-by")


#: srun's second and third levels: how a node's tasks spread over its sockets and cores.
_CPU_LEVELS = ("*", "block", "cyclic", "fcyclic")


def rankmap(value: str, opt: str) -> str:
    """Hydra's ``-rankmap``: checked now (pure), read again for the job."""
    from pm.common.rankfile import RankfileError, parse_rankmap

    try:
        parse_rankmap(value)
    except RankfileError as exc:
        raise UsageError(str(exc).replace("-rankmap", opt, 1)) from None
    return value


def distribution(value: str, opt: str) -> str:
    """srun's ``-m``/``--distribution``: ``block`` (the default: each node's ranks in one
    run), ``cyclic`` (one rank a node, round and round), ``plane=N`` (N ranks a node at a
    time), each as ``block``, ``cyclic`` or ``plane=N``.  The levels after ``:`` (over a
    node's sockets and cores) and ``,Pack``/``,NoPack`` are taken: within a node, ranks are
    bound as ``--bind-to``/``--map-by`` say."""
    word, _, pack = value.partition(",")
    first, *levels = word.split(":")
    first = first.strip().lower()
    if first.startswith("plane="):
        size = first[len("plane="):]
        if not size.isdecimal() or not 1 <= int(size) <= MOST_RANKS:
            raise UsageError(f"{opt} {value}: plane= takes the ranks a node gets at a time "
                             f"(a number from 1 to {MOST_RANKS})")
        first = f"plane={int(size)}"
    elif first not in ("block", "cyclic", "arbitrary", "*"):
        raise UsageError(f"{opt} takes block, cyclic, plane=N or arbitrary (srun's), not "
                         f"{value!r}")
    if len(levels) > 2 or any(lv.strip().lower() not in _CPU_LEVELS for lv in levels):
        raise UsageError(f"{opt} {value}: after ':' srun takes block, cyclic or fcyclic (how a "
                         "node's ranks spread over its sockets and cores)")
    if pack and pack.strip().lower() not in ("pack", "nopack"):
        raise UsageError(f"{opt} {value}: after ',' srun takes Pack or NoPack")
    return "block" if first == "*" else first


def slurm_distribution(env: Mapping[str, str]) -> str:
    """The allocation's distribution (``SLURM_DISTRIBUTION``, from ``sbatch -m cyclic``),
    which srun would apply: its first level; ``block`` if none or not one pmrun takes."""
    text = env.get("SLURM_DISTRIBUTION", "").strip()
    try:
        given = distribution(text, "SLURM_DISTRIBUTION") if text else "block"
    except UsageError:
        return "block"  # (unknown: the allocation's business, not ours)
    # (arbitrary without its file: sbatch's own placement, which srun's would keep)
    return "block" if given == "arbitrary" and not env.get("SLURM_HOSTFILE") else given


def taskmap(value: str, opt: str) -> str:
    """Flux's ``--taskmap``: ``block``, ``cyclic``, or ``cyclic:N`` (N tasks a node at a time:
    srun's ``plane=N``)."""
    kind, colon, size = value.partition(":")
    if kind == "block" and not colon:
        return "block"
    if kind == "cyclic" and not colon:
        return "cyclic"
    if kind == "cyclic" and size.isascii() and size.isdecimal() and int(size) >= 1:
        return "cyclic" if int(size) == 1 else f"plane={int(size)}"
    raise UsageError(f"{opt} takes block, cyclic or cyclic:N (Flux's), not {value!r}")


def looks_like_distribution(word: str) -> bool:
    """Whether ``word`` after ``-m`` is srun's distribution (``-m cyclic``), not the command
    of GNU parallel's ``-m`` (which takes no value)."""
    first = word.partition(",")[0].split(":")[0].lower()
    return first in ("block", "cyclic", "arbitrary") or first.startswith("plane=")


def _binding(value: str, opt: str, parser: str, spelled: str) -> str:
    from pm.agent import binding

    try:
        getattr(binding, parser)(value)
    except binding.BindingError as exc:  # its message, with the option as the user spelled it
        raise UsageError(str(exc).replace(spelled, opt, 1)) from None
    return value


def hosts(value: str, opt: str) -> str:
    from pm.common.hostlist import HostlistError, parse_hosts_option

    try:
        if not parse_hosts_option(value):
            raise UsageError(f"{opt} names no host")
    except HostlistError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return value


def sshlogin(value: str, opt: str) -> str:
    """GNU parallel's ``-S [N/]HOST,...`` (``:`` is this machine) as a ``-hosts`` value
    (``HOST:N``): N tasks at once on HOST."""
    out = []
    for item in value.split(","):
        count, slash, host = item.strip().rpartition("/")
        if slash and not (count.isdecimal() and int(count) > 0):
            raise UsageError(f"{opt} takes [N/]HOST,... (N tasks at once on HOST), not {item!r}")
        host = "localhost" if host == ":" else host
        out.append(f"{host}:{count}" if slash else host)
    return hosts(",".join(out), opt)


def sshloginfile(value: str, opt: str) -> str:
    """GNU parallel's ``--slf FILE``: a ``-S`` value a line (``#`` comments), as ``-hosts``."""
    readable_file(value, opt)
    try:
        lines = [line.split("#", 1)[0].strip() for line in file_text(value).splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opt} {value}: cannot be read ({exc})") from None
    given = ",".join(line for line in lines if line)
    if not given:
        raise UsageError(f"{opt} {value}: names no host")
    return sshlogin(given, f"{opt} {value}:")


def _rpl_rule(value: str, opt: str) -> str:
    from pm.ensemble.inputs import rpl_rule

    return rpl_rule(value, opt)


def verbatim(value: str, opt: str) -> str:
    """Any string, the empty one too (nothing to refuse)."""
    return value


def delimiter(value: str, opt: str) -> str:
    """GNU parallel's ``-d DELIM``: one character, or ``\\n``, ``\\t``, ``\\0``."""
    value = {"\\n": "\n", "\\t": "\t", "\\0": "\0", "\\\\": "\\"}.get(value, value)
    if len(value) != 1:
        raise UsageError(f"{opt} takes one character (or \\n, \\t, \\0), not {value!r}")
    return value


def hostfile(value: str, opt: str) -> str:
    readable_file(value, opt)
    from pm.common.hostlist import HostlistError, parse_hostfile

    try:
        if not parse_hostfile(file_text(value)):
            raise UsageError(f"{opt} {value}: names no host")
    except HostlistError as exc:
        raise UsageError(f"{opt} {value}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opt} {value}: cannot be read ({exc})") from None
    return value


def size(value: str, opt: str) -> str:
    from pm.agent.admission import SizeError, parse_size

    try:
        parse_size(value, total=1 << 40)  # a percentage: of the node's memory, known there
    except SizeError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return value


def task_size(value: str, opt: str) -> str:
    """A task's memory (``--mem-per-task 2G``): a size, not a share of a node's memory."""
    from pm.agent.admission import SizeError, parse_size

    try:
        parse_size(value)
    except SizeError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return value


def byte_size(value: str, opt: str) -> str:
    """A size in bytes as GNU parallel reads it (``10M``, ``512k``: 524288 and 512000;
    ``--block``, ``--memfree``), at least one."""
    from pm.agent.admission import SizeError, parallel_size

    try:
        n = parallel_size(value)
    except SizeError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    if n < 1:
        raise UsageError(f"{opt} takes a size in bytes (e.g. 1M), not {value!r}")
    return value


def load_rule(value: str, opt: str) -> str:
    """``--load``: running threads at most, or ``+N``, ``-N``, ``N%`` of the CPU threads, or
    a file that says one."""
    from pm.ensemble.gates import load_file, parse_load

    try:
        return parse_load(value)
    except ValueError as exc:
        if os.path.isfile(value):  # GNU parallel's --load FILE: what it says, read again
            try:
                load_file(value)
            except (OSError, ValueError) as why:
                raise UsageError(f"--load {value}: {getattr(why, 'strerror', None) or why}"
                                 ) from None
            return value
        raise UsageError(str(exc)) from None


def _read_by(parse: Callable[[str], object], value: str) -> str:
    """``value``, if ``parse`` reads it; else the ValueError it raised is the refusal."""
    try:
        parse(value)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return value


def limit_command(value: str, opt: str) -> str:
    """``--limit``: a shell command, or ``mem SIZE``, ``load N``, ``io PCT``."""
    from pm.ensemble.gates import parse_limit

    return _read_by(parse_limit, value)


def term_sequence(value: str, opt: str) -> str:
    """``--termseq``: signals and the milliseconds to wait after each."""
    from pm.ensemble.timeouts import parse_termseq

    return _read_by(parse_termseq, value)


#: Signals --forward-signals refuses: uncatchable, or pmrun's own (a fault of its process,
#: its children's ends, its pipes).
_UNFORWARDABLE = ("KILL", "STOP", "SEGV", "BUS", "FPE", "ILL", "TRAP", "CHLD", "PIPE")


def signal_list(value: str, opt: str) -> str:
    """``--forward-signals``: signals by name (``SIGALRM``, ``ALRM``) or number, comma
    separated, as their numbers (``14,28``)."""
    nums = []
    for word in (w.strip() for w in value.split(",")):
        sig = _signal_named(word)
        if sig is None:
            raise UsageError(f"{opt} takes signals by name or number (SIGUSR1,SIGALRM or "
                             f"10,14), not {word!r}")
        if sig.name[3:] in _UNFORWARDABLE:
            raise UsageError(f"{opt}: {sig.name} cannot be forwarded (" + (
                "it cannot be caught" if sig.name in ("SIGKILL", "SIGSTOP") else
                "pmrun's own") + ")")
        nums.append(str(int(sig)))
    return ",".join(nums)


def _signal_named(word: str) -> signal.Signals | None:
    """``SIGUSR1``, ``usr1`` or ``10`` as a signal; None if it names none."""
    import signal

    try:
        if word.isdecimal():
            return signal.Signals(int(word))
        return signal.Signals["SIG" + word.upper().removeprefix("SIG")]
    except (KeyError, ValueError):
        return None


def signal_before_end(value: str, opt: str) -> str:
    """srun's and Flux's ``--signal [R:]SIG[@TIME]``: ``NUM@SECONDS`` (TIME: seconds, or
    Flux's 30s, 2m, 1h; 60 without it)."""
    spec = value.removeprefix("R:")
    if spec.startswith("B:"):
        raise UsageError(f"{opt} {value}: B: signals a batch script's shell, which pmrun does "
                         "not run (give SIG@TIME: every rank gets it)")
    sig, at, when = spec.partition("@")
    named = _signal_named(sig)
    if named is None:
        raise UsageError(f"{opt} takes [R:]SIG[@TIME] (USR1@60, SIGTERM@2m), not {value!r}")
    secs: float | None = 60.0
    if at:
        secs = float(when) if when.isdecimal() else fsd_seconds(when)
        if secs is None:
            raise UsageError(f"{opt} {value}: TIME is seconds (or 30s, 2m, 1h), not {when!r}")
    return f"{int(named)}@{secs:g}"


#: srun's --hint words as pmrun's binding (--bind-to, --map-by), which -c N multiplies.
_HINTS = {"nomultithread": ("core", None), "compute_bound": ("core", None),
          "multithread": ("hwthread", "hwthread"), "memory_bound": ("core", "package")}


def srun_hint(value: str, opt: str) -> str:
    """srun's ``--hint``: nomultithread, compute_bound, multithread or memory_bound."""
    word = value.lower()
    if word not in _HINTS:
        raise UsageError(f"{opt} takes {', '.join(_HINTS)}, not {value!r}")
    return word


def job_name(value: str, opt: str) -> str:
    """srun's ``-J NAME``: words a file name and an srun option can hold."""
    if not value or any(c in value for c in "/\0\n") or value.isspace():
        raise UsageError(f"{opt} takes a name (no slash or new line), not {value!r}")
    return value


_FREQ_WORDS = ("low", "medium", "high", "highm1")
_GOVERNORS = ("conservative", "ondemand", "performance", "powersave", "userspace", "schedutil")


def cpu_freq(value: str, opt: str) -> str:
    """srun's ``--cpu-freq [MIN-]MAX[:GOVERNOR]`` or ``GOVERNOR``: kHz or low, medium,
    high, highm1; Slurm's governors."""
    freq, colon, governor = value.partition(":")
    if not colon and freq.lower() in _GOVERNORS:
        return value
    parts = freq.split("-") if freq else []
    good = (len(parts) <= 2 and all(p.isdecimal() or p.lower() in _FREQ_WORDS for p in parts)
            and (not colon or governor.lower() in _GOVERNORS) and (parts or colon))
    if not good:
        raise UsageError(f"{opt} takes srun's frequency: kHz or low, medium, high, highm1, "
                         "as MAX or MIN-MAX, and :GOVERNOR (or a governor alone: "
                         f"{', '.join(_GOVERNORS)}), not {value!r}")
    return value


#: srun's --slurmd-debug levels by name (or a number).
_SLURMD_LEVELS = ("quiet", "fatal", "error", "info", "verbose", "debug", "debug2", "debug3",
                  "debug4", "debug5")


def acctg_freq(value: str, opt: str) -> str:
    """srun's ``--acctg-freq``: seconds, or DATATYPE=SECONDS pairs separated by commas
    (``task=30,energy=60``)."""
    for item in value.split(","):
        kind, eq, secs = item.partition("=")
        if not (secs.isdecimal() and kind.isalpha() if eq else kind.isdecimal()):
            raise UsageError(f"{opt} takes seconds or DATATYPE=SECONDS pairs (task=30,"
                             f"energy=60), not {value!r}")
    return value


def slurmd_debug(value: str, opt: str) -> str:
    """srun's ``--slurmd-debug``: a level of slurmstepd's log, by number or name."""
    if not (value.isdecimal() or value.lower() in _SLURMD_LEVELS):
        raise UsageError(f"{opt} takes a number or one of {', '.join(_SLURMD_LEVELS)}, not "
                         f"{value!r}")
    return value


def tune_files(value: str, opt: str) -> str:
    """Open MPI's ``--tune FILE[,FILE]`` (``--am``): files that can be read."""
    for path in value.split(","):
        readable_file(path, opt)
    return value


def personality(value: str, opt: str) -> str:
    """Open MPI 5's ``--personality``: ompi is the command line pmrun reads."""
    if value.lower() != "ompi":
        raise UsageError(f"{opt} {value}: pmrun reads Open MPI's command line (ompi), and "
                         "Hydra's, srun's, Flux's and GNU parallel's, without a personality")
    return value


def gpus_count(value: str, opt: str) -> int:
    """--gpus-per-task N (N >= 1); Hydra's ``auto`` (its default: 0, nothing dealt)."""
    if value.lower() == "auto":
        return 0
    count = whole(1, 4096)(value, opt)
    assert isinstance(count, int)
    return count


def memory_kinds(value: str, opt: str) -> str:
    """Hydra's ``-memory-alloc-kinds``: memory kinds separated by commas, each KIND or
    KIND:RESTRICTORS (``mpi,system,cuda:device``), as MPI 4.1's info key spells them."""
    for kind in value.split(","):
        name, _, restrictors = kind.partition(":")
        words = [name, *restrictors.split(":")] if restrictors else [name]
        if not all(w and all(c.isalnum() or c in "_-" for c in w) for w in words):
            raise UsageError(f"{opt} takes memory kinds separated by commas (mpi,system,"
                             f"cuda:device), not {value!r}")
    return value


def mem_bind(value: str, opt: str) -> str:
    """srun's ``--mem-bind`` / Hydra's ``-membind`` (:func:`pm.agent.membind.parse`)."""
    from pm.agent.membind import parse

    try:
        parse(value)
    except ValueError as exc:
        raise UsageError(f"{opt}: {exc}") from None
    return value


def order_nodes(value: str, opt: str) -> str:
    """Hydra's ``-order-nodes``: ASCENDING (UP) or DESCENDING (DOWN)."""
    word = {"ascending": "ascending", "up": "ascending", "descending": "descending",
            "down": "descending"}.get(value.lower())
    if word is None:
        raise UsageError(f"{opt} takes ASCENDING or DESCENDING, not {value!r}")
    return word


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


#: Hydra's (and Intel MPI's Hydra's) default host file.
_HOST_FILE_VARS = ("HYDRA_HOST_FILE", "I_MPI_HYDRA_HOST_FILE")
#: Hydra's variables for its options, which a site's MPI module may set: option key,
#: variables (the first set counts), and whether they matter to a job on this machine's
#: hosts given by an allocation (the launcher only acts on hosts given: -hosts, -f).
_HYDRA_VARS = (
    ("launcher", ("HYDRA_LAUNCHER", "HYDRA_BOOTSTRAP", "I_MPI_HYDRA_BOOTSTRAP"), False),
    ("launcher_exec", ("HYDRA_LAUNCHER_EXEC", "HYDRA_BOOTSTRAP_EXEC",
                       "I_MPI_HYDRA_BOOTSTRAP_EXEC"), False),
    ("iface", ("HYDRA_IFACE", "I_MPI_HYDRA_IFACE"), True),
)


def _hydra_variables(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Hydra's ``HYDRA_LAUNCHER``, ``HYDRA_LAUNCHER_EXEC`` and ``HYDRA_IFACE`` (and
    Intel MPI's ``I_MPI_HYDRA_*``) where the command line does not give the option, for an
    MPI job on other hosts (where they mean something), checked as the option is."""
    if {"local_nodes", "agents", "tasks", "tasks_line"} & values.keys():
        return
    given = bool({"hosts", "hostfile"} & values.keys())
    allocation = bool(environ.get("SLURM_JOB_ID") and environ.get("SLURM_JOB_NODELIST"))
    checks = {"launcher": choice(*LAUNCHERS), "launcher_exec": text, "iface": iface}
    for key, names, in_allocation in _HYDRA_VARS:
        var = next((v for v in names if environ.get(v, "").strip()), None)
        if var is None or key in values or not (given or (in_allocation and allocation)):
            continue
        value = environ[var].strip()
        if key == "launcher" and value.lower() not in LAUNCHERS:
            # (Hydra's pbs, lsf, sge...: the site's setting for its own mpiexec)
            _warn(f"{var}={value} ignored: pmrun's launchers are {_or(LAUNCHERS)}")
            continue
        values[key] = checks[key](value.lower() if key == "launcher" else value, var)


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


def block_size(value: str, opt: str) -> str:
    """``--block``: a size in bytes, or ``-N`` (``--pipepart``: N blocks for each task slot,
    as GNU parallel's negative block size)."""
    if value.startswith("-") and value[1:].isdecimal():
        if int(value[1:]) < 1 or int(value[1:]) > MOST_RANKS:
            raise UsageError(f"{opt} -N takes N from 1 to {MOST_RANKS} blocks a task slot, "
                             f"not {value!r}")
        return value
    return byte_size(value, opt)


#: What -j takes, for the lines that refuse a value.
JOBS_FORMS = ("a whole number of tasks at once per host (0: no limit), +N, -N or N% of its "
              "CPU threads, or a file that says one")


def cpu_rule(text: str) -> bool:
    """Whether ``text`` is one of -j's forms that count a host's CPU threads, as GNU
    parallel's: ``+N`` (N more), ``-N`` (N fewer), ``N%`` (that share of them), or
    ``cores`` (one per CPU thread) (pure)."""
    if text[:1] in ("+", "-"):
        return text[1:].isdecimal()
    if text.endswith("%"):
        whole, dot, part = text[:-1].partition(".")
        return whole.isdecimal() and (part.isdecimal() if dot else True)
    return text == "cores"


def parse_jobs(text: str) -> int | str | None:
    """-j's value (or its file's text): a count, a :func:`cpu_rule`, or None (pure)."""
    text = text.strip()
    if text.isdecimal():
        return int(text)
    return text if text != "cores" and cpu_rule(text) else None


def jobs_value(given: str) -> int | str:
    """-j's value as the tasks take it: a count, a :func:`cpu_rule`, or what the file
    ``given`` says now (GNU parallel's ``-j FILE``).  :class:`UsageError` for a file
    that cannot be read or says none of these."""
    jobs = parse_jobs(given)
    if jobs is not None:
        return jobs
    try:
        with open(given, encoding="utf-8", errors="replace") as f:
            jobs = parse_jobs(f.read(4096))
    except OSError as exc:
        raise UsageError(f"-j {given}: {exc.strerror}") from None
    if jobs is None:
        raise UsageError(f"-j {given}: the file says no number of tasks (N, +N, -N or N%)")
    return jobs


def task_slots(value: str, opt: str) -> str:
    """``-j``: tasks at once per host (0 for no limit but memory), a :func:`cpu_rule`, or a
    file that says one (GNU parallel's ``-j procfile``, read again as tasks end)."""
    if parse_jobs(value) is None and not os.path.isfile(value):
        raise UsageError(f"{opt} takes {JOBS_FORMS}, not {value!r}")
    return value


def universe(value: str, opt: str) -> int | str:
    """Hydra's -usize: a number of ranks, SYSTEM (the slots given) or INFINITE."""
    if value.upper() in ("SYSTEM", "INFINITE"):
        return value.upper()
    try:
        count = int(value)
    except ValueError:
        raise UsageError(f"{opt} takes a number of ranks, SYSTEM or INFINITE, not {value!r}"
                         ) from None
    if count < 1:
        raise UsageError(f"{opt} must be at least 1")
    return count


#: Launchers (how agents start on hosts), with Hydra's names for them.
LAUNCHERS = ("local", "fork", "ssh", "rsh", "slurm", "exec", "persistent", "persist")


#: Options that may be given again, each time another file (GNU parallel's transfers).
FILE_LISTS = ("transfer", "returns", "trc", "basefiles")
#: Options given again for more (each a list of values; an ensemble's ``extra`` joins them
#: with NULs).
LISTS = (*FILE_LISTS, "rpl")


# ------------------------------------------------------------------ the table
FLAG, VALUE, PAIR, COUNT, ACTION, FILE, EXPORT = range(7)


class Opt:
    """One option: its spellings, where its value goes, how it is checked, and its help."""

    __slots__ = ("check", "const", "group", "help", "key", "kind", "local", "metavar", "names",
                 "quick")

    def __init__(self, names: str, key: str, check: Check | None = None, *, kind: int = VALUE,
                 const: object = True, metavar: str = "", help: str = "", group: str = "",
                 quick: bool = False, local: bool = False) -> None:
        self.names = tuple(names.split())
        self.key = key
        self.check = check
        self.kind = kind
        self.const = const
        self.metavar = metavar
        self.help = help
        self.group = group
        #: The quick path runs a job with this option (one node, nothing asyncio needs).
        self.quick = quick
        #: Belongs to one program of an MPMD job (Hydra's "local" options), not the job.
        self.local = local


PLACE = "Process placement"
ENV = "Environment"
IO = "Input and output"
LAUNCH = "Launch: how agents start on hosts"
TREE = "The agent tree and start-up analysis"
MEMORY = "Memory and task ensembles"
MISC = "Other"
GROUPS = (PLACE, ENV, IO, LAUNCH, TREE, MEMORY, MISC)

OPTIONS = (
    # Process placement
    Opt("-n -np --np --ntasks", "n", whole(1, MOST_RANKS), metavar="N", local=True, quick=True,
        group=PLACE,
        help="number of ranks of the program (default 1)"),
    Opt("-ppn --npernode -npernode --ntasks-per-node --tasks-per-node -perhost", "ppn",
        whole(1, MOST_RANKS), metavar="N",
        quick=True, group=PLACE,
        help="ranks per node (fills each node with N ranks, then wraps)"),
    Opt("-rr", "ppn", kind=FLAG, const=1, quick=True, group=PLACE,
        help="Intel MPI's: one rank a host in turn, round robin (-ppn 1)"),
    Opt("-N", "N", whole(0, MOST_RANKS), metavar="N", group=PLACE, quick=True,
        help="the first N hosts only (srun's and Flux's -N; Open MPI's -N is -ppn); of a "
             "task ensemble, the arguments each task takes (GNU parallel's -N)"),
    Opt("--nodes", "nodes", whole(1, MOST_RANKS), metavar="N", group=PLACE, quick=True,
        help="-N of an MPI job: its ranks on the first N hosts"),
    Opt("-hosts -host --host -H -w --nodelist -hostlist -machine -machines -machinelist",
        "hosts", hosts, metavar="H1,H2[:SLOTS]",
        group=PLACE, quick=True,
        help="hosts to run on, the ranks dealt to them in order, SLOTS at a time (1 without), "
             "round and round (Hydra's); node[01-04] ranges are expanded; inside a Slurm "
             "allocation, nodes of it are reached through Slurm (srun's -w)"),
    Opt("-order-nodes --order-nodes", "order_nodes", order_nodes, metavar="ASCENDING",
        group=PLACE,
        help="Hydra's: the hosts in the order of their slots, fewest first (DESCENDING: most "
             "first); a host without a count has one"),
    Opt("-skip-launch-node --skip-launch-node --nolocal -nolocal", "skip_launch", kind=FLAG,
        group=PLACE, help="no ranks on this machine, only on the other hosts given (Hydra's "
                          "-skip-launch-node, Open MPI's --nolocal)"),
    Opt("--exclude", "exclude", hosts, metavar="HOSTLIST", group=PLACE,
        help="inside a Slurm allocation, run on its nodes but these (srun's --exclude)"),
    Opt("-f -hostfile --hostfile -machinefile --machinefile", "hostfile", hostfile,
        metavar="FILE", group=PLACE, quick=True,
        help='hosts from FILE ("host", "host:4" or "host slots=4" per line)'),
    Opt("-usize --universe-size", "universe_size", universe, metavar="N", group=PLACE,
        quick=True,
        help="MPI universe size the ranks are told (room for MPI_Comm_spawn); SYSTEM: the "
             "slots given, INFINITE: no limit (default: the slots given with the hosts, else "
             "the job's size)"),
    Opt("--bind-to -bind-to -binding", "bind_to", bind_to, metavar="TARGET", quick=True,
        group=PLACE,
        help="none, hwthread, core, l3cache, numa, package, each with :N (N of them per "
             "rank) or :overload-allowed, or user:0+1,2"),
    Opt("--bind-to-core -bind-to-core", "bind_to", kind=FLAG, const="core", group=PLACE,
        help="Open MPI 1-4's: --bind-to core"),
    Opt("--bind-to-socket -bind-to-socket", "bind_to", kind=FLAG, const="package",
        group=PLACE, help="Open MPI 1-4's: --bind-to package"),
    Opt("--cpu-bind --cpu_bind", "cpu_bind", srun_cpu_bind, metavar="[verbose,]TYPE",
        quick=True, group=PLACE,
        help="srun's: none, cores, threads, sockets, ldoms (--bind-to none, core, hwthread, "
             "package, numa), map_cpu:0,2 or mask_cpu:0x3,0xc (a CPU or a mask each rank: "
             "--bind-to user:...); verbose: --report-bindings"),
    Opt("--mem-bind --mem_bind -membind --membind", "mem_bind", mem_bind, metavar="TYPE",
        group=PLACE,
        help="the ranks' NUMA memory: srun's none, local (their CPUs' nodes), rank, "
             "map_mem:0,1 or mask_mem:0x1,0x2 (a node or mask each rank), prefer and verbose "
             "before them; Hydra's firsttouch, bind:NODES, interleave:NODES"),
    Opt("-memory-alloc-kinds --memory-alloc-kinds", "memory_alloc_kinds", memory_kinds,
        metavar="KINDS", group=PLACE,
        help="Hydra's: the memory kinds MPI is asked to support (MPI 4.1's "
             "mpi_memory_alloc_kinds: mpi,system,cuda:device...), given to the ranks as the "
             "PMI job attribute PMI_mpi_memory_alloc_kinds"),
    Opt("--gpus-per-task -g -gpus-per-proc --gpus-per-proc", "gpus_per_task", gpus_count,
        metavar="N", group=PLACE,
        help="N GPUs for each rank: a node's ranks get its GPUs (those CUDA_VISIBLE_DEVICES, "
             "ROCR_VISIBLE_DEVICES... name, else all of them) N at a time, in that variable "
             "(srun's, Flux's -g, Hydra's -gpus-per-proc)"),
    Opt("--hint", "hint", srun_hint, metavar="HINT", quick=True, group=PLACE,
        help="srun's: nomultithread or compute_bound (a rank a core: --bind-to core), "
             "multithread (ranks fill the hardware threads: --bind-to hwthread --map-by "
             "hwthread), memory_bound (ranks spread over the sockets, a core each: --map-by "
             "package --bind-to core); -c N gives each rank N of them"),
    Opt("-c --cpus-per-task --cores-per-task --cpus-per-rank -cpus-per-rank --cpus-per-proc "
        "-cpus-per-proc", "cpus_per_task",
        whole(1), metavar="N", quick=True, group=PLACE,
        help="N cores for each rank, which it is bound to (srun's and Flux's -c, Open MPI "
             "4's --cpus-per-rank: --bind-to core:N)"),
    Opt("--use-hwthread-cpus -use-hwthread-cpus", "hwthread_cpus", kind=FLAG, quick=True,
        group=PLACE,
        help="a rank's CPUs (-c N, --map-by X:PE=N) are hardware threads, not cores (Open "
             "MPI's: --bind-to hwthread:N)"),
    Opt("-npersocket --npersocket", "npersocket", whole(1, MOST_RANKS), metavar="N",
        group=PLACE, help="Open MPI 4's: N ranks per package (--map-by ppr:N:package)"),
    Opt("--ppr -ppr", "map_by", _ppr, metavar="N:OBJECT", group=PLACE,
        help="Open MPI 4's: --map-by ppr:N:OBJECT"),
    Opt("--bycore -bycore", "map_by", kind=FLAG, const="core", group=PLACE,
        help="Open MPI 1-4's: --map-by core"),
    Opt("--byslot -byslot", "map_by", kind=FLAG, const="slot", group=PLACE,
        help="Open MPI 1-4's: --map-by slot"),
    Opt("--pernode -pernode", "ppn", kind=FLAG, const=1, group=PLACE,
        help="Open MPI's: a rank a node (-ppn 1)"),
    Opt("--map-by -map-by", "map_by", map_by, metavar="TARGET", quick=True, group=PLACE,
        help="slot, hwthread, core, l3cache, numa, package; Open MPI's ppr:N:node is -ppn N, "
             "node is --distribution cyclic, and TARGET:PE=N binds N cores per rank "
             "(--bind-to core:N)"),
    Opt("-rf --rankfile -rankfile", "rankfile", readable_file, metavar="FILE", group=PLACE,
        help="Open MPI's: each rank's host and cores from 'rank N=HOST slot=LIST' lines "
             "(--map-by rankfile:file=FILE; HOST +nK: the K-th host given)"),
    Opt("-rankmap --rankmap", "rankmap", rankmap, metavar="IDS", group=PLACE,
        help="Hydra's: each rank's node, its index in the host list (1,1,2,2; "
             "(FIRST,NODES,RANKS) blocks, [...]xN repeats)"),
    Opt("--distribution", "distribution", distribution, metavar="block|cyclic|plane=N",
        quick=True, group=PLACE,
        help="srun's -m: block (default: each node's ranks together), cyclic (a rank a node, "
             "round and round; Open MPI's --map-by node), plane=N (N ranks a node at a "
             "time)"),
    Opt("--bynode -bynode", "distribution", kind=FLAG, const="cyclic", quick=True, group=PLACE,
        help="Open MPI's: --distribution cyclic"),
    Opt("--taskmap", "distribution", taskmap, metavar="block|cyclic[:N]", quick=True,
        group=PLACE, help="Flux's: block, cyclic (--distribution cyclic), cyclic:N "
                          "(--distribution plane=N)"),
    Opt("--report-bindings -report-bindings", "report_bindings", kind=FLAG, quick=True,
        group=PLACE,
        help="print each rank's cpus"),
    Opt("--topology", "topology", kind=FLAG, group=PLACE,
        help="print this node's topology as the agent sees it, and exit"),
    Opt("--number-of-threads", "number_of", kind=FLAG, const="threads", group=PLACE,
        help="print the CPU threads this process may run on, and exit (GNU parallel's)"),
    Opt("--number-of-cores --number-of-cpus", "number_of", kind=FLAG, const="cores",
        group=PLACE, help="print the cores they belong to, and exit (GNU parallel's)"),
    Opt("--number-of-sockets", "number_of", kind=FLAG, const="sockets", group=PLACE,
        help="print the sockets (packages) they belong to, and exit (GNU parallel's)"),
    # Environment
    Opt("-genv", "genv", kind=PAIR, metavar="NAME VALUE", quick=True, group=ENV,
        help="set NAME=VALUE for every rank (also -genv NAME=VALUE)"),
    Opt("-genvall", "env_mode", kind=FLAG, const=("all", []), quick=True, group=ENV,
        help="pass pmrun's whole environment on, over each host's own (default)"),
    Opt("-genvnone", "env_mode", kind=FLAG, const=("none", []), quick=True, group=ENV,
        help="pass nothing but -genv/-env: the ranks get their host's own environment (as "
             "Hydra's: an ssh session's on other hosts, pmrun's here)"),
    Opt("-genvlist", "env_mode", env_names, metavar="A,B", quick=True, group=ENV,
        help="pass only these variables (over each host's own environment)"),
    Opt("-env", "env", kind=PAIR, metavar="NAME VALUE", local=True, quick=True, group=ENV,
        help="set NAME=VALUE for this program's ranks (its MPMD section)"),
    Opt("-envall", "env_mode", kind=FLAG, const=("all", []), local=True, quick=True, group=ENV,
        help="-genvall for this program's ranks"),
    Opt("-envnone", "env_mode", kind=FLAG, const=("none", []), local=True, quick=True,
        group=ENV, help="-genvnone for this program's ranks"),
    Opt("-envlist", "env_mode", env_names, metavar="A,B", local=True, quick=True, group=ENV,
        help="-genvlist for this program's ranks"),
    Opt("--env --env-remove", "flux_env", flux_env_rule, metavar="RULE", quick=True,
        group=ENV,
        help="Flux's: --env VAR=VAL sets VAR for every rank ($NAME and ${NAME} in VAL: the "
             "ranks' value so far, else pmrun's), --env -PATTERN (or --env-remove PATTERN) "
             "passes none of the variables PATTERN matches (a shell pattern, or /REGEX/), "
             "--env PATTERN passes those again, --env ^FILE applies FILE's rules; in the "
             "order given"),
    Opt("-pmi-port --pmi-port", "pmi_port", kind=FLAG, group=ENV,
        help="Hydra's: each rank reaches its node's agent at PMI_PORT (a TCP port on the "
             "node's loopback) as rank PMI_ID, not through an inherited socket (PMI_FD): for "
             "a program started through something that closes inherited descriptors (sudo, "
             "a wrapper's subprocess); a client says its rank first (PMI-1's initack), then "
             "speaks PMI-1, PMI-2 or pm.client's protocol"),
    Opt("-umask -gumask", "umask", umask_value, metavar="MASK", group=ENV,
        help="Intel MPI's: the ranks' file mode creation mask (by default pmrun's own, on "
             "every host, as srun passes it on)"),
    Opt("-genvexcl", "flux_env", excluded_names, metavar="A,B", quick=True, group=ENV,
        help="Intel MPI's: pass none of these variables (--env-remove for each)"),
    Opt("--env-file", "flux_env", flux_env_file, metavar="FILE", quick=True, group=ENV,
        help="Flux's: the --env rules of FILE, one a line (also --env ^FILE), in their turn"),
    Opt("--unset-env -unset-env", "flux_env", flux_env_rule, metavar="PATTERN", quick=True,
        group=ENV, help="Open MPI 5's: --env-remove PATTERN ('foo*': every name starting foo)"),
    Opt("--prefix -prefix", "prefix", ranks_directory, metavar="DIR", quick=True,
        group=ENV,
        help="Open MPI's: DIR/bin first on the ranks' PATH, DIR/lib on their "
             "LD_LIBRARY_PATH (an MPI installed there on every host)"),
    Opt("--path -path -gpath", "exe_path", ranks_directory, metavar="DIR", quick=True,
        group=ENV,
        help="Open MPI's: DIR first on the ranks' PATH, where their programs are looked "
             "for"),
    Opt("-x --set-env -set-env", "genv", kind=EXPORT, metavar="NAME[=VALUE]", quick=True,
        group=ENV,
        help="pass NAME with its value here (Open MPI's mpirun -x; an unset NAME is named and "
             "skipped), or set it to VALUE"),
    Opt("--prepend-env -prepend-env --prepend-envar", "genv", kind=PAIR, const="prepend",
        metavar="NAME[c] VALUE", group=ENV,
        help="Open MPI 5's: VALUE, c and NAME's value here for every rank (NAME[:] /opt/lib)"),
    Opt("--append-env -append-env --append-envar", "genv", kind=PAIR, const="append",
        metavar="NAME[c] VALUE", group=ENV,
        help="Open MPI 5's: NAME's value here, c and VALUE for every rank"),
    Opt("--mca -mca --gmca -gmca", "genv", kind=PAIR, const="OMPI_MCA_", metavar="KEY VALUE",
        quick=True, group=ENV, help="set Open MPI's parameter KEY for every rank "
                                    "(OMPI_MCA_KEY=VALUE, as mpirun --mca)"),
    Opt("--tune --am", "tune", tune_files, metavar="FILE[,FILE]", quick=True,
        group=ENV,
        help="Open MPI's: files of parameters for every rank, a NAME = VALUE line each "
             "(OMPI_MCA_NAME=VALUE), or lines of -x, --mca and --pmixmca options; those given "
             "on the command line win"),
    Opt("--personality", "personality", personality, metavar="ompi", quick=True, group=ENV,
        help="Open MPI 5's: ompi, the command line pmrun reads anyway"),
    Opt("--pmixmca -pmixmca --gpmixmca -gpmixmca", "genv", kind=PAIR, const="PMIX_MCA_",
        metavar="KEY VALUE",
        quick=True, group=ENV,
        help="set PMIx's parameter KEY for every rank (PMIX_MCA_KEY=VALUE)"),
    Opt("--stream-buffering -stream-buffering", "stream_buffering", choice("0", "1", "2"),
        metavar="0|1|2", quick=True, group=ENV,
        help="Open MPI's: its ranks' stdout and stderr unbuffered (0), line buffered (1) or "
             "fully buffered (2) from MPI_Init on (its MCA parameter, Open MPI 5's and 4's)"),
    Opt("--prtemca -prtemca", "genv", kind=PAIR, const="PRTE_MCA_", metavar="KEY VALUE",
        quick=True, group=ENV,
        help="Open MPI 5's parameter KEY of its runtime, which pmrun is: set for every rank "
             "(PRTE_MCA_KEY=VALUE) and meaning nothing to pmrun"),
    Opt("--export", "export", srun_export, metavar="ALL|NONE|A[=V],...", quick=True,
        group=ENV, help="srun's: ALL (-genvall), NONE (only PATH, HOME, USER, LANG, TERM), or "
                        "only these variables, A=V setting A (ALL,A=V: every variable, and A "
                        "set); with NONE or names, nothing of the hosts' own environment"),
    Opt("-wdir --wdir -dir -wd --wd --workdir -D --chdir --cwd -gwdir", "wdir",
        ranks_directory,
        metavar="DIR", local=True,
        quick=True, group=ENV, help="working directory of the program's ranks, on their "
        "hosts (of tasks: every task's)"),
    # Input and output
    Opt("-l --label -prepend-rank --tag-output --label-io", "prepend", kind=FLAG, const=LABEL,
        quick=True,
        group=IO, help="prefix every output line with [rank]"),
    Opt("-prepend-pattern", "prepend", prepend_pattern, metavar="PATTERN", quick=True,
        group=IO, help="prefix every output line with PATTERN: %r rank, %h host, %p node "
                       "number, %g job (0; spawned jobs count on), %% a percent sign"),
    Opt("--output -outfile-pattern -outfile -o", "output", out_pattern, metavar="PATTERN",
        quick=True, group=IO,
        help="write the ranks' stdout to files: %r (or %t) is the rank, %h (%N) "
                       "its host, %p (%n) its node's number, %j the job id, %x its name (-J), "
                       "%u the user, %% a percent sign; without %r all ranks share the file. "
                       "Spawned job J's "
                       "ranks: %j is the id and sJ, else .sJ ends a name with %r. Open MPI "
                       "5's --output tag,timestamp,merge-stderr-to-stdout,dir=DIR is taken "
                       "as -l, --timestamp-output, --merge-stderr-to-stdout, "
                       "--output-filename DIR"),
    Opt("--error -errfile-pattern -errfile -e", "error", out_pattern, metavar="PATTERN",
        quick=True, group=IO, help="the same for their stderr"),
    Opt("-output-from --output-from", "output_from", output_from, metavar="RANKS", quick=True,
        group=IO, help="Hydra's: only these ranks' output (0, or 0,4-7) is shown or written, "
                       "the others' discarded"),
    Opt("--output-filename -output-filename", "output_filename", text, metavar="DIR",
        quick=True, group=IO,
        help="Open MPI's: each rank's stdout and stderr in DIR/1/rank.R/stdout and "
             ".../stderr (folders made as needed; ':nocopy' after DIR is taken: pmrun "
             "never copies them to its own output)"),
    Opt("--timestamp-output -timestamp-output", "timestamp_output", kind=FLAG, quick=True,
        group=IO,
        help="start every output line with the time pmrun writes it (Open MPI's)"),
    Opt("--stdin -stdin -i --input", "stdin", stdin_rank, metavar="RANK|all|none|FILE",
        group=IO, quick=True,
        help="the rank that reads pmrun's stdin (default 0), all: every rank reads it, or "
             "none: every rank reads /dev/null (Open MPI's --stdin, srun's -i); or FILE, "
             "which every rank reads, opening it on its node (srun's and Flux's -i FILE)"),
    Opt("--pty", "pty", kind=FLAG, group=IO,
        help="srun's: rank 0 runs on a pseudo-terminal (its stdin, stdout and stderr) that "
             "its node's agent makes (resized with pmrun's), pmrun's terminal raw meanwhile "
             "(Ctrl-C, Ctrl-Z and line editing are the program's, as over ssh -t), its "
             "output passed on as it comes; the other ranks' output is dropped (as srun "
             "does). pmrun --pty -n 1 bash"),
    Opt("--unbuffered", "unbuffered", kind=FLAG, quick=True, group=IO,
        help="srun's -u: each rank's output passed on as it comes, partial lines too (a "
             "prompt, a progress bar), and Python ranks unbuffered (PYTHONUNBUFFERED=1); "
             "by default a line is passed on whole. Not with -l, --timestamp-output"),
    Opt("--merge-stderr-to-stdout -merge-stderr-to-stdout", "merge_stderr", kind=FLAG,
        quick=True, group=IO, help="each rank's stderr goes where its stdout goes, in the "
                                   "order the rank wrote them (Open MPI's)"),
    Opt("--display-allocation -display-allocation", "display_allocation", kind=FLAG, group=IO,
        help="before the job starts, print each host and its slots (Open MPI's)"),
    Opt("--do-not-launch -do-not-launch", "do_not_launch", kind=FLAG, group=IO,
        help="check the command line and lay the ranks out (--display-map prints where), "
             "but start nothing (Open MPI's)"),
    Opt("--report-pid -report-pid", "report_pid", report_to, metavar="-|+|FILE", group=IO,
        help="write pmrun's process id: - on stdout, + on stderr, or into FILE (Open MPI's)"),
    Opt("-print-rank-map --print-rank-map --display-map", "print_rank_map", kind=FLAG,
        quick=True,
        group=IO, help="before the job starts, print each node's ranks (Hydra's "
                       "-print-rank-map, Open MPI's --display-map), one line per node"),
    Opt("--display", "display", display_items, metavar="map,bind", quick=True, group=IO,
        help="Open MPI 5's: map, as --display-map; bind, as --report-bindings"),
    Opt("-print-all-exitcodes --print-all-exitcodes", "print_all_exitcodes", kind=FLAG,
        group=IO, help="at the end, print every rank's exit status"),
    # Launch
    Opt("--launcher -launcher -bootstrap", "launcher", choice(*LAUNCHERS), metavar="NAME",
        group=LAUNCH, help="local, ssh (rsh), slurm, exec, or persistent (persist): the "
                           "pm-agent services of --agents"),
    Opt("--launcher-exec -launcher-exec -bootstrap-exec", "launcher_exec", text,
        metavar="CMD", group=LAUNCH,
        help="a template holding {host} or {command} (launcher exec, e.g. 'ip netns exec "
             "{host} {command}'), or, as in Hydra, the ssh/rsh program to use"),
    Opt("-bootstrap-exec-args -launcher-exec-args", "launcher_exec_args", text, metavar="ARGS",
        group=LAUNCH,
        help="Intel MPI's: more arguments for the program that starts the agents (after "
             "ssh's own options; srun's, for its step)"),
    Opt("--ssh", "ssh", text, metavar="CMD", group=LAUNCH, help="ssh command of the ssh launcher"),
    Opt("--user", "user", text, metavar="USER", group=LAUNCH, help="remote user for ssh"),
    Opt("-enable-x --enable-x", "enable_x", kind=FLAG, const="1", group=LAUNCH,
        help="Hydra's: X11 forwarding to the ranks started over ssh (ssh -X)"),
    Opt("-disable-x --disable-x", "enable_x", kind=FLAG, const="0", quick=True, group=LAUNCH,
        help="Hydra's: no X11 forwarding (the default)"),
    Opt("--agent-python", "agent_python", text, metavar="PATH", group=LAUNCH,
        help="the Python that runs pmrun's agent on other hosts (default: this one's path; "
             "a name is looked up in their PATH)"),
    Opt("-hybrid-hosts --hybrid-hosts", "agent_python", kind=FLAG, const="python3",
        group=LAUNCH, help="Hydra's: hosts do not share paths: --agent-python python3"),
    Opt("--propagate", "propagate", kind=FLAG, const=",".join(RLIMIT_NAMES), group=LAUNCH,
        metavar="[=STACK,CORE,...]",
        help="srun's: the ranks on every host get this shell's resource limits (ulimit): "
             "all of them, or --propagate=STACK,CORE (AS, CORE, CPU, DATA, FSIZE, MEMLOCK, "
             "NOFILE, NPROC, RSS, STACK; ALL, NONE)"),
    Opt("--ssh-limit", "ssh_limit", number(1), metavar="N", group=LAUNCH,
        help="at most N ssh connections starting at once (default 32)"),
    Opt("--agents", "agents", readable_file, metavar="FILE", group=LAUNCH,
        help="use running pm-agent services listed in FILE (host:port per line)"),
    Opt("-localhost", "iface", local_address, metavar="HOST", group=LAUNCH,
        help="Hydra's: the address (or a name for it) the agents reach pmrun at; as "
             "--iface ADDR"),
    Opt("-rmk --rmk", "rmk", choice("slurm", "pbs", "lsf"), metavar="slurm|pbs|lsf",
        group=LAUNCH,
        help="Hydra's: the hosts are this resource manager's allocation (pmrun finds a "
             "Slurm, PBS/Torque or LSF job by itself)"),
    Opt("--iface -iface", "iface", iface, metavar="NAME|ADDR", group=LAUNCH,
        help="network interface the agents listen on for their children, on every node "
             "(an address: the head's only)"),
    Opt("--join-timeout --spawn-timeout", "join_timeout", number(0.001), metavar="S",
        group=LAUNCH,
        help="give up when a node has not joined after S seconds (default 60; Open MPI 5's "
             "--spawn-timeout)"),
    Opt("--heartbeat", "heartbeat", number(0), metavar="S", group=LAUNCH,
        help="a node silent for S seconds is lost (default 5)"),
    # The tree
    Opt("--local-nodes", "local_nodes", whole(1, MOST_LOCAL_NODES), metavar="N", group=TREE,
        help="run N node agents on this machine, each acting as a node with its own KVS"),
    Opt("--fanout -branch-count", "fanout", whole(1, MOST_RANKS), metavar="K", quick=True,
        group=TREE,
        help="width of the agent tree (default 32; 16 over ssh)"),
    Opt("--kvs", "kvs", choice("shm", "socket"), metavar="shm|socket", quick=True, group=TREE,
        help="how ranks using pm.client read the node's KVS (default shm)"),
    Opt("--profile", "profile", writable_file, metavar="FILE", group=TREE,
        help="write a Chrome trace of the start-up timeline to FILE; srun's all, none, "
             "energy, task, lustre, network (or some of them, with commas): what Slurm "
             "profiles of pmrun's step, inside an allocation"),
    Opt("--sim-ranks-per-node", "sim_ranks", text, metavar="R", group=TREE,
        help="emulate R ranks per agent in-process (scale tests; no program)"),
    Opt("--sim-value-size", "sim_value_size", text, metavar="B", group=TREE,
        help="bytes of each simulated address (default 64)"),
    Opt("--sim-exchange", "sim_exchange", text, metavar="KIND", group=TREE,
        help="allgather (default) or fence"),
    Opt("--sim-gets", "sim_gets", text, metavar="LIST", group=TREE,
        help="peers each simulated rank gets from: left,right,leader (default), far"),
    # Memory and ensembles
    Opt("--tasks", "tasks", text, metavar="FILE", group=MEMORY,
        help="run each line of FILE with sh -c over the nodes, as GNU parallel does; "
             "--tasks FILE ::: A B runs each line once per argument, {} replaced by it "
             "(also ::::, :::+, {.} {/} {//} {/.} {N} {#} {%}: README)"),
    Opt("-j --jobs -P --max-procs", "jobs", task_slots, metavar="N", group=MEMORY,
        help="at most N tasks at once per host (default: one per CPU thread; 0: memory "
             "alone; +N, -N, N%: of its CPU threads; a FILE that says one, read again as "
             "tasks end)"),
    Opt("--nice", "nice", niceness, metavar="N", group=MEMORY,
        help="run each task at niceness N, every command of its line (GNU parallel's)"),
    Opt("--mem-per-task", "mem_per_task", task_size, metavar="SIZE", group=MEMORY,
        help="memory reserved for each task (e.g. 2G); a line may say [mem=SIZE]"),
    Opt("--mem-high", "mem_high", size, metavar="SIZE|PCT", group=MEMORY,
        help="stop admitting work above this node memory use (default 90%)"),
    Opt("--memsuspend", "memsuspend", byte_size, metavar="SIZE", group=MEMORY,
        help="as --memfree SIZE, and while less than 2 x SIZE is free stop the youngest "
             "tasks of a host (SIGSTOP), all but the oldest under SIZE; they go on, one a "
             "sample, once 2 x SIZE is free (GNU parallel's --memsuspend)"),
    Opt("--memfree", "memfree", byte_size, metavar="SIZE", group=MEMORY,
        help="start tasks on a node only while SIZE of its memory stays free (GNU "
             "parallel's --memfree: --mem-high is its memory less SIZE)"),
    Opt("--mem-low", "mem_low", size, metavar="SIZE|PCT", group=MEMORY,
        help="resume admitting below this (default 80%)"),
    Opt("--retries", "retries", whole(0, MOST_RANKS), metavar="N", group=MEMORY,
        help="run a failed task again, N runs in all at most (GNU parallel's: 0 and 1 "
             "run it once)"),
    Opt("--joblog", "joblog", text, metavar="FILE", group=MEMORY,
        help="a line per ended task in FILE, GNU parallel's columns (Seq ... Exitval ...)"),
    Opt("--resume", "resume", kind=FLAG, group=MEMORY,
        help="with --joblog: run only the tasks not in FILE (appending to it)"),
    Opt("--resume-failed", "resume_failed", kind=FLAG, group=MEMORY,
        help="with --joblog: run the tasks not in FILE and those that failed there"),
    Opt("--retry-failed", "retry_failed", kind=FLAG, group=MEMORY,
        help="with --joblog: run again the commands that failed in FILE, as it has them "
             "(a command line is not needed, nor used)"),
    Opt("--load", "load", load_rule, metavar="MAX", group=MEMORY,
        help="start a task on a host only while its load (threads running or waiting for "
             "a disk, now) is under MAX; +N, -N, N%: of its CPU threads; a FILE that says one, "
             "read again when it changed (GNU parallel's)"),
    Opt("--noswap", "noswap", kind=FLAG, group=MEMORY,
        help="start no task on a host while it swaps both in and out (GNU parallel's)"),
    Opt("--limit", "limit", limit_command, metavar="CMD", group=MEMORY,
        help="before each start on a host run sh -c CMD here (SSHLOGIN: the host, : for "
             "this one): 0 starts a task, 1 none, 2 none and ends the host's youngest; "
             "mem SIZE, load N, io PCT: GNU parallel's built-in limits, judged on the host"),
    Opt("--transferfile --tf", "transfer", verbatim, metavar="FILE", group=MEMORY,
        help="put FILE ({} of the task's arguments...) on the task's host before it runs "
             "there, relative to its working directory (DIR/./REST: REST there); again: "
             "another file (GNU parallel's)"),
    Opt("--return", "returns", verbatim, metavar="FILE", group=MEMORY,
        help="bring FILE back from the task's host once it ended (again: another file)"),
    Opt("--cleanup", "cleanup", kind=FLAG, group=MEMORY,
        help="remove the files --transferfile put and --return brought back from the host"),
    Opt("--trc", "trc", verbatim, metavar="FILE",
        group=MEMORY, help="--transferfile {} --return FILE --cleanup"),
    Opt("--basefile --bf", "basefiles", verbatim, metavar="FILE", group=MEMORY,
        help="put FILE on each host before its first task (with --cleanup removed at the "
             "end); again: another file"),
    Opt("--termseq", "termseq", term_sequence, metavar="SEQ", group=MEMORY,
        help="how a task is ended (--timeout, --halt now, --limit): each signal, then the "
             "milliseconds to wait before the next, e.g. TERM,200,TERM,100,KILL,25 (GNU "
             "parallel's; default: TERM, and KILL 2 s later)"),
    Opt("--delay", "delay", duration, metavar="S", group=MEMORY,
        help="start a task at least S seconds after the one before (also 2m, 1h)"),
    Opt("--shuf", "shuf", kind=FLAG, group=MEMORY,
        help="start the tasks in a random order (each keeps its number, {#})"),
    Opt("--use-cores-instead-of-threads", "cpu_unit", kind=FLAG, const="core", group=MEMORY,
        help="-j's CPU counts (N%, +N, -N, the default) count a host's cores, not its "
             "hardware threads (GNU parallel's)"),
    Opt("--use-sockets-instead-of-threads --use-cpus-instead-of-cores", "cpu_unit", kind=FLAG,
        const="socket", group=MEMORY, help="... its sockets"),
    Opt("--shell-quote --shellquote --shell_quote", "shell_quote", kind=FLAG, group=MEMORY,
        help="print each task's command line quoted for the shell (one word), run none"),
    Opt("--skip-first-line", "skip_first_line", kind=FLAG, group=MEMORY,
        help="the first line of the arguments' input is not an argument"),
    Opt("--dry-run", "dry_run", kind=FLAG, group=MEMORY,
        help="print each task's command line instead of running it"),
    Opt("--halt --halt-on-error", "halt", halt_policy, metavar="WHEN,WHY=N", group=MEMORY,
        help="stop once N (or N%) tasks failed, succeeded or ended: soon (start no more) "
             "or now (kill the running too), e.g. now,fail=1"),
    Opt("--pipe", "pipe", kind=FLAG, group=MEMORY,
        help="cut stdin into blocks of whole lines, each the stdin of one run of the "
             "command (GNU parallel's --pipe)"),
    Opt("--pipepart --pipe-part", "pipepart", kind=FLAG, group=MEMORY,
        help="--pipe with the blocks cut from the file of -a FILE (or :::: FILE), not "
             "from stdin; --block -N: N blocks for each task slot (default -10, as GNU "
             "parallel's)"),
    Opt("--semaphore --sem", "semaphore", kind=FLAG, group=MEMORY,
        help="GNU parallel's sem: run CMD once one of -j N slots (default 1) of the "
             "semaphore is free, in the background (--fg: in the foreground); --wait: "
             "until none is held"),
    Opt("--id --semaphore-name --semaphorename", "sem_id", text, metavar="NAME",
        group=MEMORY, help="the semaphore's name (default: the terminal's)"),
    Opt("--fg", "sem_fg", kind=FLAG, group=MEMORY,
        help="--semaphore: run the command in the foreground, its exit status pmrun's"),
    Opt("--bg", "sem_bg", kind=FLAG, group=MEMORY,
        help="--semaphore: run the command in the background (the default)"),
    Opt("--semaphore-timeout --semaphoretimeout --st", "sem_timeout", signed_seconds,
        metavar="SECONDS", group=MEMORY,
        help="--semaphore: after SECONDS without a slot run all the same; -SECONDS: give "
             "up (exit status 1)"),
    Opt("--roundrobin --round-robin --round", "roundrobin", kind=FLAG, group=MEMORY,
        help="--pipe's blocks to as many runs of the command as task slots, each reading "
             "block after block to the end of stdin (for a command slow to start)"),
    Opt("--shard", "shard", shard_column, metavar="COLUMN", group=MEMORY,
        help="--pipe's lines to -j runs by their COLUMN's value (a number from 1, or a name "
             "with --header :; --colsep splits, a tab by default): each value's lines all to "
             "one run (GNU parallel's)"),
    Opt("--group-by", "group_by", shard_column, metavar="COLUMN", group=MEMORY,
        help="--pipe's records are the consecutive lines whose COLUMN has one value (a "
             "number from 1, or a name with --header :), blocks whole records (-N: that "
             "many a block)"),
    Opt("--bin", "bin", shard_column, metavar="COLUMN", group=MEMORY,
        help="as --shard, the COLUMN's whole number (modulo -j) naming the run"),
    Opt("--onall", "onall", kind=FLAG, group=MEMORY,
        help="run every task on every host (-S, -hosts), one at a time there; -j N: N "
             "hosts at once (default all); each host's output whole (-k: in host order)"),
    Opt("--nonall", "nonall", kind=FLAG, group=MEMORY,
        help="run the command once on every host, without arguments (--onall's)"),
    Opt("--tee", "tee", kind=FLAG, group=MEMORY,
        help="--pipe's whole stdin to every run of the command, one run per argument of its "
             "::: sources, all at once (GNU parallel's: pmrun --tee CMD {} ::: A B)"),
    Opt("--cat", "cat", kind=FLAG, group=MEMORY,
        help="--pipe's block in a temporary file of --tmpdir whose name is {} (appended "
             "if the command has none), removed when the run ends"),
    Opt("--fifo", "fifo", kind=FLAG, group=MEMORY,
        help="as --cat, but {} is a named pipe the block is written to as the command "
             "reads it"),
    Opt("--block --block-size", "block", block_size, metavar="SIZE", group=MEMORY,
        help="--pipe's block size (default 1M; a block ends with the line it cuts; "
             "--pipepart also takes -N)"),
    Opt("--recend", "recend", verbatim, metavar="STR", group=MEMORY,
        help="--pipe's records end with STR (default a new line; '' with --recstart)"),
    Opt("--regexp --regex", "regexp", kind=FLAG, group=MEMORY,
        help="--recstart and --recend are regular expressions (GNU parallel's)"),
    Opt("--recstart", "recstart", verbatim, metavar="STR", group=MEMORY,
        help="--pipe's records start with STR: blocks are cut between --recend and STR"),
    Opt("--results", "results", results_dir, metavar="DIR", group=MEMORY,
        help="each task's stdout and stderr in files of DIR/1/ARG1/2/ARG2/, not printed "
             "(GNU parallel's layout); a NAME with replacement strings: NAME, NAME.err and "
             "NAME.seq filled in, or files of that folder if it ends in /"),
    Opt("--files", "files", kind=FLAG, group=MEMORY,
        help="each task's stdout in a new file of --tmpdir, whose name is printed instead "
             "(GNU parallel's)"),
    Opt("--tmpdir --tempdir", "tmpdir", directory, metavar="DIR", group=MEMORY,
        help="where --files and held output go (default: $TMPDIR, else /tmp)"),
    Opt("--header", "header", header_lines, metavar=":", group=MEMORY,
        help="each source's first argument (with --colsep: its first line's columns) "
             "names it: {NAME} in the command; with --pipe, stdin's first line (N: "
             "lines) goes before every block"),
    Opt("--csv", "csv", kind=FLAG, group=MEMORY,
        help="each argument a CSV row: its fields the columns {1} {2}..., a quoted field one "
             "column (--colsep: the one character between fields, default ,)"),
    Opt("--colsep -C", "colsep", regex, metavar="REGEX", group=MEMORY,
        help="split each argument into columns where REGEX matches: {1} {2}... (as GNU "
             "parallel, e.g. --colsep , :::: params.csv)"),
    Opt("-S --sshlogin", "hosts", sshlogin, metavar="[N/]HOST,...", group=MEMORY,
        help="GNU parallel's hosts: -hosts HOST:N,... (':' is this machine)"),
    Opt("--slf --sshloginfile", "hosts", sshloginfile, metavar="FILE", group=MEMORY,
        help="-S's value a line of FILE"),
    Opt("--rpl", "rpl", _rpl_rule, metavar="'TAG PERL'", group=MEMORY,
        help="a replacement string of your own: TAG in the command is {= PERL =} ({N TAG...} "
             "of source N; TAG's (regexp) groups are $$1... in PERL), GNU parallel's"),
    Opt("--plus", "plus", kind=FLAG, group=MEMORY,
        help="GNU parallel's further replacement strings: {+.} {..} {##} {0#} {%RE} "
             "{/RE/STR}... (README)"),
    Opt("-L --max-lines", "max_lines", whole(1), metavar="N", group=MEMORY,
        help="N input lines a task, a line that ends in a blank going on on the next (GNU "
             "parallel's); with --pipe, records of N lines"),
    Opt("--max-args --max-replace-args", "max_args", whole(0), metavar="N", group=MEMORY,
        help="-N of a task ensemble: each task takes N arguments of its input source, "
             "{1}..{N} (the last task fewer; 0: one argument, not inserted)"),
    Opt("-m", "many_args", kind=FLAG, const="-m", group=MEMORY,
        help="several arguments a task, spread evenly over the job slots (GNU parallel's): "
             "{} is all of them; none: appended. Before a distribution (-m cyclic): srun's "
             "--distribution"),
    Opt("-X", "many_args", kind=FLAG, const="-X", group=MEMORY,
        help="as -m, and a word holding {} (pic{}.jpg) is repeated for each argument"),
    Opt("--xargs", "many_args", kind=FLAG, const="--xargs", group=MEMORY,
        help="as -m, all arguments in one task (as many as a command line holds)"),
    Opt("-s --max-chars", "max_chars", verbatim, metavar="N", group=MEMORY,
        help="-m, -X, --xargs: a task's command line at most N bytes (its NUL counted, GNU "
             "parallel's); default and most: what exec takes (128 KiB)"),
    Opt("-a --arg-file", "arg_files", readable_or_stdin, metavar="FILE", group=MEMORY,
        help="an argument a line of FILE (- : stdin) for the command: :::: FILE (again: "
             "another source)"),
    Opt("-0 --null", "delimiter", kind=FLAG, const="\0", group=MEMORY,
        help="arguments of :::: and -a files end with NUL (find -print0), not newline"),
    Opt("-d --delimiter", "delimiter", delimiter, metavar="DELIM", group=MEMORY,
        help="arguments of :::: and -a files end with DELIM, not newline"),
    Opt("--seqreplace", "seqreplace", text, metavar="STR", group=MEMORY,
        help="STR stands for {#} in the command (GNU parallel's)"),
    Opt("--slotreplace", "slotreplace", text, metavar="STR", group=MEMORY,
        help="STR stands for {%}"),
    Opt("--extensionreplace --er", "extensionreplace", text, metavar="STR", group=MEMORY,
        help="STR stands for {.}"),
    Opt("--basenamereplace --bnr", "basenamereplace", text, metavar="STR", group=MEMORY,
        help="STR stands for {/}"),
    Opt("--dirnamereplace --dnr", "dirnamereplace", text, metavar="STR", group=MEMORY,
        help="STR stands for {//}"),
    Opt("--basenameextensionreplace --bner", "basenameextensionreplace", text, metavar="STR",
        group=MEMORY, help="STR stands for {/.}"),
    Opt("-I --replace", "replace", text, metavar="STR", group=MEMORY,
        help="STR stands for the argument in the command, instead of {} (as xargs -I)"),
    Opt("-E --eof", "eof", verbatim, metavar="STR", group=MEMORY,
        help="an input source ends at an argument STR (the rest is not read), as xargs -E"),
    Opt("-r --no-run-if-empty", "no_empty", kind=FLAG, group=MEMORY,
        help="skip the arguments that are only white space (empty lines)"),
    Opt("--trim", "trim", choice("n", "l", "r", "lr", "rl"), metavar="n|l|r|lr",
        group=MEMORY, help="strip white space from the arguments: l on the left, r on the "
                           "right, lr both (default n: none)"),
    Opt("--arg-sep", "arg_sep", separator, metavar="SEP", group=MEMORY,
        help="SEP starts a source of arguments instead of ::: (SEP+ instead of :::+), "
             "so that ::: can be an argument"),
    Opt("--arg-file-sep", "arg_file_sep", separator, metavar="SEP", group=MEMORY,
        help="SEP starts a source of files instead of :::: (SEP+ instead of ::::+)"),
    Opt("--link --xapply", "link", kind=FLAG, group=MEMORY,
        help="the input sources' arguments taken side by side, not in every combination "
             "(a shorter source starts over), as :::+ for every source"),
    Opt("-q --quote", "quote", kind=FLAG, group=MEMORY,
        help="run the command's words as they are given: each quoted for the shell, special "
             "characters and all, the arguments put in unquoted (GNU parallel's -q)"),
    Opt("--process-slot-var", "slot_var", env_name, metavar="VAR", group=MEMORY,
        help="each task's VAR is its slot number less one (GNU parallel's; {%} is the slot), "
             "e.g. CUDA_VISIBLE_DEVICES"),
    Opt("--silent --gnu --plain", "", kind=FLAG, group=MEMORY,
        help="GNU parallel's, taken and meaning nothing here: pmrun prints the commands only "
             "with -v, and reads no profile"),
    Opt("-k --keep-order --keeporder", "keep_order", kind=FLAG, group=MEMORY,
        help="tasks' output in their order (a task's waits for those before it to end)"),
    Opt("--no-keep-order --nokeeporder --nok --no-k", "no_keep_order", kind=FLAG,
        group=MEMORY, help="not -k, given before (in an alias, say)"),
    Opt("--filter-hosts --filterhosts --filter-host", "", kind=FLAG, group=MEMORY,
        help="GNU parallel's, taken: a host pmrun cannot reach is named and its tasks run on "
             "the others"),
    Opt("--ssh-delay --sshdelay", "", duration, metavar="S", group=MEMORY,
        help="GNU parallel's, taken and meaning nothing here: pmrun logs in to a host once "
             "for the whole run, not once a task"),
    Opt("--bar", "progress", kind=FLAG, group=MEMORY,
        help="GNU parallel's: pmrun draws its progress line (counts, what waits, time left) "
             "on a terminal always"),
    Opt("--eta", "progress", kind=FLAG, group=MEMORY, help="as --bar"),
    Opt("--total-jobs --total", "total_jobs", whole(1), metavar="N", group=MEMORY,
        help="GNU parallel's: the progress line's total while arguments still come on "
             "stdin (tasks start as they come)"),
    Opt("--progress", "progress", kind=FLAG, group=MEMORY, help="as --bar"),
    Opt("--group", "output_mode", kind=FLAG, const="group", group=MEMORY,
        help="each task's output whole once it ended, stdout then stderr (the default "
             "of pmrun CMD ::: ARGS, as GNU parallel's)"),
    Opt("--tty", "tty", kind=FLAG, group=MEMORY,
        help="each task's stdin is pmrun's terminal, its stdout and stderr pmrun's, and it "
             "runs in the terminal's foreground (an interactive program: pmrun --tty vi "
             "::: a b); one task at a time unless -j says (GNU parallel's)"),
    Opt("--lb --line-buffer --line-buffered --linebuffer --linebuffered -u --ungroup",
        "output_mode", kind=FLAG, const="line",
        group=MEMORY, help="tasks' output line by line as it comes (the default of --tasks)"),
    Opt("--tag", "tag", kind=FLAG, group=MEMORY,
        help="prefix each line of a task's output with its arguments and a tab"),
    Opt("--tagstring", "tagstring", text, metavar="STR", group=MEMORY,
        help="prefix each line of a task's output with STR and a tab, its replacement "
             "strings filled ({} {#} ...)"),
    Opt("--ctag", "ctag", kind=FLAG, group=MEMORY, help="--tag, each task's lines colored"),
    Opt("--ctagstring --ctag-string", "ctagstring", text, metavar="STR", group=MEMORY,
        help="--tagstring STR, each task's lines colored"),
    Opt("--color --colour", "color", kind=FLAG, group=MEMORY,
        help="each task's lines in colors of their own (GNU parallel's)"),
    Opt("--colorfailed --colourfailed --cf", "colorfailed", kind=FLAG, group=MEMORY,
        help="the lines of a task that failed white on red"),
    Opt("--mem-overrun", "mem_overrun", choice("warn", "kill", "suspend"), metavar="ACTION",
        group=MEMORY, help="warn (default), kill or suspend a task over its declared size "
                           "while its node is above the high watermark"),
    Opt("--mem-settle", "mem_settle", settle_time, metavar="S|off", group=MEMORY,
        help="shrink a task's reservation to its measured peak once that peak held S "
             "seconds (default 1); off: reservations only grow"),
    # Other
    Opt("--oversubscribe -oversubscribe --allow-run-as-root -allow-run-as-root -O "
        "--overcommit", "",
        kind=FLAG, quick=True, group=MISC,
        help="taken for Open MPI's mpirun (and srun's -O), and meaning nothing here: pmrun "
             "runs as any user, and never refuses more ranks than cores"),
    Opt("--rank-by -rank-by", "rank_by", rank_by, metavar="slot|node", group=PLACE,
        help="Open MPI's: how the ranks a node got are numbered: slot (core, package, "
             "numa...: a node's ranks consecutive) or node (one a node in turn)"),
    Opt("--nooversubscribe -nooversubscribe", "no_oversubscribe", kind=FLAG, group=MISC,
        help="refuse more ranks than the hosts' slots (Open MPI's; pmrun's default is to "
             "run them)"),
    Opt("--cpu-list -cpu-list --cpu-set -cpu-set", "cpu_list", cpu_list, metavar="0,2-3",
        quick=True, group=PLACE,
        help="Open MPI's: the ranks of a node bound to these CPUs (OS numbers), a CPU each "
             "in turn (--bind-to user:LIST)"),
    Opt("--overlap", "", kind=FLAG, quick=True, group=MISC,
        help="taken for srun, and meaning nothing here: inside an allocation pmrun's ranks "
             "share its nodes' CPUs with the other steps (its agents' step is srun's "
             "--overlap --whole) unless --exact"),
    Opt("--exact", "exact", kind=FLAG, group=MISC,
        help="srun's: inside an allocation, the job's CPUs on each node are its own, as "
             "Slurm grants a step (its agents' step asks for as many as its busiest node's "
             "ranks take, -c each), not shared with other steps: pmrun jobs started side "
             "by side in one allocation each get CPUs of their own"),
    Opt("--mpi -mpi", "mpi", mpi_kind, metavar="pmix|pmi|auto",
        quick=True, group=MISC,
        help="pmix: serve PMIx besides PMI-1/PMI-2 (Open MPI); pmi (none): not; "
             "auto (default): PMIx when a program is linked with Open MPI or "
             "libpmix, or is a Python whose environment holds Open MPI; srun's "
             "pmi2, pmix_v4... are pmi, pmix; list: what this machine can serve"),
    Opt("-t --time --time-limit", "timeout", slurm_time, metavar="TIME", quick=True, group=MISC,
        help="srun's time limit: MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]; Flux's: 30s, 10m, "
             "1.5h, 1d (as --timeout)"),
    Opt("--quit-on-interrupt", "quit_on_interrupt", kind=FLAG, group=MISC,
        help="srun's: the first Ctrl-C kills the job at once (without it the ranks get "
             "SIGINT, and a second Ctrl-C kills)"),
    Opt("--disable-status", "", kind=FLAG, quick=True, group=MISC,
        help="srun's, taken: pmrun's first Ctrl-C forwards SIGINT to the ranks, without a "
             "status report"),
    Opt("--noprefix -noprefix --leave-session-attached -leave-session-attached", "",
        kind=FLAG, quick=True, group=MISC,
        help="Open MPI's, taken: pmrun never adds an install's prefix to the ranks' paths by "
             "itself (--prefix does), and its agents' messages always reach pmrun"),
    Opt("--keep-fqdn-hostnames --show-progress --fwd-environment", "", kind=FLAG, quick=True,
        group=MISC,
        help="Open MPI's, taken: pmrun names hosts as they were given, says every 5 s which "
             "nodes have not joined, and passes its environment to the ranks anyway"),
    Opt("-silent-abort", "", kind=FLAG, quick=True, group=MISC,
        help="Intel MPI's, taken: pmrun prints no backtrace at an abort, only the one line "
             "naming the rank and its code"),
    Opt("-W --wait", "wait_after_first", wait_seconds, metavar="SECONDS", group=MISC,
        help="once a rank ended, end the others after SECONDS (srun's; 0: no limit)"),
    Opt("-K --kill-on-bad-exit", "kill_on_bad_exit", kind=FLAG, const="1", quick=True,
        group=MISC,
        help="srun's: a rank that fails ends the job (the default); =0 (-K0): the others "
             "run on, as -disable-auto-cleanup"),
    Opt("--bcast --preload-binary", "bcast", kind=FLAG, const="", group=LAUNCH,
        help="srun's (Open MPI's --preload-binary): copy the program to every node of the "
             "job and run the copy there (in the node's TMPDIR or /tmp; --bcast=DIR/ in DIR, "
             "--bcast=PATH at PATH), removed when the job ends: for nodes that do not share "
             "the program's file system"),
    Opt("--send-libs", "send_libs", kind=FLAG, group=LAUNCH,
        help="srun's, with --bcast: the shared libraries the program loads from outside "
             "/lib, /usr/lib, /lib64 and /usr/lib64 go along, into a folder beside each "
             "copy that the ranks' LD_LIBRARY_PATH starts with (=no: not)"),
    Opt("--no-kill", "no_kill", kind=FLAG, group=MISC,
        help="srun's: a node lost (its agent gone) is named and the ranks of the other nodes "
             "run on to their end (the exit status is the first failure's); =off: the "
             "default, a lost node ends the job"),
    Opt("-disable-auto-cleanup --disable-auto-cleanup --enable-recovery", "kill_on_bad_exit",
        kind=FLAG, const="0", quick=True, group=MISC,
        help="Hydra's (Open MPI 5's --enable-recovery): a rank that fails is named and the "
             "others run on to their end (the exit status is the first failure's); an "
             "abort, a lost node or the time limit still ends the job"),
    Opt("-auto-cleanup --auto-cleanup", "kill_on_bad_exit", kind=FLAG, const="1", quick=True,
        group=MISC, help="Hydra's: a rank that fails ends the job (the default)"),
    Opt("--timeout -timeout", "timeout", run_timeout, metavar="SECONDS", quick=True,
        group=MISC,
        help="kill the job after SECONDS (or 2m, 1h30m; exit status 124); also "
             "MPIEXEC_TIMEOUT; of tasks, each task's run (as GNU parallel), or a percentage "
             "of the median successful run (200%)"),
    Opt("--forward-signals", "forward_signals", signal_list, metavar="LIST", group=MISC,
        help="Open MPI's: forward these signals to every rank too (SIGALRM,SIGWINCH; names "
             "or numbers); INT, TERM, HUP, USR1, USR2, TSTP and CONT always are"),
    Opt("--signal", "signal_before_end", signal_before_end, metavar="[R:]SIG[@TIME]",
        group=MISC,
        help="srun's and Flux's: every rank gets SIG TIME seconds (default 60; Flux's 30s, "
             "2m) before the time limit (--timeout, -t; in a Slurm job without them, the "
             "job's own)"),
    Opt("--cpu-freq", "cpu_freq", cpu_freq, metavar="FREQ", group=PLACE,
        help="srun's, inside an allocation: the frequency (low, medium, high, highm1, kHz, "
             "MIN-MAX, :GOVERNOR) that Slurm sets for the CPUs of pmrun's step"),
    Opt("--acctg-freq", "acctg_freq", acctg_freq, metavar="S|TYPE=S,...", group=MISC,
        help="srun's, inside an allocation: how often Slurm samples the accounting of "
             "pmrun's step (and so its ranks)"),
    Opt("--slurmd-debug", "slurmd_debug", slurmd_debug, metavar="LEVEL", group=MISC,
        help="srun's, inside an allocation: the log level of slurmstepd for pmrun's step"),
    Opt("--relative", "relative", whole(0, MOST_RANKS), metavar="N", group=PLACE,
        help="srun's: the job's nodes from the N-th (from 0) of the allocation's, or of "
             "-hosts, -f, on"),
    Opt("-J --job-name", "job_name", job_name, metavar="NAME", group=MISC, quick=True,
        help="srun's and Flux's: the job's name, %x in --output/--error patterns (default: "
             "the allocation's, SLURM_JOB_NAME, else the program's) and the name of the "
             "Slurm step that starts pmrun's agents"),
    Opt("--open-mode", "open_mode", open_mode, metavar="append|truncate", group=MISC,
        help="srun's: the files of --output/--error (-o/-e) are appended to, or truncated "
             "(the default)"),
    Opt("--prolog", "srun_prolog", text, metavar="PROG", group=MISC,
        help="srun's: run PROG here, with the job's command as its arguments, before the "
             "job starts; a PROG that fails keeps the job from starting (its status is "
             "pmrun's)"),
    Opt("--epilog", "srun_epilog", text, metavar="PROG", group=MISC,
        help="srun's: run PROG here, with the job's command as its arguments, once the job "
             "has ended"),
    Opt("--task-prolog", "task_prolog", text, metavar="PROG", group=MISC,
        help="srun's: each rank runs PROG first, in its own process and environment; PROG's "
             "output lines 'export NAME=VALUE' and 'unset NAME' change the environment the "
             "program gets, 'print TEXT' prints TEXT; a PROG that fails ends the rank"),
    Opt("--task-epilog", "task_epilog", text, metavar="PROG", group=MISC,
        help="srun's: once a rank ended, its agent runs PROG with the rank's environment "
             "(at most 10 s) before it reports the end"),
    Opt("--report-state-on-timeout", "report_state", kind=FLAG, group=MISC,
        help="Open MPI's: at the timeout, before the kill, name each rank still running, "
             "what its process does and how far it got with PMI (the collective it waits in)"),
    Opt("--get-stack-traces", "stack_traces", kind=FLAG, group=MISC,
        help="Open MPI's: and each one's stack (gdb on its node)"),
    Opt("-configfile --configfile --app -app", "configfile", kind=FILE, metavar="FILE", group=MISC,
        help="the programs and their options, one MPMD section a line ('#' comments)"),
    Opt("--multi-prog", "multi_prog", kind=FLAG, group=MISC,
        help="srun's: the program is a file of lines RANKS PROGRAM ARGS (RANKS 0-3,5 or *; "
             "%t the rank, %o its place among the line's)"),
    Opt("--will-cite --no-notice", "", kind=FLAG, quick=True, group=MISC,
        help="GNU parallel's, taken and meaning nothing here: pmrun prints no notice"),
    Opt("-disable-hostname-propagation -enable-hostname-propagation", "", kind=FLAG,
        quick=True, group=MISC,
        help="Hydra's, taken and meaning nothing here: ranks find their host names "
             "themselves"),
    Opt("-demux", "", choice("poll", "select"), metavar="poll|select", quick=True,
        group=MISC, help="Hydra's I/O engine, taken and meaning nothing here"),
    Opt("-topolib", "", choice("hwloc"), metavar="hwloc", quick=True, group=MISC,
        help="Hydra's topology library: pmrun's is hwloc (see -info)"),
    Opt("-info --info", "info", kind=ACTION, group=MISC,
        help="print pmrun's version, what it serves and what it found here, and exit"),
    Opt("-v --verbose -verbose -debug --debug-daemons", "verbose", kind=COUNT, group=MISC,
        help="say what pmrun does (twice: debug)"),
    Opt("-Q --quiet -quiet", "quiet", kind=COUNT, quick=True, group=MISC,
        help="say only what went wrong: no warnings (srun's -Q, Open MPI's --quiet and, on "
             "an MPI job, -q)"),
    Opt("--version -version", "version", kind=ACTION, group=MISC,
        help="print the version and exit"),
    Opt("-h --help -help", "help", kind=ACTION, group=MISC, help="show this help and exit"),
)

BY_NAME = {name: opt for opt in OPTIONS for name in opt.names}

#: Environment variables pmrun itself reads: (name, what it means).
ENVIRONMENT = (
    ("MPIEXEC_TIMEOUT=S", "as --timeout S"),
    ("HYDRA_HOST_FILE=FILE", "as -f FILE for an MPI job given no hosts (also "
                             "I_MPI_HYDRA_HOST_FILE)"),
    ("HYDRA_LAUNCHER=NAME", "as -launcher NAME for a job given hosts; HYDRA_LAUNCHER_EXEC "
                            "as -launcher-exec; HYDRA_IFACE as -iface (HYDRA_BOOTSTRAP*, "
                            "I_MPI_HYDRA_BOOTSTRAP*, I_MPI_HYDRA_IFACE too)"),
    ("PM_QUICK=0", "start even a one-node job through the agent, not the quick path"),
    ("SLURM_JOB_ID, SLURM_JOB_NODELIST", "inside a Slurm allocation (without -hosts/-f), "
     "run on its nodes; SLURM_TASKS_PER_NODE gives their slots"),
    ("PM_CLIENT_KEY=FILE", "the key pair --agents connects with (default "
     "~/.config/pmrun/client.key)"),
    ("TMPDIR (TEMP, TMP)", "where the node's topology cache and the job's copy go"),
)


# ------------------------------------------------------------------ parsing
#: srun's requests for resources: only an allocation (salloc, sbatch) grants them.
_ALLOCATION = frozenset({"-p", "--partition", "-A", "--account", "--qos", "--reservation",
                         "--constraint", "--mem", "--mem-per-cpu", "--mem-per-gpu",
                         "--gres", "--gpus", "-G", "--gpus-per-node",
                         "--exclusive", "--licenses", "--tmp", "--prefer", "--contiguous",
                         "-B", "--extra-node-info", "--sockets-per-node", "--cores-per-socket",
                         "--threads-per-core", "--mincpus", "--cpus-per-gpu",
                         "--tres-per-task", "--gpus-per-socket", "--ntasks-per-gpu",
                         "--ntasks-per-core", "--ntasks-per-socket",
                         "--gres-flags", "--switches", "--network", "--core-spec",
                         "--thread-spec", "--spread-job", "--use-min-nodes", "--clusters",
                         "-M"})
#: ... and srun's options for when and how Slurm schedules a job it allocates.
_SCHEDULING = frozenset({"--begin", "--dependency", "--deadline", "--time-min", "--hold",
                         "--immediate", "--test-only", "--priority", "--mail-type",
                         "--mail-user", "--comment", "--wckey", "--requeue", "--no-requeue",
                         "--uid", "--gid", "--jobid"})

#: Flux's options about its queue, which a job pmrun starts at once has not: refused so.
_FLUX_QUEUE = frozenset({"--urgency", "--queue", "--bank", "--begin-time", "--flags",
                         "--requires", "--setattr", "--conf", "--cc", "--bcc",
                         "--wait-event"})

#: Words that start GNU parallel's input sources (:mod:`pm.ensemble.inputs`) unless
#: --arg-sep and --arg-file-sep name others (:func:`separators`).
INPUT_SOURCES = frozenset({":::", ":::+", "::::", "::::+"})


def separators(values: Mapping[str, object]) -> tuple[str, str]:
    """The words before arguments and before files (GNU parallel's ``:::``, ``::::``;
    ``--arg-sep``, ``--arg-file-sep``); each with ``+`` after it links its source."""
    return str(values.get("arg_sep", ":::")), str(values.get("arg_file_sep", "::::"))


def source_words(values: Mapping[str, object]) -> frozenset[str]:
    """Every word that starts an input source (see :func:`separators`)."""
    args, files = separators(values)
    return frozenset({args, args + "+", files, files + "+"})


class Section:
    """One program of the job (an MPMD section) and its own options."""

    __slots__ = ("argv", "values")

    def __init__(self) -> None:
        self.argv: list[str] = []
        #: key -> value of the section's options (``env`` is a dict).
        self.values: dict[str, object] = {}


def _bundled(arg: str) -> list[str] | None:
    """Short options written together as GNU parallel (getopt) takes them: flags, then
    perhaps one that takes a value, attached or next (``-kN1``: ``-k -N1``; ``-kj 2``);
    None when ``arg`` is not such a bundle."""
    out: list[str] = []
    for at, letter in enumerate(arg[1:], 1):
        opt = BY_NAME.get("-" + letter)
        if opt is None:
            return None
        if opt.kind in (FLAG, COUNT):
            out.append("-" + letter)
            continue
        if opt.kind == VALUE and out:
            return [*out, "-" + arg[at:]]
        return None
    return out if len(out) > 1 else None


def log_level(verbose: int) -> int:
    """The logging level ``-v`` given ``verbose`` times asks for: WARNING, INFO, DEBUG, or
    ERROR after ``-Q`` (as numbers: this module is read before ``logging`` is imported)."""
    return 40 if verbose < 0 else 30 if verbose == 0 else 20 if verbose == 1 else 10


class Parsed:
    """A command line, checked: the job-wide values, the sections, and what was used."""

    __slots__ = ("action", "bundles", "dirs", "here", "sections", "spans", "used", "values",
                 "verbose", "words")

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.sections: list[Section] = []
        #: The options given, each with its first spelling on the command line (a refusal
        #: names an option as the user wrote it); quick_ok looks at them.
        self.used: dict[Opt, str] = {}
        self.verbose = 0
        #: "help", "version" or "info" when one was asked for (nothing else is checked then).
        self.action = ""
        #: The one host of -hosts or -f when it is this machine, and its slots, as
        #: :func:`quick_ok` found it (:func:`this_machine_alone`).
        self.here: tuple[str, int | None] | None = None
        #: The command line's words (short options written together apart, a -configfile's
        #: words at the end) and where each option is in it: (key, start, end) -- what
        #: ``--onall`` hands on to a run per host, less its own options.
        self.words: list[str] = []
        self.spans: list[tuple[str, int, int]] = []
        #: Each option that came of short options written together, and their word.
        self.bundles: dict[str, str] = {}
        #: The ranks' directories as given (-wdir, --path, --prefix), each with its
        #: option's spelling: checked once the job's hosts are known
        #: (:func:`_ranks_directories`).
        self.dirs: list[tuple[str, str]] = []


def parse(argv: list[str], environ: Mapping[str, str]) -> Parsed:
    """Check a command line (without the program name); raises :class:`UsageError`."""
    out = Parsed()
    sec = Section()
    argv = list(argv)
    read_config = False
    config: list[str] = []
    i = 0
    out.words = argv
    unset: list[str] = []  # -x VAR of a variable we do not have: a warning
    at: tuple[str, int] | None = None  # the option read last: its key and first word
    while i < len(argv) or config:
        if at is not None:
            out.spans.append((*at, i))
            at = None
        if i >= len(argv):
            # The command line is read: the -configfile's programs come after its options.
            argv.extend(config)
            config = []
            continue
        arg = argv[i]
        if arg == ":":
            raise UsageError("':' must follow a program")
        ended = arg == "--"  # the end of the options (srun's, Flux's): the program follows
        if ended:
            if i + 1 >= len(argv) or argv[i + 1] == ":":
                raise UsageError("nothing after '--': give the program")
            i += 1
        if ended or not arg.startswith("-") or arg == "-":
            # The program and its arguments, up to a ':' section separator.
            j = argv.index(":", i) if ":" in argv[i:] else len(argv)
            sec.argv = argv[i:j]
            out.sections.append(sec)
            sec = Section()
            if j < len(argv) and j + 1 >= len(argv):
                raise UsageError("nothing after ':'")
            i = j + 1 if j < len(argv) else j
            continue
        name, eq, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        opt = BY_NAME.get(name)
        if (name in ("-K", "--kill-on-bad-exit") and eq) or (arg[:2] == "-K" and opt is None):
            # srun's optional value: --kill-on-bad-exit=0, -K0.
            kill, name = (inline, name) if eq else (arg[2:], "-K")
            if kill not in ("0", "1"):
                raise UsageError(f"{name} takes 0 or 1, not {kill!r}")
            out.used.setdefault(BY_NAME["-K"], name)
            out.values["kill_on_bad_exit"] = kill
            at = ("kill_on_bad_exit", i)
            i += 1
            continue
        if name in _OPTIONAL_VALUE and eq:  # srun's --FLAG=VALUE of a flag
            opt = BY_NAME[name]
            out.used.setdefault(opt, name)
            value = _OPTIONAL_VALUE[name](inline, name)
            if value is None:
                out.values.pop(opt.key, None)
            else:
                out.values[opt.key] = value
            at = (opt.key, i)
            i += 1
            continue
        if (name == "-m" and i + 1 < len(argv) and looks_like_distribution(argv[i + 1])
                and source_words(out.values).isdisjoint(argv)):
            # srun's -m cyclic; beside ::: sources, GNU parallel's -m (no value) and a
            # command that happens to be called so.
            opt = BY_NAME["--distribution"]
        if opt is None and not eq and len(arg) > 2 and arg[1] != "-":
            opt = BY_NAME.get("-" + arg)  # Open MPI's -tag-output: its --tag-output
            short = BY_NAME.get(arg[:2]) if opt is None else None
            if arg[:2] == "-m" and looks_like_distribution(arg[2:]):
                short = BY_NAME["--distribution"]  # srun's -mcyclic
            if short is not None and short.kind == VALUE and _attached(short, arg):
                opt, name, eq, inline = short, arg[:2], "=", arg[2:]  # -n4, -j2: srun's
        if opt is None and not eq and len(arg) > 2 and arg[1] != "-":
            bundle = _bundled(arg)
            if bundle is not None:  # GNU parallel's (getopt's) -kN1: -k -N1
                argv[i:i + 1] = bundle
                for word in bundle:
                    out.bundles.setdefault(word[:2], arg)
                continue
        if opt is None:
            word = arg.partition("=")[0]
            if word in _ALLOCATION:
                raise UsageError(f"{word} asks Slurm for resources, which an allocation "
                                 f"grants: give it to salloc or sbatch, and run pmrun inside "
                                 "(it starts the ranks on the allocation's nodes)")
            if word in _SCHEDULING:
                raise UsageError(f"{word} is about how Slurm schedules an allocation: give "
                                 "it to salloc or sbatch, and run pmrun inside (it starts the "
                                 "ranks on the allocation's nodes)")
            if word in _FLUX_QUEUE:
                raise UsageError(f"{word} is about how Flux queues a job (flux submit, flux "
                                 "alloc): pmrun starts its job at once, on this machine or "
                                 "the hosts given")
            raise UsageError(f"unknown option {arg} (see pmrun --help)")
        if name == "--wait" and not eq and not (i + 1 < len(argv) and _is_number(argv[i + 1])):
            # GNU parallel's --wait (for a semaphore's commands), not srun's --wait SECONDS.
            out.values["sem_wait"] = True
            at = ("sem_wait", i)
            i += 1
            continue
        out.used.setdefault(opt, name)
        at = (opt.key, i)
        if opt.kind == ACTION:
            out.action = opt.key
            return out
        if opt.kind in (FLAG, COUNT):
            if eq:
                raise UsageError(f"{name} takes no value")
            if opt.kind == COUNT:
                out.verbose += -1 if opt.key == "quiet" else 1
            elif opt.key:
                (sec.values if opt.local else out.values)[opt.key] = opt.const
            i += 1
            continue
        if eq:
            raw = inline
        elif i + 1 < len(argv):
            i += 1
            raw = argv[i]
        else:
            raise UsageError(f"{name} needs {opt.metavar or 'a value'}")
        i += 1
        if opt.kind in (PAIR, EXPORT):  # NAME VALUE or NAME=VALUE; -x NAME: its value here
            var, is_one_word, val = raw.partition("=")
            if not is_one_word and opt.kind == PAIR:
                if i >= len(argv):
                    raise UsageError(f"{name} needs {opt.metavar} (or "
                                     f"{opt.metavar.replace(' ', '=')})")
                val = argv[i]
                i += 1
            if not var:
                raise UsageError(f"{name} needs a variable name, not {raw!r}")
            if not is_one_word and opt.kind == EXPORT:
                if var not in environ:  # (said once the line is read: -Q silences it)
                    unset.append(f"{name} {var}: not set in pmrun's environment, so not passed")
                    continue
                val = environ[var]
            target = sec.values if opt.local else out.values
            env = target.setdefault(opt.key, {})
            assert isinstance(env, dict)
            if opt.const in ("prepend", "append"):  # Open MPI 5's --prepend-env NAME[c] VAL
                var, val = _env_edit(name, var, val, env.get(var[:-3], environ.get(var[:-3])),
                                     opt.const == "prepend")
            elif isinstance(opt.const, str):  # --mca KEY VALUE: the variable's prefix
                var = opt.const + var
            env[var] = val
        elif opt.kind == FILE:
            if read_config:
                raise UsageError(f"{name} inside a {name} file")
            read_config = True
            config = config_args(readable_file(raw, name), name)
        else:
            assert opt.check is not None
            value = opt.check(raw, name)
            if opt.check is ranks_directory:
                out.dirs.append((name, raw))
            if opt.key == "env_mode":
                value = ("list", value)
            elif opt.key in ("arg_files", "flux_env", *LISTS):  # -a FILE: another source
                files = out.values.setdefault(opt.key, [])
                assert isinstance(files, list)
                files.append(value)
                continue
            elif opt.key == "mpi" and value == "list":  # srun's: say what is served, exit
                out.action = "mpi_list"
                return out
            elif opt.key in ("hosts", "hostfile") and out.sections:
                # After the first program: this program's own hosts (Open MPI's --host and
                # --hostfile of an app context); before it, the job's (Hydra's -hosts).
                sec.values["hosts"] = value if opt.key == "hosts" else \
                    _hosts_of_file(str(value), name)
                continue
            if opt.key:  # (none: an option taken that means nothing here)
                (sec.values if opt.local else out.values)[opt.key] = value
    if at is not None:
        out.spans.append((*at, i))
    if not out.sections and "tasks" in out.values and set(sec.values) == {"wdir"}:
        out.values["wdir"] = sec.values.pop("wdir")  # --tasks FILE: every task's
    if sec.values:
        flags = " ".join(sorted({name for o, name in out.used.items()
                                 if o.local and o.key in sec.values}))
        raise UsageError(f"{flags} must come before a program" if out.sections
                         else "no program given (see pmrun --help)")
    if not out.sections and not ({"tasks", "topology", "number_of", "sim_ranks",
                                  "retry_failed", "shell_quote"}
                                 | _SEMAPHORE_KEYS) & out.values.keys():
        raise UsageError("no program given (see pmrun --help)")
    args_sep, files_sep = separators(out.values)
    if args_sep == files_sep:
        raise UsageError(f"--arg-sep and --arg-file-sep are both {args_sep!r}: sources of "
                         "arguments and of files need words of their own")
    if _SEMAPHORE_KEYS & out.values.keys():
        _semaphore(out)
        return out
    if "multi_prog" in out.values:
        _multi_prog(out)
    if "cat" in out.values and "fifo" in out.values:
        raise UsageError("--cat and --fifo: give one of them (a file, or a named pipe)")
    if ({"cat", "fifo", "roundrobin"} & out.values.keys()) and "pipepart" not in out.values:
        out.values["pipe"] = True  # (GNU parallel's: they are --pipe's)
    if "roundrobin" in out.values:
        _not_with(out, ("retries", "hosts", "cat", "fifo", "dry_run"),
                  "--roundrobin feeds runs on this machine block after block, as they read")
    if "shard" in out.values or "bin" in out.values:
        _sharded(out)
    if "group_by" in out.values:
        _group_by(out)
    if "onall" in out.values or "nonall" in out.values:
        _onall(out)
    if "retry_failed" in out.values:
        _retry_failed(out)
    elif "tee" in out.values:
        _tee(out)
    elif "pipe" in out.values or "pipepart" in out.values:
        _piped_command(out)
    elif "arg_files" in out.values or (len(out.sections) == 1 and "tasks" not in out.values) \
            or ("shell_quote" in out.values and not out.sections):  # (its arguments on stdin)
        _command_with_sources(out)
    if "tty" in out.values:
        _not_with(out, ("pipe", "pipepart", "tee", "cat", "fifo", "roundrobin", "shard", "bin",
                        "group_by", "onall", "nonall", "tag", "tagstring", "ctag",
                        "ctagstring", "color", "output_mode", "keep_order", "results",
                        "files", "transfer", "returns", "cleanup", "trc", "basefiles"),
                  "--tty gives each task pmrun's terminal and its output as it comes, on "
                  "this machine")
    _open_mpi_output(out)
    _flux_shell_option(out)
    _ensemble_only(out)
    if "onall" in out.values:
        _onall_words(out)
    if "pty" in out.values:  # srun's --pty: rank 0's terminal, passed on as it comes
        if str(out.values.get("stdin", "0")) != "0":
            raise UsageError(f"--pty gives rank 0 a terminal, with pmrun's stdin: not with "
                             f"{out.used.get(BY_NAME['--stdin'], '--stdin')} "
                             f"{out.values['stdin']}")
        out.values["unbuffered"] = True
        out.used.setdefault(BY_NAME["--unbuffered"], "--pty")
    _unbuffered(out, environ)
    _open_mpi_mapping(out.values, environ)
    _srun_export(out)
    _flux_env(out, environ)
    _output_filename(out)
    _flux_templates(out)
    _job_name_in_patterns(out, environ)
    if "merge_stderr" in out.values and "error" in out.values:
        raise UsageError("--merge-stderr-to-stdout leaves no stderr for --error to write")
    _srun_cpu_bind(out.values)
    _srun_hint(out.values)
    if "mem_bind" in out.values:  # srun's verbose: --report-bindings
        from pm.agent.membind import parse

        if parse(str(out.values["mem_bind"]))[1]:
            out.values["report_bindings"] = True
    _open_mpi_paths(out.values, environ)
    buffering = out.values.pop("stream_buffering", None)
    if buffering is not None:  # Open MPI's: its MCA parameter, 5's name and 4's
        genv = out.values.setdefault("genv", {})
        assert isinstance(genv, dict)
        for name in ("OMPI_MCA_ompi_stream_buffering", "OMPI_MCA_ess_base_stream_buffering"):
            genv.setdefault(name, str(buffering))
    _open_mpi_tune(out.values, environ)
    if "cpu_list" in out.values:  # Open MPI's --cpu-list: a CPU each rank, in turn
        cpus = out.values.pop("cpu_list")
        if "bind_to" not in out.values:
            out.values["bind_spelled"] = f"--cpu-list {_runs(str(cpus))}"
        if out.values.setdefault("bind_to", f"user:{cpus}") != f"user:{cpus}":
            raise UsageError(f"--cpu-list {cpus} binds each rank to one of these CPUs: not "
                             f"with --bind-to {out.values['bind_to']}")
    _cpus_per_task(out.values)
    _srun_exclude(out.values, environ)
    if "timeout" not in out.values and environ.get("MPIEXEC_TIMEOUT"):
        out.values["timeout"] = seconds(environ["MPIEXEC_TIMEOUT"].strip(), "MPIEXEC_TIMEOUT")
    default_file = next((v for v in _HOST_FILE_VARS if environ.get(v, "").strip()), None)
    if default_file and not (
            {"hosts", "hostfile", "local_nodes", "agents", "tasks", "tasks_line"}
            & out.values.keys()):
        # Hydra's default host file (a site's MPI module sets it): an MPI job without
        # hosts of its own runs on its hosts, before an allocation's, as Hydra's does.
        out.values["hostfile"] = hostfile(environ[default_file].strip(), default_file)
    _hydra_variables(out.values, environ)
    _ranks_directories(out, environ)
    if out.verbose >= 0:
        for text in unset:
            _warn(text)
    return out


def _ranks_directories(out: Parsed, environ: Mapping[str, str]) -> None:
    """The ranks' directories (-wdir, --path, --prefix) refused here, in one line, when
    one is none and every rank runs on this machine; when ranks run on other machines
    they need not be here (Hydra checks none): a node where one is missing says so as
    its ranks start."""
    if out.dirs and not ranks_elsewhere(out, environ):
        for name, raw in out.dirs:
            directory(raw, name)


def ranks_elsewhere(out: Parsed, environ: Mapping[str, str]) -> bool:
    """Whether the job's ranks (may) run on machines other than this one: hosts given that
    are not this machine (-hosts, -f, HYDRA_HOST_FILE, a program's own, a rankfile's), the
    persistent agents, or an allocation's (Slurm, PBS/Torque, LSF) when no hosts are
    given.  False for an ensemble's tasks (checked here as ever) and --local-nodes; a
    host list or rankfile that cannot be read counts as this machine (its own refusal
    comes later)."""
    from pm.common.hostlist import (
        HostlistError,
        batch_hostfile,
        expand,
        is_this_machine,
        parse_hostfile,
        parse_hosts_option,
    )

    values = out.values
    if {"tasks", "tasks_line", "local_nodes"} & values.keys():
        return False
    launcher = str(values.get("launcher", ""))
    if launcher in ("persistent", "persist") or "agents" in values:
        return True
    named: list[str] = []
    try:
        for given in (values, *(s.values for s in out.sections)):
            if "hosts" in given:
                named += [e.host for e in parse_hosts_option(str(given["hosts"]))]
        if "hostfile" in values:
            named += [e.host for e in parse_hostfile(file_text(str(values["hostfile"])))]
        if "rankfile" in values:
            from pm.common.rankfile import parse

            lines = parse(file_text(str(values["rankfile"])), "rankfile")
            named += [ln.host for ln in lines if ln.relative is None]
    except (HostlistError, OSError, UnicodeDecodeError, ValueError):  # (RankfileError too)
        pass
    if not all(map(is_this_machine, named)):
        return True
    if named or "hosts" in values or "hostfile" in values or launcher in ("local", "fork"):
        return False
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    try:
        if environ.get("SLURM_JOB_ID") and nodelist:
            return not all(map(is_this_machine, expand(nodelist)))
        found = batch_hostfile(environ)
        if found is not None:
            return not all(is_this_machine(e.host)
                           for e in parse_hostfile(file_text(found[1])))
    except (HostlistError, OSError, UnicodeDecodeError):
        return True  # (an allocation's hosts: not this machine's to say)
    return False


def _attached(short: Opt, arg: str) -> bool:
    """Whether ``arg`` is ``short`` with its value attached (srun's ``-n4``, ``-oout.%t``)
    rather than another launcher's long option written with one dash (Hydra's
    ``-ckpoint-prefix``, ``-order-nodes``, ``-info``; Open MPI's ``-nolocal``), which pmrun
    names as unknown instead of reading ``-c kpoint-prefix`` as a value of ``-c``."""
    tail = arg[2:]
    words = tail.split("-")
    if len(tail) < 3 or not all(w.isalpha() and w.islower() for w in words):
        return True  # a number, a path, a pattern, -nx: a value (its check names it)
    if len(words) > 1:
        return False  # words joined by dashes: an option's name
    assert short.check is not None
    try:
        short.check(tail, arg[:2])
    except UsageError:
        return False  # a word this option does not take: the name of another
    return True


def _stdin_source(out: Parsed) -> str | None:
    """The first task ensemble's option of a command line without input sources, unless it
    also has an MPI job's (``-n``, ``-ppn``, ``--bind-to``...): its arguments are on stdin."""
    if "tasks" in out.values or len(out.sections) != 1 or not out.sections[0].argv:
        return None
    if out.sections[0].values or any(o.key in _RANKS_KEYS for o in out.used):
        return None
    return next((name for o, name in out.used.items() if o.key in _ENSEMBLE_KEYS
                 and name != "-u"), None)  # (-u: srun's, as well)


#: GNU parallel's semaphore options: any of them runs the command as ``sem`` does.
_SEMAPHORE_KEYS = frozenset({"semaphore", "sem_id", "sem_fg", "sem_bg", "sem_timeout",
                             "sem_wait"})


def _semaphore(out: Parsed) -> None:
    """``pmrun --semaphore [-j N] CMD`` (GNU parallel's sem): the command's words one shell
    line (``values["semaphore_line"]``); only -j and the semaphore's options go with it."""
    values = out.values
    values["semaphore"] = True
    other = sorted({name for o, name in out.used.items()
                    if o.key not in _SEMAPHORE_KEYS | {"jobs"}})
    if other or len(out.sections) > 1 or (out.sections and out.sections[0].values):
        raise UsageError(f"--semaphore runs one command with -j N and its own options, not "
                         f"{other[0] if other else 'several programs'}")
    if "sem_fg" in values and "sem_bg" in values:
        raise UsageError("--fg and --bg: give one of them")
    words = out.sections[0].argv if out.sections else []
    if words:
        values["semaphore_line"] = " ".join(words)
    elif "sem_wait" not in values:
        raise UsageError("--semaphore runs a command: give it (pmrun --semaphore CMD)")
    out.sections.clear()


def _not_with(out: Parsed, keys: tuple[str, ...], what: str) -> None:
    """:class:`UsageError` ``WHAT: not with OPT`` for the first option given of ``keys``
    (named as written)."""
    clash = next((n for o, n in out.used.items() if o.key in keys), None)
    if clash is not None:
        raise UsageError(f"{what}: not with {clash}")


def _named_column(values: Mapping[str, object], word: str, column: str) -> None:
    """A column given by name needs ``--header :`` (its first line names the columns)."""
    if not column.isdecimal() and values.get("header") != ":":
        raise UsageError(f"{word} {column}: a column's name needs --header : (the first "
                         "line names the columns)")


def _group_by(out: Parsed) -> None:
    """GNU parallel's ``--group-by COL``: --pipe's records are runs of lines alike in COL."""
    values = out.values
    _not_with(out, ("pipepart", "shard", "bin", "max_lines", "recstart", "recend", "regexp"),
              "--group-by makes records of stdin's lines alike in a column")
    _named_column(values, "--group-by", str(values["group_by"]))
    values["pipe"] = True  # (GNU parallel's: it is --pipe's)


def _sharded(out: Parsed) -> None:
    """GNU parallel's ``--shard COL`` / ``--bin COL``: --pipe's lines dealt to the task
    slots' runs by a column's value (a hash of it, or the number itself)."""
    values = out.values
    if "shard" in values and "bin" in values:
        raise UsageError("--shard and --bin: give one of them")
    word = "--shard" if "shard" in values else "--bin"
    _not_with(out, ("pipepart", "roundrobin", "tee", "cat", "fifo", "retries", "hosts",
                    "max_args", "max_lines", "recstart", "recend", "regexp"),
              f"{word} deals the lines of stdin to runs on this machine as they read")
    if str(values.get("jobs", "")).strip() in ("0", "0%"):
        raise UsageError(f"{word} deals the lines to a run per task slot: give -j N, not "
                         f"-j {values['jobs']}")
    _named_column(values, word, str(values.get("shard", values.get("bin"))))
    values["pipe"] = True  # (GNU parallel's: they are --pipe's)


def _onall(out: Parsed) -> None:
    """GNU parallel's ``--onall`` (``--nonall``: without arguments, the command once): the
    checks; ``--nonall``'s one empty argument, taken by no task (``-N0``)."""
    values = out.values
    _not_with(out, ("pipe", "pipepart", "tee", "roundrobin", "shard", "bin", "group_by",
                    "cat", "fifo", "local_nodes", "sim_ranks"),
              "--onall runs every task on every host")
    if "nonall" not in values:
        return
    values["onall"] = True
    argv = out.sections[0].argv if len(out.sections) == 1 else []
    given = next((n for o, n in out.used.items() if o.key in ("arg_files", "tasks")), None)
    given = given or next((w for w in argv if w in source_words(values)), None)
    if given:
        raise UsageError(f"--nonall runs the command once on every host, without arguments: "
                         f"not {given} (--onall runs each argument on every host)")
    count = values.pop("N", values.get("max_args", 0))  # (-N: srun's too; here parallel's)
    if str(count) != "0":
        raise UsageError(f"--nonall runs the command without arguments: not -N {count}")
    values["max_args"] = 0
    argv.extend([separators(values)[0], ""])


def _onall_words(out: Parsed) -> None:
    """``--onall``'s run on each host: this command line less the hosts, -j and --joblog
    (the host's run gets its own), as JSON in ``values["onall_words"]``; each word that
    reads stdin is null there (it is read once, into a file for every host's run)."""
    import json

    values = out.values
    drop = {"hosts", "hostfile", "jobs", "onall", "nonall", "joblog"}
    if "tag" in values:  # (the host's name tags its lines)
        drop |= {"tag", "tagstring"}
    args_sep, files_sep = separators(values)
    dropped: set[int] = set()
    stdin: set[int] = set()
    last = 0
    for key, start, end in out.spans:
        last = end
        if key in drop:
            dropped.update(range(start, end))
        elif key in ("arg_files", "tasks") and out.words[end - 1] == "-":
            stdin.add(end - 1)
    files = False
    for k in range(last, len(out.words)):  # the command and its sources
        word = out.words[k]
        if word in (args_sep, args_sep + "+", files_sep, files_sep + "+"):
            files = word.startswith(files_sep)
        elif files and word == "-":
            stdin.add(k)
    words: list[str | None] = [None if k in stdin else w for k, w in enumerate(out.words)
                               if k not in dropped]
    if "nonall" in values:
        words = ["-N0", *words, args_sep, ""]
    elif "stdin_source" in values:
        words += [files_sep, None]
    values["onall_words"] = json.dumps(words)


def _retry_failed(out: Parsed) -> None:
    """GNU parallel's ``--retry-failed``: the tasks are the commands that failed in the job
    log (:func:`pm.ensemble.joblog.failed_commands`), each under its number there; a command
    line and its arguments are not used (as parallel's, which ignores them)."""
    if "joblog" not in out.values:
        raise UsageError("--retry-failed runs again the commands that failed in the log of "
                         "--joblog FILE: give it")
    _not_with(out, ("resume", "resume_failed", "tasks", "pipe", "pipepart", "tee", "onall",
                    "nonall", "cat", "fifo", "roundrobin", "shard", "bin", "group_by"),
              "--retry-failed runs the failed commands of the job log")
    out.values.pop("arg_files", None)
    out.values["tasks_line"] = ""
    out.sections.clear()


def _tee(out: Parsed) -> None:
    """GNU parallel's ``--tee``: ``pmrun --tee CMD ::: A B`` runs CMD once per argument,
    every run reading all of stdin (as ``--pipe``'s blocks, to each), all at once."""
    _not_with(out, ("pipepart", "roundrobin", "cat", "fifo", "retries", "hosts", "tasks",
                    "arg_files", "dry_run"),
              "--tee gives all of stdin to a run per argument, as they read it")
    out.values["pipe"] = True  # (GNU parallel's: --tee is --pipe's)
    argv = out.sections[0].argv if len(out.sections) == 1 else []
    if not any(w in source_words(out.values) for w in argv[1:]):
        raise UsageError("--tee runs the command once per argument, each reading all of "
                         "stdin: give them (pmrun --tee CMD ::: A B)")
    _command_with_sources(out)


def _piped_command(out: Parsed) -> None:
    """``pmrun --pipe CMD``: CMD is one tasks line, run once per block of stdin; with
    ``--pipepart -a FILE`` (or ``CMD :::: FILE``) once per block of FILE
    (``values["pipe_file"]``)."""
    values = out.values
    what = "--pipepart" if "pipepart" in values else "--pipe"
    if "tasks" in values or len(out.sections) != 1:
        raise UsageError(f"{what} runs one command (pmrun {what} CMD), not --tasks FILE")
    argv = out.sections[0].argv
    if "pipepart" in values:
        values["pipe"] = True
        files = values.pop("arg_files", None) or []
        assert isinstance(files, list)
        if len(argv) >= 2 and argv[-2] == separators(values)[1] and not files:
            files, argv = [argv[-1]], argv[:-2]
        if len(files) != 1:
            raise UsageError("--pipepart cuts one file into blocks: give it with -a FILE "
                             "(or CMD :::: FILE)")
        if files[0] == "-":
            raise UsageError("--pipepart cuts a file, not stdin: give -a FILE, or use --pipe")
        values["pipe_file"] = readable_file(files[0], "--pipepart")
    clash = next((w for w in argv if w in source_words(values)), None)
    given = [n for o, n in out.used.items()
             if o.key in ("arg_files", "results", "resume", "resume_failed", "dry_run")
             and (o.key != "arg_files" or "pipepart" not in values)]
    if clash or given:
        source = "stdin" if what == "--pipe" else "the file"
        raise UsageError(f"{what} gives each task a block of {source}: not "
                         f"{clash or given[0]}")
    if not argv:
        raise UsageError(f"{what} runs a command on each block: give it (pmrun {what} CMD)")
    values["tasks_line"] = _command_line(values, argv)
    out.sections.clear()


def _command_with_sources(out: Parsed) -> None:
    """GNU parallel's form, ``pmrun CMD ::: A B``: the words before the first input source
    are one tasks line (``values["tasks_line"]``), the section keeps the sources."""
    files = out.values.pop("arg_files", None)
    if len(out.sections) > 1:
        raise UsageError("-a FILE gives arguments to one command, not to several programs")
    if not out.sections:
        out.sections.append(Section())
    argv = out.sections[0].argv
    words = source_words(out.values)
    file_sep = separators(out.values)[1]
    at = next((i for i, word in enumerate(argv) if word in words), None)
    if files:  # -a FILE: the first sources, as :::: FILE (GNU parallel's order)
        assert isinstance(files, list)
        cut = len(argv) if at is None else at
        sources = [file_sep, *files, *argv[cut:]]
        if "tasks" in out.values:
            out.sections[0].argv = [*argv[:cut], *sources]
            return
        if cut == 0:
            raise UsageError("-a FILE gives arguments to a command: put the command after "
                             "the options (pmrun -a FILE CMD) or give --tasks FILE")
        out.values["tasks_line"] = _command_line(out.values, argv[:cut])
        out.sections[0].argv = sources
        return
    if at is None:
        given = _stdin_source(out)
        if given is None and "shell_quote" in out.values and not argv:  # (the arguments'
            given = next(n for o, n in out.used.items() if o.key == "shell_quote")  # stdin's)
        if given is None:
            return
        # GNU parallel's arguments on stdin when no source is given (``ls | parallel -j 2
        # gzip``): an ensemble's option says this is one (the ensemble refuses a terminal).
        out.values["stdin_source"] = given
        argv.extend([file_sep, "-"])
        at = len(argv) - 2
    if at == 0 and "shell_quote" in out.values:  # GNU parallel's: no command, each task's
        out.values["tasks_line"] = "{}"             # arguments quoted as one word
        out.values["quote_args"] = True
        return
    if at == 0:
        raise UsageError(f"{argv[0]} gives arguments to a command: put the command before it "
                         f"(pmrun CMD {argv[0]} ...) or give --tasks FILE")
    out.values["tasks_line"] = _command_line(out.values, argv[:at])
    out.sections[0].argv = argv[at:]


def _command_line(values: dict[str, object], words: list[str]) -> str:
    """The tasks line of an ensemble's command ``words``: joined by spaces, so the shell
    reads them again (GNU parallel's way); with ``-q`` each quoted, and the words kept
    (``values["tasks_words"]``, joined by NULs, which no argument holds): their
    replacement strings are filled unquoted."""
    if "quote" not in values:
        return " ".join(words)
    from pm.ensemble.inputs import shell_quote

    values["tasks_words"] = "\0".join(words)
    return " ".join(map(shell_quote, words))


#: Options that only task ensembles take.
_ENSEMBLE_KEYS = ("jobs", "retries", "mem_per_task", "joblog", "resume", "resume_failed",
                  "retry_failed",
                  "dry_run", "keep_order", "halt", "colsep", "output_mode", "tag",
                  "tagstring", "delimiter", "header", "results", "pipe", "pipepart", "block",
                  "eof", "no_empty", "trim", "link", "replace", "arg_sep", "arg_file_sep",
                  "shell_quote", "skip_first_line", "seqreplace", "slotreplace", "cpu_unit",
                  "extensionreplace", "basenamereplace", "dirnamereplace",
                  "basenameextensionreplace",
                  "recend", "recstart", "regexp", "memfree", "memsuspend",
                  "progress", "total_jobs", "max_args", "many_args", "delay", "shuf",
                  "quote", "nice",
                  "files", "tmpdir", "max_lines", "plus", "cat", "fifo", "roundrobin", "tee",
                  "shard", "bin", "slot_var", "group_by", "onall", "nonall", "load",
                  "noswap", "limit", "transfer", "returns", "cleanup", "trc", "basefiles",
                  "ctag", "ctagstring", "color", "colorfailed", "no_keep_order", "termseq",
                  "csv", "rpl", "tty", "max_chars")


#: Options about an MPI job's ranks, which task ensembles do not take.
_RANKS_KEYS = ("bind_to", "map_by", "report_bindings", "prepend", "output", "error", "kvs",
               "output_filename", "timestamp_output",
               "mpi", "profile", "universe_size", "nodes", "cpus_per_task", "stdin", "cpu_bind",
               "merge_stderr", "distribution", "kill_on_bad_exit", "unbuffered", "display",
               "print_rank_map", "print_all_exitcodes", "wait_after_first", "do_not_launch",
               "report_pid", "prefix", "exe_path", "no_oversubscribe", "cpu_list", "rank_by",
               "report_state", "stack_traces", "forward_signals", "signal_before_end",
               "open_mode", "task_prolog", "srun_prolog", "srun_epilog",
               "task_epilog", "propagate", "hint", "gpus_per_task", "output_from", "exact",
               "mem_bind", "cpu_freq", "relative", "memory_alloc_kinds",
               "quit_on_interrupt", "acctg_freq", "slurmd_debug", "no_kill", "bcast",
               "send_libs", "pty", "umask", "pmi_port", "bind_spelled")


def _ensemble_only(out: Parsed) -> None:
    """Refuse an ensemble's option on an MPI job and a ranks' option on an ensemble (each
    would be silently ignored there), and --resume without the log it reads."""
    values = out.values
    ensemble = "tasks" in values or "tasks_line" in values
    if "N" in values:  # GNU parallel's -N in an ensemble, srun's and Flux's in an MPI job
        n = values.pop("N")
        key = "max_args" if ensemble else "nodes"
        if not ensemble and n == 0:
            raise UsageError("-N must be at least 1 (the hosts an MPI job runs on)")
        if values.setdefault(key, n) != n:
            raise UsageError(f"-N {n} and --{key.replace('_', '-')} {values[key]} disagree")
    if ensemble:
        if "max_args" in values and ("pipepart" in values or "regexp" in values):
            raise UsageError(f"-N {values['max_args']} records a block is for --pipe, with "
                             "--recstart/--recend as they are written")
        lines = values.get("max_lines")
        if lines is not None and "pipe" not in values:
            # GNU parallel's -L N: N lines a task (-N N), a blank at a line's end joins the
            # next to it.
            if values.setdefault("max_args", lines) != lines:
                raise UsageError(f"-L {lines} and -N {values['max_args']}: give one of them")
            values["join_blank"] = True
        elif lines is not None and ("pipepart" in values or "regexp" in values
                                    or "recend" in values or "recstart" in values):
            raise UsageError(f"--pipe -L {lines}: records of {lines} lines, not with "
                             + ("--pipepart" if "pipepart" in values else "--regexp"
                                if "regexp" in values else "--recend/--recstart"))
        if values.get("max_args") == 0 and "pipe" in values:
            raise UsageError("--pipe -N 0: a block of no record")
        if "quote" in values and "tasks_line" not in values:
            raise UsageError("-q quotes the words of a command: give the command (pmrun -q "
                             "CMD ::: ARGS), not --tasks FILE")
        if "quote" in values and "many_args" in values:
            raise UsageError(f"-q and {values['many_args']}: give one of them")
        if "many_args" in values and ("pipe" in values or "max_args" in values):
            raise UsageError(f"{values['many_args']} groups the arguments of an input source: "
                             f"not with {'--pipe' if 'pipe' in values else '-N'}")
        for key in ("block", "recend", "recstart", "regexp"):
            if key in values and "pipe" not in values:
                raise UsageError(f"--{key} is for --pipe (how stdin is cut into blocks)")
        if "regexp" in values:
            _regexps(values)
        header = values.get("header")
        if header is not None and "pipepart" in values:
            raise UsageError("--header is for --pipe (its first lines before every block), "
                             "not --pipepart")
        if isinstance(header, str) and header.isdecimal() and "pipe" not in values:
            raise UsageError(f"--header {header} (lines of stdin before every block) is for "
                             "--pipe: an input source's names come with --header :")
        if str(values.get("block", "")).startswith("-") and "pipepart" not in values:
            raise UsageError(f"--block {values['block']} (blocks a task slot) is for --pipepart: "
                             "--pipe reads stdin, whose size is not known ahead")
        for opt, name in out.used.items():
            if opt.key in _RANKS_KEYS:
                hint = {"nodes": " (their hosts: -S, -hosts)",
                        "stdin": " (their stdin: --pipe, --pipepart)"}.get(
                    opt.key, " (their output: --tag, --tagstring, --group, --lb)"
                    if opt.key in ("prepend", "output", "error", "merge_stderr",
                                   "output_filename", "timestamp_output") else "")
                raise UsageError(f"{name} is for an MPI job's ranks, not for task "
                                 f"ensembles{hint}")
        if "files" in values and "results" in values:
            raise UsageError("--files and --results both store the output: give one of them")
        resume = "resume" in values or "resume_failed" in values
        if resume and "joblog" not in values:
            raise UsageError(f"{'--resume' if 'resume' in values else '--resume-failed'} "
                             "reads the log of --joblog FILE: give it")
        if "resume" in values and "resume_failed" in values:
            raise UsageError("--resume and --resume-failed: give one of them")
        return
    ungroup = BY_NAME["-u"]
    if out.used.get(ungroup) == "-u":  # GNU parallel's -u beside :::, srun's on an MPI job
        del out.used[ungroup], values["output_mode"]
        out.used.setdefault(BY_NAME["--unbuffered"], "-u")
        values["unbuffered"] = True
    quote = BY_NAME["-q"]
    if out.used.get(quote) == "-q":  # GNU parallel's -q beside :::, Open MPI's on an MPI job
        del out.used[quote], values["quote"]
        out.used.setdefault(BY_NAME["--quiet"], "-q")
        out.verbose -= 1
    for opt, name in out.used.items():
        if opt.key in _ENSEMBLE_KEYS and name in out.bundles:
            # (-membind, Hydra's: no bundle of GNU parallel's short options after all)
            raise UsageError(f"unknown option {out.bundles[name]} (as short options written "
                             f"together, {name} is for task ensembles: pmrun CMD ::: ARGS)")
        if opt.key in _ENSEMBLE_KEYS:
            raise UsageError(f"{name} is for task ensembles (pmrun CMD ::: ARGS, "
                             "--tasks FILE), not for an MPI job's ranks")
    if isinstance(values.get("timeout"), str):
        raise UsageError(f"--timeout {values['timeout']}: a percentage of the median "
                         "successful run is for task ensembles; an MPI job's limit is seconds")


def _unbuffered(out: Parsed, environ: Mapping[str, str]) -> None:
    """srun's ``-u``: output passed on as it comes (no line to label), Python ranks told
    not to buffer theirs."""
    values = out.values
    if "unbuffered" not in values:
        return
    for opt, name in out.used.items():
        if opt.key in ("prepend", "timestamp_output"):
            raise UsageError(f"{out.used[BY_NAME['--unbuffered']]} passes output on as it "
                             f"comes, not in lines: {name} has no line to start")
    if "PYTHONUNBUFFERED" not in environ:
        genv = values.setdefault("genv", {})
        assert isinstance(genv, dict)
        genv.setdefault("PYTHONUNBUFFERED", "1")


def _regexps(values: dict[str, object]) -> None:
    """``--regexp``: --recstart and --recend must be regular expressions (of bytes); not
    with --pipepart, whose file is cut at literal boundaries."""
    import re

    if "pipepart" in values:
        raise UsageError("--regexp is for --pipe: --pipepart cuts at --recstart/--recend "
                         "as they are written")
    for key in ("recstart", "recend"):
        if key in values:
            try:
                re.compile(os.fsencode(str(values[key])))
            except re.error as exc:
                raise UsageError(f"--{key} {values[key]}: not a regular expression ({exc})"
                                 ) from None


def _cpu_unit(values: dict[str, object]) -> str:
    """What a rank's CPUs are counted in: cores, or hardware threads with Open MPI's
    ``--use-hwthread-cpus`` (a rank's own PE=N or -c N; pmrun binds nothing unasked)."""
    return "hwthread" if values.get("hwthread_cpus") else "core"


def _open_mpi_mapping(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Open MPI's ``--map-by`` words as pmrun's options: ``TARGET:PE=N`` binds N cores per
    rank (``--bind-to core:N``), ``ppr:N:node`` is ``-ppn N``, ``ppr:N:package`` (numa,
    l3cache, core, hwthread) N a package: ``-ppn`` N times the node's packages, the
    ranks mapped N to each in turn when bound (this machine's nodes only: the count needs
    the node's topology before the plan)."""
    per = values.pop("npersocket", None)
    if per is not None:  # (Open MPI 4's spelling; 5 knows only ppr:N:package)
        ppr = f"ppr:{per}:package"
        if values.setdefault("map_by", ppr) != ppr:
            raise UsageError(f"-npersocket {per} is --map-by {ppr}: --map-by "
                             f"{values['map_by']} disagrees")
    given = values.get("map_by")
    if not isinstance(given, str):
        return
    if given.lower().startswith("rankfile:"):
        values["rankfile"] = given.partition("=")[2]
        del values["map_by"]
        return
    mapped, pe = _pe_of(given)
    if pe:  # N cores per rank, bound
        values["map_by"] = mapped
        bind = str(values.get("bind_to", _cpu_unit(values)))
        if bind.lower() not in ("core", "hwthread"):
            raise UsageError(f"--map-by {mapped}:PE={pe} binds {pe} cores per rank: "
                             f"--bind-to {bind} disagrees")
        values["bind_to"] = f"{bind}:{pe}"
    if mapped.lower() == "node":
        if values.setdefault("distribution", "cyclic") != "cyclic":
            raise UsageError(f"--map-by node places ranks cyclically: --distribution "
                             f"{values['distribution']} disagrees")
        del values["map_by"]
    elif mapped.lower().startswith("ppr:"):
        _, count, per = mapped.lower().split(":")
        obj = PPR_OBJECTS[per]
        per_node = int(count) * _objects_here(obj, mapped, values, environ)
        if values.setdefault("ppn", per_node) != per_node:
            raise UsageError(f"--map-by {mapped} and -ppn {values['ppn']} disagree")
        if obj == "node":
            del values["map_by"]
        else:
            values["map_by"] = f"ppr:{count}:{obj}"


def _objects_here(obj: str, given: str, values: Mapping[str, object],
                  environ: Mapping[str, str]) -> int:
    """How many ``obj`` this machine has (1 for a node), for ``--map-by ppr:N:obj``;
    :class:`UsageError` when the job runs on other hosts (their topology is theirs)."""
    if obj == "node":
        return 1
    if {"hosts", "hostfile", "launcher", "nodes"} & values.keys() or any(
            environ.get(v) for v in ("SLURM_JOB_ID", "PBS_NODEFILE", "LSB_DJOB_HOSTFILE",
                                     "HYDRA_HOST_FILE")):  # (an allocation's other hosts)
        raise UsageError(f"--map-by {given}: pmrun counts the {obj} objects of this machine's "
                         "nodes only (other hosts' are theirs to tell); give -ppn N")
    from pm.agent.topology import discover

    topo = discover(use_hwloc=False)
    count = {"package": len(topo.packages), "numa": len(topo.numa_nodes),
             "l3cache": len(topo.l3caches), "core": len(topo.cores),
             "hwthread": len(topo.pus)}[obj]
    if not count:
        raise UsageError(f"--map-by {given}: this machine tells no {obj} objects")
    return count


#: Flux's mustache tags in a file name, as pmrun's pattern codes (``{{id.dec}}``: any
#: encoding of the id is pmrun's job id); the task's and node's are pmrun's own, beyond
#: Flux's (whose --output names one file a job).
_FLUX_TAGS = {"id": "%j", "jobid": "%j", "name": "%x", "taskid": "%t", "task.id": "%t",
              "task.rank": "%t", "node.id": "%n", "node.name": "%h"}


def _flux_templates(out: Parsed) -> None:
    """Flux's ``--output=job-{{id}}.out`` (``{{name}}``, ...): the same as pmrun's codes
    (``%j``, ``%x``, ...); a tag pmrun does not fill in a file name is refused."""
    for key in ("output", "error"):
        value = out.values.get(key)
        if isinstance(value, str) and "{{" in value:
            import re

            tags = re.split(r"\{\{([^{}]*)\}\}", value)  # (text, tag, text, ..., text)
            out.values[key] = "".join(
                _flux_code(part, f"--{key} {value}") if i % 2 else part
                for i, part in enumerate(tags))


def _flux_code(tag: str, given: str) -> str:
    """The pattern code of Flux's tag ``{{tag}}`` in ``given`` (the option and its value)."""
    base, _, encoding = tag.strip().partition(".")
    if base in ("id", "jobid") and encoding in ("f58", "dec", "hex", "dothex", "words"):
        return "%j"
    code = _FLUX_TAGS.get(tag.strip())
    if code is None:
        raise UsageError(f"{given}: {{{{{tag}}}}} is not a tag pmrun fills in a file name "
                         "({{id}}, {{name}}, {{taskid}}, {{node.id}}, {{node.name}})")
    return code


def _job_name_in_patterns(out: Parsed, environ: Mapping[str, str]) -> None:
    """srun's ``%x`` in the --output/--error patterns: the job's name (``-J``, else the
    allocation's, else the first program's, as srun names a job it allocates); in an
    allocation, ``-J``'s name is the ranks' ``SLURM_JOB_NAME``."""
    values = out.values
    if values.get("job_name") and environ.get("SLURM_JOB_ID"):
        # Inside an allocation srun's -J names the step, and its tasks see the name.
        env = values.setdefault("genv", {})
        assert isinstance(env, dict)
        env.setdefault("SLURM_JOB_NAME", str(values["job_name"]))
    patterns = [k for k in ("output", "error") if "%x" in str(values.get(k, ""))]
    if not patterns:
        return
    name = values.get("job_name") or environ.get("SLURM_JOB_NAME")
    if not name:
        argv = out.sections[0].argv if out.sections else []
        name = os.path.basename(argv[0]) if argv else "pmrun"
    from pm.common.outfiles import pattern_problem, with_job_name

    for key in patterns:
        values[key] = with_job_name(str(values[key]), str(name))
        problem = pattern_problem(f"--{key}", str(values[key]))
        if problem:
            raise UsageError(problem)


#: The options a --tune file may hold (Open MPI 4's), and the prefix of their variables.
_TUNE_OPTIONS = {"-x": "", "--mca": "OMPI_MCA_", "-mca": "OMPI_MCA_", "--gmca": "OMPI_MCA_",
                 "-gmca": "OMPI_MCA_", "--pmixmca": "PMIX_MCA_", "-pmixmca": "PMIX_MCA_"}


def _open_mpi_tune(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Open MPI's ``--tune`` files into the ranks' environment, under what the command line
    set: a ``NAME = VALUE`` line is ``--mca NAME VALUE`` (Open MPI 5's files, and 4's
    ``--am``), other lines are ``-x``, ``--mca`` and ``--pmixmca`` options (4's ``--tune``)."""
    values.pop("personality", None)
    given = values.pop("tune", None)
    if given is None:
        return
    env = values.setdefault("genv", {})
    assert isinstance(env, dict)
    for path in str(given).split(","):
        for number, words in _file_lines(path, "--tune"):
            where = f"--tune {path}, line {number}"
            if not words[0].startswith("-"):
                name, eq, value = " ".join(words).partition("=")
                if not eq or not name.strip():
                    raise UsageError(f"{where}: NAME = VALUE, or -x, --mca and --pmixmca "
                                     "options")
                env.setdefault(f"OMPI_MCA_{name.strip()}", value.strip())
                continue
            k = 0
            while k < len(words):
                prefix = _TUNE_OPTIONS.get(words[k])
                if prefix is None or k + 1 >= len(words):
                    raise UsageError(f"{where}: {words[k]}: a --tune file holds -x, --mca and "
                                     "--pmixmca options (each with its value), or NAME = VALUE")
                if prefix:
                    if k + 2 >= len(words):
                        raise UsageError(f"{where}: {words[k]} needs KEY VALUE")
                    env.setdefault(prefix + words[k + 1], words[k + 2])
                    k += 3
                    continue
                name, eq, value = words[k + 1].partition("=")
                if eq:
                    env.setdefault(name, value)
                elif name in environ:
                    env.setdefault(name, environ[name])
                else:
                    _warn(f"{where}: -x {name}: not set in pmrun's environment, so not passed")
                k += 2


def _output_filename(out: Parsed) -> None:
    """Open MPI's ``--output-filename DIR`` as pmrun's --output and --error patterns: its
    layout, ``DIR/1/rank.R/stdout`` and ``stderr`` (one folder per rank, made as needed;
    spawned jobs' ranks as ``--output`` names them)."""
    values = out.values
    given = values.pop("output_filename", None)
    if not isinstance(given, str):
        return
    folder = given[:-len(":nocopy")] if given.endswith(":nocopy") else given
    if not folder:
        raise UsageError("--output-filename takes a folder, not ''")
    for key in ("output", "error"):
        if key in values:
            raise UsageError(f"--output-filename writes each rank's stdout and stderr: "
                             f"--{key} {values[key]} disagrees")
    base = os.path.join(folder.replace("%", "%%"), "1", "rank.%r")
    values["output"] = os.path.join(base, "stdout")
    if "merge_stderr" not in values:
        values["error"] = os.path.join(base, "stderr")
    from pm.common.outfiles import folder_in_the_way

    part = folder_in_the_way(os.path.dirname(base))
    if part:
        raise UsageError(f"--output-filename {given}: {part} is not a folder")


def _flux_env(out: Parsed, environ: Mapping[str, str]) -> None:
    """Flux's ``--env`` rules, in order, as pmrun's -genv and (once a rule removes some)
    the "only" mode of what is left of pmrun's environment (nothing of the hosts': under
    Flux a variable removed is gone)."""
    rules = out.values.pop("flux_env", None)
    if not isinstance(rules, list):
        return
    env = _FluxEnv(environ, out.values.setdefault("genv", {}))  # type: ignore[arg-type]
    for rule in rules:
        env.apply(str(rule), 0)
    if env.removed:
        if "env_mode" in out.values:
            raise UsageError("--env -PATTERN (--env-remove) and -genvall/-genvnone/-genvlist "
                             "(or srun's --export): give one")
        out.values["env_mode"] = ("only", env.names)


class _FluxEnv:
    """The ranks' environment as Flux's --env rules build it: the names of pmrun's own it
    keeps (:attr:`names`) and what is set (``genv``)."""

    def __init__(self, environ: Mapping[str, str], genv: dict[str, str]) -> None:
        self.environ = environ
        self.genv = genv
        self.names = list(environ)
        self.removed = False

    def apply(self, rule: str, depth: int) -> None:
        if rule.startswith("-"):
            self.removed = True
            match = _env_pattern(rule[1:], rule)
            self.names = [n for n in self.names if not match(n)]
            for name in [n for n in self.genv if match(n)]:
                del self.genv[name]
        elif rule.startswith("^"):
            self._file(rule, depth)
        elif "=" in rule:
            name, _, value = rule.partition("=")
            self.genv[name] = self._expand(value, rule)
        elif rule:
            match = _env_pattern(rule, rule)
            self.names += [n for n in self.environ if match(n) and n not in self.names]

    def _file(self, rule: str, depth: int) -> None:
        path = os.path.expanduser(rule[1:])
        if depth >= 8:
            raise UsageError(f"--env {rule}: rule files nested 8 deep (one reads itself?)")
        try:
            with open(path, encoding="utf-8", errors="surrogateescape") as f:
                lines = [line.strip() for line in f]
        except OSError as exc:
            raise UsageError(f"--env {rule}: {exc.strerror or exc}") from None
        for line in lines:
            self.apply(line, depth + 1)

    def _expand(self, value: str, rule: str) -> str:
        """$NAME and ${NAME} in ``value``: the ranks' value so far, else pmrun's (Flux's)."""
        if "$" not in value:
            return value
        from collections import ChainMap
        from string import Template

        built: dict[str, object] = {n: self.environ[n] for n in self.names
                                    if n in self.environ}
        here: dict[str, object] = dict(self.environ)
        try:
            return Template(value).substitute(ChainMap(dict(self.genv), built, here))
        except KeyError as exc:
            raise UsageError(f"--env {rule}: {exc.args[0]} is not set") from None
        except ValueError:
            raise UsageError(f"--env {rule}: a $ that starts no name (write $$ for "
                             "a $)") from None


def _env_pattern(pattern: str, rule: str) -> Callable[[str], bool]:
    """A name matcher for Flux's pattern: a shell pattern, or ``/REGEX/``."""
    if pattern.startswith("/"):
        import re

        try:
            regex = re.compile(pattern[1:].rstrip("/"))
        except re.error as exc:
            raise UsageError(f"--env {rule}: {exc}") from None
        return lambda name: regex.match(name) is not None
    from fnmatch import fnmatchcase

    return lambda name: fnmatchcase(name, pattern)


def _srun_export(out: Parsed) -> None:
    """srun's ``--export`` as pmrun's -genvall, or the "only" mode (the variables given
    alone, nothing of the hosts': slurmstepd gives a task what srun sends; NONE: pmrun's
    :data:`pm.jobenv.NONE_KEEPS`), and -genv."""
    given = out.values.pop("export", None)
    if not isinstance(given, str):
        return
    items = given.split(",")
    words = {item.upper() for item in items if "=" not in item}
    if "ALL" in words and "NONE" in words:
        raise UsageError(f"--export {given}: ALL and NONE disagree")
    names = [item.partition("=")[0] for item in items if item.upper() not in ("ALL", "NONE")]
    pairs = {name: value for name, eq, value in (i.partition("=") for i in items) if eq}
    if "ALL" in words:
        mode: tuple[str, list[str]] = ("all", [])
    elif "NONE" in words:
        from pm.jobenv import NONE_KEEPS

        mode = ("only", list(NONE_KEEPS))
        if names:
            raise UsageError(f"--export {given}: NONE passes no variable")
    else:
        mode = ("only", [n for n in names if n not in pairs])
    out.values["env_mode"] = mode
    genv = out.values.setdefault("genv", {})
    assert isinstance(genv, dict)
    genv.update(pairs)


def _open_mpi_paths(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """Open MPI's ``--prefix DIR`` and ``--path DIR`` as the ranks' PATH and
    LD_LIBRARY_PATH (pmrun's own values of them, which the ranks get, with DIR first)."""
    prefix, path = values.pop("prefix", None), values.pop("exe_path", None)
    if prefix is None and path is None:
        return
    genv = values.setdefault("genv", {})
    assert isinstance(genv, dict)
    first = [str(d) for d in (path, None if prefix is None else f"{prefix}/bin") if d]
    rest = genv.get("PATH", environ.get("PATH", ""))
    genv["PATH"] = ":".join([*first, *([rest] if rest else [])])
    if prefix is not None:
        rest = genv.get("LD_LIBRARY_PATH", environ.get("LD_LIBRARY_PATH", ""))
        genv["LD_LIBRARY_PATH"] = ":".join([f"{prefix}/lib", *([rest] if rest else [])])


def _srun_cpu_bind(values: dict[str, object]) -> None:
    """srun's ``--cpu-bind`` as pmrun's ``--bind-to`` (and ``--report-bindings``)."""
    given = values.pop("cpu_bind", None)
    if not isinstance(given, str):
        return
    target, verbose = cpu_bind_of(given, "--cpu-bind")
    if "bind_to" not in values:
        values["bind_spelled"] = f"--cpu-bind={given}"
    if values.setdefault("bind_to", target) != target:
        raise UsageError(f"--cpu-bind {given} and --bind-to {values['bind_to']} disagree")
    if verbose:
        values["report_bindings"] = True


def _srun_hint(values: dict[str, object]) -> None:
    """srun's ``--hint`` as pmrun's binding, which --bind-to/--cpu-bind and --map-by
    given override (as srun's --cpu-bind overrides its --hint)."""
    hint = values.pop("hint", None)
    if not isinstance(hint, str):
        return
    bind, mapping = _HINTS[hint]
    values.setdefault("bind_to", bind)
    if mapping is not None:
        values.setdefault("map_by", mapping)


def _srun_exclude(values: dict[str, object], environ: Mapping[str, str]) -> None:
    """srun's ``--exclude HOSTLIST``: the allocation's nodes but those, each with its task
    slots, as a host list (nodes of the allocation: Slurm starts the agents)."""
    given = values.pop("exclude", None)
    if given is None:
        return
    if "hosts" in values or "hostfile" in values:
        raise UsageError("--exclude leaves out nodes of the Slurm allocation: not with "
                         "-hosts, -w or -f")
    from pm.bootstrap.slurm import allocation_hosts
    from pm.common.hostlist import HostlistError, parse_hosts_option

    if not environ.get("SLURM_JOB_NODELIST"):
        raise UsageError("--exclude leaves out nodes of a Slurm allocation: this is not "
                         "inside one (no SLURM_JOB_NODELIST)")
    try:
        nodes = allocation_hosts(environ)
    except HostlistError as exc:
        raise UsageError(f"--exclude: {exc}") from None
    out = {e.host for e in parse_hosts_option(str(given))}
    kept = [(h, s) for h, s in nodes if h not in out]
    if not kept:
        raise UsageError(f"--exclude {given} leaves no node of the allocation")
    values["hosts"] = ",".join(h if s is None else f"{h}:{s}" for h, s in kept)


def _cpus_per_task(values: dict[str, object]) -> None:
    """srun's and Flux's ``-c N`` as pmrun's ``--bind-to core:N`` (``hwthread:N`` with
    ``--bind-to hwthread``): N cores a rank, bound."""
    per = values.pop("cpus_per_task", None)
    if per is None:
        return
    bind = str(values.get("bind_to", _cpu_unit(values)))
    kind, _, count = bind.partition(":")
    if kind.lower() not in ("core", "hwthread") or count not in ("", str(per)):
        raise UsageError(f"-c {per} binds each rank to {per} cores: --bind-to {bind} "
                         "disagrees")
    values["bind_to"] = f"{kind}:{per}"


#: Warnings said already: the command line is parsed again when a job moves to the full path.
_WARNED: set[str] = set()


def _warn(text: str) -> None:
    """A line on stderr about the command line that does not stop the job (once)."""
    if text not in _WARNED:
        _WARNED.add(text)
        os.write(2, f"pmrun: {text}\n".encode(errors="replace"))


def config_args(path: str, opt: str) -> list[str]:
    """Hydra's -configfile: each line one program with its options (an MPMD section),
    ``#`` starts a comment, a line ending in ``\\`` goes on on the next."""
    args: list[str] = []
    for _, words in _file_lines(path, opt):
        if args:
            args.append(":")
        args.extend(words)
    if not args:
        raise UsageError(f"{opt} {path}: no program in it")
    return args


def _file_lines(path: str, opt: str) -> list[tuple[int, list[str]]]:
    """The words of each line of ``path`` that has any, with its number: ``#`` starts a
    comment, a line ending in ``\\`` goes on on the next, words as the shell splits them.
    :class:`UsageError` naming ``opt``, the file and the line for what cannot be read."""
    import shlex

    try:
        text = file_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{opt} {path}: cannot be read ({exc})") from None
    out = []
    for number_, line in enumerate(text.replace("\\\n", " ").splitlines(), 1):
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise UsageError(f"{opt} {path}, line {number_}: {exc}") from None
        if words:
            out.append((number_, words))
    return out


#: The most ranks a --multi-prog file may name without -n.
MULTI_PROG_RANKS = 1 << 20


def _multi_prog(out: Parsed) -> None:
    """srun's ``--multi-prog FILE``: FILE, given as the program, says which program each
    rank runs, a line ``RANKS PROGRAM ARGS...`` (``RANKS``: ``0-3,5``, or ``*`` on the last
    line for the ranks no line named; ``%t`` in the words is the rank, ``%o`` its place
    among the line's ranks; ``#`` comments).  The ranks become sections, one per run of
    consecutive ranks with the same words (their appnum); the section's other options (-n
    aside: the ranks' count) apply to each."""
    if out.values.pop("configfile", None) is not None or len(out.sections) != 1 \
            or len(out.sections[0].argv) != 1:
        raise UsageError("--multi-prog takes one file in place of the program (pmrun -n 8 "
                         "--multi-prog FILE), nothing else")
    given = out.sections[0]
    path = given.argv[0]
    n = given.values.pop("n", None)
    size = None if n is None else int(n)  # type: ignore[call-overload]
    words_of: dict[int, list[str]] = {}
    rest: list[str] | None = None  # the '*' line's words
    for lineno, words in _file_lines(path, "--multi-prog"):
        where = f"--multi-prog {path}, line {lineno}"
        if rest is not None:
            raise UsageError(f"{where}: '*' must be the last line")
        if len(words) < 2:
            raise UsageError(f"{where}: ranks and a program, not {' '.join(words)!r}")
        if words[0] == "*":
            rest = words[1:]
            continue
        for offset, rank in enumerate(_rank_list(words[0], where, size)):
            if rank in words_of:
                raise UsageError(f"{where}: rank {rank} has a line already")
            words_of[rank] = _rank_words(words[1:], rank, offset)
    if size is None:
        if rest is not None:
            raise UsageError(f"--multi-prog {path}: '*' needs the ranks' count (-n N)")
        size = max(words_of, default=-1) + 1
    if rest is not None:
        left = [r for r in range(size) if r not in words_of]
        for offset, rank in enumerate(left):
            words_of[rank] = _rank_words(rest, rank, offset)
    missing = next((r for r in range(max(size, 1)) if r not in words_of), None)
    if missing is not None:
        raise UsageError(f"--multi-prog {path}: no line for rank {missing}")
    out.sections.clear()
    for rank in range(size):
        if out.sections and out.sections[-1].argv == words_of[rank]:
            last = out.sections[-1].values
            last["n"] = int(last["n"]) + 1  # type: ignore[call-overload]
            continue
        sec = Section()
        sec.argv = words_of[rank]
        sec.values = {**given.values, "n": 1}
        out.sections.append(sec)


def _rank_list(text: str, where: str, size: int | None) -> list[int]:
    """``0-3,5`` as ranks, in order; each below ``size`` (-n; else
    :data:`MULTI_PROG_RANKS`), checked before a range is expanded."""
    from pm.common.output import rank_ranges

    try:
        spans = rank_ranges(text)
    except ValueError:
        raise UsageError(f"{where}: {text!r} is not ranks (0-3,5 or *)") from None
    ranks: list[int] = []
    limit = size if size is not None else MULTI_PROG_RANKS
    for lo, top in spans:
        if top >= limit:
            first = max(lo, limit)  # the first rank beyond
            raise UsageError(f"{where}: rank {first}, beyond the {size} ranks (-n {size})"
                             if size is not None else
                             f"{where}: rank {first}, beyond {MULTI_PROG_RANKS} ranks")
        ranks.extend(range(lo, top + 1))
    return ranks


def _rank_words(words: list[str], rank: int, offset: int) -> list[str]:
    """A line's words for one of its ranks: ``%t`` the rank, ``%o`` its offset."""
    return [w.replace("%t", str(rank)).replace("%o", str(offset)) for w in words]


def quick_ok(parsed: Parsed, environ: Mapping[str, str]) -> bool:
    """Whether the quick path (:mod:`pm.quick`) runs this job: one program on this machine,
    and only options it knows."""
    if parsed.action or len(parsed.sections) != 1 or "tasks_line" in parsed.values:
        return False
    if ({"rankfile", "rankmap"} & parsed.values.keys()
            or parsed.values.get("distribution") == "arbitrary"):
        return False  # (rankfile: also from --map-by rankfile:file=, a quick option)
    if environ.get("PM_QUICK", "1").strip() == "0":
        return False
    if environ.get("SLURM_JOB_NODELIST") and environ.get("SLURM_JOB_ID"):
        return False  # pm.cli runs the job over the allocation
    if environ.get("PBS_NODEFILE") or environ.get("LSB_DJOB_HOSTFILE"):
        return False  # (a PBS/Torque or LSF job's hosts and slots: the same)
    if parsed.values.get("nodes", 1) != 1:
        return False  # several hosts (or a refusal that the full path words)
    if "hosts" in parsed.values or "hostfile" in parsed.values:
        parsed.here = this_machine_alone(parsed)  # (read once: the quick path takes it)
        if parsed.here is None:
            return False
    return all(opt.quick for opt in parsed.used) and "display_allocation" not in parsed.values


def _hosts_of_file(path: str, opt: str) -> str:
    """A host file's hosts as a -hosts list (``host:N`` where it gives slots)."""
    from pm.common.hostlist import HostlistError, parse_hostfile

    try:
        entries = parse_hostfile(file_text(path))
    except (OSError, UnicodeDecodeError, HostlistError) as exc:
        raise UsageError(f"{opt} {path}: {exc}") from None
    return ",".join(e.host if e.slots is None else f"{e.host}:{e.slots}" for e in entries)


def this_machine_alone(parsed: Parsed) -> tuple[str, int | None] | None:
    """When -hosts or -f names this machine alone (Hydra's ``-hosts localhost``, a host
    file of ``localhost:8``): that host, as named, and its slots, which the quick path
    takes as the full path would (a rank a slot without -n; the slots are the universe
    size); None for anything else (other machines, several entries, -ppn)."""
    from pm.common.hostlist import is_this_machine, parse_hostfile, parse_hosts_option

    values = parsed.values
    if ("hosts" in values) == ("hostfile" in values) or "ppn" in values:
        return None
    if "hosts" in values:
        entries = parse_hosts_option(str(values["hosts"]))
    else:
        entries = parse_hostfile(file_text(str(values["hostfile"])))
    if len(entries) != 1 or not is_this_machine(entries[0].host):
        return None
    return entries[0].host, entries[0].slots


def refuse(exc: Exception) -> int:
    """Say what is wrong with the command line, on one line; the exit status for it."""
    os.write(2, f"pmrun: {exc}\n".encode(errors="replace"))
    return EXIT_USAGE


def internal_error(exc: BaseException, traceback: bool = False) -> int:
    """Say on one line that pmrun itself failed, where (its innermost frame in pmrun) and
    with what; ``traceback`` (``-v``): the whole traceback before it.  The exit status for
    it.  The job's ranks end with pmrun: their guardian sees it go (pm.agent.spawn)."""
    import traceback as tb

    if traceback:
        tb.print_exception(exc)
    missing = missing_dependency(exc)
    if missing is not None:  # not a defect: an install that lacks a part
        os.write(2, f"pmrun: {missing}\n".encode(errors="replace"))
        return EXIT_MISSING
    os.write(2, f"pmrun: {defect(exc)} (a defect of pmrun's own; please report it, with "
                f"the output of -v)\n".encode(errors="replace"))
    return EXIT_INTERNAL


# ------------------------------------------------------------------ help
HEAD = """\
usage: pmrun [options] prog [args...] [: [options] prog2 [args...] ...]
       pmrun [options] -configfile FILE
       pmrun [options] CMD ::: ARGS... | --tasks FILE [::: ARGS...]   (as GNU parallel)

Start the ranks of a parallel job through a tree of node agents and serve them
PMI: PMI-1 and PMI-2 for unmodified MPICH and Intel MPI, PMIx for unmodified Open
MPI (see --mpi), and pmrun's own protocol for Python ranks using pm.client.
MPI_Comm_spawn grows a job.  Options spelled with one dash are Hydra's
(mpiexec); those with two are pmrun's; --opt=value works for the latter.
Options marked * belong to the program they precede.
"""

TAIL = """
Exit status: 0 if every rank exited 0; else the status of the first rank that failed
(128+N for signal N, the code given to MPI_Abort); 124 on --timeout; 2 for a command
line pmrun cannot run; 255 when pmrun itself could not run the job (a node was lost,
an agent failed to start).
Ctrl-C is forwarded to every rank; a second Ctrl-C kills the job at once. Ctrl-Z stops
every rank and pmrun; fg or bg continues them.
"""


def usage() -> str:
    """``pmrun --help``, from the table."""
    lines = [HEAD]
    for group in GROUPS:
        lines.append(f"{group}:")
        for opt in OPTIONS:
            if opt.group != group:
                continue
            left = ", ".join(opt.names) + (f" {opt.metavar}" if opt.metavar else "")
            left = ("* " if opt.local else "  ") + left
            lines.extend(_wrap(left, opt.help))
        lines.append("")
    lines.append("pmrun reads from its own environment:")
    for name, meaning in ENVIRONMENT:
        lines.extend(_wrap("  " + name, meaning))
    lines.append("  (in a rank's environment: PM_TOPOLOGY_SHARE=0 stops sharing the topology)")
    return "\n".join(lines) + "\n" + TAIL


def _wrap(left: str, help: str, width: int = 88, col: int = 30) -> list[str]:
    words = help.split()
    out: list[str] = []
    line = left + " " * (col - len(left)) if len(left) < col - 1 else left
    if len(left) >= col - 1:
        out.append(line)
        line = " " * col
    for word in words:
        if len(line) + len(word) + 1 > width and line.strip() and len(line) > col:
            out.append(line.rstrip())
            line = " " * col
        line += ("" if line.endswith(" ") else " ") + word
    out.append(line.rstrip())
    return out
