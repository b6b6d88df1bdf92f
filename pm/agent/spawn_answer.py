"""When an MPI spawner gets its answer: once its children need it.

An MPI spawner (PMI-1 ``mcmd=spawn``, PMI-2 ``spawn``) goes on from the answer
to wait for its children's connection, and MPICH and Intel MPI wait by polling
and yielding the CPU in a loop.  Answered as soon as the children are started,
or once they initialized PMI, it takes CPU time from their start whenever the
node has more ranks than CPUs.  A child needs its parent only when it connects:
in ``MPI_Init`` it first reads the port its parent pre-put
(``PARENT_ROOT_PORT_NAME``), then connects.  So the spawner is answered once
every child initialized PMI (or ended) and one of them needs the parent:

* it read a pre-put key;
* it was given them at its PMI init (pmrun's native protocol does that);
* it entered a collective (it waits for the others: it may read nothing more);
* it ended;

or, for a program that needs its parent some other way, :data:`WANT_WAIT` after
a node's children all initialized PMI; at once if the spawner pre-put nothing.
Measured on 2 CPUs (C children of the MPICH wheel, one node): a spawn of 4
took 128 ms answered at the children's PMI init and 100 ms this way (Hydra:
118); a spawn of 16, 297 -> 223 ms (Hydra: 375).

:class:`SpawnAnswer` follows one node's children: the quick phase answers a
one-node job's spawner from it; an agent reports its part to the head
(:class:`pm.proto.tree_wire.Started`, ``needed``), which answers once every
node reported its children started and one reported them needing the spawner.

It imports nothing, like the quick phase that uses it.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

#: Seconds after a node's children all initialized PMI without needing their
#: spawner in a way seen here: they are reported needing it then anyway.
WANT_WAIT = 0.5


class SpawnAnswer:
    """One node's children of a spawned job, until they need their spawner.

    ``waiting``: the node's ranks of the job still to initialize PMI; ``preput``:
    the keys the spawner pre-put.  ``report`` is called with False once they all
    initialized PMI (or ended) without needing the spawner yet, and with True once
    they need it (from the start, or after a False): True comes once, last.
    ``arm`` (optional) is called with :data:`WANT_WAIT` when a False was reported
    for some ranks: an event loop sets a timer for :meth:`expire` then; a poll loop
    looks at :attr:`deadline` instead.
    """

    __slots__ = ("_told", "arm", "deadline", "keys", "ranks", "report", "waiting", "wanted")

    def __init__(self, waiting: Iterable[int], preput: Iterable[str],
                 report: Callable[[bool], object],
                 arm: Callable[[float], object] | None = None) -> None:
        self.waiting = set(waiting)
        #: Whether the node has children at all (none: no deadline to keep).
        self.ranks = bool(self.waiting)
        self.keys = frozenset(k.encode() for k in preput)
        self.wanted = not self.keys
        self.report: Callable[[bool], object] | None = report
        self.arm = arm
        #: Monotonic time when they are reported needing the spawner anyway (0: not set).
        self.deadline = 0.0
        self._told = False

    @property
    def pending(self) -> bool:
        """Whether the children are still to be reported needing their spawner."""
        return self.report is not None

    def check(self) -> None:
        """Report what became true (call it once after making one: all may be initialized
        already)."""
        report = self.report
        if report is None or self.waiting:
            return
        if self.wanted:
            self.report = None
            report(True)
        elif not self._told:
            self._told = True
            report(False)
            if self.ranks:
                self.deadline = time.monotonic() + WANT_WAIT
                if self.arm is not None:
                    self.arm(WANT_WAIT)

    def initialized(self, rank: int) -> None:
        self.waiting.discard(rank)
        self.check()

    def ended(self, rank: int) -> None:
        self.waiting.discard(rank)
        self.wanted = True
        self.check()

    def looked_up(self, key: bytes) -> None:
        """A child asked for ``key``."""
        if key in self.keys:
            self.wanted = True
            self.check()

    def want(self) -> None:
        """A child needs its spawner now (see the module doc)."""
        self.wanted = True
        self.check()

    def expire(self, now: float | None = None) -> None:
        """The timer set through ``arm`` ran out (``now``: or a poll loop saw the time)."""
        if self.deadline and (now is None or now >= self.deadline):
            self.want()
