"""A restart needs no GameServerSet write, so a plain one goes by the template lock (services/instance/restarts.py):
on the test bed, with the lock held by someone else, the owner's restart deletes her pod and is answered (the idle
culler's activity record needs the lock only to withdraw an announced pause, services/instance/idle.py); what is not
plain (a paused instance, a stranger) is refused exactly as under the lock. With a pause announced, the restart's
activity record waits for the lock and withdraws it. A running instance whose pod is going (or not made yet) is
answered past the held lock too, with nothing to delete."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import grpc
import pytest

from aigc_gateway.db.models import allocator_lock
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance.app import InstanceService
from aigc_gateway.services.instance.idle_models import IdleStateRow

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template

pytestmark = [pytest.mark.testbed, pytest.mark.timeout(300)]


async def test_a_plain_restart_goes_by_a_held_template_lock(testbed: Testbed, game: Game, instance_settings,
                                                            start_gateway, client_for) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    lifecycle = gw.service("instance", InstanceService).lifecycle
    alice = await c.install("alice")
    await c.wait_state("alice", alice.name, State.RUNNING)
    before = (await game.pods(SAMPLE))[0].metadata.uid

    async def replaced() -> bool:
        pod = (await game.pods(SAMPLE)).get(0)
        return pod is None or pod.metadata.uid != before

    async with lifecycle.locked(TemplateRef(game.namespace, SAMPLE)):  # e.g. a write waiting for the controller
        restarting = asyncio.ensure_future(c.restart("alice", alice.name))
        # Her pod goes while the lock is still held here (the wait only turns a hang into a failure).
        await wait_for(replaced, 60, interval=0.2, what="pod 0 deleted while the template lock is held")
        with pytest.raises(grpc.aio.AioRpcError) as stranger:
            await c.restart("mallory", alice.name)
        assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
        answer = await restarting  # answered while the lock is held (the test's timeout turns a hang into a failure)
        assert (answer.name, answer.owner) == (alice.name, "alice")

    # A pause announced: the restart's activity record withdraws it under the lock (it queues there).
    ref = TemplateRef(game.namespace, SAMPLE)
    iref = ref.instance(alice.id)
    async with lifecycle.db.session() as session:
        state = await session.get(IdleStateRow, (iref.namespace, iref.template, iref.id))
        assert state is not None and state.kept_at is not None  # the first restart's activity
        state.scheduled_pause_at = state.warned_activity_at = datetime.now(UTC)
    async with lifecycle.locked(ref):
        restarting = asyncio.ensure_future(c.restart("alice", alice.name))
        await wait_for(lambda: lifecycle._locks.local._users.get(allocator_lock(ref.namespace, ref.template)) == 2,
                       60, interval=0.05, what="the restart's activity record queued at the template lock")
    await restarting
    async with lifecycle.db.session() as session:
        state = await session.get(IdleStateRow, (iref.namespace, iref.template, iref.id))
        assert state is not None and state.scheduled_pause_at is None and state.warned_activity_at is None

    await c.pause("alice", alice.name)
    await c.wait_state("alice", alice.name, State.PAUSED)
    with pytest.raises(grpc.aio.AioRpcError) as paused:
        await c.restart("alice", alice.name)
    assert paused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await c.wait_consistent(60)


async def test_a_restart_of_a_running_instance_without_a_live_pod_goes_by_a_held_template_lock(
        testbed: Testbed, game: Game, instance_settings, start_gateway, client_for) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    lifecycle = gw.service("instance", InstanceService).lifecycle
    alice = await c.install("alice")
    await c.wait_state("alice", alice.name, State.RUNNING)
    pod = (await game.pods(SAMPLE))[0]
    name, uid = pod.metadata.name, pod.metadata.uid
    # Her pod held terminating by a finalizer: the row is LIVE, the pod is going and a new one will come.
    await game.core.patch_namespaced_pod(name, game.namespace, {"metadata": {"finalizers": ["aigc-gateway.test/hold"]}})
    try:
        await game.core.delete_namespaced_pod(name, game.namespace)
        async with lifecycle.locked(TemplateRef(game.namespace, SAMPLE)):  # e.g. a write waiting for the controller
            answer = await asyncio.wait_for(c.restart("alice", alice.name), 60)  # not queued behind the lock
            assert (answer.name, answer.owner) == (alice.name, "alice")
        held = await game.core.read_namespaced_pod(name, game.namespace)
        assert held.metadata.uid == uid and held.metadata.deletion_timestamp is not None
    finally:
        await game.core.patch_namespaced_pod(name, game.namespace, {"metadata": {"finalizers": None}})
    await c.wait_state("alice", alice.name, State.RUNNING)
    await c.wait_consistent(60)
