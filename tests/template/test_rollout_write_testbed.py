"""UpdateTemplate's seamless rollout on the test bed (issue 14, docs/upgrade.md, step 1 of "Writes"): under WHEN_IDLE
and MANUAL a pod-template change needs no allow_restart and is written in one GameServerSet write with
`paused: true`, the in-place update hook and the recorded policy, so the template's revision moves while no pod
does (until the instance service's rollout plans who may); IMMEDIATE still needs allow_restart and rolls every
live pod now, in place."""
from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf import duration_pb2

from aigc_gateway.api.v1 import template_pb2
from aigc_gateway.upgrades import HOLD_LABEL, REVISION_LABEL

from ..plugins.kube import Game, api_client, wait_for
from .cluster_helpers import text_for
from .conftest import source_text
from .test_access import violations
from .test_templates_testbed import api, publish  # noqa: F401 - the fixture

if TYPE_CHECKING:
    from ..plugins.testbed import Testbed

pytestmark = pytest.mark.testbed

NAME = "stable-diffusion-cpu"
HOOK = {"inPlaceUpdate": {"labelsHandler": {HOLD_LABEL: "true"}}}


async def _workload(game: Game) -> dict[str, Any]:
    """The template's Advanced StatefulSet (same name as the GameServerSet)."""
    return await game.custom.get_namespaced_custom_object("apps.kruise.io", "v1beta1", game.namespace,
                                                          "statefulsets", NAME)


async def _new_revision(game: Game, old: str) -> dict[str, Any]:
    """The workload once its update revision is another than ``old``."""
    async def check() -> dict[str, Any] | None:
        asts = await _workload(game)
        revision = (asts.get("status") or {}).get("updateRevision")
        return asts if revision and revision != old else None
    result: dict[str, Any] = await wait_for(check, 60, what="a new update revision")
    return result


def _pods(pods: dict[int, Any]) -> dict[int, tuple[str, str, str]]:
    """(UID, revision, image) per id."""
    return {i: (p.metadata.uid, p.metadata.labels[REVISION_LABEL], p.spec.containers[0].image)
            for i, p in pods.items()}


async def test_when_idle_and_manual_write_the_change_paused_and_no_pod_moves(api, testbed: Testbed) -> None:  # noqa: F811
    await publish(api, testbed)
    text = text_for(NAME, testbed.domain, api.namespace).replace("replicas: 0 ", "")  # the instance service's
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        # Two live instances, as the instance service would make them.
        await game.update_gss(NAME, lambda s: s.update(replicas=2))
        before = _pods(await game.wait_running(NAME, {0, 1}))
        revision = (await _new_revision(game, ""))["status"]["updateRevision"]
        assert {r for _, r, _ in before.values()} == {revision}

        for policy, tag in ((template_pb2.WHEN_IDLE, "v2.0.0"), (template_pb2.MANUAL, "v3.0.0")):
            source = source_text(text.replace(":v1.0.0-cpu", f":{tag}-cpu"))
            change = await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
                name=api.name(NAME), source=source, rollout_policy=policy,
                rollout_idle_after=duration_pb2.Duration(seconds=1800)), metadata=api.admin)  # no allow_restart
            assert change.template.images[0].endswith(f":{tag}-cpu")
            assert change.template.rollout_policy == policy
            assert change.template.rollout_idle_after.ToTimedelta() == timedelta(minutes=30)

            # One write: the change, paused, the hook and the recorded policy.
            gss = await game.get_gss(NAME)
            assert gss["spec"]["updateStrategy"]["rollingUpdate"] == {
                "podUpdatePolicy": "InPlaceIfPossible", "maxUnavailable": "100%", "paused": True}
            assert gss["spec"]["lifecycle"] == HOOK
            notes = gss["metadata"]["annotations"]
            assert (notes["aigc.gateway.io/rollout-policy"], notes["aigc.gateway.io/rollout-idle-after"]) == \
                (template_pb2.RolloutPolicy.Name(policy), "1800s")

            # The template's revision moved, with paused and the hook in the same workload spec (fact 8: the hook
            # arrives with the change) ...
            asts = await _new_revision(game, revision)
            revision = asts["status"]["updateRevision"]
            assert asts["spec"]["updateStrategy"]["rollingUpdate"]["paused"] is True
            assert asts["spec"]["lifecycle"] == HOOK
            # ... and no pod did: same UID, revision and image (fact 6: paused moves no pod).
            assert _pods(await game.pods(NAME)) == before
            print(f"{template_pb2.RolloutPolicy.Name(policy)}: update revision {revision}, pods unchanged")

        got = await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name(NAME)), metadata=api.admin)
        assert template_pb2.RolloutPolicy.Name(got.rollout_policy) == "MANUAL"
        assert got.rollout_idle_after.ToTimedelta() == timedelta(minutes=30)

        # IMMEDIATE still needs allow_restart, and says which field; nothing is written.
        source = source_text(text.replace(":v1.0.0-cpu", ":v4.0.0-cpu"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
                name=api.name(NAME), source=source, rollout_policy=template_pb2.IMMEDIATE), metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert violations(err.value) == [("allow_restart", "RESTART_NOT_ALLOWED")]
        assert (await game.get_gss(NAME))["spec"]["gameServerTemplate"]["spec"]["containers"][0][
            "image"].endswith(":v3.0.0-cpu")

        # With it: unpaused, and every live pod moves now, in place (same UID).
        change = await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
            name=api.name(NAME), source=source, rollout_policy=template_pb2.IMMEDIATE, allow_restart=True),
            metadata=api.admin)
        assert template_pb2.RolloutPolicy.Name(change.template.rollout_policy) == "IMMEDIATE"
        assert (await game.get_gss(NAME))["spec"]["updateStrategy"]["rollingUpdate"]["paused"] is False
        revision = (await _new_revision(game, revision))["status"]["updateRevision"]

        async def moved() -> dict[int, tuple[str, str, str]] | None:
            now = _pods(await game.pods(NAME))
            return now if all(r == revision for _, r, _ in now.values()) else None
        after = await wait_for(moved, 60, what="both pods on the IMMEDIATE revision")
        assert {i: (uid, image) for i, (uid, _, image) in after.items()} == {
            i: (uid, image.replace(":v1.0.0-cpu", ":v4.0.0-cpu")) for i, (uid, _, image) in before.items()}


