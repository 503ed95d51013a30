"""kruise's lifecycle hooks on a GameServerSet's pods (issue 14): a per-pod veto the gateway alone writes.

`spec.lifecycle.inPlaceUpdate.labelsHandler` and `spec.lifecycle.preDelete.labelsHandler` (kruise v1.8,
`inPlaceUpdatePod` and the pre-delete path; kruise-game v1.0.0 copies `spec.lifecycle` to the Advanced
StatefulSet): a pod carrying the label is parked instead of being updated or deleted, whatever the
partition and priorities choose. The update rule itself is in test_update_facts.py.
"""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client

from aigc_gateway.upgrades import HOLD_LABEL  # any label works; the gateway owns this one
from tests.okg.test_facts import GSS, pvc_name, start
from tests.okg.test_update_facts import (
    LIFECYCLE,
    NEW,
    OLD,
    REVISION,
    act_as_kubelet,
    condition,
    revisions,
    set_partition,
    settled,
    upgrade,
    workload,
)
from tests.plugins.kube import Game, api_client, load_sample, wait_for
from tests.plugins.testbed import Testbed

pytestmark = pytest.mark.testbed


async def test_an_in_place_update_hook_label_holds_a_chosen_pod_until_it_is_removed(
        testbed: Testbed, k8s_namespace: str) -> None:
    """kruise's lifecycle hook (GameServerSet `spec.lifecycle.inPlaceUpdate.labelsHandler`, copied to the
    Advanced StatefulSet): a pod carrying the label is parked in PreparingUpdate instead of being updated, even
    when partition and priorities choose it. A per-pod veto the controller cannot put back."""
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        gss = load_sample(GSS, testbed.domain, k8s_namespace)
        gss["spec"]["lifecycle"] = {"inPlaceUpdate": {"labelsHandler": {HOLD_LABEL: "true"}}}
        await game.create_gss(gss)
        await game.update_gss(GSS, lambda s: s.update(replicas=2))
        before = await game.wait_running(GSS, {0, 1})
        old = revisions(before)[0]
        await game.core.patch_namespaced_pod(f"{GSS}-1", k8s_namespace, {"metadata": {"labels": {HOLD_LABEL: "true"}}})

        await upgrade(game, partition=0)  # both chosen
        new = (await settled(game, updated=1))["status"]["updateRevision"]

        async def parked() -> client.V1Pod | None:
            pod = (await game.pods(GSS))[1]
            return pod if pod.metadata.labels.get(LIFECYCLE) == "PreparingUpdate" else None
        pod = await wait_for(parked, 30, what="pod 1 parked in PreparingUpdate")
        assert pod.metadata.labels[REVISION] == old and pod.spec.containers[0].image == OLD
        assert pod.metadata.uid == before[1].metadata.uid and condition(pod, "Ready") == "True"
        assert revisions(await game.pods(GSS)) == {0: new, 1: old}
        # OKG shows the parked pod's GameServer as PreUpdate (the gateway must read it as running).
        assert await wait_for(lambda: _states_are(game, {1: "PreUpdate"}), 30, what="GameServer 1 PreUpdate")

        # The label removed, the update proceeds in place.
        await game.core.patch_namespaced_pod(f"{GSS}-1", k8s_namespace, {"metadata": {"labels": {HOLD_LABEL: None}}})
        await settled(game, updated=2)
        pod = (await game.pods(GSS))[1]
        assert pod.metadata.labels[REVISION] == new and pod.metadata.uid == before[1].metadata.uid


async def test_a_lifecycle_change_alone_does_not_reach_the_workload(testbed: Testbed, k8s_namespace: str) -> None:
    """kruise-game copies the GameServerSet to its Advanced StatefulSet only when a hash of the update
    strategy, the pod template and the network changes: `spec.lifecycle` alone waits for such a change."""
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        gss = load_sample(GSS, testbed.domain, k8s_namespace)
        del gss["spec"]["lifecycle"]  # the samples ship the hook; this fact is about adding one later
        await game.create_gss(gss)
        await game.update_gss(GSS, lambda s: s.update(replicas=1))
        await game.wait_running(GSS, {0})
        hook = {"inPlaceUpdate": {"labelsHandler": {HOLD_LABEL: "true"}}}
        await game.update_gss(GSS, lambda s: s.update(lifecycle=hook))
        await settled(game, updated=1)  # the GameServerSet's status observed the write
        assert "lifecycle" not in (await workload(game))["spec"]
        await set_partition(game, 0)  # any change the hash covers carries it along
        await wait_for(lambda: _workload_has_lifecycle(game), 30, what="lifecycle in the workload")
        assert (await workload(game))["spec"]["lifecycle"] == hook


