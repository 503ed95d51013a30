"""Slot rows, outbox rows, notifications, intents and the template lock, on real PostgreSQL."""
from __future__ import annotations

import asyncio
from datetime import UTC

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from aigc_gateway.config import InstanceConfig
from aigc_gateway.db import Database
from aigc_gateway.db.models import INSTANCE_CHANNEL, InstanceRow, UserSyncOutboxRow
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import SlotState
from aigc_gateway.services.instance import allocator
from aigc_gateway.services.instance.allocator import Slot, Spec
from aigc_gateway.services.instance.lifecycle import Lifecycle, slots_of
from aigc_gateway.services.instance.models import IntentRow
from aigc_gateway.services.instance.slots import SlotStore

REF = TemplateRef("games", "sd-cpu")


async def rows(db: Database) -> dict[int, InstanceRow]:
    async with db.session() as session:
        return await SlotStore(db).load(session, REF)


async def outbox(db: Database) -> list[tuple[str, int | None]]:
    async with db.session() as session:
        result = await session.execute(select(UserSyncOutboxRow).order_by(UserSyncOutboxRow.id))
        return [(r.user, r.instance_id) for r in result.scalars()]


async def step(db: Database, planner, *args) -> allocator.Plan:
    """Plan against the database's slots and apply at once, as if the GameServerSet write succeeded."""
    store = SlotStore(db)
    async with db.lock(f"allocator:{REF.key}") as session:
        current = slots_of(await store.load(session, REF))
        spec = Spec(sum(1 for s in current.values() if s.state is SlotState.LIVE),
                    frozenset(i for i, s in current.items() if s.state is not SlotState.LIVE))
        plan = planner(REF, spec, current, *args)
        await store.apply(session, REF, plan)
    return plan


async def test_ownership_changes_write_outbox_rows_and_notify(database: Database, database_url: str) -> None:
    received: list[str] = []
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    await conn.add_listener(INSTANCE_CHANNEL, lambda *args: received.append(args[-1]))
    try:
        install = await step(database, allocator.plan_install, "alice")
        assert install.id == 0
        row = (await rows(database))[0]
        assert (row.slot, row.owner) == ("LIVE", "alice")
        assert await outbox(database) == [("alice", 0)]

        await step(database, allocator.plan_pause, 0)
        paused = (await rows(database))[0]
        assert (paused.slot, paused.owner) == ("PAUSED", "alice")
        assert paused.state_changed_at > row.state_changed_at
        assert paused.created_at == row.created_at
        await step(database, allocator.plan_resume, 0)
        assert await outbox(database) == [("alice", 0)]  # pause and resume keep the key

        await step(database, allocator.plan_uninstall, 0)
        gone = (await rows(database))[0]
        assert (gone.slot, gone.owner) == ("RELEASING", None)
        assert await outbox(database) == [("alice", 0), ("alice", None)]

        await step(database, allocator.plan_release, 0)
        assert (await rows(database))[0].slot == "FREE"
        reused = await step(database, allocator.plan_install, "bob")
        assert reused.id == 0
        fresh = (await rows(database))[0]
        assert (fresh.slot, fresh.owner) == ("LIVE", "bob") and fresh.created_at > row.created_at
        assert await outbox(database) == [("alice", 0), ("alice", None), ("bob", 0)]
        for _ in range(50):
            if len(received) >= 6:
                break
            await asyncio.sleep(0.05)
        assert received == ["games/sd-cpu/0"] * 6
    finally:
        await conn.close()


async def test_the_database_refuses_two_instances_for_one_owner(database: Database) -> None:
    store = SlotStore(database)
    plan = allocator.Plan(allocator.Op.INSTALL, 1, "alice", Spec.of(1), Spec.of(2),
                          (allocator.Transition(1, SlotState.LIVE, "alice"),))
    await step(database, allocator.plan_install, "alice")
    with pytest.raises(IntegrityError):
        async with database.session() as session:
            await store.apply(session, REF, plan)
    assert set(await rows(database)) == {0}


async def test_interrupted_intents_resolve_from_r_and_x(database: Database) -> None:
    store = SlotStore(database)
    lifecycle = Lifecycle(database, store, cluster=None, cfg=InstanceConfig())  # type: ignore[arg-type]
    took = allocator.plan_install(REF, Spec.of(0), {}, "alice")
    lost = allocator.Plan(allocator.Op.INSTALL, 1, "bob", Spec.of(1), Spec.of(2),
                          (allocator.Transition(1, SlotState.LIVE, "bob"),))
    first = await store.record_intent(REF, took)
    await store.record_intent(REF, lost)
    async with lifecycle.locked(REF):
        # The GameServerSet shows (1, {}): the first write landed (its `after`), the second did not (its
        # `before`).
        assert await lifecycle.resolve_pending(REF, Spec.of(1)) == 2
    current = await rows(database)
    assert {i: (r.slot, r.owner) for i, r in current.items()} == {0: ("LIVE", "alice")}
    assert current[0].created_at == first.created_at  # the owner's install time is the intent's
    async with database.session() as session:
        assert (await session.execute(select(IntentRow))).first() is None
    assert await outbox(database) == [("alice", 0)]


