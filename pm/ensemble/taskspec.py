"""What a task is before it runs: :class:`TaskSpec`, from a tasks file or a command line.

Tasks file (``pmrun --tasks FILE``): one command per line, run by ``sh -c LINE`` as GNU parallel
runs its lines (pipes, ``;``, redirections, variables and globs work).  Blank
lines and lines starting with ``#`` are skipped; a ``#`` that starts a word
begins a comment.  The line is also split into words like a shell does
(quotes, backslashes): a line that cannot be is refused before anything runs,
and the words name the command that sizes are learned from
(:func:`command_key`).  A line may start
with an options block in brackets, ``[mem=2G]``: ``mem`` is the task's
memory bound (a size as in :func:`parse_size`, not a percentage); without
it the bound is the file-wide default (``--mem-per-task``), else unknown.
Options are ``key=value`` items separated by spaces or commas.  A bracket
followed by a space (``[ -f x ]``) starts a command, not options.

GNU parallel's command line makes them too: ONE command (:func:`parse_command`),
once per combination of its input sources' arguments (:func:`with_arguments`,
``-q``'s :func:`with_quoted_words`).  The scheduler that runs them:
:mod:`pm.ensemble.scheduler`.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pm.agent.admission import SizeError, parse_size
from pm.ensemble.inputs import Plus, by_name, fill, has_replacement, in_context, shell_quote
from pm.ensemble.perl_expr import Skipped
from pm.proto.errors import PMError, UsageError

_T = TypeVar("_T")

_INTERPRETERS = re.compile(
    r"^(python[\d.]*|pypy[\d.]*|sh|bash|dash|zsh|perl|ruby|Rscript|julia|node)$"
)
_OPTIONS = re.compile(r"^\[(\S[^\]]*)\]\s*")  # "[" then no space: options, up to "]"


class TaskFileError(PMError, ValueError):
    """A tasks file line that cannot be read; the message names the line."""


@dataclass(frozen=True)
class TaskSpec:
    """One task: ``index`` (0-based, in file order), ``argv``, its memory bound
    in bytes (None = unknown), the line as written and its 1-based number;
    ``words``: a tasks-file line's command as words (its ``argv`` is ``sh -c``)."""

    index: int
    argv: tuple[str, ...]
    mem: int | None
    line: str
    lineno: int = 0
    words: tuple[str, ...] = ()
    #: The input sources' arguments that filled its line (GNU parallel's --tag).
    args: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, ...]:
        """What sizes are learned under (:func:`command_key` of its command)."""
        return command_key(self.words or self.argv)


def _strip_comment(line: str) -> str:
    """``line`` without a trailing comment: a ``#`` starting a word, outside quotes."""
    quote = ""
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def parse_tasks(text: str, default_mem: int | None = None) -> list[TaskSpec]:
    """The tasks of a tasks file (see the module docstring for the format).

    Raises :class:`TaskFileError` naming the line for bad quoting, an
    unknown option, a bad size or an options block without a command.
    """
    tasks: list[TaskSpec] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        mem = default_mem
        body = line
        m = _OPTIONS.match(line)
        if m is None and re.match(r"\[\S", line):
            raise TaskFileError(f"line {lineno}: options block without its ']': {line}")
        if m is not None:
            body = line[m.end() :]
            for item in re.split(r"[\s,]+", m.group(1).strip(", \t")):
                key, eq, value = item.partition("=")
                if not eq:
                    raise TaskFileError(f"line {lineno}: expected key=value, not {item!r}")
                if key != "mem":
                    raise TaskFileError(f"line {lineno}: unknown option {key!r} (known: mem)")
                try:
                    mem = parse_size(value)
                except SizeError as e:
                    raise TaskFileError(f"line {lineno}: {e}") from e
        try:
            words = tuple(shlex.split(_strip_comment(body)))
        except ValueError as e:
            raise TaskFileError(f"line {lineno}: {e}: {line}") from e
        if not words:
            raise TaskFileError(f"line {lineno}: options but no command: {line}")
        tasks.append(TaskSpec(len(tasks), ("sh", "-c", body), mem, line, lineno, words))
    return tasks


def parse_command(text: str, default_mem: int | None = None) -> TaskSpec:
    """GNU parallel's command line (``pmrun CMD ::: ARGS``, arguments on stdin, ``--pipe``):
    ONE command, whatever it holds -- several lines (a script: ``if ...\nthen ...\nfi``),
    a ``[`` first (``[[ {} == a* ]]``), a comment -- run by the shell as written, once per
    combination of arguments.  A tasks file's format (a command a line, an options block)
    is not the command line's.  Its words (:attr:`TaskSpec.words`, what sizes are learned
    under) are the shell's as far as they can be told; quotes that do not close (a here
    document's text, say) are the shell's to judge, as GNU parallel leaves them."""
    words = _words(text)
    return TaskSpec(0, ("sh", "-c", text), default_mem, text, 1,
                    tuple(text.split()) if words is None else words)


def _words(text: str) -> tuple[str, ...] | None:
    """``text`` as the shell's words, each line's comment left out (None: quotes that do
    not close)."""
    try:
        return tuple(shlex.split("\n".join(map(_strip_comment, text.split("\n")))))
    except ValueError:
        return None


