"""The analysis of a ``pmrun --profile`` timeline: Chrome trace events and the breakdown.

See :mod:`pm.common.profile` for the events and the trace layout.  Loaded by the head
once, at the end of a profiled job.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from pm.common.kary_tree import Tree

#: Thread id of an agent's own events (above any rank; sorted first by metadata).
AGENT_TID = 2**31 - 1
KINDS = ("fence", "barrier", "allgather", "ring")
#: Rank events drawn as instants on the rank's thread (collectives are slices).
_RANK_INSTANTS = frozenset(("put", "get", "abort", "get served", "PMI eof",
                            "rank spawned", "PMI init", "finalize", "rank exit"))

Event = Sequence[Any]  # [wall, vertex, rank, what, args]


# ---------------------------------------------------------------- analysis
def _by_rank(events: Iterable[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        if e[2] >= 0:
            out[e[2]].append(e)
    return out


def _first(events: Iterable[Event], what: str) -> float | None:
    times = [e[0] for e in events if e[3] == what]
    return min(times) if times else None


def coll_spans(events: Iterable[Event]) -> list[tuple[str, int, float, float]]:
    """(kind, epoch, in, out) of one rank's collectives, in order of entry."""
    opened: dict[tuple[str, int], float] = {}
    spans = []
    for e in sorted(events, key=lambda e: e[0]):
        what = e[3]
        kind, _, side = what.rpartition(" ")
        if kind not in KINDS or side not in ("in", "out"):
            continue
        key = (kind, int(e[4].get("epoch", 0)))
        if side == "in":
            opened[key] = e[0]
        elif key in opened:
            spans.append((kind, key[1], opened.pop(key), e[0]))
    return sorted(spans, key=lambda s: s[2])


def build_trace(timeline: Sequence[Event], hosts: int = 0) -> dict[str, Any]:
    """Chrome trace-event JSON (as a dict) of a job's timeline."""
    events = sorted(timeline, key=lambda e: e[0])
    if not events:
        return {"traceEvents": [], "displayTimeUnit": "ms"}
    t0 = _origin(events)

    def us(t: float) -> float:
        return round((t - t0) * 1e6, 1)

    out: list[dict[str, Any]] = []
    vertices = sorted({int(e[1]) for e in events} | set(range(hosts)))
    for v in vertices:
        out.append({"ph": "M", "name": "process_name", "pid": v, "tid": 0,
                    "args": {"name": f"node {v}"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": v, "tid": 0,
                    "args": {"sort_index": v}})
        out.append({"ph": "M", "name": "thread_name", "pid": v, "tid": AGENT_TID,
                    "args": {"name": "agent"}})
        out.append({"ph": "M", "name": "thread_sort_index", "pid": v, "tid": AGENT_TID,
                    "args": {"sort_index": -1}})

    def slice_(name: str, pid: int, tid: int, start: float, end: float,
               args: dict[str, Any] | None = None) -> None:
        out.append({"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": us(start),
                    "dur": max(0.0, round((end - start) * 1e6, 1)), "args": args or {}})

    def instant(e: Event) -> None:
        out.append({"ph": "i", "s": "t", "name": e[3], "pid": int(e[1]),
                    "tid": AGENT_TID if e[2] < 0 else int(e[2]), "ts": us(e[0]),
                    "args": dict(e[4])})

    # Agent threads: sequential phases as slices, everything else as instants.
    per_vertex: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        if e[2] < 0:
            per_vertex[int(e[1])].append(e)
    for v, evs in per_vertex.items():
        for name, first, then in (("interpreter start-up", "process start", "agent main"),
                                  ("interpreter start-up", "process start", "head start"),
                                  ("waiting for the plan", "agent main", "plan received"),
                                  ("spawning ranks", "spawn start", "ranks spawned")):
            ta, tb = _first(evs, first), _first(evs, then)
            if ta is not None and tb is not None and tb >= ta:
                slice_(name, v, AGENT_TID, ta, tb)
        for e in evs:
            instant(e)
    # Rank threads.
    for rank, evs in sorted(_by_rank(events).items()):
        v = int(evs[0][1])
        out.append({"ph": "M", "name": "thread_name", "pid": v, "tid": rank,
                    "args": {"name": f"rank {rank}"}})
        spawned, init = _first(evs, "rank spawned"), _first(evs, "PMI init")
        fin, gone = _first(evs, "finalize"), _first(evs, "rank exit")
        if spawned is not None and init is not None:
            slice_("launch", v, rank, spawned, init)
        if init is not None and fin is not None:
            slice_("PMI", v, rank, init, fin)
        for kind, epoch, a, b in coll_spans(evs):
            slice_(kind, v, rank, a, b, {"epoch": epoch})
        if fin is not None and gone is not None:
            slice_("exit", v, rank, fin, gone)
        for e in evs:
            if e[3] in _RANK_INSTANTS:
                instant(e)
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"origin_unix_time": t0}}


def _origin(events: Sequence[Event]) -> float:
    """The head's process start if recorded, else the earliest event."""
    head = [float(e[0]) for e in events
            if e[1] == 0 and e[3] in ("process start", "head start")]
    return min(head) if head else min(float(e[0]) for e in events)


