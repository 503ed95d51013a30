"""Per-instance revision (issue 14, docs/upgrade.md): GetInstance, ListInstances and WatchInstance report the
template revision an instance's pod runs (its `controller-revision-hash`) and whether the template has moved on
(the Advanced StatefulSet's update revision). The rollout itself is driven here as the OKG fact tests drive it
(tests/okg/test_update_facts.py): the image change written paused under the MANUAL policy (so the rollout step
holds both pods), then one owner asks with UpdateInstance, and the kubelet's report of the new image is written by
the test (kwok never restarts a container)."""
from __future__ import annotations

import time

import pytest

from aigc_gateway.api.v1 import instance_pb2

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template
from .test_watch import collect

pytestmark = pytest.mark.testbed

NEW = "yunqi-registry.cn-shanghai.cr.aliyuncs.com/lab/stable-diffusion:v1.0.1-cpu"
REVISION = "controller-revision-hash"
POLICY = "aigc.gateway.io/rollout-policy"
# The template service writes this hook on every template (docs/upgrade.md, fact 8).
HOOK = {"inPlaceUpdate": {"labelsHandler": {"aigc.gateway.io/update-hold": "true"}}}


async def update_revision(game: Game) -> str:
    asts = await game.custom.get_namespaced_custom_object("apps.kruise.io", "v1beta1", game.namespace,
                                                          "statefulsets", SAMPLE)
    return str((asts.get("status") or {}).get("updateRevision") or "")


async def test_instances_report_their_revision_and_whether_an_update_is_available(
        testbed: Testbed, game: Game, instance_settings, start_gateway, client_for) -> None:
    await create_template(game, testbed, lifecycle=HOOK)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    alice, bob = await c.install("alice"), await c.install("bob")
    assert (alice.id, bob.id) == (0, 1)
    for user, name in (("alice", alice.name), ("bob", bob.name)):
        await c.wait_state(user, name, State.RUNNING)
    old = (await game.pods(SAMPLE))[0].metadata.labels[REVISION]
    assert old == await update_revision(game)
    now = await c.get("alice", alice.name)
    assert (now.revision, now.update_available) == (old, False)

    watch = c.stub.WatchInstance(instance_pb2.WatchInstanceRequest(name=alice.name), metadata=c.md("alice"))
    [first] = await collect(watch, lambda e: True, timeout=30)
    assert (first.instance.revision, first.instance.update_available) == (old, False)

    # The image change, paused, MANUAL: the rollout step holds both pods (partition 2), nothing moves.
    def change(gss: dict) -> None:
        gss["spec"]["gameServerTemplate"]["spec"]["containers"][0]["image"] = NEW
        gss["spec"]["updateStrategy"]["rollingUpdate"]["paused"] = True
        gss["metadata"].setdefault("annotations", {})[POLICY] = "MANUAL"
    started = time.monotonic()
    await game.update_object(SAMPLE, change)
    new = await wait_for(lambda: _moved_on(game, old), 60, what="the Advanced StatefulSet's new update revision")
    events = await collect(watch, lambda e: e.instance.update_available)
    print(f"image written -> watch event with update_available: {time.monotonic() - started:.2f} s")
    assert (events[-1].instance.revision, events[-1].instance.update_available) == (old, True)
    watch.cancel()
    listed = await c.stub.ListInstances(instance_pb2.ListInstancesRequest(parent=c.parent()),
                                        metadata=c.md("admin"))
    assert [(i.id, i.revision, i.update_available) for i in listed.instances] == [(0, old, True), (1, old, True)]

    # Bob asks: his pod alone is let through, and is updated in place.
    asked = await c.stub.UpdateInstance(instance_pb2.UpdateInstanceRequest(name=bob.name), metadata=c.md("bob"))
    assert asked.name == bob.name

    async def bob_moved() -> bool:
        return (await game.pods(SAMPLE))[1].metadata.labels[REVISION] == new
    await wait_for(bob_moved, 60, what="bob's pod on the new revision")
    uid = (await game.pods(SAMPLE))[1].metadata.uid
    await game.act_as_kubelet(SAMPLE, 1, NEW)
    moved = await c.wait_state("bob", bob.name, State.RUNNING)
    assert (moved.revision, moved.update_available) == (new, False)
    assert (await game.pods(SAMPLE))[1].metadata.uid == uid  # in place: the same pod
    stayed = await c.get("alice", alice.name)
    assert (stayed.revision, stayed.update_available) == (old, True)
    again = await c.stub.UpdateInstance(instance_pb2.UpdateInstanceRequest(name=bob.name), metadata=c.md("bob"))
    assert (again.revision, again.update_available) == (new, False)

    # Paused, alice has no pod: she reports the revision she will resume on, and nothing to update.
    await c.pause("alice", alice.name)
    paused = await c.wait_state("alice", alice.name, State.PAUSED)
    assert (paused.revision, paused.update_available) == (new, False)

    # Her pod was held: the pause lowered the partition with it, so nothing is held any more.
    assert (await game.get_gss(SAMPLE))["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 0
    # UpdateInstance of a paused instance changes nothing: it resumes on the new revision anyway.
    same = await c.stub.UpdateInstance(instance_pb2.UpdateInstanceRequest(name=alice.name), metadata=c.md("alice"))
    assert (same.state, same.revision, same.update_available) == (State.PAUSED, new, False)


async def _moved_on(game: Game, old: str) -> str | None:
    current = await update_revision(game)
    return current if current and current != old else None

