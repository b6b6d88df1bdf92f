"""Files that hold a command line's programs and options: Hydra's -configfile and
srun's --multi-prog (and the lines of Open MPI's --tune files, read by
:mod:`pm.options.compat`).  Imported when one is given (pmrun's start-up).
"""

from __future__ import annotations

from pm.options.checks import file_text
from pm.options.model import Section
from pm.proto.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (pmrun's start-up)
if TYPE_CHECKING:
    from pm.options.model import Parsed


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
