"""Pauses and uninstalls in one GameServerSet write (services/instance/downs.py) are one intent carrying every
call's claim, on real PostgreSQL without a cluster: after the writer died, whoever resolves the intent commits
each call's own effect (its operation, its owner) with the slot changes, or none of them when the write never
landed."""
from __future__ import annotations

import dataclasses

from aigc_gateway.db import Database
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance import allocator, combine
from aigc_gateway.services.instance.allocator import Plan, Spec
from aigc_gateway.services.instance.slots import SlotStore, slots_of

from .resolving import replicas

REF = TemplateRef("games", "sd-cpu")


BEFORE = Spec.of(2, {2})


async def combined(store: SlotStore, database: Database, claims: tuple[str, str, str]) -> Plan:
    """alice (id 0) and bob (id 1) running, carol (id 2) paused; alice's pause, bob's uninstall and carol's
    pause (a no-op) planned into one write."""
    install, _ = combine.plan_install_batch(REF, Spec.of(0), {}, ["alice", "bob", "carol"])
    assert install is not None
    async with database.session() as session:
        await store.apply(session, REF, install)
        await store.apply(session, REF, allocator.plan_pause(REF, Spec.of(3), slots_of(await store.load(session, REF)),
                                                             2))
    async with database.session() as session:
        slots = slots_of(await store.load(session, REF))
    pause = allocator.plan_pause(REF, BEFORE, slots, 0)
    assert pause.after is not None
    drop = allocator.plan_uninstall(REF, pause.after, allocator.apply(slots, pause.transitions), 1)
    again = allocator.plan_pause(REF, pause.after, slots, 2)
    assert again.noop
    plan = combine.combine(REF, BEFORE, [dataclasses.replace(pause, claims=((0, claims[0]),)),
                                           dataclasses.replace(drop, claims=((1, claims[1]),)),
                                           dataclasses.replace(again, claims=((2, claims[2]),))])
    assert plan.after == Spec.of(0, {0, 1, 2})
    return plan


async def test_a_combined_write_that_landed_gives_each_call_its_own_effect(database: Database) -> None:
    async with replicas(database) as r:
        alice, bob, carol = await claim_all(r.killed)
        plan = await combined(r.store, database, (alice.key, bob.key, carol.key))
        await r.store.record_intent(REF, plan)
        await r.kill()  # ... after the GameServerSet write, before recording it

        async with r.lifecycle.locked(REF):
            assert await r.lifecycle.resolve_pending(REF, Spec.of(0, {0, 1, 2})) == 1  # the write landed
        assert await r.rows(REF) == {0: ("PAUSED", "alice"), 1: ("RELEASING", None), 2: ("PAUSED", "carol")}

        alices, bobs, carols = await claim_all(r.survivor)
        assert alices.effect and bobs.effect and carols.effect  # taken over with their effects
        assert (alices.effect["op"], alices.effect["row"]["id"], alices.effect["row"]["owner"],
                alices.effect["row"]["slot"]) == ("pause", 0, "alice", "PAUSED")
        # Bob's answer is his instance as he owned it, never a neighbour's row.
        assert (bobs.effect["op"], bobs.effect["row"]["id"], bobs.effect["row"]["owner"],
                bobs.effect["row"]["slot"]) == ("uninstall", 1, "bob", "RELEASING")
        assert (carols.effect["op"], carols.effect["row"]["id"], carols.effect["row"]["owner"]) == ("pause", 2, "carol")


async def test_a_combined_write_that_never_landed_leaves_no_effect(database: Database) -> None:
    async with replicas(database) as r:
        calls = await claim_all(r.survivor)
        plan = await combined(r.store, database, tuple(c.key for c in calls))  # type: ignore[arg-type]
        await r.never_landed(REF, plan, BEFORE, calls)  # (R, X) as before: nothing happened
        assert await r.rows(REF) == {0: ("LIVE", "alice"), 1: ("LIVE", "bob"), 2: ("PAUSED", "carol")}


async def claim_all(store: IdempotencyStore) -> tuple[Claim, Claim, Claim]:
    alice, _ = await store.claim("InstanceService.PauseInstance", "alice", "p", b"p")
    bob, _ = await store.claim("InstanceService.DeleteInstance", "bob", "d", b"d")
    carol, _ = await store.claim("InstanceService.PauseInstance", "carol", "p", b"p")
    return alice, bob, carol
