"""OpenKruiseGame facts the gateway relies on (docs/testbed.md#okg-facts-pinned-by-testsokgtest_factspy), pinned against the real controllers.

Each test runs in its own namespace on the test bed, with the reference template from
deploy/samples (domain substituted). Where a fact differs from what kruise-game's documentation says, the test pins what the
controllers actually do, and says so.
"""

from __future__ import annotations

import pytest
from kubernetes_asyncio import client

from tests.plugins.kube import Game, api_client, load_sample, wait_for
from tests.plugins.testbed import Testbed

pytestmark = pytest.mark.testbed

GSS = "stable-diffusion-cpu"
VCT = "user-data"  # the reference template's volumeClaimTemplate


def pvc_name(gss: str, i: int) -> str:
    return f"{VCT}-{gss}-{i}"


async def start(game: Game, testbed: Testbed, replicas: int, sample: str = GSS, name: str | None = None) -> None:
    """Create the sample template (replicas 0, as published), named `name` if given, and scale it to
    `replicas`."""
    name = name or sample
    await game.create_gss(load_sample(sample, testbed.domain, game.namespace, rename=name))
    if replicas:
        await game.update_gss(name, lambda s: s.update(replicas=replicas))
        await game.wait_running(name, set(range(replicas)))


async def reserved(game: Game, gss: str = GSS) -> list:
    return (await game.get_gss(gss))["spec"].get("reserveGameServerIds") or []


async def test_crds_have_short_names_and_scale_subresource(testbed: Testbed) -> None:
    async with api_client(testbed.kubeconfig) as api:
        ext = client.ApiextensionsV1Api(api)
        gss = await ext.read_custom_resource_definition("gameserversets.game.kruise.io")
        gs = await ext.read_custom_resource_definition("gameservers.game.kruise.io")
    assert "gss" in gss.spec.names.short_names
    assert "gs" in gs.spec.names.short_names
    version = next(v for v in gss.spec.versions if v.name == "v1alpha1")
    assert version.subresources.scale.spec_replicas_path == ".spec.replicas"
    reserve = version.schema.open_apiv3_schema.properties["spec"].properties["reserveGameServerIds"]
    # kubernetes_asyncio leaves `items` as a plain dict: ints and "5-7" range strings.
    assert reserve.items["x-kubernetes-int-or-string"] is True


async def test_scale_up_creates_pod_pvc_service_ingress_and_network(testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 0)
        assert await game.pods(GSS) == {}
        await game.update_gss(GSS, lambda s: s.update(replicas=3))
        await game.wait_running(GSS, {0, 1, 2})

        gss_servers = await wait_for(lambda: _ids_equal(game, {0, 1, 2}), 30, what="GameServers 0,1,2")
        pvcs = await wait_for(lambda: _bound_pvcs(game, 3), 30, what="3 Bound PVCs")
        assert set(pvcs) == {pvc_name(GSS, i) for i in range(3)}
        for i in range(3):
            host = f"instances{i}-cpu.{testbed.domain}"
            # Network: Service and Ingress <gss>-<id>; the ingress host carries the id.
            # The network plugin creates them on a later pod update, so they may lag the pod.
            svc = await wait_for(lambda i=i: game.core.read_namespaced_service(f"{GSS}-{i}", k8s_namespace),
                                 30, what=f"Service {GSS}-{i}")
            assert svc.spec.ports[0].port == 7860
            ing = await wait_for(lambda i=i: game.net.read_namespaced_ingress(f"{GSS}-{i}", k8s_namespace),
                                 30, what=f"Ingress {GSS}-{i}")
            assert ing.spec.ingress_class_name == "nginx"
            assert ing.spec.rules[0].host == host
            # The plugin copies each Annotation entry verbatim, nginx variables included ($host stays $host).
            assert ing.metadata.annotations["nginx.ingress.kubernetes.io/auth-url"] == \
                f"https://dashboard.{testbed.domain}/auth?rh=$host"
            assert ing.metadata.annotations["nginx.ingress.kubernetes.io/auth-signin"] == \
                f"https://dashboard.{testbed.domain}/sign-in"
            assert ing.metadata.annotations["nginx.ingress.kubernetes.io/auth-response-headers"] == \
                "X-Auth-Request-User,X-Auth-Request-Email,Cookie"

            async def network_ready(i: int = i, host: str = host) -> dict | None:
                status = (await game.game_servers(GSS))[i].get("status", {})
                net = status.get("networkStatus", {})
                addrs = net.get("externalAddresses") or []
                ok = net.get("currentNetworkState") == "Ready" and addrs and addrs[0].get("endPoint") == host
                return status if ok else None
            status = await wait_for(network_ready, 30, what=f"GameServer {i} network Ready with {host}")
            assert status["currentState"] == "Ready"
        assert set(gss_servers) == {0, 1, 2}


async def _ids_equal(game: Game, ids: set[int]) -> dict | None:
    servers = await game.game_servers(GSS)
    return servers if set(servers) == ids else None


