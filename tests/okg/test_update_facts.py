"""How OpenKruiseGame rolls a template change onto live GameServers (issue 14), pinned on the test bed.

What the sources say (kruise-game v1.0.0 `util.NewAsts`, kruise v1.8 `sortPodsToUpdate`,
`isCurrentRevisionNeeded`, `DefaultCheckInPlaceUpdateCompleted`) and these tests confirm:

- the GameServerSet's `updateStrategy.rollingUpdate` is copied to its Advanced StatefulSet with an
  `unorderedUpdate.priorityStrategy.orderPriority` on the pod label `game.kruise.io/gs-update-priority`,
  which the GameServer controller copies from `GameServer.spec.updatePriority`;
- at most `replicas - partition` pods are on the update revision: the ones already there count first, then
  the old ones by that label, highest first, equal labels highest ordinal first;
- a pod created for an id (install, resume) gets the OLD revision when fewer than `partition` of the OTHER
  pods are old, else the new one;
- `InPlaceIfPossible` with an image-only change patches the pod (same UID, IP, disk); the update completes
  when the kubelet reports the new image. kwok's simulated kubelet never does (its pod-ready stage runs
  once), so here a test acts as the kubelet: it writes the new image into the container status and sets
  Ready, which is what a real kubelet reports after restarting the container.

Each test asserts after the controllers have settled (the Advanced StatefulSet's status observed its
generation and counts the updated pods the rule predicts), never after a sleep.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from aigc_gateway.upgrades import HOLD_LABEL
from tests.okg.test_facts import GSS, pvc_name, start
from tests.plugins.kube import Game, api_client, wait_for
from tests.plugins.testbed import Testbed

pytestmark = pytest.mark.testbed

OLD = "yunqi-registry.cn-shanghai.cr.aliyuncs.com/lab/stable-diffusion:v1.0.0-cpu"  # the sample's image
NEW = "yunqi-registry.cn-shanghai.cr.aliyuncs.com/lab/stable-diffusion:v1.0.1-cpu"
PRIORITY = "game.kruise.io/gs-update-priority"
REVISION = "controller-revision-hash"
INPLACE_STATE = "apps.kruise.io/inplace-update-state"
LIFECYCLE = "lifecycle.apps.kruise.io/state"


async def upgrade(game: Game, *, partition: int | None = None, max_unavailable: Any = None,
                  paused: bool | None = None, image: str = NEW) -> None:
    """An image-only template change, with the rolling update settings, in one GameServerSet write."""
    def mutate(spec: dict) -> None:
        spec["gameServerTemplate"]["spec"]["containers"][0]["image"] = image
        rolling = spec["updateStrategy"]["rollingUpdate"]
        if partition is not None:
            rolling["partition"] = partition
        if max_unavailable is not None:
            rolling["maxUnavailable"] = max_unavailable
        if paused is not None:
            rolling["paused"] = paused
    await game.update_gss(GSS, mutate)


async def set_partition(game: Game, partition: int) -> None:
    await game.update_gss(GSS, lambda s: s["updateStrategy"]["rollingUpdate"].update(partition=partition))


async def set_priority(game: Game, i: int, priority: int) -> int:
    """GameServer.spec.updatePriority, until the GameServer controller has copied it to the pod's label.

    The write is repeated while the GameServer does not show it. In the first run of these tests, a single
    write made right after the pods were Running twice never reached the pod's label within 30 s (the
    GameServer controller patches the whole spec it read when it syncs metadata, which can put back the
    value it read); the gateway's reconciler must likewise read back and write again. Returns how many
    writes it took (printed).
    """
    writes = 0

    async def copied() -> bool:
        nonlocal writes
        gs = await game.custom.get_namespaced_custom_object(
            "game.kruise.io", "v1alpha1", game.namespace, "gameservers", f"{GSS}-{i}")
        if str(gs["spec"].get("updatePriority")) != str(priority):
            writes += 1
            await game.custom.patch_namespaced_custom_object(
                "game.kruise.io", "v1alpha1", game.namespace, "gameservers", f"{GSS}-{i}",
                [{"op": "add", "path": "/spec/updatePriority", "value": priority}])
            return False
        pod = (await game.pods(GSS)).get(i)
        return pod is not None and pod.metadata.labels.get(PRIORITY) == str(priority)
    await wait_for(copied, 30, what=f"pod {i} label {PRIORITY}={priority}")
    print(f"updatePriority {priority} on {i}: {writes} write(s)")
    return writes


async def workload(game: Game) -> dict:
    """The GameServerSet's Advanced StatefulSet (same name)."""
    return await game.custom.get_namespaced_custom_object(
        "apps.kruise.io", "v1beta1", game.namespace, "statefulsets", GSS)


