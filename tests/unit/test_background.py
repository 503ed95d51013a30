"""Background loops stop when cancelled, even where Python 3.11's ``wait_for`` would lose the cancel."""
from __future__ import annotations

import asyncio

from aigc_gateway.background import cancel_and_wait, wait_event


async def test_wait_event_times_out_and_reports_set() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True
    assert await wait_event(asyncio.Event(), -5) is False  # a deadline already past is no wait at all


async def test_cancel_arriving_with_the_event_still_stops_the_loop() -> None:
    """The race of gh-86296: the event is set and the task cancelled in the same loop step."""
    for _ in range(50):
        event = asyncio.Event()
        rounds = 0

        async def loop(event: asyncio.Event = event) -> None:
            nonlocal rounds
            while True:
                await wait_event(event, 10)
                event.clear()
                rounds += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0)  # the task is now waiting on the event
        event.set()
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 2)
        assert task.cancelled()


async def test_cancel_and_wait_cancels_again_a_task_that_swallowed_the_first_cancel() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed > 1:
                    raise

    async def failing() -> None:
        raise RuntimeError("already failed")

    tasks = [asyncio.create_task(stubborn()), asyncio.create_task(failing())]
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait(tasks), 5)
    assert swallowed == 2
    assert all(t.done() for t in tasks)