async def test_a_pod_updated_without_the_label_is_held_by_kruise_itself_on_the_next_change(
        testbed: Testbed, k8s_namespace: str) -> None:
    """With the hook on the template (the samples and every template the gateway writes), a pod updated in place
    without the label ends in lifecycle state `Updated`; when the next change chooses it, kruise moves it to
    PreparingUpdate and puts the hook's label on it itself (UpdatePodLifecycleWithHandler), so it is parked until
    the label is taken off: whoever lets a pod move must take the label off after kruise chose it."""
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 1)
        uid = (await game.pods(GSS))[0].metadata.uid
        await upgrade(game, partition=0)
        await settled(game, updated=1)
        await act_as_kubelet(game, 0)
        await wait_for(lambda: _lifecycle_is(game, {0: "Updated"}), 30, what="pod 0 Updated")
        assert HOLD_LABEL not in (await game.pods(GSS))[0].metadata.labels

        third = NEW.replace("v1.0.1", "v1.0.2")
        await upgrade(game, image=third)
        await wait_for(lambda: _lifecycle_is(game, {0: "PreparingUpdate"}), 30, what="pod 0 parked")
        pod = (await game.pods(GSS))[0]
        assert pod.metadata.labels[HOLD_LABEL] == "true" and pod.spec.containers[0].image == NEW
        assert pod.metadata.uid == uid

        await game.core.patch_namespaced_pod(f"{GSS}-0", k8s_namespace, {"metadata": {"labels": {HOLD_LABEL: None}}})
        async def moved() -> bool:
            return (await game.pods(GSS))[0].spec.containers[0].image == third
        await wait_for(moved, 30, what="pod 0 updated once the label is off")
        assert (await game.pods(GSS))[0].metadata.uid == uid


async def _workload_has_lifecycle(game: Game) -> bool:
    return "lifecycle" in (await workload(game))["spec"]


async def test_a_pre_delete_hook_label_holds_a_recreating_update_and_a_pause(
        testbed: Testbed, k8s_namespace: str) -> None:
    """The same veto for changes that recreate pods (`spec.lifecycle.preDelete.labelsHandler`): the labelled
    pod is parked in PreparingDelete. It parks the controller's other deletions too: a pause of a labelled id
    waits for the label, while the GameServerSet's status already counts the lowered replicas."""
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        gss = load_sample(GSS, testbed.domain, k8s_namespace)
        gss["spec"]["lifecycle"] = {"preDelete": {"labelsHandler": {HOLD_LABEL: "true"}}}
        await game.create_gss(gss)
        await game.update_gss(GSS, lambda s: s.update(replicas=3))
        before = await game.wait_running(GSS, {0, 1, 2})
        old = revisions(before)[0]
        for i in (1, 2):
            await game.core.patch_namespaced_pod(f"{GSS}-{i}", k8s_namespace,
                                                 {"metadata": {"labels": {HOLD_LABEL: "true"}}})

        # Not in place (args): 0 is recreated, 1 and 2 are parked.
        await game.update_gss(GSS, lambda s: s["gameServerTemplate"]["spec"]["containers"][0].update(
            args=["--listen"]))
        await wait_for(lambda: _lifecycle_is(game, {1: "PreparingDelete", 2: "PreparingDelete"}), 30,
                       what="1 and 2 parked in PreparingDelete")
        new = (await settled(game, updated=1))["status"]["updateRevision"]
        pods = await game.wait_running(GSS, {0, 1, 2})
        assert revisions(pods) == {0: new, 1: old, 2: old}
        assert [pods[i].metadata.uid for i in (1, 2)] == [before[i].metadata.uid for i in (1, 2)]
        assert pods[0].metadata.uid != before[0].metadata.uid
        assert await wait_for(lambda: _states_are(game, {1: "PreDelete", 2: "PreDelete"}), 30,
                              what="GameServers 1 and 2 PreDelete")

        # Pause 2: its pod stays (parked) although the GameServerSet's status says 2 replicas.
        await game.update_gss(GSS, lambda s: s.update(replicas=2, reserveGameServerIds=[2]))
        gss_status = await wait_for(lambda: _gss_replicas(game, 2), 30, what="GameServerSet status.replicas 2")
        assert gss_status["preDeleteReplicas"] == 2
        assert before[2].metadata.uid == (await game.pods(GSS))[2].metadata.uid

        # Labels off: 2 goes (paused), 1 is made again on the new revision, on its disk.
        disk1 = (await game.pvcs())[pvc_name(GSS, 1)].metadata.uid
        for i in (1, 2):
            await game.core.patch_namespaced_pod(f"{GSS}-{i}", k8s_namespace,
                                                 {"metadata": {"labels": {HOLD_LABEL: None}}})
        await settled(game, updated=2)
        pods = await game.wait_running(GSS, {0, 1})
        assert revisions(pods) == {0: new, 1: new} and pods[1].metadata.uid != before[1].metadata.uid
        assert (await game.pvcs())[pvc_name(GSS, 1)].metadata.uid == disk1


async def _lifecycle_is(game: Game, expected: dict[int, str]) -> bool:
    pods = await game.pods(GSS)
    return all(i in pods and pods[i].metadata.labels.get(LIFECYCLE) == s for i, s in expected.items())


async def _gss_replicas(game: Game, replicas: int) -> dict | None:
    gss = await game.get_gss(GSS)
    status = gss.get("status") or {}
    ok = status.get("observedGeneration") == gss["metadata"]["generation"] and status.get("replicas") == replicas
    return status if ok else None


async def _states_are(game: Game, expected: dict[int, str]) -> bool:
    servers = await game.game_servers(GSS)
    return {i: servers[i].get("status", {}).get("currentState") for i in expected} == expected
