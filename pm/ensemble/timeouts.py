"""How long a task's run may take: GNU parallel's ``--timeout``; and how a run is ended
(``--termseq``).

Either a fixed number of seconds, or a percentage of the median run of the tasks that
succeeded so far (``--timeout 200%``): no limit until one succeeded, then each success
moves the limit of every task, the running ones included.  A run past its limit (or ended
by ``--halt now``, ``--limit``) gets the signals :func:`parse_termseq` reads, each its wait
apart (:mod:`pm.ensemble.runs`).
"""

from __future__ import annotations

import heapq
import signal


class RunningMedian:
    """The median of the numbers :meth:`add` was given, each added in O(log n)."""

    def __init__(self) -> None:
        self._low: list[float] = []   # the smaller half, negated (a max-heap)
        self._high: list[float] = []  # the larger half

    def add(self, value: float) -> None:
        if self._low and value > -self._low[0]:
            heapq.heappush(self._high, value)
        else:
            heapq.heappush(self._low, -value)
        if len(self._low) > len(self._high) + 1:
            heapq.heappush(self._high, -heapq.heappop(self._low))
        elif len(self._high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(self._high))

    def value(self) -> float | None:
        """The median, None before the first number."""
        if not self._low:
            return None
        if len(self._low) > len(self._high):
            return -self._low[0]
        return (self._high[0] - self._low[0]) / 2


class RunLimit:
    """A task's time limit: ``seconds``, or ``fraction`` of the median successful run
    (2.0 for GNU parallel's ``200%``); neither: no limit."""

    def __init__(self, seconds: float | None = None, fraction: float | None = None) -> None:
        self._seconds = seconds
        self._fraction = fraction
        self._runs = RunningMedian()

    @property
    def moving(self) -> bool:
        """Whether successes move the limit (a percentage)."""
        return self._fraction is not None

    def succeeded(self, seconds: float) -> None:
        """A task's run succeeded in ``seconds``."""
        if self._fraction is not None:
            self._runs.add(seconds)

    def seconds(self) -> float | None:
        """The limit now (None: none yet, or none at all)."""
        if self._fraction is None:
            return self._seconds
        median = self._runs.value()
        return None if median is None else self._fraction * median

    def describe(self, seconds: float) -> str:
        """How a limit of ``seconds`` came about, for the line that names a timeout."""
        if self._fraction is None:
            return f"{seconds:g} s"
        return (f"{seconds:.3g} s ({self._fraction * 100:g}% of the median successful run, "
                f"{self._runs.value() or 0:.3g} s)")


def parse_termseq(text: str) -> list[tuple[int, float]]:
    """GNU parallel's ``--termseq``: ``TERM,200,TERM,100,KILL,25`` is [(SIGTERM, 0.2),
    (SIGTERM, 0.1), (SIGKILL, 0.025)] (signals by name, SIG or not, or number; waits in
    ms).  ValueError names what cannot be read (pure)."""
    words = [w.strip() for w in text.split(",")]
    if len(words) % 2 or not words[0]:
        raise ValueError(f"--termseq takes SIGNAL,MS pairs (TERM,200,KILL,25), not {text!r}")
    steps = []
    for name, wait in zip(words[::2], words[1::2], strict=True):
        try:
            sig = (int(name) if name.isdecimal()
                   else signal.Signals["SIG" + name.upper().removeprefix("SIG")])
            signal.Signals(sig)
            ms = float(wait)
        except (KeyError, ValueError):
            raise ValueError(f"--termseq {text}: cannot read {name},{wait} as a signal and "
                             "the milliseconds to wait after it") from None
        if ms < 0:
            raise ValueError(f"--termseq {text}: a wait is at least 0 ms")
        steps.append((int(sig), ms / 1000))
    return steps
