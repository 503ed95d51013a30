"""Pauses and uninstalls queued for one template go into one GameServerSet write (services/instance/downs.py),
on the test bed: each caller is answered with its own instance or its own refusal, and the controller ends up
running exactly what the records say. The queue is formed by holding the template lock, never by timing."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest

from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance.app import InstanceService

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template

pytestmark = pytest.mark.testbed


async def test_queued_pauses_and_uninstalls_share_one_write(testbed: Testbed, game: Game, instance_settings,
                                                            start_gateway, client_for, caplog: Any) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    lifecycle = gw.service("instance", InstanceService).lifecycle
    made = {u: await c.install(u) for u in ("alice", "bob", "carol", "dave", "erin")}
    for user, inst in made.items():
        await c.wait_state(user, inst.name, State.RUNNING)
    for user in ("carol", "erin"):  # carol's uninstall then writes nothing of its own, erin's pause is a no-op
        await c.pause(user, made[user].name)
        await c.wait_state(user, made[user].name, State.PAUSED)

    ref = TemplateRef(game.namespace, SAMPLE)
    caplog.set_level(logging.INFO, logger="aigc_gateway.services.instance.timing")
    async with lifecycle.locked(ref):
        calls = [asyncio.ensure_future(call) for call in (
            c.pause("alice", made["alice"].name),
            c.uninstall("bob", made["bob"].name),
            c.uninstall("carol", made["carol"].name),
            c.pause("mallory", made["dave"].name),  # not hers: refused, the others go on
            c.pause("erin", made["erin"].name),
        )]
        queued = lifecycle._downs.queues
        await wait_for(lambda: len(queued.entries(ref.key)) == len(calls), 60, interval=0.05,
                       what="the calls queued behind the template lock")
    alice, bob, carol, mallory, erin = await asyncio.gather(*calls, return_exceptions=True)

    assert not isinstance(alice, BaseException) and not isinstance(bob, BaseException), (alice, bob)
    assert not isinstance(carol, BaseException), carol
    assert (alice.name, alice.owner) == (made["alice"].name, "alice") and alice.state in (State.PAUSING,
                                                                                            State.PAUSED)
    assert (bob.name, bob.owner, bob.state) == (made["bob"].name, "bob", State.UNINSTALLING)
    assert (carol.name, carol.owner, carol.state) == (made["carol"].name, "carol", State.UNINSTALLING)
    assert isinstance(mallory, grpc.aio.AioRpcError) and mallory.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not isinstance(erin, BaseException), erin
    assert (erin.name, erin.owner, erin.state) == (made["erin"].name, "erin", State.PAUSED)

    steps = [r.step for r in caplog.records if getattr(r, "step", None) and r.step["template"] == ref.key
             and r.step["calls"] == len(calls)]
    assert [(s["outcome"], s["writes"]) for s in steps] == [("OK", 1)], steps  # one write for all

    spec = (await game.get_gss(SAMPLE))["spec"]
    assert spec["replicas"] == 1  # dave's alone
    assert (await c.get("dave", made["dave"].name)).owner == "dave"
    await c.wait_state("alice", made["alice"].name, State.PAUSED)
    await c.wait_consistent(90)
