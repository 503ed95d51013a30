"""Background tasks of a service: waiting inside their loops and stopping them, the one way every
service does.

Python 3.11's ``asyncio.wait_for`` loses a cancellation that arrives in the same step as the awaited
result (gh-86296, fixed in 3.12): a loop that waits with it can survive ``task.cancel()`` and keep a
shutdown waiting forever. Loops here wait with :func:`wait_event` (``asyncio.timeout``, which keeps
the cancellation), and :func:`cancel_and_wait` cancels again until each task has really ended.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

RECANCEL_SECONDS = 1.0


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True if it is set. A cancellation always propagates."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel the tasks and wait until each has ended; their errors are dropped, as at shutdown
    nothing is left to handle them (each loop logs its own failures while it runs). A task that
    swallowed its cancellation is cancelled again, every second, until it ends."""
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    rounds = 0
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        rounds += 1
        if pending and rounds == 5:
            log.warning("background tasks still running %d s after cancel: %s", rounds,
                        ", ".join(sorted(t.get_name() for t in pending)))
    # Retrieve the outcomes so that asyncio does not report them as never retrieved.
    for task in every:
        if task.done() and not task.cancelled():
            task.exception()
