"""What a test leaves on an event loop it ran in this process: tasks nobody owns (still
pending when the test's code is over) and exceptions nobody handled ("Task exception
was never retrieved", a callback that raised).  Used by ``tests/conftest.py``, which
fails the test that left them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def _describe(context: dict[str, Any]) -> str:
    what = str(context.get("message", "unhandled exception"))
    exc = context.get("exception")
    if exc is not None:
        what += f": {type(exc).__name__}: {exc}"
    for key in ("future", "task", "handle"):
        if key in context:
            what += f" ({key}: {context[key]!r:.300})"
            break
    return what


class LoopGuard:
    """Collects what tests leave on the loops it watches."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.problems.append(_describe(context))
        loop.default_exception_handler(context)  # still logged as usual

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.set_exception_handler(self.handler)

    async def check_tasks(self) -> None:
        """Note the tasks other than the current one still pending, then end them (so that
        one leak does not also fail the next test)."""
        me = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        for task in left:
            self.problems.append(f"task left running, nobody owns it: {task!r:.300}")
            task.cancel()
        if left:
            with contextlib.suppress(BaseException):
                await asyncio.wait(left, timeout=5)

    def guarded(self, main: Awaitable[T]) -> Awaitable[T]:
        """``main`` wrapped to watch the loop it runs in (for ``asyncio.run``-style runners)."""

        async def run() -> T:
            self.watch(asyncio.get_running_loop())
            try:
                return await main
            finally:
                await self.check_tasks()

        return run()

    def finish(self) -> list[str]:
        """What was found; a collection first: never-retrieved exceptions show up then.
        What lives on after it is frozen: the next test's collection looks only at what
        that test made (a full one takes ~80 ms once the suite is loaded: minutes in all)."""
        gc.collect()
        gc.freeze()
        found, self.problems = self.problems, []
        return found


@contextlib.contextmanager
def runners_guarded(guard: LoopGuard) -> Iterator[None]:
    """``asyncio.run`` and ``uvloop.run`` (what ``pm.run`` uses) watched by ``guard``."""
    import asyncio as aio

    patched: list[tuple[Any, str, Callable[..., Any]]] = []
    mods: list[Any] = [aio]
    with contextlib.suppress(ImportError):
        import uvloop

        mods.append(uvloop)
    for mod in mods:
        orig = mod.run

        def run(main: Awaitable[Any], *args: Any, _orig: Callable[..., Any] = orig,
                **kwargs: Any) -> Any:
            return _orig(guard.guarded(main), *args, **kwargs)

        patched.append((mod, "run", orig))
        mod.run = run
    try:
        yield
    finally:
        for mod, name, orig in patched:
            setattr(mod, name, orig)
