"""The Python API's argument checks (:mod:`pm.api`): every public entry checks its
arguments before anything starts, in a line naming the argument and what it takes (the
command line's words where :mod:`pm.options` has the checker): a wrong type is an
:class:`ArgumentTypeError`, a bad value a :class:`pm.jobspec.JobSpecError` (both
ValueErrors)."""

from __future__ import annotations

import difflib
import fcntl
import functools
import inspect
import math
import os
import signal
import stat
import sys
import typing
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from types import NoneType, UnionType
from typing import Any

from pm import options as pmopts
from pm.jobspec import JobSpec, JobSpecError, check_env, counted
from pm.options import MOST_RANKS
from pm.proto.errors import UsageError


class ArgumentTypeError(JobSpecError, TypeError):
    """An argument of the wrong type (a str where a list of words goes, ``"4"`` for a
    count): a TypeError, and a ValueError (:class:`pm.jobspec.JobSpecError`) as the API's
    other refusals of a bad argument."""


#: A check of one argument: (its name, its value) -> the value to use.
_Check = Callable[[str, Any], Any]


def whole_number(what: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ArgumentTypeError(f"{what} must be a whole number, not {value!r}")


def whole(what: str, value: object, least: int = 1, most: int = sys.maxsize) -> int:
    """pm.jobspec.counted's check and words; a value that is no int an ArgumentTypeError."""
    whole_number(what, value)
    return counted(what, value, most, least)


def _at_least(least: int, most: int = sys.maxsize) -> _Check:
    return lambda what, value: whole(what, value, least, most)


def argv_words(what: str, value: object) -> list[str]:
    """``value`` as an argv: a list of strings (a str would run its letters, one a word)."""
    kind = f"the {type(value).__name__} " if isinstance(value, str | bytes) else ""
    words = f"{what} must be a list of strings (the program and its arguments), not {kind}"
    if kind or not isinstance(value, Sequence):
        raise ArgumentTypeError(f"{words}{value!r}")
    if not value:
        raise JobSpecError(f"{words}{value!r}")
    for i, word in enumerate(value):
        if not isinstance(word, str):
            raise ArgumentTypeError(f"{what}[{i}] must be a string, not {word!r}")
    return list(value)


def env_of(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ArgumentTypeError(f"env must be a dict of strings (name: value) or None, not "
                                f"{value!r}")
    env = dict(value)
    check_env(env)
    return env


def by_option(check: Callable[[str, str], object], spelled: str = "") -> _Check:
    """pm.options' checker of the value on the command line; its refusal a JobSpecError
    (``spelled``: the option as that refusal names it, replaced by the argument's name)."""

    def run(what: str, value: Any) -> Any:
        try:
            return check(value, what)
        except UsageError as exc:
            text = str(exc)
            raise JobSpecError(text.replace(spelled, what, 1) if spelled else text) from None

    return run


def _unless_empty(check: _Check) -> _Check:
    """``check``, for a value whose "" says the default."""
    return lambda what, value: check(what, value) if value != "" else value


def path_of(what: str, value: object, here: bool) -> str | None:
    """A working directory (a str or os.PathLike); ``here``: one of this machine's, as the
    command line's -wdir (pm.options.directory, its absolute path; a path that is there
    but no directory is named so)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if value is not None and not isinstance(value, str):
        raise ArgumentTypeError(f"{what} must be a path (a string) or None, not {value!r}")
    if value is None or not here:
        return value
    if os.path.exists(value) and not os.path.isdir(value):
        raise JobSpecError(f"{what} {value}: not a directory")
    path: str = by_option(pmopts.directory)(what, value)
    return path


def stdin_fd(what: str, value: object) -> int:
    """A descriptor the job's stdin is read from: open, for reading, and no directory (a
    closed one would read as an empty stdin, the job never told)."""
    fd = whole(what, value, 0)
    words = f"{what} must be a file descriptor open for reading (such as a pipe's read end)"
    try:
        mode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
        folder = stat.S_ISDIR(os.fstat(fd).st_mode)
    except OSError:
        raise JobSpecError(f"{words}, not {fd}: no descriptor {fd} is open") from None
    if mode == os.O_WRONLY or folder:
        why = "a directory" if folder else "open for writing only"
        raise JobSpecError(f"{words}, not {fd}: it is {why}")
    return fd


#: Where a launcher's refusal names the command line's option, the bootstrap key it is.
_LAUNCHER_KEYS = {"exec": ("--launcher-exec", "template"), "ssh": ("--ssh", "ssh")}


def bootstrap_of(what: str, value: object) -> dict[str, Any]:
    """A cluster's launcher and its options (``JobPlan.bootstrap``: its ``"name"``, one of
    pm.bootstrap's, "local" if none), checked as its first job's start would."""
    options = dict(typed(what, value, Mapping[str, Any] | None) or {"name": "local"})
    from pm.bootstrap import REGISTRY, get_bootstrap

    name = options.get("name", "local")
    if not isinstance(name, str) or name not in REGISTRY:
        known = [n for n in REGISTRY if n]
        error = JobSpecError if isinstance(name, str) else ArgumentTypeError
        raise error(f"{what}['name'] takes {', '.join(known[:-1])} or {known[-1]}, not "
                    f"{name!r}")
    if name == "exec" and not options.get("template"):
        raise JobSpecError(f"{what}: the exec launcher needs a 'template', the command that "
                           f"runs an agent on a host (such as 'ip netns exec {{host}} "
                           f"{{command}}')")
    try:
        get_bootstrap(name, options)  # (its own checks: a template or ssh it cannot split)
    except (ValueError, TypeError) as exc:
        spelled, key = _LAUNCHER_KEYS.get(name, ("", ""))
        text = str(exc).replace(spelled, f"{what}[{key!r}]", 1) if spelled else str(exc)
        raise JobSpecError(text if text.startswith(what) else f"{what}: {text}") from None
    return options


def bytes_of(what: str, value: object) -> int | None:
    """A memory bound: bytes, or a size as the command line's (``"2G"``); None: none."""
    typed(what, value, str | int | None,
           "a size (such as '2G'), a whole number of bytes or None")
    if not isinstance(value, str):
        return None if value is None else whole(what, value, 0)
    from pm.agent.admission import SizeError, parse_size

    try:
        return parse_size(value)
    except SizeError as exc:
        raise JobSpecError(f"{what}: {exc}") from None


def _watermark(what: str, value: str | int) -> str | int:
    """A node memory watermark: a size or a percentage (pm.options.size), or bytes."""
    if isinstance(value, int):
        return whole(what, value)
    checked: str = by_option(pmopts.size)(what, value)
    return checked


def _number(words: str, least: float = 0.0, *, above: bool = True) -> _Check:
    """A finite number above ``least`` (``above``) or from it; ``words``: what it is."""

    def check(what: str, value: float) -> float:
        if not math.isfinite(value) or value < least or (above and value == least):
            raise JobSpecError(f"{what} must be {words}, not {value!r}")
        return value

    return check


_KINDS: dict[Any, tuple[str, str]] = {
    str: ("a string", "strings"), int: ("a whole number", "whole numbers"),
    float: ("a number", "numbers"), bool: ("True or False", "True or False"),
    NoneType: ("None", "None")}


def _members(hint: Any) -> tuple[Any, ...]:
    union = typing.get_origin(hint) in (typing.Union, UnionType)
    return typing.get_args(hint) if union else (hint,)


def _fits(value: object, hint: Any) -> bool:
    """Whether ``value`` is what the annotation ``hint`` says (its items too)."""
    if len(_members(hint)) > 1:
        return any(_fits(value, h) for h in _members(hint))
    if hint is Any:
        return True
    if hint in (bool, NoneType):
        return isinstance(value, hint)
    if isinstance(value, bool):  # (True is no count, nor a number of seconds)
        return False
    if hint is float:
        return isinstance(value, int | float)
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (list, tuple, Sequence, Collection):
        if isinstance(value, str | bytes) or not isinstance(
                value, (list, tuple) if origin in (list, tuple) else origin):
            return False
        if origin is tuple:
            return len(value) == len(args) and all(map(_fits, value, args))
        return all(_fits(v, args[0]) for v in value) if args else True
    if origin is Mapping:
        return isinstance(value, Mapping)
    if origin is Callable:
        return callable(value)
    return isinstance(value, origin)


def _kind(hint: Any, plural: bool = False) -> str:
    """What the annotation ``hint`` takes, in words ("a string or None")."""
    if len(_members(hint)) > 1:
        return " or ".join(_kind(h, plural) for h in _members(hint))
    if hint in _KINDS:
        return _KINDS[hint][plural]
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin in (list, Sequence, Collection):
        items = f" of {_kind(args[0], True)}" if args and args[0] is not Any else ""
        return ("lists" if plural else "a list") + items
    if origin is tuple:
        return f"a pair ({', '.join(_kind(h) for h in args)})"
    if origin is Mapping:
        return "a dict"
    if origin is Callable:
        return "a function"
    if origin is os.PathLike:
        return "a path"
    return f"a {getattr(origin, '__name__', origin)}"


def typed(what: str, value: object, hint: Any, words: str = "") -> Any:
    """``value`` if it is what ``hint`` says (a tuple for a list as a list), else an
    ArgumentTypeError saying what it takes (``words``, else the hint's)."""
    if not _fits(value, hint):
        raise ArgumentTypeError(f"{what} must be {words or _kind(hint)}, not {value!r}")
    if isinstance(value, tuple) and any(typing.get_origin(h) is list for h in _members(hint)):
        return list(value)
    if isinstance(value, list) and any(typing.get_origin(h) is tuple for h in _members(hint)):
        return tuple(value)
    return value


def unknown(what: str, key: str, known: Iterable[str], why: str = "") -> TypeError:
    close = difflib.get_close_matches(key, list(known), 1)
    hint = f" ({why})" if why else f" (did you mean {close[0]!r}?)" if close else ""
    return TypeError(f"unknown {what} {key!r}{hint}")


@functools.cache
def job_hints() -> dict[str, Any]:
    """JobSpec's fields and their types: what ``launch`` and ``run`` take as options."""
    return typing.get_type_hints(JobSpec)


#: JobSpec's fields that are no option: the arguments that give them.
NOT_JOB_OPTIONS = {"apps": "argv and n give the program",
                    "genv": "env gives the job's environment",
                    "bcast_files": "bcast copies the programs"}


def _map_by(what: str, value: str) -> str:
    """The agents' reading of map_by (the command line's takes forms it turns into others)."""
    from pm.agent.binding import BindingError, parse_map

    try:
        parse_map(value)
    except BindingError as exc:
        raise JobSpecError(str(exc).replace("--map-by", what, 1)) from None
    return value


def _rank_by(what: str, value: str) -> str:
    if value not in ("", "block", "cyclic"):
        raise JobSpecError(f"{what} takes block, cyclic or '' (as the distribution lays "
                           f"them), not {value!r}")
    return value


def _propagate(what: str, value: list[str]) -> list[str]:
    """srun's --propagate names (pm.options.propagate_list: ALL, NONE, RLIMIT_STACK...)."""
    if not value:
        return value
    names: str = by_option(pmopts.propagate_list)(what, ",".join(value))
    return [name for name in names.split(",") if name]


def _signal_before_end(what: str, value: tuple[int, float]) -> tuple[int, float]:
    signum, seconds = value
    if signum not in signal.valid_signals():
        raise JobSpecError(f"{what}: {signum} is not a signal number")
    _number("a positive number")(f"{what}: its seconds before the timeout", seconds)
    return value


def _universe_size(what: str, value: int) -> int:
    if value < 1 and value != -1:
        raise JobSpecError(f"{what} must be at least 1 (or -1: no limit), not {value!r}")
    return value


def _distribution(what: str, value: str) -> str:
    plane = value.removeprefix("plane=")
    if value not in ("block", "cyclic") and not (
            plane != value and plane.isdecimal() and int(plane) >= 1):
        raise JobSpecError(f"{what} takes block, cyclic or plane=N (N ranks a node in turn), "
                           f"not {value!r}")
    return value


def _rank_slots(what: str, value: list[str]) -> list[str]:
    """Each rank's cores, as a rankfile's slot= gives them ("" for none)."""
    from pm.common.rankfile import RankfileError, check_slot

    for i, slot in enumerate(value):
        try:
            check_slot(slot) if slot else None
        except RankfileError as exc:
            raise JobSpecError(f"{what}[{i}]: {exc}") from None
    return value


def _one_of(allowed: Collection[int], words: str) -> _Check:
    def check(what: str, value: int) -> int:
        if value not in allowed:
            raise JobSpecError(f"{what} must be {words}, not {value!r}")
        return value

    return check


#: What a job option takes, where its type's words would not say it.
JOB_WORDS = {"signal_before_end": "a pair (a signal number, seconds before the timeout) "
                                   "or None"}

#: The value checks of job options (their types are checked first, by JobSpec's
#: annotations): JobSpec.validate's too, whose lines name the command line's options.
JOB_CHECKS: dict[str, _Check] = {
    "ppn": _at_least(1, MOST_RANKS),
    "timeout": _number("a positive number of seconds"),
    "wait_after_first": _number("a positive number of seconds"),
    "universe_size": _universe_size,
    "distribution": _distribution,
    "kvs": by_option(pmopts.choice("shm", "socket")),
    "mpi": by_option(pmopts.choice("pmix", "pmi", "none", "auto")),
    "mem_bind": _unless_empty(by_option(pmopts.mem_bind)),
    "mem_high": by_option(pmopts.size),
    "mem_low": by_option(pmopts.size),
    "mem_overrun": by_option(pmopts.choice("warn", "kill", "suspend")),
    "rank_slots": _rank_slots,
    "profile": by_option(pmopts.writable_file),
    "umask": _one_of(range(0o1000), "a mask from 0 to 0o777 (such as 0o022)"),
    "gpus_per_task": _at_least(0, 4096),  # (pm.options.checks_placement.gpus_count's most)
    "timeout_report": _one_of((0, 1, 2), "0, 1 (each rank's state) or 2 (and its stack)"),
    "env_mode": by_option(pmopts.choice("all", "none", "list")),
    "bind_to": by_option(pmopts.bind_to),
    "map_by": _unless_empty(_map_by),
    "rank_by": _rank_by,
    "output_from": _unless_empty(by_option(pmopts.output_from)),
    "prepend": by_option(pmopts.prepend_pattern),
    "output": by_option(pmopts.out_pattern),
    "error": by_option(pmopts.out_pattern),
    "memory_alloc_kinds": _unless_empty(by_option(pmopts.memory_kinds)),
    "propagate": _propagate,
    "signal_before_end": _signal_before_end,
}


def _jobs(what: str, value: int | str) -> int | str:
    """Tasks at once per host: a count (0: memory alone), or a CPU rule (pm.options.cpu_rule)."""
    if isinstance(value, int):
        return whole(what, value, 0)
    if not pmopts.cpu_rule(value):
        raise JobSpecError(f"{what} takes a whole number of tasks at once per host (0: no "
                           f"limit), or 'cores', '+N', '-N' or 'N%' of its CPU threads, not "
                           f"{value!r}")
    return value


#: run_tasks' options (Ensemble's keyword arguments): each one's type and value check
#: (None: its type says it all).  Ensemble's others are passed on unchecked.
_TASK_OPTIONS: dict[str, tuple[Any, _Check | None]] = {
    "mem_high": (str | int | None, _watermark),
    "mem_low": (str | int | None, _watermark),
    "mem_free": (int | None, _at_least(1)),
    "mem_suspend": (int | None, _at_least(1)),
    "mem_per_task": (Any, bytes_of),
    "retries": (int, _at_least(0)),
    "overrun": (str, by_option(pmopts.choice("warn", "kill", "suspend"))),
    "settle": (float | None, _number("a number of seconds, at least 0", above=False)),
    "interval": (float, _number("a positive number of seconds")),
    "spec": (JobSpec | None, None),
    "on_event": (Callable[..., object] | None, None),
    "cgroup": (str | os.PathLike[str] | None, None),
    "local_hosts": (Collection[str] | None, None),
    "default_reservation": (int, _at_least(0)),
    "jobs": (int | str | None, _jobs),
    "timeout": (float | None, _number("a positive number of seconds")),
    "timeout_median": (float | None, _number("a positive number (times the median run)")),
    "delay": (float, _number("a number of seconds, at least 0", above=False)),
    "jobs_file": (str | None, None),
    "slot_var": (str | None, by_option(pmopts.env_name)),
    "load": (str | None, by_option(pmopts.load_rule, "--load")),
    "noswap": (bool, None),
    "limit": (str | None, by_option(pmopts.limit_command)),
    "cleanup": (bool, None),
    "basefiles": (Sequence[str], None),
    "termseq": (str | None, by_option(pmopts.term_sequence, "--termseq")),
    "tty": (bool, None),
}


def task_options(given: Mapping[str, Any]) -> dict[str, Any]:
    from pm.ensemble import Ensemble

    known = [k for k in inspect.signature(Ensemble).parameters if k not in ("nodes", "output")]
    out: dict[str, Any] = {}
    for key, value in given.items():
        if key not in known:
            raise unknown("run_tasks option", key, known)
        hint, check = _TASK_OPTIONS.get(key, (Any, None))
        value = typed(key, value, hint)
        out[key] = check(key, value) if check is not None and value is not None else value
    return out


def tasks_of(tasks: object, mem: int | None) -> list[Sequence[str] | str]:
    """run_tasks' tasks, each an argv or tasks-file lines (read now: a bad one is refused
    before any runs)."""
    if isinstance(tasks, str | bytes) or not isinstance(tasks, Iterable):
        kind = f"the {type(tasks).__name__} " if isinstance(tasks, str | bytes) else ""
        hint = f" (a tasks-file line, or a file's text, goes in a list: [{tasks!r}])" if kind \
            else ""
        raise ArgumentTypeError(f"tasks must be a list of tasks (argv lists or tasks-file "
                                f"lines), not {kind}{tasks!r}{hint}")
    from pm.ensemble.taskspec import TaskFileError, parse_tasks

    items: list[Sequence[str] | str] = []
    for i, item in enumerate(tasks):
        if isinstance(item, str):
            try:
                parse_tasks(item, mem)
            except TaskFileError as exc:
                raise TaskFileError(f"tasks[{i}]: {exc}") from None
            items.append(item)
        elif isinstance(item, bytes) or not isinstance(item, Sequence):
            raise ArgumentTypeError(f"tasks[{i}] must be an argv (a list of strings) or a "
                                    f"tasks-file line (a string), not {item!r}")
        else:
            items.append(argv_words(f"tasks[{i}]", item))
    return items
