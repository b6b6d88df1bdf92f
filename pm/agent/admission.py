"""Memory admission, pure: sizes, watermarks and the per-node admission state machine.

Work (a task, a rank's ``reserve`` block) is admitted on a node only while the
node's memory in use plus the unused part of every admitted reservation plus
the new reservation stays at or under the *high* watermark.  Once the node
passes the high watermark it admits nothing until it is back at or under the
*low* one (hysteresis, as in StarPU's submission throttling).

No I/O and no clock here: the probes and the asyncio shell are in
:mod:`pm.agent.memory`, which re-exports everything below.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pm.proto.errors import PMError, ResourceLimit

Ident = Hashable

# ----------------------------------------------------------------------------- sizes


class SizeError(PMError, ValueError):
    """A size or watermark that cannot be understood or does not make sense."""


_UNITS = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(%|[kmgtp](?:ib?|b)?|b|)\s*$", re.IGNORECASE)


def parse_size(text: str, *, total: int | None = None) -> int:
    """Bytes from ``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"1000000"``, ``"4096B"`` or ``"80%"``.

    Units are binary whatever the spelling: K, KB and KiB all mean 1024 (as
    Slurm's ``--mem`` does; memory is sold in binary units).  Case is
    ignored.  A fraction is rounded down to whole bytes.  A percentage (at
    most 100) is of ``total``; without ``total`` it is an error.  Raises
    :class:`SizeError` with the offending text in the message.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise SizeError(
            f"cannot read {text!r} as a size: expected a number with an optional unit "
            f"(K, M, G, T, P, optionally followed by B or iB) or a percentage like '80%'"
        )
    number = Fraction(m.group(1))
    unit = m.group(2).upper()
    if unit == "%":
        if total is None:
            raise SizeError(f"{text!r} is a percentage, but there is no total to take it of")
        if number > 100:
            raise SizeError(f"{text!r} is more than 100 % of the total")
        return int(number * total / 100)
    return int(number * (1024 ** _UNITS[unit[:1] if unit != "B" else ""]))


def parallel_size(text: str) -> int:
    """Bytes from a size as GNU parallel reads it (``--block``, ``--memfree``): K, M, G, T,
    P (and Ki, ki, ..., with or without a B) are binary, k, m, g, t, p decimal: ``100k``
    is 100000 bytes, ``100K`` 102400.  No percentage.  :class:`SizeError` if unreadable."""
    m = _SIZE_RE.match(text)
    if m is None or m.group(2) == "%":
        raise SizeError(f"cannot read {text!r} as a size: expected a number with an optional "
                        "unit (K, M, G, T, P: 1024-based; k, m, g, t, p: 1000-based)")
    unit = m.group(2)
    if unit and unit[0] in "kmgtp" and unit[1:2].lower() != "i":  # decimal: 100k, 2g
        return int(Fraction(m.group(1)) * 1000 ** _UNITS[unit[0].upper()])
    return parse_size(text)


def format_size(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit that keeps it >= 1, one decimal at most."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            text = f"{value:.1f}".removesuffix(".0") if unit != "B" else str(int(value))
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------ watermarks

DEFAULT_HIGH_PERCENT = 90
DEFAULT_LOW_PERCENT = 80


@dataclass(frozen=True)
class Watermarks:
    """The node's high and low watermarks in bytes; requires ``0 <= low < high``.

    Defaults (:meth:`resolve`): high = 90 % and low = 80 % of the node's total
    (the cgroup limit when there is one).  The 10 % left above high absorbs
    what sampling misses between two samples and the agent's own memory; the
    gap between low and high (high x 8/9, the StarPU 16 GB/18 GB ratio) keeps
    admission from flapping at the threshold.
    """

    high: int
    low: int

    def __post_init__(self) -> None:
        if not 0 <= self.low < self.high:
            raise SizeError(
                f"the low watermark ({format_size(self.low)}) must be under the high one "
                f"({format_size(self.high)})"
            )

    @classmethod
    def resolve(
        cls, total: int, high: str | int | None = None, low: str | int | None = None
    ) -> Watermarks:
        """Watermarks from option values (sizes, percentages of ``total``, or None = default).

        When only ``high`` is given, low = high x 8/9.  Raises :class:`SizeError`
        if high > total or low >= high.
        """
        hi = _as_size(high, total) if high is not None else total * DEFAULT_HIGH_PERCENT // 100
        if hi > total:
            raise SizeError(
                f"the high watermark ({format_size(hi)}) is above the node's memory "
                f"({format_size(total)})"
            )
        if low is not None:
            lo = _as_size(low, total)
        elif high is None:
            lo = total * DEFAULT_LOW_PERCENT // 100
        else:
            lo = hi * 8 // 9
        return cls(hi, lo)

    def describe(self, total: int, source: str) -> str:
        """One line for ``-v``: the figures and where the total comes from."""
        return (
            f"memory watermarks: high {format_size(self.high)}, low {format_size(self.low)} "
            f"of {format_size(total)} ({source})"
        )


def _as_size(value: str | int, total: int) -> int:
    return value if isinstance(value, int) else parse_size(value, total=total)


# ------------------------------------------------------------------------- admission


@dataclass(frozen=True)
class Overrun:
    """Admitted work whose measured usage is above the bound it declared."""

    ident: Ident
    bound: int
    measured: int


@dataclass(frozen=True)
class AdmissionReport:
    """A node's admission state, for progress lines and logs."""

    used: int
    reserved: int  # reserved but not yet used: sum of max(0, reservation - measured)
    high: int
    low: int
    blocked: bool
    queued: int
    admitted: int
    overruns: tuple[Overrun, ...]


@dataclass
class _Work:
    reservation: int
    bound: int | None  # declared upper bound; None when the reservation is a guess
    owner: Hashable | None
    measured: int = 0
    peak: int = 0
    peak_at: float | None = None  # when the peak last grew; None until measured

    @property
    def unused(self) -> int:
        return max(0, self.reservation - self.measured)


@dataclass
class _Request:
    ident: Ident
    nbytes: int
    declared: bool
    owner: Hashable | None


class Admission:
    """Pure admission state machine for one node (events in, admitted idents out).

    Rule: queued work is admitted in FIFO order while the node is not blocked
    and ``used + reserved + nbytes <= high``, where ``reserved`` is the sum
    over admitted work of ``max(0, reservation - measured)``.  The node
    becomes *blocked* when ``used + reserved > high`` (it passed the high
    watermark: usage grew beyond the reservations, or something else on the
    node grew) and unblocks only when ``used + reserved <= low``.

    With ``backfill=True`` a request that fits may pass an earlier one that
    does not (a big request can then wait for ever behind a stream of small ones).

    Corrections: a measured figure is a lower bound of what the work will
    need, not an upper one, so by default a reservation only grows
    (``reservation = max(reservation, measured)``); it shrinks when the work
    states its real figure (:meth:`resize`), or, when ``settle`` is set, once
    its peak has not grown for ``settle`` seconds: it then becomes
    ``peak x (1 + margin)`` (right for work that allocates up front).

    Every event returns the idents it admitted, in order.  :meth:`release`
    is idempotent and also withdraws a queued request.
    """

    def __init__(
        self,
        watermarks: Watermarks,
        *,
        used: int = 0,
        backfill: bool = False,
        settle: float | None = None,
        margin: float = 0.1,
    ) -> None:
        self._wm = watermarks
        self._used = used
        self._backfill = backfill
        self._settle = settle
        self._margin = margin
        self._works: dict[Ident, _Work] = {}
        self._queue: deque[_Request] = deque()
        self._blocked = False
        self._now = 0.0  # time of the last sample of work
        self._update_blocked()

    # -- queries
    @property
    def watermarks(self) -> Watermarks:
        return self._wm

    @property
    def used(self) -> int:
        return self._used

    @property
    def reserved(self) -> int:
        return sum(w.unused for w in self._works.values())

    @property
    def blocked(self) -> bool:
        return self._blocked

    @property
    def foreign(self) -> int:
        """Bytes in use that admitted work does not account for (``used`` minus what
        the work measures): the agent, other programs; what work ending cannot free."""
        return max(0, self._used - sum(w.measured for w in self._works.values()))

    @property
    def headroom(self) -> int:
        """``high - used - reserved``; negative when the node is over its high watermark."""
        return self._wm.high - self._used - self.reserved

    def fits(self, nbytes: int) -> bool:
        """Whether a request of ``nbytes`` would be admitted now (ignoring the queue)."""
        return not self._blocked and nbytes <= self.headroom

    def unmeasured_guesses(self) -> int:
        """Admitted work whose reservation is a guess (no declared bound) and whose
        size is not known yet: no sample measured it, or its peak grew at the last
        sample (it may still be allocating)."""
        return sum(w.bound is None and (w.peak_at is None or w.peak_at >= self._now)
                   for w in self._works.values())

    def steady(self, ident: Ident) -> bool:
        """Whether admitted work ``ident`` was measured and its peak did not grow at the
        last sample (what :meth:`unmeasured_guesses` leaves out)."""
        work = self._works.get(ident)
        return work is not None and work.peak_at is not None and work.peak_at < self._now

    def is_admitted(self, ident: Ident) -> bool:
        return ident in self._works

    def is_queued(self, ident: Ident) -> bool:
        return any(r.ident == ident for r in self._queue)

    def reservation(self, ident: Ident) -> int | None:
        work = self._works.get(ident)
        return None if work is None else work.reservation

    def queued(self) -> list[Ident]:
        return [r.ident for r in self._queue]

    def admitted(self) -> list[Ident]:
        return list(self._works)

    def overruns(self) -> list[Overrun]:
        return [
            Overrun(i, w.bound, w.measured)
            for i, w in self._works.items()
            if w.bound is not None and w.measured > w.bound
        ]

    def report(self) -> AdmissionReport:
        return AdmissionReport(
            self._used,
            self.reserved,
            self._wm.high,
            self._wm.low,
            self._blocked,
            len(self._queue),
            len(self._works),
            tuple(self.overruns()),
        )

    # -- events
    def request(
        self, ident: Ident, nbytes: int, *, declared: bool = True, owner: Hashable | None = None
    ) -> bool:
        """Queue ``nbytes`` for ``ident``; True if admitted at once.

        ``declared``: ``nbytes`` is the work's own upper bound (overruns are
        reported against it); False when it is a guess.  ``owner`` groups
        requests for :meth:`release_owner` (e.g. a rank).  Raises ValueError
        for a known ident or a negative size, :class:`ResourceLimit` if
        ``nbytes`` exceeds the high watermark (it could never be admitted).
        """
        if ident in self._works or self.is_queued(ident):
            raise ValueError(f"{ident!r} already holds or waits for a reservation")
        if nbytes < 0:
            raise ValueError(f"negative reservation {nbytes} for {ident!r}")
        if nbytes > self._wm.high:
            raise ResourceLimit(
                f"{ident!r} asks for {format_size(nbytes)}, more than the node's high "
                f"watermark ({format_size(self._wm.high)}); it could never run"
            )
        self._queue.append(_Request(ident, nbytes, declared, owner))
        self._pump()
        return ident in self._works

    def release(self, ident: Ident, *, exited: bool = False) -> list[Ident]:
        """Drop ``ident``'s reservation or queued request (no-op if unknown).

        ``exited``: the work's processes have ended and been reaped, so the kernel
        has already freed what they used: its last measured figure leaves ``used``
        now rather than at the next sample (which would hold the next work back
        one sampling period for memory that is free).
        """
        work = self._works.pop(ident, None)
        if work is None:
            self._queue = deque(r for r in self._queue if r.ident != ident)
        elif exited:
            self._used = max(0, self._used - work.measured)
        return self._pump()

    def release_owner(self, owner: Hashable) -> list[Ident]:
        """Release everything requested with ``owner`` (a rank that died)."""
        for ident in [i for i, w in self._works.items() if w.owner == owner]:
            del self._works[ident]
        self._queue = deque(r for r in self._queue if r.owner != owner)
        return self._pump()

    def update_usage(self, used: int) -> list[Ident]:
        """A new sample of the node's memory in use."""
        self._used = used
        return self._pump()

    def correct(self, ident: Ident, measured: int, *, now: float = 0.0) -> list[Ident]:
        """A new sample of what ``ident`` uses (its process tree), taken at ``now``."""
        self._measure(ident, measured, now)
        return self._pump()

    def observe(self, used: int, measured: Mapping[Any, int], *, now: float = 0.0) -> list[Ident]:
        """One sampling round at once: node usage and per-work usage taken together.

        Applying them together avoids counting growth twice (in ``used`` and
        in a stale ``reservation - measured``) between the two updates.
        ``measured`` maps idents to bytes (any key type: a Mapping is invariant in it).
        """
        self._used = used
        for ident, nbytes in measured.items():
            self._measure(ident, nbytes, now)
        return self._pump()

    def resize(self, ident: Ident, nbytes: int) -> list[Ident]:
        """The work states its real figure: it becomes its bound and reservation."""
        work = self._works.get(ident)
        if work is not None:
            work.bound = nbytes
            work.reservation = max(nbytes, work.measured)
        return self._pump()

    def set_watermarks(self, watermarks: Watermarks) -> list[Ident]:
        self._wm = watermarks
        return self._pump()

    # -- internals
    def _measure(self, ident: Ident, nbytes: int, now: float) -> None:
        work = self._works.get(ident)
        if work is None:  # released meanwhile, or never admitted: a late sample
            return
        self._now = max(self._now, now)
        work.measured = nbytes
        if work.peak_at is None or nbytes > work.peak:
            work.peak, work.peak_at = nbytes, now
        work.reservation = max(work.reservation, nbytes)
        if self._settle is not None and now - work.peak_at >= self._settle:
            settled = max(nbytes, int(work.peak * (1 + self._margin)))
            work.reservation = min(work.reservation, settled)

    def _update_blocked(self) -> None:
        projected = self._used + self.reserved
        if projected > self._wm.high:
            self._blocked = True
        elif self._blocked and projected <= self._wm.low:
            self._blocked = False

    def _pump(self) -> list[Ident]:
        self._update_blocked()
        admitted: list[Ident] = []
        if self._blocked:
            return admitted
        for req in list(self._queue):
            if req.nbytes <= self.headroom:
                self._queue.remove(req)
                bound = req.nbytes if req.declared else None
                self._works[req.ident] = _Work(req.nbytes, bound, req.owner)
                admitted.append(req.ident)
            elif not self._backfill:
                break
        return admitted
