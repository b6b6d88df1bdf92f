"""pm.agent.owned.Owned: every task and timer of an object ends with it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from pm.agent.owned import Owned


async def test_aclose_cancels_and_awaits_tasks_and_cancels_timers() -> None:
    owned = Owned()
    ended: list[str] = []
    fired: list[int] = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a finally that itself awaits: aclose waits for it
            ended.append("forever")

    task = owned.spawn(forever())
    owned.call_later(0.0, fired.append, 1)
    late = owned.call_later(3600, fired.append, 2)
    assert len(owned) == 3
    await asyncio.sleep(0)  # the task starts; the 0-delay timer fires on the next pass
    await asyncio.sleep(0)
    assert fired == [1] and len(owned) == 2  # a timer that fired is no longer held
    await owned.aclose()
    assert task.cancelled() and ended == ["forever"] and late.cancelled()
    assert len(owned) == 0
    await owned.aclose()  # idempotent


async def test_what_is_started_after_close_is_cancelled_at_once() -> None:
    owned = Owned()
    owned.cancel()
    task = owned.spawn(asyncio.sleep(3600))
    handle = owned.call_later(0, pytest.fail, "a timer set after close fired")
    assert handle.cancelled()
    await owned.aclose()
    assert task.cancelled()


async def test_a_failed_task_goes_to_the_loop_handler_at_once() -> None:
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    try:
        owned = Owned()

        async def fail() -> None:
            raise ValueError("bad")

        task = owned.spawn(fail())
        await asyncio.wait([task])
        await asyncio.sleep(0)  # done callbacks run
    finally:
        loop.set_exception_handler(old)
    assert [type(c["exception"]) for c in seen] == [ValueError]
    assert seen[0]["future"] is task


async def test_an_owned_task_may_close_its_owner() -> None:
    owned = Owned()
    other = owned.spawn(asyncio.sleep(3600))

    async def closer() -> None:
        await owned.aclose()  # does not wait for itself

    await asyncio.wait_for(owned.spawn(closer()), 5)
    assert other.cancelled()


def test_signals_no_longer_wake_a_loop_whose_main_ended() -> None:
    # The loop's wake-up pipe is closed before its signal handlers go: a signal then would
    # be written to a closed descriptor (a traceback on stderr). Once main ends, none is.
    import signal

    from pm.agent.owned import checked

    async def main() -> int:
        return 7

    async def outer() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, lambda: None)  # (the pipe is the wake-up fd)
        code = await checked(main())
        woken = signal.set_wakeup_fd(-1)
        loop.remove_signal_handler(signal.SIGUSR2)
        return code, woken

    assert asyncio.run(outer()) == (7, -1)