async def test_resolving_twice_changes_nothing_more(database: Database) -> None:
    store = SlotStore(database)
    lifecycle = Lifecycle(database, store, cluster=None, cfg=InstanceConfig())  # type: ignore[arg-type]
    await store.record_intent(REF, allocator.plan_install(REF, Spec.of(0), {}, "alice"))
    async with lifecycle.locked(REF):
        assert await lifecycle.resolve_pending(REF, Spec.of(1)) == 1
        assert await lifecycle.resolve_pending(REF, Spec.of(1)) == 0
    assert {i: r.owner for i, r in (await rows(database)).items()} == {0: "alice"}
    assert await outbox(database) == [("alice", 0)]


async def test_purge_forgets_slots_and_writes_removals(database: Database) -> None:
    store = SlotStore(database)
    for user in ("alice", "bob", "carol"):
        await step(database, allocator.plan_install, user)
    await step(database, allocator.plan_uninstall, 1)
    await store.record_intent(REF, allocator.plan_install(REF, Spec.of(2, {1}), {}, "dave"))
    async with database.session() as session:
        owned = await store.purge(session, REF)
    assert owned == [(0, "alice"), (2, "carol")]
    assert await rows(database) == {}
    assert (await outbox(database))[-2:] == [("alice", None), ("carol", None)]
    async with database.session() as session:
        assert (await session.execute(select(IntentRow))).first() is None


async def test_the_template_lock_serialises_two_processes(database_url: str) -> None:
    """Two engines (as two processes would have) on one template: the critical sections never overlap."""
    engines = [Database(database_url, pool_size=4), Database(database_url, pool_size=4)]
    inside = 0
    overlaps = 0
    order: list[int] = []

    async def worker(n: int) -> None:
        nonlocal inside, overlaps
        store = SlotStore(engines[n % 2])
        async with engines[n % 2].lock(f"allocator:{REF.key}") as session:
            inside += 1
            overlaps += inside > 1
            current = slots_of(await store.load(session, REF))
            spec = Spec(len(current), frozenset())
            await asyncio.sleep(0.01)  # widen the window a lost update would need
            await store.apply(session, REF, allocator.plan_install(REF, spec, current, f"user-{n}"))
            order.append(n)
            inside -= 1

    try:
        await asyncio.gather(*(worker(n) for n in range(24)))
    finally:
        for engine in engines:
            await engine.close()
    assert overlaps == 0
    async with Database(database_url).session() as session:
        result = list((await session.execute(select(InstanceRow))).scalars())
    assert sorted(r.id for r in result) == list(range(24))
    assert len({r.owner for r in result}) == 24


def test_slots_of_reads_rows() -> None:
    from datetime import datetime

    t = datetime.now(UTC)
    row = InstanceRow(namespace="n", template="t", id=3, slot="PAUSED", owner="a", orphaned=False,
                      created_at=t, updated_at=t, state_changed_at=t)
    assert slots_of({3: row}) == {3: Slot(3, SlotState.PAUSED, "a")}


async def test_the_stages_work_on_the_embedded_sqlite_default(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite allows one writing transaction: the intent, the resolution and the outcome each commit alone."""
    from aigc_gateway.db.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'gw.sqlite3'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    try:
        store = SlotStore(db)
        lifecycle = Lifecycle(db, store, cluster=None, cfg=InstanceConfig())  # type: ignore[arg-type]
        async with lifecycle.locked(REF):
            await store.record_intent(REF, allocator.plan_install(REF, Spec.of(0), {}, "alice"))
            assert await lifecycle.resolve_pending(REF, Spec.of(1)) == 1
            plan = allocator.plan_install(REF, Spec.of(1), slots_of(await lifecycle.rows(REF)), "bob")
            intent = await store.record_intent(REF, plan)
            async with db.session() as session:
                await store.apply(session, REF, plan, owner_since=intent.created_at)
                await store.drop_intent(session, intent.id)
        assert {i: r.owner for i, r in (await rows(db)).items()} == {0: "alice", 1: "bob"}
        assert await outbox(db) == [("alice", 0), ("bob", 1)]
    finally:
        await db.close()


async def test_one_reconciler_leads_and_another_takes_over_when_it_goes(database_url: str) -> None:
    from aigc_gateway.db.listen import asyncpg_dsn
    from aigc_gateway.locks import SessionLock
    from aigc_gateway.services.instance.reconciler import LEASE_NAME

    a, b = SessionLock(asyncpg_dsn(database_url), LEASE_NAME), SessionLock(asyncpg_dsn(database_url), LEASE_NAME)
    try:
        assert await a.take(wait=False) is True
        assert await b.take(wait=False) is False
        assert await a.take(wait=False) is True  # still ours
        await a.release()  # a process that dies closes its connection the same way
        assert await b.take(wait=False) is True
        assert await a.take(wait=False) is False
    finally:
        await a.release()
        await b.release()
