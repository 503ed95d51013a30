"""Joining a template's write queue (installs.py, downs.py): the caller's entry is queued, whoever takes the lock
next writes every queued entry in one GameServerSet write, and each caller awaits its own answer."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

Effect = dict[str, Any]


class Queued(Protocol):
    @property
    def future(self) -> asyncio.Future[Effect]: ...


Q = TypeVar("Q", bound=Queued)


def new_answer() -> asyncio.Future[Effect]:
    """A caller's answer, retrieved even if nobody awaits it (its caller gave up)."""
    future: asyncio.Future[Effect] = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def join(queue: list[Q], queued: Q, run: Callable[[], Awaitable[None]]) -> Effect:
    """Queue ``queued``, run a batch (shielded: one caller giving up cancels nobody else's) and return its answer.
    An entry no batch took is taken out again when its caller stops waiting: it must not run after we answered."""
    queue.append(queued)
    try:
        await asyncio.shield(asyncio.ensure_future(run()))
    except BaseException:
        if queued in queue:
            queue.remove(queued)
        raise
    return await queued.future
