"""Whether the peers of tree links are alive: heartbeat periods and last-seen times (pure).

Both ends of a tree link (:mod:`pm.agent.links`, :mod:`pm.agent.child_port`) send
heartbeats every :func:`interval_of` their timeout and note every frame they get as a
sign of life; :class:`Liveness` says which peers fell silent, without clocks of its own
(the caller gives ``now``).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def interval_of(timeout: float) -> float:
    """How often a link with ``timeout`` sends heartbeats and checks its peers."""
    return max(0.02, min(1.0, timeout / 4))


class Liveness(Generic[K]):
    """Last-seen times of peers and which of them fell silent (pure; the caller gives ``now``).

    A check that comes much later than planned means our own process stalled
    (a swapped-out or starved agent), not that the peers did: their clocks are
    then restarted instead of declaring them all lost.
    """

    def __init__(self, timeout: float, interval: float, now: float) -> None:
        self.timeout = timeout
        self.interval = interval
        self._seen: dict[K, float] = {}
        self._last_check = now

    def seen(self, key: K, now: float) -> None:
        self._seen[key] = now

    def forget(self, key: K) -> None:
        self._seen.pop(key, None)

    def last(self, key: K) -> float | None:
        """When ``key`` was last seen (None: not watched)."""
        return self._seen.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def check(self, now: float) -> list[K]:
        """Peers silent for longer than the timeout (they are forgotten)."""
        if now - self._last_check > max(3 * self.interval, self.timeout / 2):
            for key in self._seen:
                self._seen[key] = now
        self._last_check = now
        lost = [k for k, at in self._seen.items() if now - at > self.timeout]
        for k in lost:
            del self._seen[k]
        return lost
