"""Open MPI's rankfile: each rank's host and the cores it is bound to.

A line is ``rank N=HOST slot=LIST`` (``-rf FILE``, ``--rankfile FILE``, Open MPI 5's
``--map-by rankfile:file=FILE``).  ``HOST`` is a host name or ``+nK``, the K-th host
(from 0) of the job's host list; ``LIST`` names logical cores (``10-12``, ``0,1,4``),
or a package's (``1:0-2``: cores 0 to 2 of package 1; ``0:*``: all of them), each
index counted as hwloc's logical indexes are.  ``#`` starts a comment.  Without
``slot=`` the rank is placed and not bound.

The head reads the file (:func:`parse`, :func:`check_slot`): the ranks' hosts are known
before the plan.  The cores are a node's own: its agent turns a rank's ``slot`` into
its CPUs with the node's topology (:func:`slot_cpus`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

__all__ = ["RankLine", "RankfileError", "check_slot", "parse", "parse_rankmap", "slot_cpus"]


class RankfileError(ValueError):
    """A rankfile pmrun cannot read, or a slot a node cannot give."""


class RankLine(NamedTuple):
    """One rank of a rankfile: its host (``""`` when given as ``+nK``), K, its slot."""

    host: str
    relative: int | None
    slot: str


_LINE = re.compile(r"rank\s+(\d+)\s*=\s*(\S+?)(?:\s+slot\s*=\s*(\S+))?", re.IGNORECASE)
_RELATIVE = re.compile(r"\+n(\d+)")
_ITEM = re.compile(r"(?:(\d+):)?(\*|\d+(?:-\d+)?)")


def check_slot(slot: str) -> str:
    """``slot`` if it reads as a rankfile slot list (pure); :class:`RankfileError` else."""
    items = slot.split(",")
    for i, item in enumerate(items):
        m = _ITEM.fullmatch(item)
        if m is None or (m.group(2) == "*" and m.group(1) is None):
            raise RankfileError(f"slot={slot}: {item!r} is not a core, a range of cores or "
                                "PACKAGE:CORES")
        if m.group(2) == "*" and (len(items) > i + 1 and ":" not in items[i + 1]):
            raise RankfileError(f"slot={slot}: nothing follows {item!r} but another package")
        lo, _, hi = m.group(2).partition("-")
        if hi and int(hi) < int(lo):
            raise RankfileError(f"slot={slot}: the range {m.group(2)} runs backwards")
    return slot


def parse(text: str, where: str = "rankfile") -> list[RankLine]:
    """The ranks of a rankfile, rank 0 first (pure).  :class:`RankfileError` names the line
    of a line that is not a rank, a rank given twice, or a rank missing below the last."""
    found: dict[int, RankLine] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if m is None:
            raise RankfileError(f"{where} line {number}: {line!r} is not 'rank N=HOST "
                                "slot=LIST'")
        rank, host, slot = int(m.group(1)), m.group(2), m.group(3) or ""
        if rank in found:
            raise RankfileError(f"{where} line {number}: rank {rank} is placed twice")
        try:
            check_slot(slot) if slot else None
        except RankfileError as exc:
            raise RankfileError(f"{where} line {number}: {exc}") from None
        rel = _RELATIVE.fullmatch(host)
        found[rank] = RankLine("" if rel else host, int(rel.group(1)) if rel else None, slot)
    if not found:
        raise RankfileError(f"{where}: no rank in the file")
    missing = next((r for r in range(len(found)) if r not in found), None)
    if missing is not None:
        raise RankfileError(f"{where}: rank {missing} is missing (the file places ranks up "
                            f"to {max(found)})")
    return [found[r] for r in range(len(found))]


def _span(text: str) -> range:
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


def slot_cpus(slot: str, cores: Sequence[frozenset[int]],
              packages: Sequence[frozenset[int]]) -> frozenset[int]:
    """The CPUs of a rank's ``slot`` on a node whose cores (PU sets, in logical order) and
    packages are these (pure).  :class:`RankfileError` names a core or package the node
    does not have."""
    out: set[int] = set()
    pool = list(cores)
    where = "on this node"
    for item in check_slot(slot).split(","):
        m = _ITEM.fullmatch(item)
        assert m is not None  # (checked)
        if m.group(1) is not None:
            p = int(m.group(1))
            if p >= len(packages):
                raise RankfileError(f"slot={slot}: package {p} does not exist here (this "
                                    f"node has {len(packages)})")
            pool = [c for c in cores if c <= packages[p]]
            where = f"in package {p}"
        wanted = range(len(pool)) if m.group(2) == "*" else _span(m.group(2))
        for i in wanted:
            if i >= len(pool):
                raise RankfileError(f"slot={slot}: core {i} does not exist {where} "
                                    f"(it has {len(pool)})")
            out |= pool[i]
    return frozenset(out)


def parse_rankmap(text: str) -> tuple[list[int], int | None]:
    """Hydra's ``-rankmap``: each rank's node id, and where the list starts again for
    ranks past its end (the first id 0, as Hydra repeats it; None: it does not).  Node ids
    one for each rank (``1,1,2,2``), blocks ``(FIRST,NODES,RANKS)`` (``(1,2,2)`` is
    ``1,1,2,2``), a group repeated ``[...]xN``, within ``(vector,...)`` or not (pure)."""
    body = text.strip()
    if body.startswith("(vector,") and body.endswith(")"):
        body = body[len("(vector,"):-1]
    pos = 0

    def fail(why: str) -> RankfileError:
        return RankfileError(f"-rankmap {text!r}: {why} (node ids, (FIRST,NODES,RANKS) or "
                             "[...]xN, comma-separated)")

    def items(closing: str) -> list[int]:
        nonlocal pos
        out: list[int] = []

        def room(more: int) -> None:
            if len(out) + more > MOST_RANKMAP:
                raise fail(f"more than {MOST_RANKMAP} ranks")
        while True:
            while pos < len(body) and body[pos] == " ":
                pos += 1
            m = _BLOCK.match(body, pos)
            if m is not None:
                first, nodes, ranks = (int(g) for g in m.groups())
                room(nodes * ranks)
                out += [first + i for i in range(nodes) for _ in range(ranks)]
                pos = m.end()
            elif body.startswith("[", pos):
                pos += 1
                group = items("]")
                m = _TIMES.match(body, pos)
                if m is None:
                    raise fail(f"']' at {pos} needs its count, ']xN'")
                room(len(group) * int(m.group(1)))
                out += group * int(m.group(1))
                pos = m.end()
            else:
                m = _ID.match(body, pos)
                if m is None:
                    raise fail(f"no node id at {pos}")
                out.append(int(m.group(1)))
                pos = m.end()
            while pos < len(body) and body[pos] == " ":
                pos += 1
            if closing and body.startswith(closing, pos):
                return out
            if pos >= len(body):
                if closing:
                    raise fail(f"no '{closing}' closes a group")
                return out
            if body[pos] != ",":
                raise fail(f"{body[pos]!r} at {pos}")
            pos += 1

    ids = items("")
    if not ids:
        raise fail("no node id")
    return ids, ids.index(0) if 0 in ids else None


#: The most ranks a -rankmap lists (a job's most ranks).
MOST_RANKMAP = 1 << 24
_BLOCK = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)")
_TIMES = re.compile(r"\]x(\d+)")
_ID = re.compile(r"(\d+)")