def with_arguments(specs: Sequence[TaskSpec], combos: Sequence[Sequence[str]],
                   names: Sequence[str] = (), width: int = 0, context: bool = False,
                   plus: Plus | None = None, first: int = 0, limit: int = 0
                   ) -> list[TaskSpec]:
    """GNU parallel's input sources: each task once per combination of arguments, in
    order, its line filled by :func:`pm.ensemble.inputs.fill` (replacement strings, or
    the arguments appended).  :class:`TaskFileError` naming the line for a ``{N}``
    beyond the sources.  ``names``: the sources' (``--header :``), for ``{NAME}``;
    ``width``: ``-N``'s (a group of arguments each, :func:`~pm.ensemble.inputs.chunked`);
    ``context``: ``-X``'s (:func:`~pm.ensemble.inputs.in_context`); ``plus``: GNU
    parallel's ``--plus`` strings too; ``first``: how many tasks came before these (an
    input read as it comes, :mod:`pm.ensemble.stream`); ``limit``: the most bytes of a
    line filled with several arguments (-m, -X: :func:`~pm.ensemble.inputs.line_limit`):
    a longer one is cut into tasks of fewer arguments, as GNU parallel cuts its lines."""
    out: list[TaskSpec] = []
    seq, total = first, len(specs) * len(combos)
    for spec in specs:
        body = spec.argv[2]
        prefix = spec.line[: len(spec.line) - len(body)]  # the options block, if any
        body = by_name(body, names)
        todo = list(reversed(combos)) if limit else []  # (the next last: a cut's first)
        for args in _popped(todo) if limit else combos:
            seq += 1  # (a task an expression skips keeps its number: GNU parallel's)
            try:
                new = (in_context if context else fill)(body, args, seq, width=width,
                                                         plus=plus, total=total)
            except Skipped:
                continue
            except UsageError as exc:
                raise TaskFileError(f"line {spec.lineno}: {exc}") from None
            if limit and len(args) > 1 and (size := len(os.fsencode(new))) > limit:
                seq -= 1  # in as many even parts as it is too long, each checked again
                step = -(-len(args) // max(2, -(-size // limit)))
                todo.extend(args[i:i + step] for i in reversed(range(0, len(args), step)))
                continue
            # (None: an argument's quotes inside the line's: the shell says)
            words = _words(new) or spec.words
            out.append(TaskSpec(seq - 1, ("sh", "-c", new), spec.mem, prefix + new,
                                spec.lineno, words, tuple(args)))
    return out


def _popped(todo: list[_T]) -> Iterator[_T]:
    """``todo``'s items from its end, including those added meanwhile."""
    while todo:
        yield todo.pop()


def with_quoted_words(words: Sequence[str], combos: Sequence[Sequence[str]],
                      names: Sequence[str] = (), width: int = 0, mem: int | None = None,
                      plus: Plus | None = None) -> list[TaskSpec]:
    """GNU parallel's ``-q``: a task per combination of arguments, its command ``words``
    with their replacement strings filled as the arguments are (or the arguments
    appended as words of their own), then each word quoted for the shell: the task runs
    exactly these words.  A string that stands for several arguments (``{}`` of several
    sources) ends its word at each, as GNU parallel's (``x{}y`` of ``a``, ``b``: ``xa``,
    ``by``).  ``names``, ``width``: as :func:`with_arguments`."""
    named = [by_name(w, names) for w in words]
    append = not any(has_replacement(w, plus is not None) for w in named)
    out: list[TaskSpec] = []
    for seq, args in enumerate(combos, 1):
        try:
            # (NUL, which no argument holds, between a string's arguments: a word's end.)
            filled = [part for w in named
                      for part in fill(w, args, seq, quote=False, width=width, plus=plus,
                                       between="\0", total=len(combos)).split("\0")]
        except Skipped:
            continue
        except UsageError as exc:
            raise TaskFileError(f"line 1: {exc}") from None
        if append:
            filled += args
        line = quoted_line(filled)
        out.append(TaskSpec(seq - 1, ("sh", "-c", line), mem, line, 1, tuple(filled),
                            tuple(args)))
    return out


def quoted_line(words: Sequence[str]) -> str:
    """A shell command line that runs exactly ``words`` (GNU parallel's ``-q``)."""
    return " ".join(map(_quoted, words))


def _quoted(word: str) -> str:
    """``word`` quoted for the shell, but for the slot a task runs in (``{%}``, filled as
    ``$PARALLEL_JOBSLOT``), which the shell expands."""
    slot = "$PARALLEL_JOBSLOT"
    return '"$PARALLEL_JOBSLOT"'.join(shell_quote(part) if part else ""
                                      for part in word.split(slot)) or "''"


def command_key(argv: Sequence[str]) -> tuple[str, ...]:
    """What tasks learn sizes from: the program (``argv[0]``), and for an
    interpreter (python, sh, perl, ...) also its script, the first argument
    not starting with ``-``; ``python a.py 1`` and ``python a.py 2`` share."""
    prog = argv[0]
    if _INTERPRETERS.match(os.path.basename(prog)):
        script = next((a for a in argv[1:] if not a.startswith("-")), None)
        if script is not None:
            return (prog, script)
    return (prog,)

