"""Task ensembles' options (GNU parallel's, and the memory watermarks): the checkers
of their values (-j's forms, sizes, --load, --limit, --termseq, --halt, columns,
separators and delimiters, --block, --results), and their entries in the table
(:mod:`pm.options.table`).

Each checker takes (text, option as the user spelled it) and returns the value, or
raises UsageError naming the option and what was wrong (:mod:`pm.options.checks`).
"""

from __future__ import annotations

import os

from pm.options.checks import (
    MOST_RANKS,
    choice,
    directory,
    duration,
    env_name,
    niceness,
    readable_or_stdin,
    regex,
    signed_seconds,
    text,
    verbatim,
    whole,
)
from pm.options.checks_placement import sshlogin, sshloginfile
from pm.options.model import FLAG, MEMORY, Opt
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from collections.abc import Callable


def settle_time(text: str, opt: str) -> str:
    """``--mem-settle``: seconds (:func:`pm.options.checks.duration`), or ``off``."""
    if text != "off":
        duration(text, opt)
    return text


def header_lines(value: str, opt: str) -> str:
    """GNU parallel's ``--header``: ``:`` (the first line), or a number of lines (--pipe)."""
    if value != ":" and not value.isdecimal():
        raise UsageError(f"{opt} takes : (the first line) or, with --pipe, a number of "
                         f"lines, not {value!r}")
    return value


def separator(value: str, opt: str) -> str:
    """``--arg-sep``, ``--arg-file-sep``: a word of its own, not an option's."""
    if not value or value.strip() != value or value.startswith("-") or value.endswith("+"):
        raise UsageError(f"{opt} takes a word that starts an input source (as :::), not "
                         f"{value!r}")
    return value


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


def results_dir(value: str, opt: str) -> str:
    """A directory pmrun makes if need be (GNU parallel's ``--results``): refused when it,
    or the nearest part of its path that exists, is not a directory."""
    from pm.ensemble.results_table import is_table

    text(value, opt)
    # (One with replacement strings: the folder its fixed start names; a table, NAME.csv,
    # .tsv or .json: its folder.)
    part = os.path.abspath(os.path.dirname(value) if is_table(value)
                           else value.split("{", 1)[0] or ".")
    while not os.path.exists(part):
        part = os.path.dirname(part)
    if not os.path.isdir(part):
        raise UsageError(f"{opt} {value}: {part} is not a directory")
    return value


def _rpl_rule(value: str, opt: str) -> str:
    from pm.ensemble.inputs import rpl_rule

    return rpl_rule(value, opt)


def delimiter(value: str, opt: str) -> str:
    """GNU parallel's ``-d DELIM``: one character, or ``\\n``, ``\\t``, ``\\0``."""
    value = {"\\n": "\n", "\\t": "\t", "\\0": "\0", "\\\\": "\\"}.get(value, value)
    if len(value) != 1:
        raise UsageError(f"{opt} takes one character (or \\n, \\t, \\0), not {value!r}")
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


#: Options that may be given again, each time another file (GNU parallel's transfers).
FILE_LISTS = ("transfer", "returns", "trc", "basefiles")
#: Options given again for more (each a list of values; an ensemble's ``extra`` joins them
#: with NULs).
LISTS = (*FILE_LISTS, "rpl")


#: Memory and task ensembles' options, in the table (:mod:`pm.options.table`).
ENSEMBLE_OPTIONS = (
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
             "NAME.seq filled in, or files of that folder if it ends in /; NAME.csv, .tsv, "
             ".json: one table, a row per task, with its output"),
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
)
