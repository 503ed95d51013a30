"""A call that an earlier caller's batch served returns with its answer, without waiting for its own run's turn at the
template lock (services/instance/queueing.py).

Each queued install starts a run of its own; the first to get the lock writes every queued install. The others' runs
still wait for the lock, behind whatever queued meanwhile, and used to hold their callers' answers until then
(bench/kill_storm.py: answers 1.2 s (p50) to 4-8 s (p90) after the batch that served them). Forced here with the
lock itself: alice's and bob's runs queue with another holder between them, who keeps the lock until bob has his
answer. Had bob to wait for his own run, nobody would move (the test's timeout turns that into a failure).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from aigc_gateway.db import Database
from aigc_gateway.db.models import allocator_lock
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance.lifecycle import Lifecycle
from aigc_gateway.services.instance.slots import SlotStore

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, create_template

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(90)]


async def test_a_call_served_by_an_earlier_batch_returns_without_its_own_turn_at_the_lock(
        testbed: Testbed, game: Game, database: Database, lifecycle: Lifecycle, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aigc_gateway.services.instance.timing")
    await create_template(game, testbed)
    ref = TemplateRef(game.namespace, SAMPLE)
    name = allocator_lock(ref.namespace, ref.template)

    async def queued(n: int) -> None:  # holders and waiters of the template lock in this process
        await wait_for(lambda: _users(lifecycle, name) == n, 30, interval=0.01, what=f"{n} at the template lock")

    entered, release = asyncio.Event(), asyncio.Event()

    async def first() -> None:
        async with lifecycle.locked(ref):
            entered.set()
            await release.wait()

    bob: asyncio.Task[Any] | None = None

    async def between() -> dict[str, Any]:
        async with lifecycle.locked(ref):  # held until bob is answered
            assert bob is not None
            return dict(await bob)

    holding = asyncio.create_task(first())
    await entered.wait()
    alice = asyncio.create_task(lifecycle.install(ref, "alice"))
    await queued(2)
    middle = asyncio.create_task(between())
    await queued(3)
    bob = asyncio.create_task(lifecycle.install(ref, "bob"))
    await queued(4)
    release.set()  # alice's run takes the lock and writes both installs

    answered = await middle  # bob's answer reached the holder between the two runs, while it held the lock
    assert answered["row"]["owner"] == "bob"
    assert (await alice)["row"]["owner"] == "alice"
    await holding
    async with database.session() as session:
        rows = await SlotStore(database).load(session, ref)
    assert {r.owner: r.slot for r in rows.values()} == {"alice": "LIVE", "bob": "LIVE"}
    assert {answered["row"]["id"], (await alice)["row"]["id"]} == set(rows)
    steps = [r.step for r in caplog.records if hasattr(r, "step") and r.step["template"] == ref.key]
    assert [(s["op"], s["calls"], s["writes"] >= 1) for s in steps] == [("install", 2, True)]  # one batch for both


def _users(lifecycle: Lifecycle, name: str) -> int:
    return lifecycle._locks.local._users.get(name, 0)


async def test_closing_cancels_the_runs_still_queued_and_writes_nothing(
        testbed: Testbed, game: Game, database: Database, lifecycle: Lifecycle) -> None:
    """A run outlives its caller on purpose (it may write other callers' batch), so the lifecycle keeps it;
    closing cancels it, as a crash would stop it, instead of leaving it to write after the service stopped."""
    await create_template(game, testbed)
    ref = TemplateRef(game.namespace, SAMPLE)
    entered, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with lifecycle.locked(ref):
            entered.set()
            await release.wait()

    holding = asyncio.create_task(holder())
    await entered.wait()
    alice = asyncio.create_task(lifecycle.install(ref, "alice"))
    await wait_for(lambda: _users(lifecycle, allocator_lock(ref.namespace, ref.template)) == 2, 30, interval=0.01,
                   what="alice's run at the template lock")
    runs = lifecycle._ups.queues.runs
    assert len(runs) == 1
    await lifecycle.close()
    assert len(runs) == 0
    with pytest.raises(asyncio.CancelledError):
        await alice
    release.set()
    await holding
    async with database.session() as session:
        assert await SlotStore(database).load(session, ref) == {}  # nothing was planned, nothing written
