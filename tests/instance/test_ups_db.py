"""Installs and resumes in one GameServerSet write (services/instance/ups.py) are one intent carrying every call's
claim, on real PostgreSQL without a cluster: after the writer died, whoever resolves the intent commits each call's
own effect (its operation, its instance) with the slot changes and outbox rows, or none of them when the write never
landed."""
from __future__ import annotations

import dataclasses

from sqlalchemy import select

from aigc_gateway.db import Database
from aigc_gateway.db.models import UserSyncOutboxRow
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance import allocator, combine
from aigc_gateway.services.instance.allocator import Op, Plan, Spec
from aigc_gateway.services.instance.slots import SlotStore, slots_of

from .resolving import replicas

REF = TemplateRef("games", "sd-cpu")
BEFORE = Spec.of(1, {0, 2})  # alice (id 0) and carol (id 2) paused, bob (id 1) running


async def combined(store: SlotStore, database: Database, claims: tuple[str, str, str, str]) -> Plan:
    """alice's resume first (the plan's op: resume), dave's install (the next id, 3), bob's resume of his running
    instance (a no-op) and carol's resume, planned into one write."""
    install, _ = combine.plan_install_batch(REF, Spec.of(0), {}, ["alice", "bob", "carol"])
    assert install is not None
    async with database.session() as session:
        await store.apply(session, REF, install)
        for i, spec in ((0, Spec.of(3)), (2, Spec.of(2, {0}))):
            await store.apply(session, REF, allocator.plan_pause(REF, spec, slots_of(await store.load(session, REF)),
                                                                 i))
    async with database.session() as session:
        slots = slots_of(await store.load(session, REF))

    def claimed(step: combine.Step, key: str) -> combine.Step:
        def planned(now: Spec, cur: object) -> Plan:
            plan = step(now, cur)  # type: ignore[arg-type]
            return dataclasses.replace(plan, claims=((plan.id, key),))
        return planned

    plan, results = combine.plan_batch(REF, BEFORE, slots, [
        claimed(lambda now, cur: allocator.plan_resume(REF, now, cur, 0), claims[0]),
        claimed(combine.installing(REF, "dave"), claims[1]),
        claimed(lambda now, cur: allocator.plan_resume(REF, now, cur, 1), claims[2]),
        claimed(lambda now, cur: allocator.plan_resume(REF, now, cur, 2), claims[3])])
    assert [r.id for r in results if isinstance(r, Plan)] == [0, 3, 1, 2]
    assert plan is not None and plan.after == Spec.of(4) and (plan.op, plan.id) == (Op.RESUME, 0)
    return plan


async def claim_all(store: IdempotencyStore) -> tuple[Claim, Claim, Claim, Claim]:
    alice, _ = await store.claim("InstanceService.ResumeInstance", "alice", "r", b"r")
    dave, _ = await store.claim("InstanceService.CreateInstance", "dave", "i", b"i")
    bob, _ = await store.claim("InstanceService.ResumeInstance", "bob", "r", b"r")
    carol, _ = await store.claim("InstanceService.ResumeInstance", "carol", "r", b"r")
    return alice, dave, bob, carol


async def test_a_combined_up_write_that_landed_gives_each_call_its_own_effect(database: Database) -> None:
    async with replicas(database) as r:
        claims = await claim_all(r.killed)
        plan = await combined(r.store, database, tuple(c.key for c in claims))  # type: ignore[arg-type]
        await r.store.record_intent(REF, plan)
        await r.kill()  # ... after the GameServerSet write, before recording it

        async with r.lifecycle.locked(REF):
            assert await r.lifecycle.resolve_pending(REF, Spec.of(4, {0})) == 1  # R says it landed (X put back)
        async with database.session() as session:
            keys = (await session.execute(select(UserSyncOutboxRow.user, UserSyncOutboxRow.instance_id)
                                          .where(UserSyncOutboxRow.user == "dave"))).all()
        assert await r.rows(REF) == {0: ("LIVE", "alice"), 1: ("LIVE", "bob"), 2: ("LIVE", "carol"),
                                     3: ("LIVE", "dave")}
        assert keys == [("dave", 3)]  # the install's key set, in the same transaction

        retries = await claim_all(r.survivor)
        effects = [(c.effect["op"], c.effect["row"]["id"], c.effect["row"]["owner"], c.effect["row"]["slot"])
                   for c in retries if c.effect is not None]
        assert effects == [("resume", 0, "alice", "LIVE"), ("install", 3, "dave", "LIVE"),
                           ("resume", 1, "bob", "LIVE"), ("resume", 2, "carol", "LIVE")]


async def test_a_combined_up_write_that_never_landed_leaves_no_effect(database: Database) -> None:
    async with replicas(database) as r:
        claims = await claim_all(r.survivor)
        plan = await combined(r.store, database, tuple(c.key for c in claims))  # type: ignore[arg-type]
        await r.never_landed(REF, plan, BEFORE, claims)  # (R, X) as before: nothing happened
        assert await r.rows(REF) == {0: ("PAUSED", "alice"), 1: ("LIVE", "bob"), 2: ("PAUSED", "carol")}
