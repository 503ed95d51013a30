"""Per-instance revision (issue 14, docs/upgrade.md): GetInstance, ListInstances and WatchInstance report the
template revision an instance's pod runs (its `controller-revision-hash`) and whether the template has moved on
(the Advanced StatefulSet's update revision). The rollout itself is driven here as the OKG fact tests drive it
(tests/okg/test_update_facts.py): the image change written paused, then one pod let through with the partition,
and the kubelet's report of the new image written by the test (kwok never restarts a container)."""
from __future__ import annotations

import copy
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from kubernetes_asyncio.client.exceptions import ApiException

from aigc_gateway.api.v1 import instance_pb2

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template
from .test_watch import collect

pytestmark = pytest.mark.testbed

NEW = "yunqi-registry.cn-shanghai.cr.aliyuncs.com/lab/stable-diffusion:v1.0.1-cpu"
REVISION = "controller-revision-hash"


async def act_as_kubelet(game: Game, i: int) -> None:
    """What a kubelet reports once it restarted the container on the new image; again on 409."""
    for _ in range(20):
        pod = await game.core.read_namespaced_pod(f"{SAMPLE}-{i}", game.namespace)
        status = copy.deepcopy(pod.status)
        status.container_statuses[0].image = NEW
        for c in status.conditions:
            if c.type == "Ready":
                c.status, c.reason, c.message = "True", None, None
        pod.status = status
        try:
            await game.core.replace_namespaced_pod_status(pod.metadata.name, game.namespace, pod)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise AssertionError(f"could not write pod {i}'s status: conflicts persisted")


async def update_revision(game: Game) -> str:
    asts = await game.custom.get_namespaced_custom_object("apps.kruise.io", "v1beta1", game.namespace,
                                                          "statefulsets", SAMPLE)
    return str((asts.get("status") or {}).get("updateRevision") or "")


async def test_instances_report_their_revision_and_whether_an_update_is_available(
        testbed: Testbed, game: Game, instance_settings, start_gateway, client_for) -> None:
    await create_template(game, testbed)
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

    # The image change, paused: no pod moves, the template's revision does.
    def change(spec: dict) -> None:
        spec["gameServerTemplate"]["spec"]["containers"][0]["image"] = NEW
        spec["updateStrategy"]["rollingUpdate"].update(paused=True, partition=2)
    started = time.monotonic()
    await game.update_gss(SAMPLE, change)
    new = await wait_for(lambda: _moved_on(game, old), 60, what="the Advanced StatefulSet's new update revision")
    events = await collect(watch, lambda e: e.instance.update_available)
    print(f"image written -> watch event with update_available: {time.monotonic() - started:.2f} s")
    assert (events[-1].instance.revision, events[-1].instance.update_available) == (old, True)
    watch.cancel()
    listed = await c.stub.ListInstances(instance_pb2.ListInstancesRequest(parent=c.parent()),
                                        metadata=c.md("admin"))
    assert [(i.id, i.revision, i.update_available) for i in listed.instances] == [(0, old, True), (1, old, True)]

    # One pod let through: partition 1 moves the highest ordinal (bob's); it is updated in place.
    await game.update_gss(SAMPLE, lambda s: s["updateStrategy"]["rollingUpdate"].update(paused=False, partition=1))

    async def bob_moved() -> bool:
        return (await game.pods(SAMPLE))[1].metadata.labels[REVISION] == new
    await wait_for(bob_moved, 60, what="bob's pod on the new revision")
    uid = (await game.pods(SAMPLE))[1].metadata.uid
    await act_as_kubelet(game, 1)
    moved = await c.wait_state("bob", bob.name, State.RUNNING)
    assert (moved.revision, moved.update_available) == (new, False)
    assert (await game.pods(SAMPLE))[1].metadata.uid == uid  # in place: the same pod
    stayed = await c.get("alice", alice.name)
    assert (stayed.revision, stayed.update_available) == (old, True)

    # Paused, alice has no pod: she reports the revision she will resume on, and nothing to update.
    await c.pause("alice", alice.name)
    paused = await c.wait_state("alice", alice.name, State.PAUSED)
    assert (paused.revision, paused.update_available) == (new, False)

    # UpdateInstance is declared and answers UNIMPLEMENTED until the rollout reconciler is wired.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.stub.UpdateInstance(instance_pb2.UpdateInstanceRequest(name=bob.name), metadata=c.md("bob"))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reason(err.value) == "NOT_IMPLEMENTED"


async def _moved_on(game: Game, old: str) -> str | None:
    current = await update_revision(game)
    return current if current and current != old else None


def reason(err: grpc.aio.AioRpcError) -> str:
    info = error_details_pb2.ErrorInfo()
    return next((info.reason for d in rpc_status.from_call(err).details if d.Unpack(info)), "")