async def settled(game: Game, updated: int) -> dict:
    """Wait until both controllers have applied the GameServerSet as it is now (replicas and partition in the
    Advanced StatefulSet, both statuses observed) and `updated` pods are on the update revision."""
    async def check() -> dict | None:
        gss = await game.get_gss(GSS)
        asts = await workload(game)
        status = asts.get("status") or {}
        ok = ((gss.get("status") or {}).get("observedGeneration") == gss["metadata"]["generation"]
              and asts["spec"]["replicas"] == gss["spec"]["replicas"]
              and asts["spec"]["updateStrategy"]["rollingUpdate"].get("partition", 0)
              == gss["spec"]["updateStrategy"]["rollingUpdate"].get("partition", 0)
              and status.get("observedGeneration") == asts["metadata"]["generation"]
              and status.get("replicas") == gss["spec"]["replicas"]
              and status.get("updatedReplicas", 0) == updated)
        return asts if ok else None
    return await wait_for(check, 60, what=f"workload settled with {updated} updated pods")


def revisions(pods: dict[int, client.V1Pod]) -> dict[int, str]:
    return {i: p.metadata.labels[REVISION] for i, p in pods.items()}


def condition(pod: client.V1Pod, kind: str) -> str | None:
    return next((c.status for c in pod.status.conditions or () if c.type == kind), None)


async def act_as_kubelet(game: Game, i: int, image: str = NEW) -> None:
    await game.act_as_kubelet(GSS, i, image)


async def test_partition_with_equal_priorities_updates_the_highest_ordinals_in_place(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 4)
        before = await game.pods(GSS)
        old = revisions(before)[0]

        started = time.perf_counter()
        await upgrade(game, partition=2)
        asts = await settled(game, updated=2)
        print(f"template write to 2 pods on the new revision: {time.perf_counter() - started:.2f}s")
        new = asts["status"]["updateRevision"]
        assert new != old and asts["status"]["currentRevision"] == old

        pods = await game.pods(GSS)
        # replicas - partition = 2 pods move; with every priority 0, the highest ordinals.
        assert revisions(pods) == {0: old, 1: old, 2: new, 3: new}
        # In place: the same pods (UID, IP), the new image in the spec at once.
        assert {i: p.metadata.uid for i, p in pods.items()} == {i: p.metadata.uid for i, p in before.items()}
        assert {i: p.status.pod_ip for i, p in pods.items()} == {i: p.status.pod_ip for i, p in before.items()}
        assert {i: p.spec.containers[0].image for i, p in pods.items()} == {0: OLD, 1: OLD, 2: NEW, 3: NEW}
        # The GameServerSet's status has no revision of its own: only the counts.
        gss_status = (await wait_for(lambda: _gss_counts(game, 2), 30, what="GameServerSet updatedReplicas 2"))
        assert "updateRevision" not in gss_status and "currentRevision" not in gss_status


async def test_update_priority_chooses_which_pods_move_and_partition_how_many(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 4)
        old = revisions(await game.pods(GSS))[0]
        await set_priority(game, 0, 5)
        await set_priority(game, 1, 10)

        await upgrade(game, partition=2)
        new = (await settled(game, updated=2))["status"]["updateRevision"]
        # The two highest priorities move, whatever their ordinals; the lowest stay old.
        assert revisions(await game.pods(GSS)) == {0: new, 1: new, 2: old, 3: old}
        servers = await game.game_servers(GSS)
        assert {i: gs["status"]["updatePriority"] for i, gs in servers.items()} == {0: "5", 1: "10", 2: "0", 3: "0"}

        # One more: 2 and 3 tie at 0, the higher ordinal goes first.
        await set_partition(game, 1)
        await settled(game, updated=3)
        assert revisions(await game.pods(GSS)) == {0: new, 1: new, 2: old, 3: new}

        # Raising the partition again never rolls a pod back.
        await set_partition(game, 3)
        asts = await settled(game, updated=3)
        assert asts["status"]["updatedReplicas"] == 3
        assert revisions(await game.pods(GSS)) == {0: new, 1: new, 2: old, 3: new}


