"""Value checkers of general kinds: whole numbers and numbers, seconds and time
limits, words, files and directories, variable names, signals.  And how pmrun says
what is wrong with the command line: :func:`refuse` (exit status 2), :func:`_warn`,
and :func:`internal_error` when pmrun itself failed.

Each checker takes (text, option as the user spelled it) and returns the value, or
raises UsageError naming the option and what was wrong.  The table
(:mod:`pm.options.table`) names one for each option that takes a value; those of
placement, of the ranks' environment and I/O and of task ensembles are in
:mod:`pm.options.checks_placement`, :mod:`pm.options.checks_env_io` and
:mod:`pm.options.task_options`.  A checker that needs more than ``os`` imports it when
the option is used (pmrun's start-up).
"""

from __future__ import annotations

import os

from pm.proto.errors import UsageError, defect, missing_dependency, too_many

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable

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


def text(value: str, opt: str) -> str:
    if not value:
        raise UsageError(f"{opt} takes a value, not an empty string")
    return value


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
    (:func:`pm.options.parser._ranks_directories`): a node's scratch directory need not
    exist where pmrun runs."""
    return os.path.abspath(value)


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


def verbatim(value: str, opt: str) -> str:
    """Any string, the empty one too (nothing to refuse)."""
    return value


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


def job_name(value: str, opt: str) -> str:
    """srun's ``-J NAME``: words a file name and an srun option can hold."""
    if not value or any(c in value for c in "/\0\n") or value.isspace():
        raise UsageError(f"{opt} takes a name (no slash or new line), not {value!r}")
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


def personality(value: str, opt: str) -> str:
    """Open MPI 5's ``--personality``: ompi is the command line pmrun reads."""
    if value.lower() != "ompi":
        raise UsageError(f"{opt} {value}: pmrun reads Open MPI's command line (ompi), and "
                         "Hydra's, srun's, Flux's and GNU parallel's, without a personality")
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


#: Warnings said already: the command line is parsed again when a job moves to the full path.
_WARNED: set[str] = set()


def _warn(text: str) -> None:
    """A line on stderr about the command line that does not stop the job (once)."""
    if text not in _WARNED:
        _WARNED.add(text)
        os.write(2, f"pmrun: {text}\n".encode(errors="replace"))


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