async def _bound_pvcs(game: Game, count: int) -> dict | None:
    pvcs = await game.pvcs()
    bound = {n: p for n, p in pvcs.items() if p.status.phase == "Bound"}
    return bound if len(bound) == count else None


async def test_targeted_delete_then_recreate_keeps_the_disk(testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 3)
        disk = (await wait_for(lambda: _bound_pvcs(game, 3), 30))[pvc_name(GSS, 1)]

        # Targeted delete of 1: ONE update adds it to the reserve list and lowers replicas.
        def delete_one(spec: dict) -> None:
            spec["reserveGameServerIds"] = [1]
            spec["replicas"] = 2
        await game.update_gss(GSS, delete_one)
        await game.wait_running(GSS, {0, 2})
        await wait_for(lambda: _ids_equal(game, {0, 2}), 30, what="GameServer 1 gone")
        pvcs = await game.pvcs()
        assert pvcs[pvc_name(GSS, 1)].metadata.uid == disk.metadata.uid  # the disk stays
        await wait_reserved(game, [1])  # and 1 stays reserved
        # Its Service and Ingress go with the pod (they are owned by it).
        await wait_for(lambda: _network_objects_gone(game, 1), 30, what="Service/Ingress of 1 gone")

        # Un-reserving 1 WITHOUT raising replicas changes nothing: the controller writes 1 back
        # (with ReserveIds it keeps every not-live id below the top reserved).
        await game.update_gss(GSS, lambda s: s.update(reserveGameServerIds=[]))
        await wait_reserved(game, [1])
        assert set(await game.pods(GSS)) == {0, 2}

        # Targeted re-create of 1: remove it from the reserve list, replicas + 1.
        def recreate_one(spec: dict) -> None:
            spec["reserveGameServerIds"] = []
            spec["replicas"] = 3
        await game.update_gss(GSS, recreate_one)
        pods = await game.wait_running(GSS, {0, 1, 2})
        claims = [v.persistent_volume_claim.claim_name for v in pods[1].spec.volumes
                  if v.persistent_volume_claim]
        assert claims == [pvc_name(GSS, 1)]
        assert (await game.pvcs())[pvc_name(GSS, 1)].metadata.uid == disk.metadata.uid
        await wait_reserved(game, [])


