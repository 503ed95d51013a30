"""Background loops stop when cancelled, even where Python 3.11's ``wait_for`` would lose the cancel."""
from __future__ import annotations

import asyncio
import logging

import pytest

from aigc_gateway.background import Backoff, cancel_and_wait, every, retry_forever, wait_event


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


def test_backoff_grows_to_the_cap_with_jitter_below_and_resets() -> None:
    plain = Backoff(initial=0.5, cap=4.0, jitter=0.0)
    assert [plain.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    plain.reset()
    assert plain.next_delay() == 0.5
    jittered = Backoff(initial=1.0, cap=30.0, jitter=0.5)
    for n in range(1, 200):
        delay = jittered.next_delay()
        ceiling = min(30.0, 2.0 ** (n - 1))
        assert ceiling * 0.5 <= delay <= ceiling  # never above the exponential, never below half of it


async def test_retry_forever_backs_off_on_errors_and_resets_after_a_success() -> None:
    outcomes = [ValueError("a"), ValueError("b"), None, ValueError("c")]
    failures_seen: list[int] = []
    errors: list[str] = []
    done = asyncio.Event()
    backoff = Backoff(initial=0.001, cap=0.001, jitter=0.0)

    async def step() -> None:
        failures_seen.append(backoff.failures)
        if not outcomes:
            done.set()
            await asyncio.Event().wait()  # parked until cancelled
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    task = asyncio.create_task(retry_forever(step, backoff, "test loop", on_error=lambda e: errors.append(str(e))))
    await asyncio.wait_for(done.wait(), 5)
    # Two failures in a row, a success that resets the count, one more failure, then the parked step.
    assert failures_seen == [0, 1, 2, 0, 1]
    assert errors == ["a", "b", "c"]
    await cancel_and_wait([task])
    assert task.cancelled()


async def test_every_logs_a_failing_pass_and_runs_the_next(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    second = asyncio.Event()

    async def step() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("first pass breaks")
        second.set()

    task = asyncio.create_task(every(0, step, "test pass"))
    assert await wait_event(second, 10)
    await cancel_and_wait([task])
    assert calls[:2] == [0, 1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == ["test pass failed"]