async def test_in_place_update_keeps_pod_ip_and_disk_and_completes_when_the_kubelet_reports_the_image(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 2)
        before = await game.pods(GSS)
        disks = {n: p.metadata.uid for n, p in (await game.pvcs()).items()}

        await upgrade(game, partition=0)
        new = (await settled(game, updated=2))["status"]["updateRevision"]
        pods = await game.pods(GSS)
        for i in (0, 1):
            pod = pods[i]
            assert pod.metadata.uid == before[i].metadata.uid
            assert pod.status.pod_ip == before[i].status.pod_ip
            assert pod.metadata.labels[REVISION] == new  # the label moves when the update starts
            assert pod.spec.containers[0].image == NEW
            assert pod.status.container_statuses[0].image == OLD  # kwok's kubelet never restarts it
            assert condition(pod, "InPlaceUpdateReady") == "False"
            assert condition(pod, "Ready") == "False"  # the readiness gate holds it out of the Service
            assert new in pod.metadata.annotations[INPLACE_STATE]
            assert pod.metadata.labels[LIFECYCLE] == "Updating"
        assert await wait_for(lambda: _states_are(game, {0: "Updating", 1: "Updating"}), 30,
                              what="GameServers Updating")

        await act_as_kubelet(game, 0)

        async def done() -> client.V1Pod | None:
            pod = (await game.pods(GSS))[0]
            ok = (condition(pod, "InPlaceUpdateReady") == "True"
                  and pod.metadata.labels.get(LIFECYCLE) not in (None, "Updating"))
            return pod if ok else None
        pod = await wait_for(done, 30, what="in-place update of 0 complete")
        # The samples (as every template the gateway writes) carry the in-place update hook (test_update_hooks.py):
        # kruise ends an update of a pod without the hook's label in `Updated`, not `Normal` (it moves it to Normal
        # only once every hook label is on the pod; refreshPodState). The GameServer is Ready all the same.
        assert pod.metadata.labels[LIFECYCLE] == "Updated"
        assert pod.metadata.uid == before[0].metadata.uid and pod.status.pod_ip == before[0].status.pod_ip
        assert await wait_for(lambda: _states_are(game, {0: "Ready", 1: "Updating"}), 30,
                              what="GameServer 0 Ready, 1 still Updating")
        # The disks never moved.
        assert {n: p.metadata.uid for n, p in (await game.pvcs()).items()} == disks
        assert set(disks) == {pvc_name(GSS, 0), pvc_name(GSS, 1)}


async def _gss_counts(game: Game, updated: int) -> dict | None:
    status = (await game.get_gss(GSS)).get("status") or {}
    return status if status.get("updatedReplicas") == updated else None


async def _states_are(game: Game, expected: dict[int, str]) -> bool:
    servers = await game.game_servers(GSS)
    return {i: servers[i].get("status", {}).get("currentState") for i in expected} == expected


async def test_resumed_id_takes_the_new_revision_only_when_partition_counts_the_other_old_pods(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 3)
        old = revisions(await game.pods(GSS))[0]
        disk2 = (await game.pvcs())[pvc_name(GSS, 2)].metadata.uid
        disk0 = (await game.pvcs())[pvc_name(GSS, 0)].metadata.uid
        await set_priority(game, 2, 9)

        # Pause 2, then change the template holding one pod (0) old.
        await game.update_gss(GSS, lambda s: s.update(replicas=2, reserveGameServerIds=[2]))
        await game.wait_running(GSS, {0, 1})
        await upgrade(game, partition=1)
        new = (await settled(game, updated=1))["status"]["updateRevision"]
        assert revisions(await game.pods(GSS)) == {0: old, 1: new}

        # Resume 2: one other pod (0) is old and partition is 1, so 2 is CREATED on the new revision.
        await game.update_gss(GSS, lambda s: s.update(replicas=3, reserveGameServerIds=[]))
        pods = await game.wait_running(GSS, {0, 1, 2})
        await settled(game, updated=2)
        pods = await game.pods(GSS)
        assert revisions(pods) == {0: old, 1: new, 2: new}
        assert INPLACE_STATE not in (pods[2].metadata.annotations or {})  # created new, not updated after
        assert pods[2].spec.containers[0].image == NEW
        assert (await game.pvcs())[pvc_name(GSS, 2)].metadata.uid == disk2  # on its old disk
        # Its GameServer was deleted with the pause and made again: updatePriority is back to 0.
        assert (await game.game_servers(GSS))[2]["spec"]["updatePriority"] == 0

        # Pause the old pod 0 WITHOUT lowering the partition, then resume it: no other pod is old,
        # 0 < partition 1, so it comes back on the OLD revision. The partition must count only live
        # old pods, and be right before a resume's write.
        await game.update_gss(GSS, lambda s: s.update(replicas=2, reserveGameServerIds=[0]))
        await game.wait_running(GSS, {1, 2})
        await game.update_gss(GSS, lambda s: s.update(replicas=3, reserveGameServerIds=[]))
        await game.wait_running(GSS, {0, 1, 2})
        await settled(game, updated=2)
        pods = await game.pods(GSS)
        assert revisions(pods) == {0: old, 1: new, 2: new}
        assert pods[0].spec.containers[0].image == OLD
        assert (await game.pvcs())[pvc_name(GSS, 0)].metadata.uid == disk0