async def test_scale_up_takes_lowest_unreserved_hole_and_controller_rereserves_the_rest(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        # kruise-game's stale-cache reconcile (docs/instance.md, "When the controller moves the live
        # set itself") may strike right after the un-reserve below: a reconcile that reads the old
        # reserve ordinals writes 1 and 2 back and starts 4 instead of 1. No wait of ours prevents it,
        # so the fact is tried on a fresh GameServerSet when, and only when, that exact signature is
        # seen; every other outcome fails at once.
        for attempt in range(3):
            name = GSS if attempt == 0 else f"{GSS}-{attempt}"
            if await _lowest_hole_taken(game, testbed, name):
                break
        else:
            raise AssertionError("the stale-cache reconcile struck in all 3 attempts")


async def _lowest_hole_taken(game: Game, testbed: Testbed, name: str) -> bool:
    """The fact on GameServerSet `name`: True when it held, False when the controller's stale-cache
    reconcile struck instead (and nothing else happened)."""
    await start(game, testbed, 4, name=name)
    await game.update_gss(name, lambda s: s.update(reserveGameServerIds=[1, 2], replicas=2))
    await game.wait_running(name, {0, 3})

    # Un-reserve both holes and ask for one more instance: the lowest hole (1) is taken...
    await game.update_gss(name, lambda s: s.update(reserveGameServerIds=[], replicas=3))
    # ...and with ReserveIds the controller writes the other un-reserved hole back itself (it keeps
    # every id below the top that is not live in the reserve list).
    fact, stale = ({0, 1, 3}, [2]), ({0, 3, 4}, [1, 2])

    async def settled() -> tuple[set[int], list] | None:
        pods = await game.pods(name)
        running = {i for i, p in pods.items() if p.status.phase == "Running"}
        now = (running, await reserved(game, name))
        return now if now in (fact, stale) and set(pods) == running else None
    try:
        outcome = await wait_for(settled, 90, what=f"{name}: live {sorted(fact[0])} with {fact[1]} reserved")
    except AssertionError:
        await game.wait_running(name, fact[0], timeout=0)  # fails saying what is there instead
        raise
    if outcome == stale:
        print(f"{name}: the stale-cache reconcile struck (live {sorted(stale[0])}, reserved {stale[1]})")
        await game.delete_gss(name)
        return False
    return True


async def _network_objects_gone(game: Game, i: int) -> bool:
    services = {x.metadata.name for x in (await game.core.list_namespaced_service(game.namespace)).items}
    ingresses = {x.metadata.name for x in (await game.net.list_namespaced_ingress(game.namespace)).items}
    return f"{GSS}-{i}" not in services | ingresses


async def wait_reserved(game: Game, expected: list, timeout: float = 15) -> None:
    """The controller writes reserveGameServerIds right after it resizes the workload, so allow
    it a moment; fail showing what it actually wrote."""
    try:
        await wait_for(lambda: _reserved_is(game, expected), timeout)
    except AssertionError:
        assert await reserved(game) == expected


async def _reserved_is(game: Game, expected: list) -> bool:
    return await reserved(game) == expected


async def test_scale_down_reserve_ids_are_written_back_compressed(testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 8)
        await game.update_gss(GSS, lambda s: s.update(reserveGameServerIds=[1], replicas=7))
        await game.wait_running(GSS, {0, 2, 3, 4, 5, 6, 7})

        # Plain scale-down (replicas only): the highest ids go, and the controller adds them to
        # reserveGameServerIds itself, rewritten as ints and "a-b" ranges (runs of 3+).
        await game.update_gss(GSS, lambda s: s.update(replicas=3))
        await game.wait_running(GSS, {0, 2, 3})
        await wait_reserved(game, [1, "4-7"])
        gss = await game.get_gss(GSS)
        # The controller remembers what it last applied in an annotation, in the same notation.
        assert gss["metadata"]["annotations"]["game.kruise.io/reserve-ids"] == "1,4-7"
        # PVCs of removed ids are retained (Retain is the default retention policy).
        assert set(await game.pvcs()) == {pvc_name(GSS, i) for i in range(8)}


async def test_deleted_pod_comes_back_with_its_pvc_and_gss_delete_removes_game_servers(
        testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 2)
        old = (await game.pods(GSS))[1]
        disk = (await wait_for(lambda: _bound_pvcs(game, 2), 30))[pvc_name(GSS, 1)]

        await game.core.delete_namespaced_pod(f"{GSS}-1", k8s_namespace)

        async def replaced() -> client.V1Pod | None:
            pod = (await game.pods(GSS)).get(1)
            return pod if pod and pod.metadata.uid != old.metadata.uid and pod.status.phase == "Running" else None
        new = await wait_for(replaced, 60, what="pod 1 re-created and Running")
        claims = [v.persistent_volume_claim.claim_name for v in new.spec.volumes if v.persistent_volume_claim]
        assert claims == [pvc_name(GSS, 1)]
        assert (await game.pvcs())[pvc_name(GSS, 1)].metadata.uid == disk.metadata.uid

        await game.delete_gss(GSS)
        await wait_for(lambda: _no_game_servers(game), 60, what="GameServers gone after GSS delete")
        await wait_for(lambda: _no_pods(game), 60, what="pods gone after GSS delete")
        # The disks outlive the template (retention policy Retain): cleanup is the gateway's job.
        assert set(await game.pvcs()) == {pvc_name(GSS, 0), pvc_name(GSS, 1)}


async def _gs_state(game: Game, gss: str, i: int) -> str | None:
    return (await game.game_servers(gss))[i].get("status", {}).get("currentState")


async def _no_game_servers(game: Game) -> bool:
    return not await game.game_servers(GSS)


async def _no_pods(game: Game) -> bool:
    return not await game.pods(GSS)


@pytest.mark.parametrize("sample, limits", [
    ("stable-diffusion-gpu", {"nvidia.com/gpu": "1"}),
    ("stable-diffusion-gpushare", {"aliyun.com/gpu-mem": "3"}),
    ("stable-diffusion-eci-cpu", {"cpu": "2", "memory": "4Gi"}),
    ("stable-diffusion-eci-gpu", {"nvidia.com/gpu": "1"}),
])
async def test_variant_schedules(testbed: Testbed, k8s_namespace: str, sample: str, limits: dict) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        await start(game, testbed, 1, sample=sample)
        pod = (await game.pods(sample))[0]
        assert pod.spec.node_name
        assert pod.spec.containers[0].resources.limits == limits
        host = f"instances0-{sample.removeprefix('stable-diffusion-')}.{testbed.domain}"

        async def endpoint() -> str | None:
            net = (await game.game_servers(sample))[0].get("status", {}).get("networkStatus", {})
            addrs = net.get("externalAddresses") or []
            return addrs[0].get("endPoint") if addrs else None
        assert await wait_for(endpoint, 30, what="network endpoint") == host


async def test_game_server_exists_for_a_pod_that_cannot_be_scheduled(testbed: Testbed, k8s_namespace: str) -> None:
    async with api_client(testbed.kubeconfig) as api:
        game = Game(api, k8s_namespace)
        gss = load_sample("stable-diffusion-gpu", testbed.domain, k8s_namespace)
        # More GPUs than any node has: the pod stays Pending.
        gss["spec"]["gameServerTemplate"]["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": 100}
        gss["spec"]["replicas"] = 1
        await game.create_gss(gss)
        servers = await wait_for(lambda: game.game_servers("stable-diffusion-gpu"), 30, what="GameServer 0")
        assert set(servers) == {0}
        pod = (await game.pods("stable-diffusion-gpu"))[0]
        assert pod.status.phase == "Pending" and not pod.spec.node_name
        state = await wait_for(lambda: _gs_state(game, "stable-diffusion-gpu", 0), 15, what="GameServer state")
        assert state == "Creating"
