"""The thread behind pmrun's stdout and stderr once an event loop runs: a slow reader
holds the nodes' output credit, never the loop
(:meth:`pm.common.output_writer.Writer.write_behind`).  Loaded only then: pmrun's quick
path writes in its own thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable

from pm.common.output_writer import write_out


class WriteBehind:
    """The thread that writes a :class:`pm.common.output_writer.Writer`'s stdout and stderr chunks
    in order (:meth:`~pm.common.output_writer.Writer.write_behind`)."""

    def __init__(self, call_soon: Callable[[Callable[[], None]], object],
                 written: Callable[[int, int], None], broken: Callable[[int, int], None]
                 ) -> None:
        self._loop_call = call_soon
        self.written = written
        self._broken = broken
        self._cond = threading.Condition()
        self._items: list[tuple[int, bytes, int, int]] = []
        self._done: dict[int, int] = {}  # tag -> bytes written, not yet reported
        self._gone = False
        #: Descriptors that take no more (their reader went away, or an error), and why
        #: (an errno): what is for them counts as written.
        self._dead: dict[int, int] = {}
        self._idle = True
        self._thread = threading.Thread(target=self._run, name="pm-output", daemon=True)
        self._thread.start()

    def put(self, fd: int, chunk: bytes, tag: int, size: int) -> bool:
        """Queue ``chunk`` for ``fd``; False if it was dropped (the writer is abandoned)."""
        with self._cond:
            if self._gone:
                gone = True
            else:
                gone = False
                self._items.append((fd, chunk, tag, size))
                self._cond.notify()
        if gone:
            self.written(tag, size)
        return not gone

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._items:
                    self._idle = True
                    cond.notify_all()
                    if self._gone:
                        return  # closed (or nobody reads): the thread ends
                    cond.wait()
                self._idle = False
                items, self._items = self._items, []
            for fd, chunk, tag, size in items:
                if self._gone:
                    break  # abandoned
                if fd not in self._dead:
                    err = write_out(fd, chunk)
                    if err:
                        with cond:  # (the other stream may still have a reader)
                            self._dead[fd] = err
                        self._broken_soon(fd, err)
                with cond:
                    report = not self._done
                    self._done[tag] = self._done.get(tag, 0) + size
                if report:
                    self._call_soon(self._report)

    def _broken_soon(self, fd: int, err: int) -> None:
        self._call_soon(lambda: self._broken(fd, err))

    def failed(self) -> dict[int, int]:
        """The descriptors that took no more, and why (an errno), in that order."""
        with self._cond:
            return dict(self._dead)

    def _call_soon(self, fn: Callable[[], None]) -> None:
        # (The loop closed: the job is over, nobody waits for credit.)
        with contextlib.suppress(RuntimeError):
            self._loop_call(fn)

    def _report(self) -> None:
        with self._cond:
            done, self._done = self._done, {}
        for tag, size in done.items():
            self.written(tag, size)

    def drain(self) -> None:
        with self._cond:
            while (self._items or not self._idle) and not self._gone:
                self._cond.wait()

    def drained(self) -> bool:
        with self._cond:
            return self._gone or (not self._items and self._idle)

    def abandon(self) -> None:
        with self._cond:
            self._gone = True
            self._items = []
            self._cond.notify_all()