async def test_new_id_takes_the_new_revision_only_when_partition_counts_the_other_old_pods(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 2)
        old = revisions(await game.pods(GSS))[0]
        # The template changes while both live pods are held old.
        await upgrade(game, partition=2)
        new = (await settled(game, updated=0))["status"]["updateRevision"]

        # Install 2: two other pods are old, partition 2: created on the new revision.
        await game.update_gss(GSS, lambda s: s.update(replicas=3))
        await game.wait_running(GSS, {0, 1, 2})
        await settled(game, updated=1)
        assert revisions(await game.pods(GSS)) == {0: old, 1: old, 2: new}

        # A partition above the old pods' count: install 3 has 2 old others < 4, so it starts OLD. (The
        # partition goes first, in a write of its own: the GameServerSet controller applies a scale before
        # an update strategy written with it, so a partition changed in the install's own write is late.)
        await set_partition(game, 4)
        await settled(game, updated=1)
        await game.update_gss(GSS, lambda s: s.update(replicas=4))
        await game.wait_running(GSS, {0, 1, 2, 3})
        await settled(game, updated=1)
        assert revisions(await game.pods(GSS)) == {0: old, 1: old, 2: new, 3: old}


async def test_max_unavailable_bounds_the_in_place_updates_in_flight(testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 3)
        old = revisions(await game.pods(GSS))[0]
        await set_priority(game, 0, 3)
        await set_priority(game, 1, 2)
        await set_priority(game, 2, 1)

        await upgrade(game, partition=0, max_unavailable=1)
        new = (await settled(game, updated=1))["status"]["updateRevision"]
        # One update in flight; the others wait for it to finish (kwok never finishes it alone).
        assert revisions(await game.pods(GSS)) == {0: new, 1: old, 2: old}

        await act_as_kubelet(game, 0)
        # The samples carry the in-place update hook (test_update_hooks.py): pod 0, updated without the hook's label,
        # ends in lifecycle state `Updated`, which kruise counts as unavailable (the workload's availableReplicas
        # drops to 2 while all 3 are Ready), so at maxUnavailable 1 the next update does not start...
        async def parked_updated() -> dict | None:
            pod = (await game.pods(GSS))[0]
            status = (await workload(game)).get("status") or {}
            ok = pod.metadata.labels.get(LIFECYCLE) == "Updated" and condition(pod, "Ready") == "True" \
                and status.get("readyReplicas") == 3 and status.get("availableReplicas") == 2
            return status if ok else None
        await wait_for(parked_updated, 30, what="pod 0 Updated, ready but not available")
        assert revisions(await game.pods(GSS)) == {0: new, 1: old, 2: old}
        # ...until every hook label is on it: kruise moves it to Normal (available) and starts the next one.
        await game.core.patch_namespaced_pod(f"{GSS}-0", k8s_namespace, {"metadata": {"labels": {HOLD_LABEL: "true"}}})
        await settled(game, updated=2)
        assert revisions(await game.pods(GSS)) == {0: new, 1: new, 2: old}
        assert (await game.pods(GSS))[0].metadata.labels[LIFECYCLE] == "Normal"
        assert await wait_for(lambda: _states_are(game, {0: "Ready", 1: "Updating", 2: "Ready"}), 30,
                              what="GameServer 0 Ready again, 1 Updating, 2 untouched")


async def test_paused_rolling_update_moves_no_pod_while_new_pods_start_on_the_new_revision(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 2)
        old = revisions(await game.pods(GSS))[0]
        # The template change and `paused` in one write, partition 0: nothing rolls...
        await upgrade(game, partition=0, paused=True)
        asts = await settled(game, updated=0)
        new = asts["status"]["updateRevision"]
        assert asts["spec"]["updateStrategy"]["rollingUpdate"]["paused"] is True
        assert revisions(await game.pods(GSS)) == {0: old, 1: old}

        # ...and a new id starts on the new revision (two old others, not fewer than partition 0).
        await game.update_gss(GSS, lambda s: s.update(replicas=3))
        await game.wait_running(GSS, {0, 1, 2})
        await settled(game, updated=1)
        assert revisions(await game.pods(GSS)) == {0: old, 1: old, 2: new}

        # The gateway then holds what it must (partition) and unpauses: still nothing moves.
        await game.update_gss(GSS, lambda s: s["updateStrategy"]["rollingUpdate"].update(partition=2, paused=False))
        await settled(game, updated=1)
        assert revisions(await game.pods(GSS)) == {0: old, 1: old, 2: new}


