"""The owner of an object's background tasks and timers.

Every task pmrun starts and every timer it sets belongs to an :class:`Owned`:
:meth:`Owned.cancel` (for a synchronous ``close()``) cancels them all, and
:meth:`Owned.aclose` also awaits the tasks, so nothing of a closed object
runs on, or logs "Task was destroyed but it is pending" when the loop ends.
A task that fails goes to the loop's exception handler at once (not "never
retrieved" at garbage collection): a background task has nobody else to tell.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Owned:
    """Tasks and timer handles of one object; closed with it."""

    __slots__ = ("_closed", "_loop", "_tasks", "_timers")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks) + len(self._timers)

    def spawn(self, coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
        """Run ``coro`` as a task of ours."""
        task = self._loop.create_task(coro, name=name)
        self.adopt(task)
        return task

    def adopt(self, fut: asyncio.Future[T]) -> asyncio.Future[T]:
        """Own ``fut`` (a task someone else made): cancelled and awaited with us."""
        if self._closed:
            fut.cancel()
        self._tasks.add(fut)
        fut.add_done_callback(self._ended)
        return fut

    def _ended(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            self._loop.call_exception_handler({
                "message": "background task failed", "exception": exc, "future": fut})

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any
                   ) -> asyncio.TimerHandle:
        """``loop.call_later`` whose handle we keep until it fires or we close."""
        return self.call_at(self._loop.time() + delay, fn, *args)

    def call_at(self, when: float, fn: Callable[..., object], *args: Any) -> asyncio.TimerHandle:
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            fn(*args)

        handle = self._loop.call_at(when, fire)
        if self._closed:
            handle.cancel()
        else:
            self._timers.add(handle)
        return handle

    def cancel_timer(self, handle: asyncio.TimerHandle | None) -> None:
        """Cancel one of our timers (``None``: nothing to do)."""
        if handle is not None:
            handle.cancel()
            self._timers.discard(handle)

    def cancel(self) -> None:
        """Cancel every timer and task (what a synchronous ``close()`` can do).  Idempotent;
        what is spawned afterwards is cancelled at once."""
        self._closed = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        me = _current()  # an owned task closing its owner ends on its own
        for fut in list(self._tasks):
            if fut is not me:
                fut.cancel()

    async def aclose(self) -> None:
        """Cancel everything and wait until the tasks have ended.  Idempotent."""
        self.cancel()
        me = _current()  # an owned task closing its owner does not await itself
        while pending := [t for t in self._tasks if t is not me]:
            await asyncio.gather(*pending, return_exceptions=True)


def _current() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


#: When set (the test suite sets it), a loop that ends with tasks nobody owns, or that saw
#: an exception nobody handled, says so on stderr and its process exits with LOOP_CHECK_EXIT.
CHECK_ENV = "PM_LOOP_CHECK"
LOOP_CHECK_EXIT = 70


def checked(main: Coroutine[Any, Any, int]) -> Coroutine[Any, Any, int]:
    """``main`` (a process's whole life on its loop), watched if :data:`CHECK_ENV` is set.
    Once it ended, signals no longer wake the loop: closing the loop closes the pipe they
    would be written to before it lets go of their handlers, and a signal in between
    (Slurm's SIGTERM to every process of a cancelled job) printed a traceback ("Exception
    ignored when trying to write to the signal wakeup fd")."""
    import os

    return _ending(_checked(main) if os.environ.get(CHECK_ENV) else main)


async def _ending(main: Coroutine[Any, Any, int]) -> int:
    try:
        return await main
    finally:
        import contextlib
        import signal

        with contextlib.suppress(ValueError, OSError):  # (not the main thread: no loop had one)
            signal.set_wakeup_fd(-1)


async def _checked(main: Coroutine[Any, Any, int]) -> int:
    import gc
    import sys

    loop = asyncio.get_running_loop()
    problems: list[str] = []

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        problems.append(str(context.get("message")) + (f": {exc!r}" if exc else ""))
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    code = await main
    gc.collect()  # a task's exception nobody retrieved is reported when it is collected
    me = asyncio.current_task()
    problems += [f"task left running, nobody owns it: {t!r:.300}"
                 for t in asyncio.all_tasks() if t is not me and not t.done()]
    for what in problems:
        sys.stderr.write(f"pm loop check: {what}\n")
    return LOOP_CHECK_EXIT if problems else code
