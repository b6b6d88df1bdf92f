"""Simulated ranks: each agent emulates R ranks in-process (scale studies).

``pmrun --local-nodes M --sim-ranks-per-node R`` runs no program.  Each agent
plays R ranks that go through an MPI-like start-up by calling the very
:class:`pm.agent.node.JobAgent` methods a PMI session calls, so the agent, the
tree, the collectives and the KVS do their real work for M x R ranks; only the
rank processes and their sockets are left out.

One simulated rank:

1. ``init``, then a *start barrier* (a real tree barrier): every agent is up
   and every rank alive, so what follows measures the exchange and not how
   long the last agent took to boot;
2. put its address (``--sim-value-size`` bytes, 64 by default) under the key
   ``addr``, then an allgather of that address (or a fence);
3. get a few peers' addresses on demand (direct gets through the tree when the
   peer lives on another node): its left and right neighbours and the first
   rank of the next node by default;
4. check every value it saw, finalize, and exit 0 (1 with "saw a wrong value
   for rank X" when a value is not what that rank put).  ``PM_SIM_CORRUPT=R``
   makes rank R put a wrong address, to see the checks fail.

Ranks are driven by callbacks on the agent's futures, not by one task each,
so 1,024 ranks per agent cost little more than the agent's own bookkeeping.
The exchange time runs from the first rank leaving the start barrier to the
last rank's finalize; it travels up in ``Done`` stats (``stats["sim"]``) and
the head prints one summary line.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from pm.agent.rank_proc import RankLife
from pm.agent.watch import ExitStatus
from pm.proto.native import rank_key
from pm.proto.tree_wire import ALLGATHER, BARRIER, FENCE

if TYPE_CHECKING:
    import asyncio

    from pm.agent.node import JobAgent
    from pm.jobspec import JobSpec

#: argv of the placeholder program of a simulated job (never started).
SIM_ARGV = ["<sim>"]
#: The key every simulated rank puts its address under.
KEY = b"addr"
#: Peers a rank may get from: ring neighbours, first rank of the next node,
#: the rank half the job away (a remote get per rank: expensive by design).
PEER_KINDS = ("left", "right", "leader", "far")
DEFAULT_GETS = ("left", "right", "leader")
#: Environment variable naming a rank that puts a wrong address (to see the checks fail).
CORRUPT_ENV = "PM_SIM_CORRUPT"


@dataclass(frozen=True, slots=True)
class SimOptions:
    """What each simulated rank does (``JobPlan.sim``)."""

    ranks_per_node: int
    value_size: int = 64
    #: "allgather" (iallgather of the address) or "fence" (put + fence).
    exchange: str = "allgather"
    gets: tuple[str, ...] = DEFAULT_GETS
    #: A rank that puts a wrong address (checks the checks); -1: none.
    corrupt: int = -1

    def to_wire(self) -> dict[str, Any]:
        d = asdict(self)
        d["gets"] = list(self.gets)
        return d

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> SimOptions:
        return cls(int(d["ranks_per_node"]), int(d.get("value_size", 64)),
                   str(d.get("exchange", "allgather")),
                   tuple(d.get("gets", DEFAULT_GETS)), int(d.get("corrupt", -1)))


#: The most simulated ranks of a job (a job's most ranks), and bytes of each one's value
#: (a real address is a few hundred; each of 256 value patterns holds one).
MOST_SIM_RANKS = 1 << 24
MOST_SIM_VALUE = 1 << 16


def sim_settings(extra: Mapping[str, str]) -> dict[str, Any]:
    """CLI values (``opts.extra``) -> ``JobPlan.sim``; ValueError names a bad one."""

    def whole(key: str, opt: str, default: int, most: int) -> int:
        text = extra.get(key, str(default))
        if not (text.isascii() and text.isdecimal()):
            raise ValueError(f"{opt} takes a whole number, not {text!r}")
        value = int(text)
        if not 1 <= value <= most:
            raise ValueError(f"{opt} takes 1 to {most}, not {text}")
        return value

    exchange = extra.get("sim_exchange", "allgather")
    if exchange not in ("allgather", "fence"):
        raise ValueError(f"--sim-exchange takes allgather or fence, not {exchange!r}")
    gets = tuple(g for g in extra.get("sim_gets", ",".join(DEFAULT_GETS)).split(",") if g)
    bad = [g for g in gets if g not in PEER_KINDS]
    if bad:
        raise ValueError(f"--sim-gets: unknown peer {bad[0]!r} (choose from "
                         f"{', '.join(PEER_KINDS)})")
    corrupt = os.environ.get(CORRUPT_ENV, "-1")
    try:
        bad_rank = int(corrupt)
    except ValueError:
        raise ValueError(f"{CORRUPT_ENV} takes a rank, not {corrupt!r}") from None
    return SimOptions(whole("sim_ranks", "--sim-ranks-per-node", 1, MOST_SIM_RANKS),
                      whole("sim_value_size", "--sim-value-size", 64, MOST_SIM_VALUE), exchange,
                      gets, bad_rank).to_wire()


def sim_job(spec: JobSpec, nodes: int, extra: Mapping[str, str]) -> dict[str, Any]:
    """Make ``spec`` a simulated job on ``nodes`` agents; returns ``JobPlan.sim``.

    The job gets one placeholder program (never started) on nodes x R ranks,
    R per node.
    """
    from pm.jobspec import AppSpec

    sim = sim_settings(extra)
    per = int(sim["ranks_per_node"])
    if nodes * per > MOST_SIM_RANKS:
        raise ValueError(f"--sim-ranks-per-node {per} on {nodes} nodes: more than "
                         f"{MOST_SIM_RANKS} ranks")
    spec.apps = [AppSpec(list(SIM_ARGV), nodes * per)]
    spec.ppn = per
    return sim


def peers_of(rank: int, size: int, per_node: int, gets: Sequence[str]) -> list[int]:
    """The ranks ``rank`` gets from (distinct, not itself), in ``gets`` order."""
    out: list[int] = []
    for g in gets:
        if g == "left":
            p = (rank - 1) % size
        elif g == "right":
            p = (rank + 1) % size
        elif g == "leader":
            p = ((rank // per_node + 1) * per_node) % size
        else:
            p = (rank + size // 2) % size
        if p != rank and p not in out:
            out.append(p)
    return out


class ValuePattern:
    """The address rank ``r`` puts, and a fast check of a whole allgather result.

    Byte ``p`` of rank ``r``'s value: the little-endian bytes of ``r`` for
    ``p < 8``, then ``(r + p) & 255``; every rank's value differs (below
    2**64 ranks) and no value is a shifted copy of another.
    """

    #: Up to this many bytes of values, :meth:`prepare` keeps every rank's value
    #: (checking a result is then one list comparison; above it, column by column).
    KEEP_LIMIT = 64 << 20

    def __init__(self, size: int, value_size: int) -> None:
        self.size = size
        self.value_size = value_size
        tail = max(0, value_size - 8)
        self._tails = [bytes((b + p) & 255 for p in range(8, 8 + tail)) for b in range(256)]
        self._all: list[bytes] | None = None

    def value(self, rank: int) -> bytes:
        if self._all is not None:
            return self._all[rank]
        return (rank.to_bytes(8, "little") + self._tails[rank & 255])[: self.value_size]

    def prepare(self) -> None:
        """Compute every rank's value now (before the timed exchange), if not too big."""
        n, s = self.size, self.value_size
        if self._all is not None or n * (s + 40) > self.KEEP_LIMIT:
            return
        if s < 8:
            self._all = [self.value(r) for r in range(n)]
            return
        # Every value at C speed: the tails repeat every 256 ranks, then the
        # 8 bytes of each rank's number go in column by column.
        block = b"".join(bytes(8) + self._tails[r] for r in range(min(n, 256)))
        blob = bytearray(block * (n // 256 + 1))
        del blob[n * s:]
        ids = array("Q", range(n))
        if sys.byteorder != "little":
            ids.byteswap()
        header = ids.tobytes()
        for p in range(8):
            blob[p::s] = header[p::8]
        view = bytes(blob)
        self._all = [view[i:i + s] for i in range(0, n * s, s)]

    def first_wrong(self, values: Sequence[bytes | None]) -> int:
        """The first rank whose entry in ``values`` is wrong, or -1 if all are right."""
        n, s = self.size, self.value_size
        if len(values) != n:
            return min(len(values), n)
        if self._all is not None:
            # One comparison in C (a length check and a memcmp per value).
            return -1 if values == self._all else self._scan(values)
        try:
            blob = b"".join(values)  # type: ignore[arg-type]  # None -> TypeError
        except TypeError:
            return self._scan(values)
        if len(blob) != n * s:
            return self._scan(values)
        # Column by column, at C speed: byte p of every value at once.
        ids = array("Q", range(n))
        if sys.byteorder != "little":
            ids.byteswap()
        header = ids.tobytes()
        low = header[0::8]
        for p in range(s):
            want = header[p::8] if p < 8 else low.translate(_ADD[p & 255])
            if blob[p::s] != want:
                return self._scan(values)
        return -1

    def _scan(self, values: Sequence[bytes | None]) -> int:
        for r, v in enumerate(values):
            if v != self.value(r):
                return r
        return len(values) if len(values) < self.size else -1


#: _ADD[k] maps byte b to (b + k) & 255 (bytes.translate tables; built at C speed).
_ADD = [bytes(range(k, 256)) + bytes(range(k)) for k in range(256)]


class SimRanks:
    """The simulated ranks of one agent; see the module docstring."""

    def __init__(self, agent: JobAgent, opts: SimOptions) -> None:
        self.agent = agent
        self.opts = opts
        self.pattern = ValuePattern(agent.size, opts.value_size)
        self.kind = ALLGATHER if opts.exchange == "allgather" else FENCE
        self.stats: dict[str, Any] = {
            "ranks": 0, "nodes": 1, "wrong": 0, "failed": 0, "first_init": 0.0,
            "first_start": 0.0, "last_done": 0.0, "exchange": opts.exchange,
            "value_size": opts.value_size, "gets": len(opts.gets), "remote_gets": 0,
            "first_wrong": "",
            # Per agent, when it passed each step: [earliest agent, latest agent].
            "phases": {},
        }
        self._contributed = 0
        self._checked: dict[int, int] = {}
        self._results: list[Any] = []  # keeps checked results alive: their ids stay unique
        self._pending: dict[int, int] = {}
        self._wrong: dict[int, int] = {}

    # -- the life of a rank, as callbacks ---------------------------------
    def start(self) -> None:
        agent = self.agent
        # Test-harness work (the values every rank will check) happens before
        # this agent joins the start barrier: it is not part of the exchange.
        self.pattern.prepare()
        self.stats["first_init"] = time.time()
        agent.mark("sim start", ranks=len(agent.local))
        for r in agent.local:
            agent.rank_event(r, "init")
            agent.collective(BARRIER, r, None).add_done_callback(partial(self._go, r))

    def _go(self, rank: int, fut: asyncio.Future[Any]) -> None:
        if self._failed(rank, fut):
            return
        if not self.stats["first_start"]:
            self.stats["first_start"] = time.time()
            self._phase("released")
        agent = self.agent
        value = self.pattern.value(rank)
        if rank == self.opts.corrupt:
            value = bytes([value[0] ^ 0xFF]) + value[1:]
        agent.put(rank, rank_key(rank, KEY), value)
        got = agent.collective(self.kind, rank, value if self.kind == ALLGATHER else None)
        got.add_done_callback(partial(self._exchanged, rank))
        self._contributed += 1
        if self._contributed == len(agent.local):
            self._phase("contributed")

    def _exchanged(self, rank: int, fut: asyncio.Future[Any]) -> None:
        if self._failed(rank, fut):
            return
        if "result" not in self.stats["phases"]:
            self._phase("result")
        if self.kind == ALLGATHER:
            bad = self._check(fut.result())
            if bad >= 0:
                self._wrong.setdefault(rank, bad)
        agent = self.agent
        waiting = 0
        for src in peers_of(rank, agent.size, self.opts.ranks_per_node, self.opts.gets):
            key = rank_key(src, KEY)
            # As a PMI session does: the node's cache first, then a get that may wait.
            value = agent.get_now(key)
            if value is not None:
                if value != self.pattern.value(src):
                    self._wrong.setdefault(rank, src)
                continue
            got = agent.get_from(rank, src, key)
            if got.done():
                self._saw(rank, src, got)
            else:
                waiting += 1
                self.stats["remote_gets"] += 1
                got.add_done_callback(partial(self._got, rank, src))
        if waiting:
            self._pending[rank] = waiting
        else:
            self._finish(rank)

    def _got(self, rank: int, src: int, fut: asyncio.Future[bytes | None]) -> None:
        if self._failed(rank, fut):
            return
        self._saw(rank, src, fut)
        left = self._pending[rank] - 1
        if left:
            self._pending[rank] = left
        else:
            del self._pending[rank]
            self._finish(rank)

    def _saw(self, rank: int, src: int, fut: asyncio.Future[bytes | None]) -> None:
        if not fut.cancelled() and fut.exception() is None and (
                fut.result() == self.pattern.value(src)):
            return
        self._wrong.setdefault(rank, src)

    def _check(self, result: Any) -> int:
        """First wrong rank of an allgather result (checked once per result object)."""
        key = id(result)
        bad = self._checked.get(key)
        if bad is None:
            bad = self.pattern.first_wrong(result) if isinstance(result, list) else 0
            self._checked[key] = bad
            self._phase("checked")
            self._results.append(result)
        return bad

    def _finish(self, rank: int) -> None:
        agent = self.agent
        agent.rank_event(rank, "finalize")
        proc = agent.ranks[rank]
        bad = self._wrong.get(rank)
        if bad is None:
            proc.status = ExitStatus(0, 0)
        else:
            proc.status = ExitStatus(1, 0)
            proc.reason = f"saw a wrong value for rank {bad}"
            self.stats["wrong"] += 1
            if not self.stats["first_wrong"]:
                self.stats["first_wrong"] = f"rank {rank} {proc.reason}"
        self._ended(proc)

    def _failed(self, rank: int, fut: asyncio.Future[Any]) -> bool:
        """A collective or get of ``rank`` failed (the job is ending): the rank ends too."""
        if fut.cancelled():
            why = "cancelled"
        else:
            exc = fut.exception()
            if exc is None:
                return False
            why = str(exc)
        proc = self.agent.ranks[rank]
        if proc.life is RankLife.REPORTED:
            return True
        if self.agent.killing:
            proc.status = ExitStatus(0, signal.SIGTERM)  # as a killed process would
        else:
            proc.status = ExitStatus(1, 0)
            proc.reason = f"start-up failed: {why}"
        self.stats["failed"] += 1
        self._pending.pop(rank, None)
        self._ended(proc)
        return True

    def _ended(self, proc: Any) -> None:
        self.stats["ranks"] += 1
        self.stats["last_done"] = now = time.time()
        if self.stats["ranks"] == len(self.agent.local):
            self.stats["phases"]["done"] = [now, now]
        self.agent.procs.report(proc)

    def _phase(self, name: str) -> None:
        now = time.time()
        self.stats["phases"][name] = [now, now]


def start_sim(agent: JobAgent) -> SimRanks:
    """Start ``agent``'s simulated ranks (``pm.agent.node_start.start_ranks`` calls this)."""
    opts = SimOptions.from_wire(agent.plan.sim or {"ranks_per_node": agent.plan.sim_ranks})
    sim = SimRanks(agent, opts)
    agent.sim_stats = sim.stats
    sim.start()
    return sim


def merge_stats(own: Mapping[str, Any] | None, children: Sequence[Any]) -> dict[str, Any]:
    """A subtree's sim figures: this agent's and its children's (each may be None)."""
    out: dict[str, Any] = dict(own or {})
    for st in children:
        if not st:
            continue
        if not out:
            out = dict(st)
            continue
        for k in ("ranks", "nodes", "wrong", "failed", "remote_gets"):
            out[k] = out.get(k, 0) + st.get(k, 0)
        for k in ("first_init", "first_start"):
            if st.get(k) and (not out.get(k) or st[k] < out[k]):
                out[k] = st[k]
        out["last_done"] = max(out.get("last_done", 0.0), st.get("last_done", 0.0))
        if not out.get("first_wrong"):
            out["first_wrong"] = st.get("first_wrong", "")
        phases = out["phases"] = dict(out.get("phases") or {})
        for name, (lo, hi) in (st.get("phases") or {}).items():
            mine = phases.get(name)
            phases[name] = [min(lo, mine[0]), max(hi, mine[1])] if mine else [lo, hi]
    return out


def exchange_seconds(stats: Mapping[str, Any]) -> float:
    """From the first rank leaving the start barrier to the last rank's finalize."""
    first, last = stats.get("first_start") or 0.0, stats.get("last_done") or 0.0
    return max(0.0, last - first) if first and last else 0.0


def summary_line(stats: object, size: int, nodes: int) -> str:
    """The one line ``pmrun`` prints at the end of a simulated job (``stats``: Done's "sim")."""
    if not isinstance(stats, Mapping) or not stats:
        return f"pmrun sim: {size} ranks on {nodes} nodes: no figures (the job did not run)"
    ex = exchange_seconds(stats)
    ranks = int(stats.get("ranks", 0))
    per_rank = ex / ranks * 1e6 if ranks else 0.0
    total = stats["last_done"] - stats["first_init"] if stats.get("first_init") else 0.0
    gets = int(stats.get("gets", 0))
    wrong = int(stats.get("wrong", 0))
    line = (f"pmrun sim: {ranks} ranks ({nodes} nodes x {size // max(nodes, 1)}), "
            f"{stats.get('exchange', '?')} of {stats.get('value_size', '?')} B + {gets} gets/rank "
            f"({stats.get('remote_gets', 0)} waited): exchange {ex:.3f} s "
            f"({per_rank:.2f} us/rank), {total:.3f} s from first init; ")
    if wrong or stats.get("failed"):
        line += (f"{wrong} ranks saw a wrong value, {stats.get('failed', 0)} failed"
                 + (f" (first: {stats['first_wrong']})" if stats.get("first_wrong") else ""))
    else:
        line += "all values right"
    return line


def phase_report(stats: object) -> str:
    """When the agents passed each step, from the first release (``pmrun -v`` prints it)."""
    if not isinstance(stats, Mapping) or not stats.get("first_start"):
        return ""
    t0 = stats["first_start"]
    parts = [f"{name} +{(lo - t0) * 1e3:.1f}..+{(hi - t0) * 1e3:.1f} ms"
             for name, (lo, hi) in sorted((stats.get("phases") or {}).items(),
                                          key=lambda kv: kv[1][0])]
    return "pmrun sim: agents passed (earliest..latest): " + ", ".join(parts) + "\n"
