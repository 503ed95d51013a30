"""WatchInstance: the current state first, then every change with its message, until the client cancels."""
from __future__ import annotations

import asyncio

import pytest

from aigc_gateway.api.v1 import instance_pb2

from ..plugins.kube import Game
from ..plugins.testbed import Testbed
from .conftest import State

pytestmark = pytest.mark.testbed


async def collect(call, until, timeout: float = 90) -> list[instance_pb2.InstanceEvent]:  # type: ignore[no-untyped-def]
    events: list[instance_pb2.InstanceEvent] = []

    async def read() -> None:
        async for event in call:
            events.append(event)
            if until(event):
                return
    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise AssertionError(f"stream ended or stalled; got {[State.Name(e.instance.state) for e in events]}") from None
    return events


async def test_watch_streams_progress_of_install_and_pause(testbed: Testbed, game: Game, instance_settings,
                                                           start_gateway, client_for) -> None:
    """The watch starts while the pod cannot be scheduled (its node selector matches no node until the test
    labels one): the first event is the state before RUNNING, and the progress must stream after it,
    whatever the machine's speed (an install that ran before the watch started proved nothing)."""
    from ..plugins.kube import load_sample
    from .conftest import SAMPLE

    gate = f"aigc.test/watch-{game.namespace}"
    obj = load_sample(SAMPLE, testbed.domain, game.namespace, rename=SAMPLE)
    obj["spec"]["gameServerTemplate"]["spec"]["nodeSelector"] = {gate: "open"}
    await game.create_gss(obj)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    created = await c.install("alice")
    call = c.stub.WatchInstance(instance_pb2.WatchInstanceRequest(name=created.name), metadata=c.md("alice"))
    [first] = await collect(call, lambda e: True, timeout=30)
    assert first.source == "gateway" and first.instance.owner == "alice"  # the current state, at once
    assert first.instance.state in (State.INSTALLING, State.STARTING)  # the pod cannot run yet
    node = (await game.core.list_node()).items[0].metadata.name
    await game.core.patch_node(node, {"metadata": {"labels": {gate: "open"}}})  # the barrier opens
    try:
        events = await collect(call, lambda e: e.instance.state == State.RUNNING)
    finally:
        await game.core.patch_node(node, {"metadata": {"labels": {gate: None}}})
    assert events[-1].instance.access_uri and events[-1].message == "Ready"
    assert events[-1].instance.state == State.RUNNING
    assert all(e.time.seconds > 0 and e.message for e in [first, *events])
    assert {e.source for e in events} <= {"gameserver", "pod", "event", "gateway"}
    assert any(e.source in ("pod", "event", "gameserver") for e in events)

    await c.pause("alice", created.name)
    paused = await collect(call, lambda e: e.instance.state == State.PAUSED)
    assert paused[-1].instance.state_message == "Paused; the disk is kept"
    call.cancel()

    # A new watcher of a paused instance gets the current state first.
    again = c.stub.WatchInstance(instance_pb2.WatchInstanceRequest(name=created.name), metadata=c.md("alice"))
    now = await collect(again, lambda e: True, timeout=20)
    assert now[0].instance.state == State.PAUSED
    again.cancel()
