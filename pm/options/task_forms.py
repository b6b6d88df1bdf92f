"""GNU parallel's forms of the command line, once its words are read: input sources
(``CMD ::: A B``, ``-a FILE``, stdin), ``--semaphore``, ``--onall``, ``--pipe``,
``--tee``, ``--retry-failed``; and the line between task ensembles' options and an MPI
job's ranks' (each refused on the other).
"""

from __future__ import annotations

import os

from pm.options.checks import readable_file
from pm.options.model import Section
from pm.options.table import BY_NAME
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from collections.abc import Mapping

    from pm.options.model import Parsed


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