def breakdown(timeline: Sequence[Event], hosts: int, fanout: int) -> list[tuple[str, str, str]]:
    """Rows (phase, median, max) of where start-up time went (seconds as text)."""
    events = sorted(timeline, key=lambda e: e[0])
    if not events:
        return []
    t0 = _origin(events)
    rows: list[tuple[str, str, str]] = []

    def row(name: str, values: Sequence[float], note: str = "") -> None:
        if values:
            rows.append((name + (f" ({note})" if note else ""), _s(_median(values)),
                         _s(max(values))))

    agents: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        if e[2] < 0:
            agents[int(e[1])].append(e)
    # Bootstrap counts from the head's first mark (its interpreter start-up is its own row).
    head = _first([e for e in events if e[1] == 0 and e[2] < 0], "head start")
    start = head if head is not None else t0
    connected = [e[0] - start for e in events if e[3] == "agent connected"]
    row("head: interpreter start-up", [start - t0] if head is not None and start > t0 else [])
    row("bootstrap: head start -> agent connected", connected, f"{len(connected)} agents")
    row("  agent interpreter start-up", [
        b - a for evs in agents.values()
        if (a := _first(evs, "process start")) is not None
        and (b := _first(evs, "agent main")) is not None])
    row("spawn: agent spawning its ranks", [
        b - a for evs in agents.values()
        if (a := _first(evs, "spawn start")) is not None
        and (b := _first(evs, "ranks spawned")) is not None])
    ranks = _by_rank(events)
    launch, pmi, waits, exits = [], [], [], []
    by_kind: dict[str, list[float]] = defaultdict(list)
    for evs in ranks.values():
        spawned, init = _first(evs, "rank spawned"), _first(evs, "PMI init")
        fin, gone = _first(evs, "finalize"), _first(evs, "rank exit")
        if spawned is not None and init is not None:
            launch.append(init - spawned)
        if init is not None and fin is not None:
            pmi.append(fin - init)
        spans = coll_spans(evs)
        waits.append(sum(b - a for _k, _e, a, b in spans))
        for k, _e, a, b in spans:
            by_kind[k].append(b - a)
        if fin is not None and gone is not None:
            exits.append(gone - fin)
    row("rank: spawned -> PMI init", launch, f"{len(ranks)} ranks")
    row("PMI exchange: init -> finalize", pmi)
    row("  barrier waits (all collectives) per rank", waits)
    for k in KINDS:
        row(f"    {k}, each", by_kind.get(k, []))
    row("rank: finalize -> exit", exits)
    for depth, (up, down) in sorted(tree_latency(events, hosts, fanout).items()):
        row(f"tree level {depth}: collective up (child -> parent)", up)
        row(f"tree level {depth}: collective down (parent -> child)", down)
    ends = [e[0] - t0 for e in events if e[3] in ("rank exit", "done")]
    if ends:
        rows.append(("total: pmrun start -> last exit", _s(max(ends)), _s(max(ends))))
    return rows


def tree_latency(events: Sequence[Event], hosts: int, fanout: int
                 ) -> dict[int, tuple[list[float], list[float]]]:
    """Per depth of the child: collective message latencies up and down the tree."""
    if hosts < 2:
        return {}
    tree = Tree(hosts, fanout)
    sent_up: dict[tuple[int, str, int], float] = {}
    child_in: dict[tuple[int, str, int], float] = {}
    sent_down: dict[tuple[int, str, int], float] = {}
    result_in: dict[tuple[int, str, int], float] = {}
    for e in events:
        what, a = e[3], e[4]
        if not what.startswith("coll "):
            continue
        key = (int(e[1]), str(a.get("kind")), int(a.get("epoch", 0)))
        if what == "coll up":
            sent_up[key] = e[0]
        elif what == "coll child in":
            child_in[(int(a["child"]), key[1], key[2])] = e[0]
        elif what == "coll down":
            sent_down[key] = e[0]
        elif what == "coll result in":
            result_in[key] = e[0]
    out: dict[int, tuple[list[float], list[float]]] = {}
    for (v, kind, epoch), t_up in sent_up.items():
        parent = tree.parent(v) if 0 <= v < hosts else None
        if parent is None:
            continue
        up, down = out.setdefault(tree.depth(v), ([], []))
        got = child_in.get((v, kind, epoch))
        if got is not None:
            up.append(got - t_up)
        t_sent, t_got = sent_down.get((parent, kind, epoch)), result_in.get((v, kind, epoch))
        if t_sent is not None and t_got is not None:
            down.append(t_got - t_sent)
    return out


def _median(values: Sequence[float]) -> float:
    # Not statistics.median: importing statistics costs agents several ms with --profile.
    xs = sorted(values)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _s(seconds: float) -> str:
    if abs(seconds) < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if abs(seconds) < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_table(rows: Sequence[tuple[str, str, str]]) -> str:
    if not rows:
        return "pmrun profile: no events recorded\n"
    w = max(len(r[0]) for r in rows)
    lines = [f"{'start-up phase':<{w}}  {'median':>10}  {'max':>10}",
             f"{'-' * w}  {'-' * 10}  {'-' * 10}"]
    lines += [f"{name:<{w}}  {med:>10}  {mx:>10}" for name, med, mx in rows]
    return "\n".join(lines) + "\n"


def write_profile(path: str, timeline: object, hosts: int, fanout: int) -> str:
    """Write the Chrome trace of ``timeline`` to ``path``; returns the breakdown table."""
    events: list[Event] = list(timeline) if isinstance(timeline, list) else []
    trace = build_trace(events, hosts)
    with open(path, "w") as f:
        json.dump(trace, f, separators=(",", ":"))
    return (f"pmrun profile: {len(events)} events -> {path}\n"
            + format_table(breakdown(events, hosts, fanout)))