async def test_the_instance_services_rollout_moves_what_update_template_wrote(
        template_api, testbed: Testbed, k8s_namespace: str, issuer) -> None:
    """Both services, as deployed: UpdateTemplate's paused WHEN_IDLE write, and the instance service's rollout step
    reading its annotations: the never-used instance moves in place, the busy one is held (old revision, the hold
    label, same pod) until its owner asks."""
    from aigc_gateway.api.v1 import instance_pb2

    from ..instance.conftest import Client, State
    from ..instance.rolling import started_long_ago

    api = await template_api(k8s_namespace, kubeconfig=str(testbed.kubeconfig), domain=testbed.domain,
                             services=("instance",),
                             instance={"reconcile_interval_seconds": 1, "release_wait_seconds": 30})
    await publish(api, testbed)
    c = Client(api.gateway.channel("instance"), issuer, k8s_namespace)
    made = {u: await c.install(u, NAME) for u in ("ann", "ben")}
    for user, instance in made.items():
        await c.wait_state(user, instance.name, State.RUNNING)
    await c.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=made["ben"].name), metadata=c.md("ben"))
    await started_long_ago(api.gateway.runtime.db, api.namespace, "ann")  # and never used: idle
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        before = _pods(await game.pods(NAME))
        old = before[0][1]
        text = text_for(NAME, testbed.domain, api.namespace).replace("replicas: 0 ", "")
        await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
            name=api.name(NAME), source=source_text(text.replace(":v1.0.0-cpu", ":v2.0.0-cpu")),
            rollout_policy=template_pb2.WHEN_IDLE, rollout_idle_after=duration_pb2.Duration(seconds=3600)),
            metadata=api.admin)
        new = (await _new_revision(game, old))["status"]["updateRevision"]

        async def planned() -> dict[int, Any] | None:
            pods = await game.pods(NAME)
            rolling = (await game.get_gss(NAME))["spec"]["updateStrategy"]["rollingUpdate"]
            ok = (pods[0].metadata.labels[REVISION_LABEL] == new and pods[1].metadata.labels.get(HOLD_LABEL) == "true"
                  and rolling.get("partition") == 1 and rolling.get("paused") is False)
            return pods if ok else None
        pods = await wait_for(planned, 60, what="ann moving, ben held (partition 1, unpaused)")
        assert _pods(pods)[1] == before[1] and pods[0].metadata.uid == before[0][0]
        await game.act_as_kubelet(NAME, 0, before[0][2].replace(":v1.0.0-cpu", ":v2.0.0-cpu"))
        ann = await c.wait_state("ann", made["ann"].name, State.RUNNING)
        assert (ann.revision, ann.update_available) == (new, False)
        ben = await c.get("ben", made["ben"].name)
        assert (ben.state, ben.revision, ben.update_available) == (State.RUNNING, old, True)