async def test_a_change_that_cannot_be_made_in_place_recreates_pods_on_their_disks_and_resets_priority(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 2)
        before = await game.pods(GSS)
        disks = {n: p.metadata.uid for n, p in (await game.pvcs()).items()}
        await set_priority(game, 1, 7)

        # The container's args change: not image or metadata only, so InPlaceIfPossible recreates.
        await game.update_gss(GSS, lambda s: s["gameServerTemplate"]["spec"]["containers"][0].update(
            args=["--listen", "--skip-torch-cuda-test"]))

        async def recreated() -> dict | None:
            pods = await game.pods(GSS)
            ok = (set(pods) == {0, 1} and all(p.status.phase == "Running" for p in pods.values())
                  and all(pods[i].metadata.uid != before[i].metadata.uid for i in (0, 1)))
            return pods if ok else None
        pods = await wait_for(recreated, 60, what="both pods made again and Running")
        new = (await settled(game, updated=2))["status"]["updateRevision"]
        assert revisions(pods) == {0: new, 1: new}
        assert all(INPLACE_STATE not in (p.metadata.annotations or {}) for p in pods.values())
        assert {n: p.metadata.uid for n, p in (await game.pvcs()).items()} == disks  # same disks
        # The GameServer went with its pod and was made again with the default priority.
        assert (await game.game_servers(GSS))[1]["spec"]["updatePriority"] == 0


async def test_a_negative_priority_is_accepted_on_the_game_server_but_cannot_reach_the_pod(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 1)
        gs = await game.custom.patch_namespaced_custom_object(
            "game.kruise.io", "v1alpha1", game.namespace, "gameservers", f"{GSS}-0",
            [{"op": "add", "path": "/spec/updatePriority", "value": -5}])
        assert gs["spec"]["updatePriority"] == -5
        # What the GameServer controller would copy to the pod is not a valid label value (it must start and
        # end with a letter or digit): the apiserver refuses it on any object (a dry-run ConfigMap here, so no
        # pod webhook answers first), so the pod keeps its old label and OKG orders by that.
        with pytest.raises(ApiException) as refused:
            await game.core.create_namespaced_config_map(
                game.namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(
                    name="priority-label", labels={PRIORITY: "-5"})), dry_run="All")
        assert refused.value.status == 422 and "metadata.labels" in refused.value.body
        assert (await game.pods(GSS))[0].metadata.labels[PRIORITY] == "0"


async def test_a_metadata_only_change_moves_the_revision_without_restarting_anything(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 2)
        before = await game.pods(GSS)
        old = revisions(before)[0]
        await game.update_gss(GSS, lambda s: s["gameServerTemplate"].setdefault("metadata", {}).update(
            labels={"example.com/tier": "gold"}))
        asts = await settled(game, updated=2)
        new = asts["status"]["updateRevision"]
        assert new != old

        async def labelled() -> dict | None:
            pods = await game.pods(GSS)
            # `Updated`, not `Normal`: the samples carry the in-place update hook and these pods lack its label.
            ok = all(p.metadata.labels.get("example.com/tier") == "gold"
                     and p.metadata.labels.get(LIFECYCLE) == "Updated" for p in pods.values())
            return pods if ok else None
        pods = await wait_for(labelled, 30, what="both pods relabelled in place and Updated")
        # Same pods, new revision; kruise's part is done at once (no image to wait for)...
        assert revisions(pods) == {0: new, 1: new}
        assert {i: p.metadata.uid for i, p in pods.items()} == {i: p.metadata.uid for i, p in before.items()}
        assert all(condition(p, "InPlaceUpdateReady") == "True" for p in pods.values())
        # ...but the readiness gate went False and back, and only a kubelet recomputes Ready: on kwok the pods
        # stay NotReady until a test acts as the kubelet (the image is the old one, unchanged).
        assert all(condition(p, "Ready") == "False" for p in pods.values())
        for i in (0, 1):
            await act_as_kubelet(game, i, image=OLD)
        assert await wait_for(lambda: _states_are(game, {0: "Ready", 1: "Ready"}), 30, what="GameServers Ready")
