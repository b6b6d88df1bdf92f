"""What the ensemble's command line asks, read for its front end (:mod:`pm.ensemble.cli`).

The options of ``pmrun --tasks FILE`` and of GNU parallel's command line as the
:class:`~pm.ensemble.Ensemble`'s keyword arguments (:func:`ensemble_options`) and the
command's own (:func:`program_options`); each task's output prefix (:func:`task_tags`),
files to carry (:func:`task_files`) and ``--results`` files (:func:`results_files`); the
command's text with ``-I``'s renamed replacement strings (:func:`marked`) and ``--plus``'s
filters (:func:`plus_filters`); the input sources' words, the shell that runs the tasks
and a file's text.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pm.agent.memory import SizeError, parallel_size, parse_size
from pm.ensemble.inputs import fill, has_replacement, with_rpl
from pm.ensemble.taskspec import TaskSpec
from pm.options import jobs_value, parse_jobs, separators, source_words
from pm.proto.errors import UsageError

if TYPE_CHECKING:
    from pm.cli import CliOptions
    from pm.jobspec import JobSpec


def sources_of(opts: CliOptions) -> list[str]:
    """The input sources' words (``::: A B``, ``:::: FILE``...; empty without them); a
    program beside ``--tasks FILE`` is refused, since the file's lines run and it would
    silently be left out."""
    apps = opts.spec.apps
    if not apps:
        return []
    if opts.n_given:
        raise UsageError("-n is the number of an MPI job's ranks: here each line and "
                         "combination of arguments is one task (-j N: N at once)")
    argv = apps[0].argv
    if len(apps) > 1 or argv[0] not in source_words(opts.extra):
        raise UsageError(f"--tasks runs the lines of {opts.extra['tasks']}, not {argv[0]!r}: "
                         "put the command in the file (arguments for its {} go after "
                         f"{separators(opts.extra)[0]})")
    return argv


def task_shell(environ: Mapping[str, str]) -> str:
    """The shell that runs the tasks of GNU parallel's command line, as parallel chooses
    it: ``$PARALLEL_SHELL``, else ``$SHELL`` (the user's: bash's arrays and ``[[`` work as
    they do at the prompt), else ``/bin/sh``.  :class:`UsageError` for one that is no
    program here."""
    for name in ("PARALLEL_SHELL", "SHELL"):
        value = environ.get(name)
        if value:
            break
    else:
        return "/bin/sh"
    found = shutil.which(value, path=environ.get("PATH", os.defpath))
    if found is None or os.path.isdir(found):
        raise UsageError(f"${name} is {value}, which is no program that can run the tasks "
                         f"(set {name} to a shell, e.g. {name}=/bin/bash)")
    return value


def read_text(path: str) -> str:
    """A tasks file's or an input source's text; bytes that are not UTF-8 (a file name in
    another encoding) come back unchanged in the tasks' command lines (``os.fsdecode``'s
    way)."""
    if path == "-":
        return sys.stdin.buffer.read().decode(errors="surrogateescape")
    # (newline="": a line's bytes as they are, a CRLF line's "\r" too, as parallel reads)
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        return f.read()


#: GNU parallel's options that rename a replacement string (``-I STR``: STR is ``{}``).
RENAMES = (("replace", "{}"), ("seqreplace", "{#}"), ("slotreplace", "{%}"),
           ("extensionreplace", "{.}"), ("basenamereplace", "{/}"),
           ("dirnamereplace", "{//}"), ("basenameextensionreplace", "{/.}"))


def renamings(extra: Mapping[str, str]) -> list[tuple[str, str]]:
    """The renamings the command line asks for: (STR, the string it stands for)."""
    return [(extra[key], std) for key, std in RENAMES if extra.get(key, std) != std]


def _kept(k: int) -> str:
    """What a command's own replacement string is while another stands for it."""
    return f"\x01{chr(2 + k)}"


def marked(text: str, renames: list[tuple[str, str]]) -> str:
    """``text`` with each renaming's STR as the string it stands for, and those strings
    themselves kept aside (:func:`unmarked` puts them back once the line is filled)."""
    for k, (_, std) in enumerate(renames):
        text = text.replace(std, _kept(k))
    for given, std in sorted(renames, key=lambda r: -len(r[0])):  # (,be before ,b)
        text = text.replace(given, std)
    return text


def unmarked(text: str, renames: list[tuple[str, str]]) -> str:
    for k, (_, std) in enumerate(renames):
        text = text.replace(_kept(k), std)
    return text


#: GNU parallel's --plus strings that leave tasks out: the arguments as {} gives them, the
#: task skipped unless they rise (``{choose_k}``: each combination once, n choose k) or
#: differ (``{uniq}``), as parallel's own perl expressions say.
_PLUS_FILTERS = {
    "{choose_k}": "{= for my $t (2..$#arg) { skip() if $arg[$t-1] ge $arg[$t] } =}",
    "{uniq}": "{= my %seen; for my $a (@arg[1..$#arg]) { skip() if $seen{$a}++ } =}",
}


def plus_filters(text: str) -> str:
    for name, expr in _PLUS_FILTERS.items():
        text = text.replace(name, expr)
    return text


def ensemble_options(extra: dict[str, str]) -> dict[str, Any]:
    """Ensemble keyword arguments from the CLI's option values (UsageError if bad)."""
    out: dict[str, Any] = {"mem_high": extra.get("mem_high"), "mem_low": extra.get("mem_low")}
    try:
        if "memfree" in extra:
            if "mem_high" in extra:
                raise UsageError("--memfree sets the high watermark: give it or --mem-high")
            out["mem_free"] = parallel_size(extra["memfree"])
        if "memsuspend" in extra:
            if "mem_high" in extra:
                raise UsageError("--memsuspend sets the high watermark: give it or --mem-high")
            out["mem_suspend"] = parallel_size(extra["memsuspend"])
        if "mem_per_task" in extra:
            out["mem_per_task"] = parse_size(extra["mem_per_task"])
        # GNU parallel's --retries N: N runs in all (0 and 1: one); the ensemble's: reruns.
        out["retries"] = max(0, int(extra.get("retries", "0")) - 1)
        if "mem_settle" in extra:
            value = extra["mem_settle"]
            out["settle"] = None if value in ("off", "0") else float(value)
    except (SizeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if out["retries"] < 0:
        raise UsageError("--retries must be at least 0")
    most = extra.get("max_chars")  # (-s N: read here, as -m/-X read it)
    if most is not None and not (most.isdecimal() and int(most) >= 1):
        raise UsageError(f"-s (--max-chars) takes the most bytes of a command line, a whole "
                         f"number of at least 1, not {most!r}")
    jobs = extra.get("jobs")
    if "tty" in extra:
        out["tty"] = _terminal()
    if jobs is None:  # GNU parallel's default: one task per CPU thread (--tty: one)
        out["jobs"] = 1 if "tty" in extra else "cores"
    else:  # (checked by pm.options.task_options.task_slots: a count, a CPU rule or a file)
        out["jobs"] = jobs_value(jobs)
        if parse_jobs(jobs) is None:  # GNU parallel's -j FILE: what it says now, read again later
            out["jobs_file"] = jobs
    overrun = extra.get("mem_overrun", "warn")
    if overrun not in ("warn", "kill", "suspend"):
        raise UsageError(f"--mem-overrun takes warn, kill or suspend, not {overrun!r}")
    out["overrun"] = overrun
    if "delay" in extra:
        out["delay"] = float(extra["delay"])  # checked by pm.options.checks.duration
    if "slot_var" in extra:
        out["slot_var"] = extra["slot_var"]
    if "load" in extra:
        out["load"] = extra["load"]  # (checked by pm.options.load_rule)
    if "limit" in extra:
        out["limit"] = extra["limit"]  # (checked by pm.options.limit_command)
    out["noswap"] = "noswap" in extra
    out["cleanup"] = "cleanup" in extra or "trc" in extra
    if "termseq" in extra:
        out["termseq"] = extra["termseq"]  # (checked by pm.options.term_sequence)
    if "timeout_pct" in extra:  # (checked by pm.options.checks.run_timeout)
        out["timeout_median"] = float(extra["timeout_pct"].removesuffix("%")) / 100
    if "basefiles" in extra:
        out["basefiles"] = extra["basefiles"].split("\0")
    return out


def _terminal() -> bool:
    """``--tty``: True when pmrun has a terminal to give its tasks (UsageError if not)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        raise UsageError(f"--tty gives each task pmrun's terminal, and pmrun has none "
                         f"(/dev/tty: {exc.strerror})") from None
    return True


def program_options(spec: JobSpec) -> None:
    """``pmrun -wdir DIR -env A 1 -envnone CMD ::: ...``: the options given to the command
    (Hydra's per-program ones) hold for every task."""
    if not spec.apps:
        return
    app = spec.apps[0]
    spec.wdir = app.wdir or spec.wdir
    spec.genv = {**spec.genv, **app.env}
    if app.env_mode is not None:
        spec.env_mode, spec.genvlist = app.env_mode, list(app.envlist)


def task_tags(extra: dict[str, str], specs: Sequence[TaskSpec], tasks_file: bool
             ) -> dict[int, bytes]:
    """Each task's output line prefix: ``--tagstring STR`` filled for it and a tab,
    ``--tag`` its arguments (its line, without sources) and a tab; else ``[task N] ``
    for ``--tasks FILE`` without GNU parallel's output options, and none."""
    if "tagstring" in extra:
        from pm.ensemble.perl_expr import Skipped

        text = extra["tagstring"]
        if "rpl" in extra:
            text = with_rpl(text, extra["rpl"].split("\0"))

        def tag(spec: TaskSpec) -> bytes:
            try:
                return os.fsencode(fill(text, spec.args, spec.index + 1, quote=False,
                                        total=len(specs))) + b"\t"
            except Skipped:  # ({= skip() =} in a tag: the task still runs, untagged)
                return b"\t"

        try:
            return {s.index: tag(s) for s in specs}
        except UsageError as exc:
            raise UsageError(f"--tagstring {text}: {exc}") from None
    if "tag" in extra:  # (a tasks file's line without sources: the line; --pipe's: none)
        return {s.index: os.fsencode(" ".join(s.args) if s.args or not tasks_file
                                     else s.line) + b"\t" for s in specs}
    if tasks_file and "output_mode" not in extra:
        return {s.index: b"[task %d] " % s.index for s in specs}
    return {}


def task_files(extra: dict[str, str], specs: Sequence[TaskSpec]
               ) -> dict[int, tuple[list[str], list[str]]]:
    """GNU parallel's --transferfile, --return and --trc: each task's files, its arguments
    filled in (a name left empty is no file)."""
    def given(key: str) -> list[str]:
        return extra[key].split("\0") if key in extra else []

    transfer, returns = given("transfer"), given("returns") + given("trc")
    if "trc" in extra:
        transfer.append("{}")
    if not transfer and not returns:
        return {}
    from pm.ensemble.perl_expr import Skipped

    def names(templates: list[str], spec: TaskSpec) -> list[str]:
        try:
            filled = [fill(t, spec.args, spec.index + 1, quote=False, total=len(specs))
                      for t in templates]
        except Skipped:
            return []
        except UsageError as exc:
            raise UsageError(f"--transferfile/--return: {exc}") from None
        return [f for f in filled if f]

    return {s.index: (names(transfer, s), names(returns, s)) for s in specs}


def results_files(extra: Mapping[str, str], specs: Sequence[TaskSpec],
                  names: Sequence[str], total: int = 0) -> dict[int, tuple[str, str, str]]:
    """GNU parallel's ``--results NAME``: each task's stdout, stderr and sequence number
    files.  A NAME without replacement strings is a folder: :func:`results_dir` and its
    ``stdout``, ``stderr`` and ``seq``.  One with them is filled in for the task: a
    name ending in ``/`` is a folder of those three files, else its stdout's file, with
    ``.err`` and ``.seq`` added for the others (arguments as they are, ``/`` included)."""
    top = extra["results"]
    if not has_replacement(top, "plus" in extra):
        return {s.index: _three(results_dir(top, s, names)) for s in specs}
    text = with_rpl(top, extra["rpl"].split("\0")) if "rpl" in extra else top
    out = {}
    for spec in specs:
        try:
            name = fill(text, spec.args or (spec.line,), spec.index + 1, quote=False,
                        total=total or len(specs))
        except UsageError as exc:
            raise UsageError(f"--results {top}: {exc}") from None
        out[spec.index] = _three(name) if name.endswith("/") else (
            name, name + ".err", name + ".seq")
    return out


def _three(folder: str) -> tuple[str, str, str]:
    return (os.path.join(folder, "stdout"), os.path.join(folder, "stderr"),
            os.path.join(folder, "seq"))


def results_dir(top: str, spec: TaskSpec, names: Sequence[str]) -> str:
    """GNU parallel's ``--results DIR`` directory of a task: ``DIR/1/ARG1/2/ARG2`` (a
    source's name instead of its number with ``--header``; the line for a tasks file's
    line without sources), ``\\`` doubled and ``/`` written ``\\_`` in arguments (and a NUL
    byte, which no path can hold, ``\\000``)."""
    args = spec.args or (spec.line,)
    parts = [top]
    for k, arg in enumerate(args, 1):
        name = names[k - 1] if k <= len(names) else str(k)
        parts += [name, arg.replace("\\", "\\\\").replace("/", "\\_").replace("\0", "\\000")
                  or "\\0"]
    return os.path.join(*parts)
