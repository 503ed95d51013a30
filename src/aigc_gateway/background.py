"""Background tasks of a service: waiting inside their loops, backing off after failures, and stopping
them, the one way every service does.

Python 3.11's ``asyncio.wait_for`` loses a cancellation that arrives in the same step as the awaited
result (gh-86296, fixed in 3.12): a loop that waits with it can survive ``task.cancel()`` and keep a
shutdown waiting forever. Loops here wait with :func:`wait_event` (``asyncio.timeout``, which keeps
the cancellation), and :func:`cancel_and_wait` cancels again until each task has really ended.

A loop that runs until cancelled (a watch, a LISTEN connection, a reconnect) must not hammer a
dependency that is away, nor wait long once it is back: :class:`Backoff` is the one jittered
exponential backoff with reset on success, and :func:`retry_forever` the one ``while True: try ...
except: back off`` loop. A periodic pass (a reconciler, a culler) runs with :func:`every`. Finite retries
use tenacity instead.
"""
from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn

log = logging.getLogger(__name__)

RECANCEL_SECONDS = 1.0


@dataclass
class Backoff:
    """Jittered exponential backoff: after the n-th failure in a row wait ``initial * factor**(n-1)``
    (at most ``cap``), scaled by a random factor in ``[1 - jitter, 1]`` so that replicas that lost the
    same dependency do not come back in step; :meth:`reset` after a success starts again at ``initial``."""

    initial: float = 1.0
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5
    failures: int = 0

    def reset(self) -> None:
        self.failures = 0

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before trying again."""
        self.failures += 1
        # The exponent is bounded so that a long outage cannot overflow the float.
        delay = min(self.cap, self.initial * self.factor ** min(self.failures - 1, 64))
        return delay * random.uniform(1.0 - self.jitter, 1.0)

    async def sleep(self) -> float:
        """Count one more failure and wait; returns the delay waited."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay


async def retry_forever(step: Callable[[], Awaitable[object]], backoff: Backoff, what: str, *,
                        on_error: Callable[[Exception], None] | None = None,
                        logger: logging.Logger = log) -> NoReturn:
    """Run ``step`` again and again until cancelled. A step that returns ran fine (the backoff is reset
    and it runs again at once); one that raises is logged (``on_error`` sees the error first) and run
    again after ``backoff``. A step that has a long healthy phase before it can fail (a watch after its
    list) calls ``backoff.reset()`` itself when it gets there."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a forever-loop outlives any one failure
            if on_error is not None:
                on_error(exc)
            delay = backoff.next_delay()
            logger.warning("%s: %s; trying again in %.1fs", what, exc, delay)
            await asyncio.sleep(delay)
        else:
            backoff.reset()


async def every(interval: float, step: Callable[[], Awaitable[object]], what: str, *,
                logger: logging.Logger = log) -> NoReturn:
    """Run ``step``, then again every ``interval`` seconds, until cancelled. The wait is jittered by
    +-20% so that replicas doing the same periodic work do not run in step (each would find the other's
    work done). A failing step is logged and the next one runs on time: a periodic pass is not a call to
    a dependency that is away, so it does not back off (that is :func:`retry_forever`)."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next pass may well succeed
            logger.exception("%s failed", what)
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; True if it is set. A cancellation always propagates."""
    try:
        async with asyncio.timeout(max(0.0, timeout)):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
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


class Tasks:
    """Tasks their starter does not await (work after an answer, an audit write, a restart): referenced here
    until they end, since the event loop keeps only weak references to running tasks, and cancelled or waited
    for at stop."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel(self) -> None:
        await cancel_and_wait(list(self._tasks))

    async def drain(self) -> None:
        """Wait for every task to end; their errors are theirs to log."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
