"""The PMIx server's upcalls handed from the library's thread to the agent's event loop.

OpenPMIx calls the upcalls of the server (:mod:`pm.agent.pmix_upcalls`) from
its own progress thread.  Each one copies what it was given into Python values
and hands a call on its namespace's :class:`Upcalls` (a served job) to the
event loop with ``call_soon_threadsafe`` (:meth:`Handover._post`); it returns at
once and the library waits for the completion callback, which the loop calls
later.  Before there is a loop (pmrun's quick path serves a one-node job
without one) the calls wait for :meth:`Handover.attach`, and those that need
an answer wake whoever waits on :attr:`Handover.wake_fd`.
"""

from __future__ import annotations

import _thread
import os

from pm.agent import pmix_lib as L

# No asyncio, typing, threading or contextlib at import (about 3 ms): pmrun's quick path
# starts the server (pm.quick) before its ranks.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from typing import Any

    #: One application of a PMIx_Spawn: argv (program first), process count, environment
    #: (``NAME=value`` strings), working directory (or ""), and its info keys.
    SpawnApp = tuple[list[str], int, list[str], str, dict[str, Any]]


class _Log:
    """``logging.getLogger("pm.agent.pmix")``, imported on the first message (logging costs
    pmrun's quick path 10 ms, and it logs nothing)."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("pm.agent.pmix"), name)


log = _Log()


class Upcalls:
    """What a served namespace is told (implemented by :class:`pm.agent.pmix_job.PmixJob`);
    every method runs on the event loop."""

    def client_event(self, rank: int, event: str, detail: Any = None) -> None: ...
    def client_log(self, rank: int, lines: list[tuple[int, str]]) -> None: ...
    def fence(self, blob: bytes, collect: bool, done: Callable[[int, bytes], None]) -> None: ...
    def direct_modex(self, rank: int, done: Callable[[int, bytes], None]) -> None: ...
    def publish(self, rank: int, items: dict[str, Any], done: Callable[[int], None],
                once: bool = False) -> None: ...
    def lookup(self, rank: int, keys: list[str],
               done: Callable[[int, list[tuple[str, str]]], None], wait: bool = False
               ) -> None: ...
    def unpublish(self, rank: int, keys: list[str], done: Callable[[int], None]) -> None: ...
    def spawn(self, rank: int, apps: list[SpawnApp], done: Callable[[int, str], None]
              ) -> None: ...
    def connect(self, procs: list[tuple[str, int]], done: Callable[[int], None]) -> None: ...
    def group_fence(self, procs: list[tuple[str, int]], blob: bytes, collect: bool,
                    done: Callable[[int, bytes], None]) -> None: ...
    def group(self, grp: str, construct: bool, procs: list[tuple[str, int]], blob: bytes,
              want_id: bool, done: Callable[[int, int, bytes], None]) -> None: ...



class Handover:
    """The loop side of the process's server (:class:`pm.agent.pmix_server.PmixServer`):
    its served namespaces, and the upcalls' way to them."""

    def __init__(self) -> None:
        self.jobs: dict[str, Upcalls] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        #: Upcalls that came before an event loop was attached (pmrun's quick path
        #: serves a one-node job without one), delivered by :meth:`attach`.
        self._pending: list[tuple[str, Callable[..., None], tuple[Any, ...]]] = []
        self._post_lock = _thread.allocate_lock()
        #: Written to (one byte) when an upcall that needs the loop waits for it.
        self.wake_fd = -1

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve upcalls on ``loop`` from now on, those that waited for it first."""
        with self._post_lock:
            self.loop = loop
            pending, self._pending = self._pending, []
            for nspace, fn, args in pending:
                loop.call_soon_threadsafe(self._deliver, nspace, fn, args)

    def _post(self, nspace: str, fn: Callable[..., None], *args: Any, urgent: bool = True
              ) -> int:
        """Run ``fn(job, *args)`` on the loop (once there is one: ``urgent`` ones wake
        whoever waits on :attr:`wake_fd`); PMIx status of the hand-over."""
        with self._post_lock:
            loop = self.loop
            if loop is None:
                self._pending.append((nspace, fn, args))
                if urgent and self.wake_fd >= 0:
                    try:  # noqa: SIM105 (contextlib is not imported on pmrun's quick path)
                        os.write(self.wake_fd, b"!")
                    except OSError:
                        pass
                return L.SUCCESS
        if loop.is_closed():
            return L.ERR_NOT_FOUND
        try:
            loop.call_soon_threadsafe(self._deliver, nspace, fn, args)
        except RuntimeError:  # the loop closed meanwhile
            return L.ERROR
        return L.SUCCESS

    def _deliver(self, nspace: str, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        job = self.jobs.get(nspace)
        if job is None:
            log.debug("PMIx upcall for unknown namespace %s", nspace)
            return
        try:
            fn(job, *args)
        except Exception:
            log.exception("PMIx upcall for %s failed", nspace)

    def _group(self, members: list[tuple[str, int]], fn: Callable[[Upcalls], None]) -> int:
        """Run ``fn(job)`` on the loop for an operation over ``members`` (ranks of one or
        more namespaces): the library asks once per node, for its local participants,
        and any of their namespaces served here handles it.  Before there is a loop
        (pmrun's quick path) it waits for one, and wakes the quick path to hand over."""
        loop = self.loop
        if loop is None:
            here = next((ns for ns, _ in members if ns in self.jobs), members[0][0])
            return self._post(here, fn)
        if loop.is_closed():
            return L.ERR_NOT_FOUND
        try:
            loop.call_soon_threadsafe(self._deliver_group, members, fn)
        except RuntimeError:
            return L.ERROR
        return L.SUCCESS

    def _deliver_group(self, members: list[tuple[str, int]],
                       fn: Callable[[Upcalls], None]) -> None:
        for ns, _rank in members:
            job = self.jobs.get(ns)
            if job is not None:
                try:
                    fn(job)
                except Exception:
                    log.exception("PMIx operation over %d ranks of %s failed", len(members), ns)
                return
        log.warning("PMIx operation over namespaces this node does not serve: %s",
                    sorted({ns for ns, _ in members}))

