"""Front ends of task ensembles: ``pmrun --tasks FILE`` and :func:`pm.run_tasks`.

What is printed is :mod:`pm.ensemble.console`'s; the machinery is :mod:`pm.ensemble`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import random
import secrets
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pm.agent.memory import SizeError
from pm.ensemble.cli_options import (
    ensemble_options,
    marked,
    plus_filters,
    program_options,
    read_text,
    renamings,
    results_files,
    sources_of,
    task_files,
    task_shell,
    task_tags,
    unmarked,
)
from pm.ensemble.console import Console
from pm.ensemble.core import Ensemble
from pm.ensemble.domain import CPU_UNIT, planned_slots
from pm.ensemble.halt import Halt
from pm.ensemble.inputs import (
    Plus,
    by_name,
    chunked,
    combinations,
    line_limit,
    shaping,
    shell_quote,
    split_columns,
    spread,
    with_rpl,
)
from pm.ensemble.joblog import HEADER, JobLog, failed_commands, log_target, read_joblog
from pm.ensemble.perl_expr import PERL
from pm.ensemble.results_table import ResultsTable, is_table
from pm.ensemble.stream import Arrivals, is_fifo, offered, streamable
from pm.ensemble.task import Task, TaskResult
from pm.ensemble.taskspec import (
    TaskSpec,
    parse_command,
    parse_tasks,
    quoted_line,
    with_arguments,
    with_quoted_words,
)
from pm.options import separators
from pm.proto.errors import PMError, UsageError

if TYPE_CHECKING:
    from pm.cli import CliOptions
    from pm.common.nodes import Nodes

__all__ = ["run_cli", "run_ensemble"]

_T = TypeVar("_T")


#: Options that ask for memory control (their figures show with -v).
MEMORY_OPTIONS = frozenset({"mem_per_task", "mem_high", "mem_low", "memfree", "memsuspend",
                            "mem_overrun", "mem_settle"})


def _same(value: _T, _index: int) -> _T:
    return value


async def _produced(ens: Ensemble, producer: asyncio.Future[None]) -> None:
    """Wait for ``producer`` (--pipe's reader, stdin's arguments) to add its last task; its
    cancellation because the ensemble stops (an interrupt, --halt) is no error."""
    try:
        await producer
    except asyncio.CancelledError:
        if not ens.stopping:
            raise


async def _streamed(ens: Ensemble, arrivals: Arrivals, template: list[TaskSpec],
                    take: Callable[[list[TaskSpec]], None], ahead: int) -> None:
    """Arguments read as they come (:mod:`pm.ensemble.stream`): each batch's tasks, from
    ``template``, given to ``take``; read on only while fewer than ``ahead`` wait."""
    done = 0
    async for items in offered(ens, arrivals, ahead):
        take(with_arguments(template, [(item,) for item in items], first=done))
        done += len(items)


async def run_cli(opts: CliOptions) -> int:
    """``pmrun --tasks FILE`` (or GNU parallel's command line): run the tasks, print a
    summary; the exit status is 0 if every task succeeded, 1 if one failed for good (on
    parallel's command lines parallel's: :meth:`Halt.status`), 128 + N after signal N."""
    from pm.cli_nodes import nodes_of
    from pm.common.nodes import Nodes

    extra = opts.extra
    if "no_keep_order" in extra:  # (GNU parallel's --nok: -k given before, say in an alias)
        extra.pop("keep_order", None)
    if "ctag" in extra:  # (--ctag is --tag in color, --ctagstring --tagstring)
        extra.setdefault("tag", "1")
    if "ctagstring" in extra:
        extra.setdefault("tagstring", extra["ctagstring"])
    path = extra.get("tasks")
    CPU_UNIT[0] = extra.get("cpu_unit", "thread")  # (-j's CPU rules, here and on hosts)
    options = ensemble_options(extra)
    sources = sources_of(opts)
    # Arguments on stdin: tasks start as they come (GNU parallel's), unless an option needs
    # them all first; then the command line is the tasks' template (``stream``).
    stream = streamable(extra, sources, separators(extra)[1])
    task_sources = [] if stream else sources

    def check_stdin(name: str) -> None:
        if name == "-" and path == "-":
            raise UsageError("--tasks - and :::: - both read standard input: give one a file")
        given = extra.get("stdin_source")
        if name == "-" and given and sys.stdin.isatty():
            raise UsageError(f"{given} is for task ensembles: give their arguments (pmrun "
                             f"{given} ... CMD ::: ARGS, or on stdin: ... | pmrun {given} ... "
                             "CMD), or --tasks FILE; stdin is a terminal")

    def read_source(name: str) -> str:
        check_stdin(name)
        return read_text(name)

    if stream:
        check_stdin("-")
    names: list[str] | None = [] if "header" in extra else None
    renames = renamings(extra)
    nodes = nodes_of(opts)
    assert isinstance(nodes, Nodes)
    # (--tasks FILE: each line in sh -c, as README says; --dry-run runs nothing.)
    shell = ("sh" if path is not None or {"dry_run", "shell_quote"} & extra.keys()
             else task_shell(os.environ))

    def tasks() -> list[TaskSpec]:
        made = _tasks()
        if stream:  # (filled and finished as arguments come; a {2} beyond the source: now)
            with_arguments(made, [("",)])
            return made
        return finish(made)

    def finish(made: list[TaskSpec]) -> list[TaskSpec]:
        if renames:
            # -I STR: STR was {} meanwhile, and {} itself kept aside (GNU parallel's, xargs').
            def back(text: str) -> str:
                return unmarked(text, renames)

            made = [dataclasses.replace(s, argv=tuple(map(back, s.argv)), line=back(s.line),
                                        words=tuple(map(back, s.words))) for s in made]
        if shell != "sh":  # parallel's command line: its shell runs each task's line
            made = [dataclasses.replace(s, argv=(shell, *s.argv[1:]))
                    if s.argv[:2] == ("sh", "-c") else s for s in made]
        if "nice" in extra:  # --nice N: the whole line (sh and all it runs) at niceness N;
            # (the shell line stays the last word: what -v, --dry-run and --joblog show)
            made = [dataclasses.replace(s, argv=("nice", "-n", extra["nice"], *s.argv),
                                        words=s.words or s.argv) for s in made]
        return made

    def _tasks() -> list[TaskSpec]:
        nonlocal names
        if "retry_failed" in extra:  # the log's failed commands, each its number there
            return [TaskSpec(seq - 1, ("sh", "-c", line), options.get("mem_per_task"), line,
                             lineno) for seq, lineno, line in failed_commands(
                                 log_target(extra["joblog"])[0])]
        # -q: the command's words as given (GNU parallel's), not a line the shell splits.
        words = extra["tasks_words"].split("\0") if "tasks_words" in extra else None
        rpl = extra["rpl"].split("\0") if "rpl" in extra else []
        if rpl and words is not None:  # (the user's own strings, before the built-in ones)
            words = [with_rpl(w, rpl) for w in words]
        if renames and words is not None:
            words = [marked(w, renames) for w in words]
        if "plus" in extra and words is not None:
            words = [plus_filters(w) for w in words]
        if words is not None and not task_sources:  # (--pipe)
            line = quoted_line(words)
            return [TaskSpec(0, ("sh", "-c", line), options.get("mem_per_task"), line, 1,
                             tuple(words))]
        text = extra["tasks_line"] if path is None else read_text(path)
        if rpl:
            text = with_rpl(text, rpl)
        if renames and path is None:
            text = marked(text, renames)
        if "plus" in extra:
            text = plus_filters(text)
        specs: list[TaskSpec] = []
        if words is None:  # (the command line is one command: parallel's, several lines)
            specs = (parse_tasks(text, options.get("mem_per_task")) if path is not None
                     else [parse_command(text, options.get("mem_per_task"))])
        if not task_sources:
            if "max_args" in extra and "pipe" not in extra:
                raise UsageError(f"-N {extra['max_args']} takes the arguments of an input "
                                 "source (::: ARGS, :::: FILE, -a FILE): there is none")
            return specs
        columns = "colsep" in extra or "csv" in extra
        # (--trim with --colsep: each column once split, as GNU parallel's; not the line)
        trim = extra.get("trim", "n")
        shape = shaping(extra.get("eof"), "n" if columns else trim, "no_empty" in extra,
                        "join_blank" in extra)
        combos = combinations(task_sources, read_source, extra.get("delimiter"), names,
                              shape=shape, link="link" in extra,
                              separators=separators(extra),
                              skip_first="skip_first_line" in extra)
        width = 0
        if "max_args" in extra:
            width = int(extra["max_args"])
            combos = chunked(combos, width)
        many = extra.get("many_args")
        limit = 0  # -m, -X: the most bytes of a task's line (-s N's, else exec's)
        if many is not None:  # -m, -X: spread over the job slots; --xargs: all that fit
            slots = 0 if many == "--xargs" else planned_slots(nodes, opts.spec.ppn,
                                                              options["jobs"])
            most = int(extra["max_chars"]) if "max_chars" in extra else None
            limit = line_limit(opts.spec.base_env(), most)
            combos = spread(combos, slots, many,
                            budget=max(1, limit - len(os.fsencode(by_name(text, names or ())))))
        if columns:
            colsep, rows = extra.get("colsep", ","), "csv" in extra
            combos = split_columns(combos, colsep, rows)
            # A row's columns vary: {N} beyond a row's is empty there, as GNU parallel's.
            width = sys.maxsize
            if names:
                names = list(split_columns([tuple(names)], colsep, rows)[0])
            strip = shaping(trim=trim)
            if strip is not None:
                combos = [tuple(strip(list(c))) for c in combos]  # (--header's names: not)
        plus = None
        if "plus" in extra:  # (its {##}, {0#}, {0%} count the tasks and the job slots)
            plus = Plus(len(combos) * max(len(specs), 1),
                        planned_slots(nodes, opts.spec.ppn, options["jobs"]))
        if words is not None:
            return with_quoted_words(words, combos, names or (), width,
                                     options.get("mem_per_task"), plus=plus)
        return with_arguments(specs, combos, names or (), width, context=many == "-X",
                              plus=plus, limit=limit)

    try:
        specs = await asyncio.to_thread(tasks)
    except OSError as exc:
        raise UsageError(f"--tasks {path}: {exc.strerror}") from None
    except PMError as exc:  # naming the line of the file, or the command's words
        PERL.close()
        raise UsageError(f"{path}: {exc}" if path is not None
                         else f"{extra['tasks_line']}: {str(exc).removeprefix('line 1: ')}"
                         ) from None
    template: list[TaskSpec] = []
    if stream:
        template, specs = specs, []
        if len(template) != 1:  # (a comment, say: as the whole input's reading makes it)
            stream, task_sources = False, sources
            specs = await asyncio.to_thread(tasks)
    joblog, log_append = log_target(extra["joblog"]) if "joblog" in extra else (None, False)
    seen: dict[int, bool] = {}
    again = "resume_failed" in extra

    def unseen(spec: TaskSpec) -> bool:  # --resume: not in the log (or failed there, again)
        return spec.index + 1 not in seen or (again and not seen[spec.index + 1])

    if joblog is not None and ("resume" in extra or again):
        seen = await asyncio.to_thread(read_joblog, joblog)
        specs = [s for s in specs if unseen(s)]
    if "shuf" in extra:  # the order they start in; each keeps its number ({#}, the log's)
        random.shuffle(specs)
    temp = None
    if "cat" in extra or "fifo" in extra:  # (--pipe's one line)
        from pm.ensemble.pipe import temp_input

        specs = [temp_input(specs[0], "fifo" in extra)]
        temp = os.path.join(extra.get("tmpdir") or tempfile.gettempdir(),
                            f"pmrun.{secrets.token_hex(6)}.")

    def shown(spec: TaskSpec) -> str:  # the line -v and the log show
        return spec.line if temp is not None else spec.argv[-1]

    #: --pipe's one line, run once a block (--tee: a run per argument, each given all)
    piped = "pipe" in extra and "tee" not in extra
    if piped:  # (a replacement string that names a source: said now)
        from pm.ensemble.pipe import numbered

        numbered(specs[0], 0)
    if "tee" in extra:  # every run at once: each reads the input the others read
        slots = planned_slots(nodes, opts.spec.ppn, options["jobs"])
        if "jobs" not in extra:
            options["jobs"] = len(specs)
        elif 0 < slots < len(specs):
            raise UsageError(f"--tee runs all {len(specs)} commands at once: -j "
                             f"{extra['jobs']} gives {slots} task slots (try -j 0)")

    if "dry_run" in extra or "shell_quote" in extra:  # (--shell-quote: each line quoted)
        PERL.close()
        show = shell_quote if "shell_quote" in extra else str
        if "quote_args" in extra:  # (--shell-quote without a command: the arguments)
            sys.stdout.write("".join(f"{shell_quote(' '.join(s.args))}\n" for s in specs))
            return 0
        sys.stdout.write("".join(f"{show(s.argv[-1])}\n" for s in specs))
        return 0
    log = None if joblog is None else JobLog(
        joblog, append=log_append or bool({"resume", "resume_failed", "retry_failed"}
                                          & extra.keys()), header=not log_append)
    halt = Halt(extra.get("halt", "never"), len(specs))
    mode = extra.get("output_mode") or ("line" if path is not None else "group")
    where = None
    table = None  # --results NAME.csv: GNU parallel's table of results
    if "results" in extra and not is_table(extra["results"]):
        where = results_files(extra, specs, names or ())
    program_options(opts.spec)
    tags = task_tags(extra, specs, tasks_file=path is not None)
    files = task_files(extra, specs)
    PERL.close()  # (every {= expression =} is filled in by now)
    if "results" in extra and is_table(extra["results"]):
        width = max((len(s.args) for s in specs), default=int(stream))  # (stdin: one source)
        table = ResultsTable(extra["results"], names or (), width)
    tag: Callable[[int], bytes | None] = tags.get
    if piped:  # one line, run once a block: every run's tag is the first's
        tag = functools.partial(_same, tags.get(0))
    command = None
    lines: dict[int, bytes] | None = None
    if opts.verbose and path is None:  # GNU parallel's -v: each run's command line first
        lines = {s.index: os.fsencode(shown(s)) for s in specs}
        command = lines.__getitem__
        if piped:  # (the runs are numbered as their blocks come)
            from pm.ensemble.pipe import pipe_line

            command = pipe_line(specs[0], temp is not None)
    if "tmpdir" in extra:  # (--files, and output held past 1 MiB: pm.ensemble.console)
        tempfile.tempdir = extra["tmpdir"]
    # (No progress line under --tty: the terminal is the tasks'.)
    console = Console(opts.verbose, os.isatty(2) and "tty" not in extra,
                      group=mode == "group", tag=tag,
                      results=where, command=command,
                      files=tempfile.gettempdir() if "files" in extra else None,
                      color=bool({"color", "ctag", "ctagstring"} & extra.keys()),
                      color_failed="colorfailed" in extra, collect=table is not None)
    if log is not None and log.to_stdout:  # (--joblog -: its header first, as parallel's)
        console.write_out(HEADER.encode())
    interrupted: list[int] = []
    # (GNU parallel's command line: a task is named by its Seq, {#}; a tasks file's line
    # by its index and line.)
    console.numbered_from = int(path is None)
    console.as_written = path is None
    # (parallel's command line: -v is the command lines and the summary, as README says;
    # the memory figures too where memory control was asked for, else at -vv)
    memory = path is not None or bool(MEMORY_OPTIONS & extra.keys())
    console.memory_level = 1 if memory else 2
    try:
        ens = Ensemble(nodes, spec=opts.spec, output=console.output, on_event=console.event,
                       timeout=opts.spec.timeout, **options)
        ens.numbered_from = console.numbered_from
        ens.prepare = console.prepare
    except SizeError as exc:
        await console.aclose()
        if log is not None:
            log.close()
        if table is not None:
            table.close()
        raise UsageError(str(exc)) from None
    loop = asyncio.get_running_loop()
    producer: asyncio.Task[None] | None = None  # --pipe's reader of stdin

    def interrupt(signum: int) -> None:
        interrupted.append(signum)
        console.message(f"{signal.Signals(signum).name}: starting no more tasks"
                        if len(interrupted) == 1 else "killing the running tasks")
        ens.interrupt(signum)
        if producer is not None:
            producer.cancel()  # --pipe: read no more

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, interrupt, sig)
    from pm.quick import noted_signals

    for signum in noted_signals():  # what reached pmrun while it imported
        interrupt(signum)
    try:
        await ens.start()  # (an interrupt meanwhile: hosts still starting are waited for no more)
    except SizeError as exc:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await ens.aclose()
        await console.aclose()
        if log is not None:
            log.close()
        if table is not None:
            table.close()
        raise UsageError(str(exc)) from None
    def output_gone() -> None:
        """Whoever read our stdout went away (``| head``): its tasks' output has nowhere
        to go, and tasks that never end (``yes``) would be held for ever."""
        loop.remove_reader(1)
        interrupted.append(signal.SIGPIPE)
        console.message("standard output closed: killing the running tasks, starting no "
                        "more")
        ens.halt("not run: standard output closed", now=True)
        if producer is not None:
            producer.cancel()

    watched = is_fifo(1)
    if watched:  # (a pipe's writing end is never readable: the loop wakes when it breaks)
        loop.add_reader(1, output_gone)
    try:
        ens.total_hint = int(extra.get("total_jobs", "0"))
        if console.tty:  # (the line is only drawn on a terminal)
            ens.on_progress = lambda: console.progress(ens.progress_text())
        if "keep_order" in extra:
            console.keep_order([] if piped or stream else (spec.index for spec in specs))

        def done(task: Task, result: TaskResult) -> None:
            host = ":" if ens.is_here(result.node) else None
            line = "" if log is None else log.record(
                result, shown(task.spec), task.received, task.sent, host)
            if table is not None:
                table.record(result, shown(task.spec), task.spec.args,
                             console.collected(task.index), task.received, task.sent, host)
            # (--joblog -: the task's line on stdout right after its output, as parallel's)
            console.ended(task.index, failed=not result.ok,
                          trailer=os.fsencode(line) if log is not None and log.to_stdout
                          else b"")
            why = halt.count(result)
            if why:
                console.message(why)
                ens.halt(f"not run: --halt {halt.policy}", now=halt.now)
                if producer is not None:
                    producer.cancel()  # no more blocks

        ens.on_done = done
        if "pipe" in extra:
            from pm.ensemble.blocks import Blocks, Groups, Source, block_size, splitter, unescaped
            from pm.ensemble.pipe import pipe, roundrobin, shard, tee

            regexp = "regexp" in extra
            # (--regexp: the expressions as given, \n read by the regular expression; a
            # --recend '' alone ends a record at any byte, as GNU parallel's.)
            unescape = os.fsencode if regexp else unescaped
            start = unescape(extra.get("recstart", ""))
            end = unescape(extra.get("recend", "" if "recstart" in extra else "\n"))
            if regexp and not end and not start:
                end = b"(?s:.)"
            fd = 0
            if "pipe_file" in extra:  # --pipepart
                try:
                    fd = os.open(extra["pipe_file"], os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise UsageError(f"--pipepart {extra['pipe_file']}: {exc.strerror}"
                                     ) from None
            try:
                # (--pipepart's default as GNU parallel's: 10 blocks for each task slot.)
                size = block_size(extra.get("block", "-10" if fd else "1M"), fd,
                                  ens.slot_count)
                header = extra.get("header", "0")
                grouped = "group_by" in extra  # (-N counts its records, not lines)
                cut = Blocks(size, end, start, fd, part=bool(fd), regexp=regexp,
                             header=1 if header == ":" else int(header),
                             records=0 if grouped else int(extra.get("max_args", "0")),
                             lines=int(extra.get("max_lines", "0")))
                cut.warn = console.message
                blocks: Source = cut
                if grouped:
                    blocks = Groups(cut, extra["group_by"], splitter(extra.get("colsep")),
                                    size, int(extra.get("max_args", "0")))
                producer = asyncio.ensure_future(
                    roundrobin(ens, console, specs[0], blocks) if "roundrobin" in extra
                    else tee(ens, specs, blocks) if "tee" in extra
                    else shard(ens, console, specs[0], blocks, extra)
                    if "shard" in extra or "bin" in extra
                    else pipe(ens, console, specs[0], blocks, temp))
                await _produced(ens, producer)
            finally:
                if fd:
                    os.close(fd)
        elif stream:
            def take(batch: list[TaskSpec]) -> None:
                batch = [s for s in finish(batch) if unseen(s)]
                if where is not None:
                    where.update(results_files(extra, batch, ()))
                tags.update(task_tags(extra, batch, tasks_file=False))
                files.update(task_files(extra, batch))
                if lines is not None:
                    lines.update({s.index: os.fsencode(shown(s)) for s in batch})
                for spec in batch:
                    console.expect(spec.index)
                    transfer, returns = files.get(spec.index, ((), ()))
                    ens.add(spec.argv, spec=spec, transfer=transfer, returns=returns)

            shape = shaping(None, extra.get("trim", "n"), "no_empty" in extra)
            fd = 0
            if sources[1] != "-":  # a named pipe: -a <(producer)
                try:
                    fd = os.open(sources[1], os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
                except OSError as exc:
                    raise UsageError(f":::: {sources[1]}: {exc.strerror}") from None
            arrivals = Arrivals(fd, extra.get("delimiter"), extra.get("eof"),
                                skip=int("skip_first_line" in extra), shape=shape)
            producer = asyncio.ensure_future(
                _streamed(ens, arrivals, template, take, 2 * ens.slot_count + 8))
            try:
                await _produced(ens, producer)
            finally:
                if fd:
                    os.close(fd)
        else:
            for spec in specs:
                transfer, returns = files.get(spec.index, ((), ()))
                ens.add(spec.argv, spec=spec, transfer=transfer, returns=returns)
        results = await ens.join()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if watched:
            loop.remove_reader(1)
        await ens.aclose()
        if log is not None:
            log.close()
        if table is not None:
            table.close()
        summary = ens.summary_text()
        if opts.verbose < console.memory_level:  # the nodes' memory peaks with -v (-vv)
            summary = "\n".join(x for x in summary.split("\n") if not x.startswith("node "))
        if path is None and not opts.verbose and ens.all_succeeded():
            summary = ""  # GNU parallel's command line (CMD ::: ARGS): silent when all went well
        await console.aclose(summary + "\n" if summary else "")
    if interrupted:
        return 128 + interrupted[0]
    if path is None:
        return halt.status()  # (GNU parallel's command line: its exit status)
    if halt.reached and halt.why == "success":
        return 0  # what was looked for was found
    return 0 if all(r.ok for r in results) else 1


async def run_ensemble(tasks: Iterable[Sequence[str] | str], nodes: Nodes, *,
                       output: str = "inherit", **options: Any) -> list[TaskResult]:
    """Run ``tasks`` (argv lists, or tasks-file lines like ``"[mem=2G] ./sim 1"``)
    to their end; ``options`` are :class:`Ensemble`'s.  ``output="inherit"``
    writes their lines to our stdout/stderr with ``[task N] ``; ``"capture"``
    keeps them in the results."""
    if output not in ("inherit", "capture"):
        raise ValueError("output must be 'inherit' or 'capture'")
    console = Console(0, False, tag=lambda index: b"[task %d] " % index
                      ) if output == "inherit" else None
    try:
        async with Ensemble(nodes, output=console.output if console else None,
                            **options) as ens:
            for item in tasks:
                if isinstance(item, str):
                    for spec in parse_tasks(item, options.get("mem_per_task")):
                        ens.add(spec.argv, spec=spec)
                else:
                    ens.add(item)
            return await ens.join()
    finally:
        if console is not None:
            await console.aclose()
