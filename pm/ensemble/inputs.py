"""GNU parallel's input sources and replacement strings, for ``pmrun --tasks``.

Input sources follow the command (``pmrun CMD ::: A B``) or the tasks file
(``pmrun --tasks FILE ::: A B``):

``::: A B ...``
    the arguments themselves;
``:::: FILE ...``
    each file a source of its own, one argument a line (``-``: standard input).

Several sources give every combination, the last source changing fastest.  A
separator followed by ``+`` (``:::+``, ``::::+``) pairs its source with the one
before it instead: ``::: a b :::+ 1 2`` gives ``a 1`` and ``b 2`` (pairs stop at
the shorter source).

Each combination fills a task's line once.  Replacement strings: ``{}`` every
argument, ``{.}`` without its extension, ``{/}`` its base name, ``{//}`` its
directory, ``{/.}`` its base name without extension; ``{N}``, ``{N.}``, ``{N/}``,
``{N//}``, ``{N/.}`` the same for the Nth source's argument only; ``{#}`` the
task's number (from 1); ``{%}`` its job slot (from 1, a slot no other running
task holds), which the line reads from ``$PARALLEL_JOBSLOT``.  With ``--colsep
REGEX`` each argument is split into columns first, and ``{N}`` names the Nth column
(:func:`split_columns`).  Arguments are shell-quoted.  A line without any replacement
string gets the arguments appended.  Without sources, a line is run as written (braces
and all).  GNU parallel's ``--plus`` adds its further replacement strings (:class:`Plus`).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from pm.proto.errors import UsageError

_STANDARD = r"(?P<seq>#)|(?P<slot>%)|(?P<n>-[1-9]\d*|\d*)(?P<how>//|/\.|/|\.)?"
#: GNU parallel's ``{= perl expression =}`` (``{=2 ... =}``: of source 2), the shortest.
_PERL = r"\{=(?P<ppos>-?[1-9]\d*)?(?P<perl>(?:(?!\{=)[\s\S])*?)=\}"
_REPLACE = re.compile(_PERL + r"|\{(?:" + _STANDARD + r")\}")
#: A line's words and the blanks between them, a ``{= perl expression =}`` (blanks and all)
#: part of its word (``-X`` repeats a word per argument).
_WORDS = re.compile(r"(?:" + _PERL + r"|\S)+|\s+")
#: GNU parallel's ``--plus`` strings (its ``%Global::plus``), after the standard ones: an
#: operation on an argument (``op``, of source ``pn`` if given), or a job's figure.
_PLUS = re.compile(_PERL + r"|\{(?:" + _STANDARD
                   + r"|(?P<job>##|0#|0%|slot|host|sshlogin)|(?P<pn>-[1-9]\d*|\d*)(?P<op>"
                   r"\+/|\+\.\.\.|\+\.\.|\+\.|\.\.\.|\.\.|/\.\.\.|/\.\."
                   r"|:-[^}]+?|:\d+?:\d+?|:\d+?|##[^#}][^}]*?|#[^#}][^}]*?|%%[^}]+?|%[^}]+?"
                   r"|//[^}]+?/[^}]*?|/#[^}]+?/[^}]*?|/%[^}]+?/[^}]*?|/[^#%}/]+?/[^}]*?"
                   r"|\^\^[^}]+?|\^[^}]+?|,,[^}]+?|,[^}]+?))\}")


class Plus(NamedTuple):
    """GNU parallel's ``--plus``: what its job-wide strings need, the number of jobs
    (``{##}``, and ``{0#}``'s width) and of job slots (``{0%}``'s width).

    Paths: ``{+/}`` the directory, ``{+.}`` the extension, ``{+..}``/``{+...}`` the last
    two/three, ``{..}``/``{...}`` the argument without them, ``{/..}``/``{/...}`` its base
    name without them; ``{##}`` the number of jobs, ``{0#}`` and ``{0%}`` the job's number
    and slot zero-padded, ``{slot}`` the slot, ``{host}`` and ``{sshlogin}`` the host it
    runs on.  As bash's parameter expansion, with
    regular expressions: ``{:-STR}`` STR for an empty argument, ``{:N}`` without its
    first N characters, ``{:P:L}`` L from P, ``{#RE}``/``{##RE}`` without the shortest /
    longest prefix RE matches, ``{%RE}``/``{%%RE}`` the same for a suffix, ``{/RE/STR}``
    the first match replaced (``{//RE/STR}`` every one, ``{/#RE/STR}`` at the start,
    ``{/%RE/STR}`` at the end), ``{^RE}``/``{^^RE}`` upper case at the start / every
    match, ``{,RE}``/``{,,RE}`` lower case.  A source's number may come first:
    ``{2%.gz}``."""

    total: int
    slots: int


def combinations(words: Sequence[str], read: Callable[[str], str],
                 delimiter: str | None = None, names: list[str] | None = None, *,
                 shape: Callable[[list[str]], list[str]] | None = None, link: bool = False,
                 separators: tuple[str, str] = (":::", "::::"), skip_first: bool = False
                 ) -> list[tuple[str, ...]]:
    """The argument tuples of the input sources in ``words`` (which start with a
    separator); ``read(path)`` gives a ``::::`` file's text, an argument a line (or
    ending with ``delimiter``: GNU parallel's ``-0``, ``-d``).  ``names`` (GNU
    parallel's ``--header :``): each source's first argument is its name, appended
    there instead.  ``shape``: what becomes of each source's arguments (:func:`shaping`);
    ``link`` (``--link``): every source paired with the others, a shorter one starting
    over; ``separators``: the words before arguments and before files (``:::``,
    ``::::``; each with ``+``: linked); ``skip_first`` (GNU parallel's
    ``--skip-first-line``): the first source's first argument is none, whatever its kind.
    A source without arguments (``CMD :::``) gives no combination, or beside others one
    empty argument, as GNU parallel's.  :class:`UsageError` for a ``+`` source with nothing
    before it or a file that cannot be read."""
    args_sep, files_sep = separators
    starts = {args_sep, args_sep + "+", files_sep, files_sep + "+"}
    groups: list[list[list[str]]] = []  # sources paired with each other, in order
    i = 0
    while i < len(words):
        sep = words[i]
        j = i + 1
        while j < len(words) and words[j] not in starts:
            j += 1
        given = list(words[i + 1 : j])
        files = sep in (files_sep, files_sep + "+")
        # (A separator without arguments, or files, gives a source without any: GNU
        # parallel's ``CMD :::`` runs nothing.)
        sources = ([_lines(path, read, delimiter) for path in given] if files
                   else [given]) if given else [[]]
        if skip_first and i == 0:
            sources[0] = sources[0][1:]
        if names is not None:
            for path, source in zip(given if files and given else [sep], sources, strict=True):
                if len(source) < 2:
                    raise UsageError(f"--header: {sep} {path if files else ''}".rstrip()
                                     + " has a name but no argument")
                names.append(source.pop(0))
        if shape is not None:
            sources = [shape(source) for source in sources]
        if link and groups:
            groups[0].extend(sources)
        elif sep.endswith("+"):
            if not groups:
                raise UsageError(f"{sep} pairs its source with the one before it: there is none")
            groups[-1].extend(sources)
        else:
            groups.append(sources[:1])
            groups.extend([s] for s in sources[1:])
        i = j
    if all(not s for group in groups for s in group):
        return []  # (none has arguments: no task)
    # A source without arguments beside others with some: one empty argument, as parallel's.
    groups = [[s or [""] for s in group] for group in groups]
    if link and groups:
        every = groups[0]
        longest = 0 if not all(every) else max(map(len, every))
        return [tuple(s[i % len(s)] for s in every) for i in range(longest)]
    rows = [list(zip(*group, strict=False)) for group in groups]  # pairs: the shorter
    return [tuple(arg for row in combo for arg in row) for combo in itertools.product(*rows)]


def shaping(eof: str | None = None, trim: str = "n", no_empty: bool = False,
            join_blank: bool = False) -> Callable[[list[str]], list[str]] | None:
    """What GNU parallel's ``-E STR`` (a source ends at STR), ``--trim`` (white space
    stripped: ``l``, ``r``, ``lr``), ``-r`` (arguments of white space only skipped) and
    ``-L`` (``join_blank``: an argument that ends in a space or a tab goes on with the next)
    do to a source's arguments; None for none of them."""
    strip = {"l": str.lstrip, "r": str.rstrip, "lr": str.strip, "rl": str.strip}.get(trim)
    if eof is None and strip is None and not no_empty and not join_blank:
        return None

    def shape(args: list[str]) -> list[str]:
        if join_blank:
            args = joined(args)
        if eof is not None and eof in args:
            args = args[: args.index(eof)]
        if no_empty:
            args = [a for a in args if a.strip()]
        return [strip(a) for a in args] if strip is not None else args

    return shape


def joined(args: list[str]) -> list[str]:
    """GNU parallel's ``-L``: each argument that ends in a space or a tab with the next."""
    out: list[str] = []
    carry = ""
    for arg in args:
        arg = carry + arg
        carry = arg if arg.endswith((" ", "\t")) else ""
        if not carry:
            out.append(arg)
    if carry:
        out.append(carry)
    return out


def chunked(combos: Sequence[tuple[str, ...]], n: int) -> list[tuple[str, ...]]:
    """GNU parallel's ``-N n``: one input source's arguments ``n`` at a time, the last
    group perhaps shorter (its ``{k}`` beyond it empty: :func:`fill`'s ``width``); ``n``
    0: a task per argument, which its line does not get.  :class:`UsageError` when the
    arguments come from several sources."""
    if any(len(c) != 1 for c in combos):
        raise UsageError(f"-N {n} takes the arguments of one input source, "
                         f"not of {max(map(len, combos))}")
    if n == 0:
        return [()] * len(combos)
    return [tuple(a for (a,) in combos[i : i + n]) for i in range(0, len(combos), n)]


#: Linux's MAX_ARG_STRLEN: the most bytes one string of a program's arguments may have, its
#: NUL included (32 pages); a task's line is one (``sh -c LINE``), and exec refuses a
#: longer one ("Argument list too long").
MAX_ARG_STRLEN = 32 * 4096
#: Room in ARG_MAX kept for what a task's exec adds to its environment and its argv besides
#: the line: pmrun's variables (``PARALLEL_SEQ``...), the shell's path, ``nice -n N``.
EXEC_MARGIN = 4096


def line_limit(env: Mapping[str, str], most: int | None = None) -> int:
    """The most bytes a task's command line (the string its shell's ``-c`` gets) may have
    when it runs with ``env``: under Linux's :data:`MAX_ARG_STRLEN`, and with the
    environment (a string and a pointer each) under ``ARG_MAX``; ``most``: GNU parallel's
    ``-s N`` (``--max-chars``: N bytes with the line's NUL)."""
    try:
        arg_max = os.sysconf("SC_ARG_MAX")
    except (OSError, ValueError):
        arg_max = 1 << 21
    used = sum(len(os.fsencode(k)) + len(os.fsencode(v)) + 2 + 8 for k, v in env.items())
    limit = min(MAX_ARG_STRLEN - 1, arg_max - used - EXEC_MARGIN)
    return max(1, min(limit, most - 1)) if most is not None else max(1, limit)


def spread(combos: Sequence[tuple[str, ...]], slots: int, option: str,
           budget: int = MAX_ARG_STRLEN - 1) -> list[tuple[str, ...]]:
    """GNU parallel's ``-m``/``-X``: one input source's arguments in groups spread evenly
    over the ``slots`` job slots (``--xargs``, ``slots`` 0: as many in one group as fit),
    a group never longer than ``budget`` bytes of arguments (each quoted for the shell,
    and a blank before it: what the line's length grows by; :func:`line_limit` less the
    command's, and a line still too long is cut again once filled:
    :func:`pm.ensemble.taskspec.with_arguments`).  :class:`UsageError` when the
    arguments come from several sources (``option`` names the option then)."""
    if any(len(c) != 1 for c in combos):
        raise UsageError(f"{option} takes the arguments of one input source, "
                         f"not of {max(map(len, combos))}")
    args = [a for (a,) in combos]
    per = -(-len(args) // slots) if slots > 0 else len(args)
    groups: list[tuple[str, ...]] = []
    for i in range(0, len(args), max(per, 1)):
        group: list[str] = []
        size = 0
        for arg in args[i:i + per]:
            cost = len(os.fsencode(shell_quote(arg))) + 1
            if group and size + cost > budget:
                groups.append(tuple(group))
                group, size = [], 0
            group.append(arg)
            size += cost
        groups.append(tuple(group))
    return groups


def in_context(line: str, args: Sequence[str], seq: int, width: int = 0,
               plus: Plus | None = None, total: int = 0) -> str:
    """GNU parallel's ``-X``: each word of ``line`` that holds an argument's replacement
    string (``pic{}.jpg``) once per argument, side by side; the arguments appended when
    there is none."""
    pattern = _PLUS if plus is not None else _REPLACE

    def per_argument(text: str) -> bool:
        return any(not (m["seq"] or m["slot"] or (plus is not None and m["job"]))
                   for m in pattern.finditer(text))

    if not per_argument(line):
        return fill(line, args, seq, width=width, plus=plus, total=total)
    out = []
    for word in (m.group(0) for m in _WORDS.finditer(line)):
        if per_argument(word):
            word = " ".join(fill(word, [a], seq, width=width, plus=plus, total=total)
                            for a in args)
        elif pattern.search(word):
            word = fill(word, args, seq, width=width, plus=plus, total=total)
        out.append(word)
    return "".join(out)


def split_columns(combos: Sequence[tuple[str, ...]], colsep: str, csv_rows: bool = False
                  ) -> list[tuple[str, ...]]:
    """``--colsep``: each argument split into columns where the regular expression
    ``colsep`` matches (the columns are the sources ``{1}``, ``{2}``... name).
    ``csv_rows`` (GNU parallel's ``--csv``): each argument a CSV row, ``colsep`` its
    one-character separator, a quoted field one column whatever it holds."""
    if csv_rows:
        import csv

        delim = {"\\t": "\t"}.get(colsep, colsep)
        if len(delim) != 1:
            raise UsageError(f"--csv: --colsep is the one character between the fields, "
                             f"not {colsep!r}")
        try:
            return [tuple(col for arg in combo
                          for col in next(csv.reader([arg], delimiter=delim), [""]))
                    for combo in combos]
        except csv.Error as exc:
            raise UsageError(f"--csv: {exc}") from None
    sep = re.compile(colsep)
    return [tuple(col for arg in combo for col in sep.split(arg)) for combo in combos]


#: A --rpl tag's parts: what comes before its first ``(``, the group regexp, what follows.
_RPL_TAG = re.compile(r"([^(]*)(\(.*\))?([^)]*)", re.S)
_PERL_ONLY = re.compile(_PERL)


def rpl_rule(value: str, opt: str) -> str:
    """One ``--rpl 'TAG PERL'`` (GNU parallel's replacement string of the user's own), as
    written; :class:`UsageError` without its two parts."""
    tag, expr = _rpl_parts(value)
    if not tag or not expr.strip():
        raise UsageError(f"{opt} {value!r}: give the string and its perl expression, "
                         "e.g. --rpl '{..} s:\\.[^.]+$::'")
    try:
        re.compile(_rpl_pattern(tag))
    except re.error as exc:
        raise UsageError(f"{opt} {value!r}: {tag} is not a regular expression's: {exc}"
                         ) from None
    return value


def with_rpl(text: str, rules: Sequence[str]) -> str:
    """``text`` with each ``--rpl`` rule's TAG (outside any ``{= =}``) as ``{= PERL =}``, the
    longest first; ``{N`` before the rest of a TAG that starts with ``{`` its positional
    form, ``{=N PERL =}``; a TAG's ``(regexp)`` groups are ``$$1``, ``$$2``... in PERL
    (GNU parallel's ``--rpl``)."""
    for tag, expr in sorted(map(_rpl_parts, rules), key=lambda r: -len(r[0])):
        repl = _as_perl(expr)
        text = _outside_perl(text, re.compile(_rpl_pattern(tag)), repl)
        if tag.startswith("{"):
            text = _outside_perl(
                text, re.compile(r"\{(?P<pos>-?\d+)\s*" + _rpl_pattern(tag[1:])), repl)
    return text


def _as_perl(expr: str) -> Callable[[re.Match[str]], str]:
    """The ``{= PERL =}`` a match of a --rpl TAG stands for: its ``(regexp)`` groups given to
    PERL as ``$$1``, ``$$2``... (parallel's ``$_pAr_gRpN``), its position (``{N TAG}``) kept."""
    code = re.sub(r"\$\$(\d+)", r"$_pAr_gRp\1", expr)

    def repl(m: re.Match[str]) -> str:
        positional = "pos" in m.re.groupindex
        groups = [g for g in m.groups()[1 if positional else 0:] if g is not None]
        given = "".join(f'$_pAr_gRp{i} = "{_perl_quoted(g)}";'
                        for i, g in enumerate(groups, start=1))
        return "{=" + (m["pos"] if positional else "") + " " + given + code + "=}"

    return repl


def _rpl_parts(rule: str) -> tuple[str, str]:
    """A --rpl rule's TAG and PERL (split at its first blank, as parallel's)."""
    parts = re.split(r"\s", rule.lstrip(), maxsplit=1)
    return parts[0], parts[1] if len(parts) > 1 else ""


def _rpl_pattern(tag: str) -> str:
    m = _RPL_TAG.fullmatch(tag)
    prefix, group, postfix = m.groups() if m else (tag, None, "")
    return re.escape(prefix) + (group or "") + re.escape(postfix)


def _outside_perl(text: str, pattern: re.Pattern[str],
                  repl: Callable[[re.Match[str]], str]) -> str:
    """``pattern`` replaced by ``repl`` in ``text``, except inside its ``{= =}``."""
    out, at = [], 0
    for m in _PERL_ONLY.finditer(text):
        out += [pattern.sub(repl, text[at:m.start()]), m.group(0)]
        at = m.end()
    return "".join([*out, pattern.sub(repl, text[at:])])


def _perl_quoted(value: str) -> str:
    """``value`` inside a perl double-quoted string (parallel's ``perl_quote_scalar``)."""
    return re.sub(r'[\\"$@]', lambda m: "\\" + m.group(0), value)


def has_replacement(text: str, plus: bool = False) -> bool:
    """Whether ``text`` holds a replacement string (``{}``, ``{1.}``, ``{#}``...; with
    ``plus``, GNU parallel's ``--plus`` ones too)."""
    return (_PLUS if plus else _REPLACE).search(text) is not None


def by_name(line: str, names: Sequence[str]) -> str:
    """``line`` with ``{NAME}`` (and ``{NAME.}``, ``{NAME/}``...) written ``{N}``, N the
    place of NAME among the sources' (or columns') ``names`` (``--header :``)."""
    places = {name: k for k, name in enumerate(names, 1) if name and not name.isdecimal()}
    if not places:
        return line
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, sorted(places, key=len, reverse=True)))
                         + r")(//|/\.|/|\.)?\}")
    return pattern.sub(lambda m: f"{{{places[m[1]]}{m[2] or ''}}}", line)


def _lines(path: str, read: Callable[[str], str], delimiter: str | None) -> list[str]:
    try:
        text = read(path)
    except OSError as exc:
        raise UsageError(f":::: {path}: {exc.strerror or exc}") from None
    if delimiter is None:
        return input_lines(text)
    items = text.split(delimiter)
    return items[:-1] if items and items[-1] in ("", "\n") else items  # (the last one's end)


def input_lines(text: str) -> list[str]:
    """The arguments of an input's ``text``, one a line as GNU parallel reads them: cut at
    ``\n`` alone (a carriage return, a form feed, U+2028... are an argument's own bytes,
    a CRLF line's ``\r`` too), the last line's end optional."""
    items = text.split("\n")
    if items[-1] == "":
        items.pop()
    return items


def _edit(value: str, how: str | None) -> str:
    if not how:
        return value
    if how == ".":
        return os.path.splitext(value)[0]
    base = value.rsplit("/", 1)[-1]
    if how == "/":
        return base
    if how == "/.":
        return os.path.splitext(base)[0]
    return os.path.dirname(value) or "."  # "//"


_UNSAFE = re.compile(r"[^-_.+a-zA-Z0-9/]")


def shell_quote(word: str) -> str:
    """``word`` as the shell reads it back, quoted as GNU parallel quotes it (so that
    ``-v`` prints the same line): in single quotes unless it is only letters, digits
    and ``-_.+/``; a ``'`` as ``'"'"'``, without an empty ``''`` at either end."""
    if not word:
        return "''"
    if not _UNSAFE.search(word):
        return word
    quoted = "'" + word.replace("'", "'\"'\"'") + "'"
    quoted = quoted.removeprefix("''")
    return quoted[:-2] if quoted.endswith("''") else quoted


def fill(line: str, args: Sequence[str], seq: int, quote: bool = True, width: int = 0,
         plus: Plus | None = None, between: str = " ", total: int = 0) -> str:
    """``line`` with its replacement strings filled from ``args`` (one combination) for
    the task numbered ``seq``; without any, the arguments appended.  ``{N}`` beyond the
    sources is empty, as GNU parallel's; :class:`UsageError` for one beyond ``width``
    (``-N``'s count; its ``{N}`` beyond a shorter last group are empty).  ``quote=False``
    (a ``--tagstring``): the arguments as they are, and nothing appended.  ``plus``: GNU
    parallel's ``--plus`` strings too.  ``between``: what goes between the arguments a
    string stands for (``{}`` of several sources).  ``total``: the number of tasks
    (``{= total_jobs() =}``); :class:`~pm.ensemble.perl_expr.Skipped` when an expression
    leaves the task out."""
    q = shell_quote if quote else str
    used = False

    def one(m: re.Match[str]) -> str:
        nonlocal used
        used = True
        if m["seq"]:
            return str(seq)
        if m["slot"]:
            return "$PARALLEL_JOBSLOT"
        op = None
        perl = m["perl"]
        if plus is not None and perl is None:  # (the groups of _PLUS)
            if m["job"]:
                return _job_string(m["job"], seq, plus)
            op = m["op"]
        values = args
        n = m["ppos"] if perl is not None else m["pn"] if op else m["n"]
        if n:
            k = int(n)
            if k < 0:  # {-1}: the last argument, {-2} the one before (GNU parallel's)
                if -k > len(args):
                    return ""  # (before the first: as GNU parallel's, empty)
                k += len(args) + 1
            if width and k > width:
                raise UsageError(f"{m[0]} names argument {k}: -N {width} gives {width}")
            if k > len(args):
                return ""  # a source beyond the given ones, -N's last group shorter: as
                # GNU parallel's, empty
            values = args[k - 1 : k]
        if perl is not None:
            return between.join(_perl_value(perl, v, args, seq, total, q) for v in values)
        if op:
            return between.join(q(_plus_edit(v, op, m[0])) for v in values)
        return between.join(q(_edit(v, m["how"])) for v in values)

    out = (_PLUS if plus is not None else _REPLACE).sub(one, line)
    # (Appended after a space even when there are none, -N0's: GNU parallel's line.)
    return out if used or not quote else line + " " + " ".join(map(q, args))


def _perl_value(expr: str, arg: str, args: Sequence[str], seq: int, total: int,
                q: Callable[[str], str]) -> str:
    """``{= expr =}`` of ``arg`` (:mod:`pm.ensemble.perl_expr`), quoted by ``q`` unless the
    expression said ``uq()``."""
    from pm.ensemble.perl_expr import PERL, Skipped

    value = PERL.value(expr, arg, list(args), seq, total)
    if value.skip:
        raise Skipped
    return value.text if value.unquoted else q(value.text)


def _job_string(what: str, seq: int, plus: Plus) -> str:
    """``{##}``, ``{0#}``, ``{0%}``, ``{slot}``, ``{host}``, ``{sshlogin}`` for the task
    numbered ``seq`` (the slot and the host are the shell's to read: ``$PARALLEL_JOBSLOT``,
    ``$PARALLEL_SSHHOST``, ``$PARALLEL_SSHLOGIN``)."""
    if what == "##":
        return str(plus.total)
    if what == "0#":
        return str(seq).zfill(len(str(max(plus.total, 1))))
    if what == "0%":
        return f'$(printf %0{len(str(max(plus.slots, 1)))}d "$PARALLEL_JOBSLOT")'
    if what == "host":
        return "${PARALLEL_SSHHOST}"
    if what == "sshlogin":
        return "${PARALLEL_SSHLOGIN}"
    return "${PARALLEL_JOBSLOT}"  # {slot}


#: ``--plus``'s path strings: (a pattern, what of its match stays; None: the argument
#: without the match), and the value when the pattern does not match.
_PATHS: dict[str, tuple[str, int | None, str | None]] = {
    "+/": (r"/[^/]*$", None, ""),
    "+.": (r"^.*\.", None, ""),
    "+..": (r"^.*\.([^/.]*\.[^/.]*)$", 1, ""),
    "+...": (r"^.*\.([^/.]*\.[^/.]*\.[^/.]*)$", 1, ""),
    "..": (r"\.[^/.]*\.[^/.]*$", None, None),
    "...": (r"\.[^/.]*\.[^/.]*\.[^/.]*$", None, None),
}


def _plus_edit(value: str, op: str, written: str) -> str:
    """``value`` as the ``--plus`` operation ``op`` makes it (:class:`Plus`); ``written``:
    the whole replacement string, for the line that refuses a bad regular expression."""
    try:
        return _plus_apply(value, op)
    except re.error as exc:
        raise UsageError(f"{written}: not a regular expression ({exc})") from None


def _plus_apply(value: str, op: str) -> str:
    if op in ("/..", "/..."):
        return _plus_apply(value.rsplit("/", 1)[-1], op[1:])
    if op in _PATHS:
        pattern, keep, otherwise = _PATHS[op]
        m = re.search(pattern, value)
        if m is None:
            return value if otherwise is None else otherwise
        return m[keep] if keep is not None else value[: m.start()] + value[m.end():]
    if op.startswith(":-"):
        return value or op[2:]
    if op.startswith(":"):
        start, _, length = op[1:].partition(":")
        return value[int(start): int(start) + int(length)] if length else value[int(start):]
    if op.startswith("##"):
        return re.sub(f"^(?:{op[2:]})", "", value, count=1)
    if op.startswith("#"):
        return re.sub(f"^(?:{_lazy(op[1:])})", "", value, count=1)
    if op.startswith("%%"):
        return re.sub(f"(?:{op[2:]})$", "", value, count=1)
    if op.startswith("%"):
        return re.sub(f"^(.*)(?:{_lazy(op[1:])})$", r"\1", value, count=1)
    for lead, anchor, count in (("//", "{}", 0), ("/#", "^(?:{})", 0), ("/%", "(?:{})$", 0),
                                ("/", "{}", 1)):
        if op.startswith(lead):
            pattern, _, text = op[len(lead):].partition("/")
            return re.sub(anchor.format(pattern), _literal(text), value, count=count)
    upper = op.startswith("^")
    every = op.startswith(("^^", ",,"))
    pattern = op[2:] if every else op[1:]
    return re.sub(pattern if every else f"^(?:{pattern})",
                  _upper if upper else _lower, value, count=0 if every else 1)


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A replacement that is ``text`` as written (no group references)."""
    return lambda _m: text


def _upper(m: re.Match[str]) -> str:
    return m[0].upper()


def _lower(m: re.Match[str]) -> str:
    return m[0].lower()


def _lazy(pattern: str) -> str:
    """``pattern`` with its repetitions (``*``, ``+``, ``?``, ``{m,n}``) matching as little as
    they can (GNU parallel's ``{#RE}`` and ``{%RE}``: the shortest prefix or suffix)."""
    out: list[str] = []
    escaped = in_class = False
    for i, ch in enumerate(pattern):
        out.append(ch)
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
        elif ch in "*+?}" and pattern[i + 1: i + 2] != "?" and not (
                ch == "?" and i > 0 and pattern[i - 1] in "*+?}("):
            out.append("?")
    return "".join(out)
