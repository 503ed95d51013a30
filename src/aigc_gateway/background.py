"""Background tasks of a service: stopping them the one way every service does."""
from __future__ import annotations

import asyncio
from collections.abc import Iterable


async def cancel_and_wait(tasks: Iterable[asyncio.Task]) -> None:
    """Cancel the tasks and wait until each has ended; their errors are dropped, as at shutdown
    nothing is left to handle them (each loop logs its own failures while it runs)."""
    pending = list(tasks)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
