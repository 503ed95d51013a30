"""A call's effect rides on its replay claim (issue 20), on real PostgreSQL without a cluster: an intent
left by a killed replica carries its calls' claims, and whoever resolves it commits each call's effect in
the same transaction as the slot change; a write that never landed leaves no effect, so the retry runs."""
from __future__ import annotations

import dataclasses

import grpc

from aigc_gateway.db import Database
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import SlotState
from aigc_gateway.services.instance import allocator, combine
from aigc_gateway.services.instance.allocator import Spec
from aigc_gateway.services.instance.slots import slots_of

from .resolving import replicas

REF = TemplateRef("games", "sd-cpu")


async def test_an_install_applied_after_its_replica_died_is_the_retrys_answer(database: Database) -> None:
    async with replicas(database) as r:
        alice, _ = await r.killed.claim("InstanceService.CreateInstance", "alice", "r1", b"x")
        bob, _ = await r.killed.claim("InstanceService.CreateInstance", "bob", "r2", b"y")
        plan, _ = combine.plan_install_batch(REF, Spec.of(0), {}, ["alice", "bob"])
        assert plan is not None
        await r.store.record_intent(REF, dataclasses.replace(plan, claims=((0, alice.key), (1, bob.key))))
        await r.kill()  # ... after its GameServerSet write, before recording it

        retry, _ = await r.survivor.claim("InstanceService.CreateInstance", "alice", "r1", b"x")
        assert retry.effect is None  # nothing recorded yet: the intent is still pending
        async with r.lifecycle.locked(REF):
            await r.lifecycle.resolve_pending(REF, Spec.of(2))  # the write landed
        held, effect = (await r.survivor.held([retry]))[retry.key]
        assert held and effect is not None
        assert (effect["op"], effect["row"]["id"], effect["row"]["owner"], effect["row"]["slot"]) == (
            "install", 0, "alice", "LIVE")
        bobs, _ = await r.survivor.claim("InstanceService.CreateInstance", "bob", "r2", b"y")
        assert bobs.effect is not None and bobs.effect["row"]["owner"] == "bob"  # taken over with its effect


async def test_an_uninstall_effect_names_its_owner_and_a_lost_write_leaves_none(database: Database) -> None:
    async with replicas(database) as r:
        claims, store, lifecycle = r.survivor, r.store, r.lifecycle
        install = allocator.plan_install(REF, Spec.of(0), {}, "alice")
        async with database.session() as session:
            await store.apply(session, REF, install)
        async with database.session() as session:
            slots = slots_of(await store.load(session, REF))

        lost, _ = await claims.claim("InstanceService.PauseInstance", "alice", "p1", b"p")
        pause = allocator.plan_pause(REF, Spec.of(1), slots, 0)
        await store.record_intent(REF, dataclasses.replace(pause, claims=((0, lost.key),)))
        async with lifecycle.locked(REF):
            await lifecycle.resolve_pending(REF, Spec.of(1))  # (R, X) unchanged: the pause never happened
        assert (await claims.held([lost]))[lost.key] == (True, None)
        await claims.finish(lost, grpc.StatusCode.UNAVAILABLE, b"")

        gone, _ = await claims.claim("InstanceService.DeleteInstance", "alice", "d1", b"d")
        uninstall = allocator.plan_uninstall(REF, Spec.of(1), slots, 0)
        await store.record_intent(REF, dataclasses.replace(uninstall, claims=((0, gone.key),)))
        async with lifecycle.locked(REF):
            await lifecycle.resolve_pending(REF, Spec.of(0, {0}))
        _, effect = (await claims.held([gone]))[gone.key]
        assert effect is not None
        assert (effect["op"], effect["row"]["owner"], effect["row"]["slot"]) == (
            "uninstall", "alice", SlotState.RELEASING.value)
