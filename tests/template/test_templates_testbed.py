"""The TemplateService end to end on the test bed (real kube-apiserver, kruise, kruise-game) and PostgreSQL."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import field_mask_pb2

from aigc_gateway.api.v1 import common_pb2, template_pb2

from ..dblocks import until_waiting
from ..plugins.kube import Game, api_client, wait_for
from .cluster_helpers import add_instances, gss_names, leftovers, text_for
from .conftest import read_until, source_text
from .samples import SAMPLES
from .test_access import violations

if TYPE_CHECKING:  # imported only for annotations: pytest would try to collect a class named Test*
    from ..plugins.testbed import Testbed

pytestmark = pytest.mark.testbed

A = common_pb2.Accelerator
IMMEDIATE = template_pb2.IMMEDIATE
# What a pod-template change records besides itself (the rollout's policy and threshold, docs/upgrade.md).
RECORDED = ["metadata.annotations[aigc.gateway.io/rollout-policy]",
            "metadata.annotations[aigc.gateway.io/rollout-idle-after]"]
EXPECTED = {  # name -> (accelerator type, gpu count, GiB of GPU memory, eci, eci instance type, host suffix)
    "stable-diffusion-cpu": (A.CPU, 0, 0, False, "", "cpu"),
    "stable-diffusion-gpu": (A.GPU, 1, 0, False, "", "gpu"),
    "stable-diffusion-gpushare": (A.SHARED_GPU, 0, 3, False, "", "gpushare"),
    "stable-diffusion-eci-cpu": (A.CPU, 0, 0, True, "", "eci-cpu"),
    "stable-diffusion-eci-gpu": (A.GPU, 1, 0, True, "ecs.gn7i-c8g1.2xlarge", "eci-gpu"),
}


@pytest.fixture
async def api(template_api, testbed: Testbed, k8s_namespace: str):
    return await template_api(k8s_namespace, kubeconfig=str(testbed.kubeconfig), domain=testbed.domain)


async def publish(api, testbed: Testbed, name: str = "stable-diffusion-cpu") -> template_pb2.TemplateChange:
    return await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(
        parent=api.parent, source=source_text(text_for(name, testbed.domain, api.namespace))), metadata=api.admin)


async def test_samples_publish_list_and_delete(api, testbed: Testbed) -> None:
    for name in reversed(SAMPLES):  # created out of order: the listing sorts them
        change = await publish(api, testbed, name)
        assert change.template.uid and change.template.usable
        assert [w.reason for w in change.warnings] == ["LABELS_ADDED"]

    listed = await api.stub.ListTemplates(template_pb2.ListTemplatesRequest(parent=api.parent), metadata=api.user)
    assert [t.name for t in listed.templates] == [api.name(n) for n in SAMPLES]  # by sort order
    assert listed.total_size == 5 and not listed.next_page_token
    for t in listed.templates:
        kind, gpus, gpu_mem, eci, eci_type, suffix = EXPECTED[t.name.rsplit("/", 1)[1]]
        assert (t.accelerator.type, t.accelerator.gpu_count, t.accelerator.gpu_memory_gib, t.accelerator.eci,
                t.accelerator.eci_instance_type) == (kind, gpus, gpu_mem, eci, eci_type)
        assert t.host_pattern == f"instances<id>-{suffix}.{testbed.domain}" and t.path_pattern == "/"
        assert [(d.volume_claim_template, d.size, d.storage_class) for d in t.disks] == \
            [("user-data", "50Gi", "alicloud-disk-essd")]
        assert t.port == 7860 and t.usable and t.display_name.startswith("Stable Diffusion (")
        assert (t.live_instance_count, t.paused_instance_count) == (0, 0)
        assert not t.HasField("manifest")  # users do not see manifests
    eci = listed.templates[3].accelerator
    assert (eci.cpu, eci.memory) == ("2", "4Gi")

    # Paging: stable, complete, and the same order.
    pages, token = [], ""
    while True:
        page = await api.stub.ListTemplates(template_pb2.ListTemplatesRequest(
            parent="namespaces/-", page_size=2, page_token=token), metadata=api.admin)
        pages.append([t.name for t in page.templates])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1] and [n for p in pages for n in p] == [api.name(n) for n in SAMPLES]
    got = await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name("stable-diffusion-gpu")),
                                     metadata=api.admin)
    assert got.manifest["spec"]["replicas"] == 0 and got.etag

    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        assert await gss_names(game) == set(SAMPLES)
        for name in SAMPLES:
            reply = await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name)),
                                                  metadata=api.admin)
            assert reply.template.name == api.name(name) and reply.deleted_instance_count == 0
        assert await gss_names(game) == set()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name("stable-diffusion-cpu")),
                                   metadata=api.user)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    events = await api.events(action="TemplateService.CreateTemplate", outcome="SUCCESS")
    assert len(events) == 5 and all(e.actor == "root-admin" for e in events)


def _bad_cases(domain: str, namespace: str) -> list[tuple[str, str, str]]:
    good = text_for("stable-diffusion-gpu", domain, namespace)
    return [
        ("replicas 3", good.replace("replicas: 0 ", "replicas: 3 "), "spec.replicas"),
        ("General strategy", good.replace("ReserveIds", "General"), "spec.scaleStrategy.scaleDownStrategyType"),
        ("Host without <id>", good.replace("instances<id>-gpu", "instances-gpu"), "spec.network.networkConf[Host]"),
        ('nvidia.com/gpu "half"', good.replace("nvidia.com/gpu: 1", 'nvidia.com/gpu: "half"'),
         "spec.gameServerTemplate.spec.containers[0].resources.limits[nvidia.com/gpu]"),
        ("2 MiB manifest", good + "#" + "x" * (2 * 1024 * 1024), "source.manifest"),
        ("bad YAML", good.replace("spec:\n", "spec: [\n", 1), "source.manifest"),
        ("wrong kind", good.replace("kind: GameServerSet", "kind: StatefulSet"), "kind"),
        ("wrong apiVersion", good.replace("game.kruise.io/v1alpha1", "apps.kruise.io/v1beta1"), "apiVersion"),
        ("namespace not allowed", good.replace(f"namespace: {namespace}", "namespace: kube-system"),
         "metadata.namespace"),
        ("upper-case name", good.replace("name: stable-diffusion-gpu", "name: Stable-Diffusion-GPU"),
         "metadata.name"),
        ("auth-url elsewhere", good.replace(f"https://dashboard.{domain}/auth", "https://evil.example/auth"),
         "spec.network.networkConf[Annotation][nginx.ingress.kubernetes.io/auth-url]"),
    ]


async def test_bad_manifests_are_refused_with_field_paths_and_create_nothing(api, testbed: Testbed) -> None:
    cases = _bad_cases(testbed.domain, api.namespace)
    for case, text, field in cases:
        parent = "namespaces/-" if case == "namespace not allowed" else api.parent
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(parent=parent, source=source_text(text)),
                                          metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, case
        assert field in [f for f, _ in violations(err.value)], (case, violations(err.value))
    async with api_client(testbed.kubeconfig) as client:
        assert await gss_names(Game(client, api.namespace)) == set()
    failures = await api.events(action="TemplateService.CreateTemplate", outcome="FAILURE")
    assert len(failures) == len(cases) and {e.error_code for e in failures} == {"INVALID_ARGUMENT"}


async def test_apiserver_refusals_come_back_as_field_violations(api, testbed: Testbed) -> None:
    good = text_for("stable-diffusion-cpu", testbed.domain, api.namespace)
    cases = [  # what only the cluster knows: its schema (422 causes) and its webhook (a decoding error)
        (good.replace("podUpdatePolicy: InPlaceIfPossible", "podUpdatePolicy: 5"),
         "spec.updateStrategy.rollingUpdate.podUpdatePolicy"),
        (good.replace("          readinessProbe:", "          ports:\n            - containerPort: seventy\n"
                      "          readinessProbe:"), "spec.gameServerTemplate.spec.containers.ports.containerPort"),
    ]
    for text, field in cases:
        reply = await api.stub.ValidateTemplate(template_pb2.ValidateTemplateRequest(
            parent=api.parent, source=source_text(text)), metadata=api.admin)
        assert not reply.valid
        assert [v.field for v in reply.violations] == [field]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(parent=api.parent,
                                                                             source=source_text(text)),
                                          metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations(err.value)] == [field]
    # A field the cluster's schema does not know is kept by the service but pruned by the apiserver: said so.
    ok = await api.stub.ValidateTemplate(template_pb2.ValidateTemplateRequest(
        parent=api.parent, source=source_text(good.replace("  scaleStrategy:", "  futureField: 1\n  scaleStrategy:"))),
        metadata=api.admin)
    assert ok.valid and not ok.violations
    assert ("spec.futureField", "FIELD_PRUNED") in [(w.field, w.reason) for w in ok.warnings]
    assert ok.normalized_manifest["spec"]["futureField"] == 1
    async with api_client(testbed.kubeconfig) as client:
        assert await gss_names(Game(client, api.namespace)) == set()  # validation wrote nothing


async def _image(game: Game, name: str) -> str:
    return (await game.get_gss(name))["spec"]["gameServerTemplate"]["spec"]["containers"][0]["image"]


async def test_an_immediate_image_update_needs_allow_restart_and_replicas_are_never_touched(
        api, testbed: Testbed) -> None:
    """IMMEDIATE is the rollout of old: every live instance restarts now. (WHEN_IDLE and MANUAL need no
    allow_restart: test_rollout_write_testbed.py.)"""
    await publish(api, testbed)
    name = "stable-diffusion-cpu"
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        # One installed instance, as the instance service would make it.
        await game.update_gss(name, lambda s: s.update(replicas=1))
        await game.wait_running(name, {0})
        await add_instances(api.gateway.runtime.db, api.namespace, name, {0: ("LIVE", "alice")})
        # replicas 1 was written around the service: GetTemplate shows it once the watch delivers it.
        current = await read_until(
            lambda: api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name(name)), metadata=api.admin),
            lambda t: t.live_instance_count != 0, "GetTemplate to show the scale-up")
        assert current.live_instance_count == 1
        new_text = text_for(name, testbed.domain, api.namespace).replace(":v1.0.0-cpu", ":v2.0.0-cpu").replace(
            "replicas: 0 ", "")
        source = source_text(new_text)

        preview = await api.stub.PreviewTemplateUpdate(template_pb2.PreviewTemplateUpdateRequest(
            name=api.name(name), source=source, rollout_policy=IMMEDIATE), metadata=api.admin)
        assert list(preview.changed_paths) == RECORDED + ["spec.gameServerTemplate.spec.containers[0].image"]
        assert preview.restarts_instances and not preview.violations
        assert [(a.instance, a.owner) for a in preview.affected_instances] == [(f"{api.name(name)}/instances/0",
                                                                               "alice")]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(name=api.name(name), source=source,
                                                                             rollout_policy=IMMEDIATE),
                                          metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert violations(err.value) == [("allow_restart", "RESTART_NOT_ALLOWED")]
        assert await _image(game, name) == current.images[0]

        # Touching replicas is refused, with the path, whatever else the request changes.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
                name=api.name(name), allow_restart=True, rollout_policy=IMMEDIATE,
                source=source_text(new_text.replace("scaleStrategy:", "replicas: 3\n  scaleStrategy:"))),
                metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(err.value) == [("spec.replicas", "PROTECTED_FIELD")]

        change = await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
            name=api.name(name), source=source, allow_restart=True, rollout_policy=IMMEDIATE), metadata=api.admin)
        assert change.template.images[0].endswith(":v2.0.0-cpu") and change.template.etag != current.etag
        gss = await game.get_gss(name)
        assert gss["spec"]["replicas"] == 1 and gss["spec"]["gameServerTemplate"]["spec"]["containers"][0][
            "image"].endswith(":v2.0.0-cpu")

        async def rolled() -> bool:
            pods = await game.pods(name)
            return 0 in pods and pods[0].spec.containers[0].image.endswith(":v2.0.0-cpu")
        await wait_for(rolled, 90, what="the live instance restarted with the new image")

    outcomes = [(e.outcome, e.error_code) for e in await api.events(action="TemplateService.UpdateTemplate")]
    assert [o[1] for o in outcomes] == ["FAILED_PRECONDITION", "INVALID_ARGUMENT", ""]
    success = (await api.events(action="TemplateService.UpdateTemplate", outcome="SUCCESS"))[0]
    assert list(success.details["changed_paths"]) == RECORDED + ["spec.gameServerTemplate.spec.containers[0].image"]
    assert success.details["rollout_policy"] == "IMMEDIATE"


async def test_concurrent_updates_one_wins_the_rest_are_aborted(api, testbed: Testbed) -> None:
    created = await publish(api, testbed)
    name = api.name("stable-diffusion-cpu")

    def change(i: int) -> template_pb2.UpdateTemplateRequest:
        struct = template_pb2.TemplateSource()
        struct.object.update({"metadata": {"annotations": {"aigc.gateway.io/display-name": f"SD {i}"}}})
        return template_pb2.UpdateTemplateRequest(name=name, source=struct, etag=created.template.etag,
                                                  update_mask=field_mask_pb2.FieldMask(paths=["metadata.annotations"]))

    results = await asyncio.gather(*(api.stub.UpdateTemplate(change(i), metadata=api.admin) for i in range(4)),
                                   return_exceptions=True)
    winners = [r for r in results if isinstance(r, template_pb2.TemplateChange)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 3
    assert {e.code() for e in losers} == {grpc.StatusCode.ABORTED}
    now = await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=name), metadata=api.admin)
    assert now.display_name == winners[0].template.display_name


async def test_delete_refused_while_in_use_then_forced_delete_leaves_nothing(api, testbed: Testbed) -> None:
    await publish(api, testbed)
    name = "stable-diffusion-cpu"
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        await game.update_gss(name, lambda s: s.update(replicas=2))
        await game.wait_running(name, {0, 1})
        # Instance 1 paused: scaled down with its id reserved; its disk stays.
        await game.update_gss(name, lambda s: s.update(replicas=1, reserveGameServerIds=[1]))
        await game.wait_running(name, {0})
        await add_instances(api.gateway.runtime.db, api.namespace, name,
                            {0: ("LIVE", "alice"), 1: ("PAUSED", "bob")})
        await wait_for(lambda: _claims(game, name, 2), 30, what="both disks")

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name)), metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await leftovers(game, name))["gss"]

        reply = await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name), force=True),
                                              metadata=api.admin, timeout=150)
        assert reply.deleted_instance_count == 2
        assert sorted(reply.deleted_claims) == [f"user-data-{name}-0", f"user-data-{name}-1"]
        assert await leftovers(game, name) == {"gss": False, "gameservers": [], "pods": [], "pvcs": []}
        # No usersync or instance service runs here: the hand-off is reported as not done, not hidden.
        assert [(w.field, w.reason) for w in reply.warnings] == [
            ("UserSyncService.CleanupTemplate", "CLEANUP_INCOMPLETE"),
            ("InstanceService.PurgeInstances", "CLEANUP_INCOMPLETE")]
        [event] = await api.events(action="TemplateService.DeleteTemplate", outcome="SUCCESS")
        assert list(event.details["incomplete"]) == ["UserSyncService.CleanupTemplate",
                                                     "InstanceService.PurgeInstances"]

        # The same forced delete resumes the hand-off (the GameServerSet is already gone)...
        again = await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name), force=True),
                                              metadata=api.admin)
        assert not again.HasField("template") and len(again.warnings) == 2
        # ...but without force a gone template is simply not found.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name)), metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def _claims(game: Game, name: str, count: int) -> bool:
    return len((await leftovers(game, name))["pvcs"]) == count


async def test_forced_delete_hands_off_to_the_real_usersync_and_instance_services(template_api, testbed: Testbed,
                                                                                   k8s_namespace: str) -> None:
    from sqlalchemy import select

    from aigc_gateway.db.models import InstanceRow, UserSyncOutboxRow

    api = await template_api(k8s_namespace, kubeconfig=str(testbed.kubeconfig), domain=testbed.domain,
                             services=("usersync", "instance"))
    await publish(api, testbed)
    name = "stable-diffusion-cpu"
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        await game.update_gss(name, lambda s: s.update(replicas=1))
        await game.wait_running(name, {0})
        db = api.gateway.runtime.db
        await add_instances(db, api.namespace, name, {0: ("LIVE", "alice")})
        reply = await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name), force=True),
                                              metadata=api.admin, timeout=150)
        assert not reply.warnings, reply.warnings
        assert list(reply.cleaned_users) == ["alice"] and reply.deleted_claims == [f"user-data-{name}-0"]
        assert await leftovers(game, name) == {"gss": False, "gameservers": [], "pods": [], "pvcs": []}
    async with db.session() as session:
        assert (await session.execute(select(InstanceRow).where(InstanceRow.template == name))).first() is None
        removals = (await session.execute(select(UserSyncOutboxRow.user, UserSyncOutboxRow.instance_id).where(
            UserSyncOutboxRow.template == name))).all()
    assert ("alice", None) in removals  # alice's custom-data key is queued for removal
    for action in ("UserSyncService.CleanupTemplate", "InstanceService.PurgeInstances"):
        [event] = await api.events(action=action)
        assert event.actor == "root-admin" and event.outcome == event.SUCCESS  # called as the admin


async def test_create_replay_and_duplicate(api, testbed: Testbed) -> None:
    request = template_pb2.CreateTemplateRequest(parent=api.parent, request_id="publish-cpu-1", source=source_text(
        text_for("stable-diffusion-cpu", testbed.domain, api.namespace)))
    first = await api.stub.CreateTemplate(request, metadata=api.admin)
    replay = await api.stub.CreateTemplate(request, metadata=api.admin)
    assert replay.template.uid == first.template.uid  # the first outcome, nothing done twice
    request.request_id = ""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.CreateTemplate(request, metadata=api.admin)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    # validate_only writes nothing, even for a new name.
    dry = await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(
        parent=api.parent, validate_only=True, source=source_text(text_for("stable-diffusion-gpu", testbed.domain,
                                                                            api.namespace))), metadata=api.admin)
    assert dry.template.name == api.name("stable-diffusion-gpu")
    async with api_client(testbed.kubeconfig) as client:
        assert await gss_names(Game(client, api.namespace)) == {"stable-diffusion-cpu"}


async def test_only_labelled_game_server_sets_are_templates_and_unusable_ones_say_why(api, testbed: Testbed) -> None:
    from .conftest import TEMPLATE_LABELS
    from .samples import sample

    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        # Made with kubectl, not through the gateway: one without the template label, one that is not ReserveIds.
        await game.create_gss(sample(namespace=api.namespace, rename="not-a-template", domain=testbed.domain))
        general = sample(namespace=api.namespace, rename="general", domain=testbed.domain)
        general["metadata"]["labels"] = dict(TEMPLATE_LABELS)
        general["spec"]["scaleStrategy"]["scaleDownStrategyType"] = "General"
        await game.create_gss(general)

        # Written around the service: listed once the watch delivers general (the watch selects by the template
        # label, so not-a-template never reaches the cache).
        listed = await read_until(
            lambda: api.stub.ListTemplates(template_pb2.ListTemplatesRequest(parent=api.parent), metadata=api.user),
            lambda r: bool(r.templates), "the kubectl-made templates to be listed")
        assert [t.name for t in listed.templates] == [api.name("general")]
        assert not listed.templates[0].usable
        assert any("ReserveIds" in r for r in listed.templates[0].unusable_reasons)
        for call, request in ((api.stub.GetTemplate, template_pb2.GetTemplateRequest(name=api.name("not-a-template"))),
                              (api.stub.DeleteTemplate, template_pb2.DeleteTemplateRequest(
                                  name=api.name("not-a-template"), force=True))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(request, metadata=api.admin)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "not-a-template" in await gss_names(game)  # never touched


async def test_forced_delete_that_times_out_is_resumed(template_api, testbed: Testbed, k8s_namespace: str,
                                                       monkeypatch) -> None:
    from aigc_gateway.services.template.cascade import Cascade

    api = await template_api(k8s_namespace, kubeconfig=str(testbed.kubeconfig), domain=testbed.domain,
                             template={"delete_wait_seconds": 3})
    # A barrier in the (in-process) template service: set once a delete has decided to resume and is
    # waiting for the remaining objects to go.
    clearing = asyncio.Event()
    clear = Cascade._clear

    async def barrier(self, namespace: str, name: str, claims: set[str]) -> list[str]:
        clearing.set()
        return await clear(self, namespace, name, claims)
    monkeypatch.setattr(Cascade, "_clear", barrier)
    await publish(api, testbed)
    name = "stable-diffusion-cpu"
    claim = f"user-data-{name}-0"
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        await game.update_gss(name, lambda s: s.update(replicas=1))
        await game.wait_running(name, {0})
        await wait_for(lambda: _claims(game, name, 1), 30, what="the disk")
        # Something else holds the disk (a backup, say): the cascade cannot finish in time.
        hold = {"metadata": {"finalizers": ["kubernetes.io/pvc-protection", "aigc.test/hold"]}}
        await game.core.patch_namespaced_persistent_volume_claim(claim, api.namespace, hold)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name), force=True),
                                          metadata=api.admin, timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and claim in err.value.details()
        left = await leftovers(game, name)
        assert not left["gss"] and left["pvcs"] == [claim]

        # The retry resumes (the GameServerSet is gone, its disk is not) and finishes once the hold is released:
        # released only once the retry is inside its wait (released earlier, nothing would be left to resume).
        clearing.clear()
        retry = asyncio.ensure_future(api.stub.DeleteTemplate(
            template_pb2.DeleteTemplateRequest(name=api.name(name), force=True), metadata=api.admin, timeout=60))
        await asyncio.wait_for(clearing.wait(), 30)
        assert not retry.done()
        await game.core.patch_namespaced_persistent_volume_claim(claim, api.namespace,
                                                                 {"metadata": {"finalizers": None}})
        resumed = await retry
        assert not resumed.warnings and not resumed.HasField("template")
        assert await leftovers(game, name) == {"gss": False, "gameservers": [], "pods": [], "pvcs": []}
    failure, success = await api.events(action="TemplateService.DeleteTemplate")
    assert failure.error_code == "UNAVAILABLE" and list(failure.details["remaining"]["claims"]) == [claim]
    assert success.details["resumed"] is True


async def test_delete_waits_for_an_install_holding_the_allocator_lock(api, testbed: Testbed) -> None:
    """An install in progress holds the template's allocator lock from its intent to its commit (docs/instance.md#the-allocator).
    A plain delete that arrives meanwhile must count that install, not delete the template from under it."""
    from aigc_gateway.db.models import allocator_lock

    await publish(api, testbed)
    name = "stable-diffusion-cpu"
    db = api.gateway.runtime.db
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        installing = asyncio.Event()
        finish = asyncio.Event()

        async def install() -> None:  # what the instance service does under the lock, slowed down
            async with db.lock(allocator_lock(api.namespace, name)):
                installing.set()
                await finish.wait()
                await game.update_gss(name, lambda s: s.update(replicas=1))
                await add_instances(db, api.namespace, name, {0: ("LIVE", "alice")})

        installer = asyncio.create_task(install())
        await installing.wait()
        async def delete() -> template_pb2.DeleteTemplateResponse:
            return await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name(name)),
                                                 metadata=api.admin, timeout=60)
        deleting = asyncio.create_task(delete())
        # Forced, not slept on: PostgreSQL shows the delete's session waiting for the install's lock.
        await until_waiting(db, allocator_lock(api.namespace, name))
        assert not deleting.done()
        finish.set()
        await installer
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await deleting
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "1 owned instance" in (err.value.details() or "")
        assert (await leftovers(game, name))["gss"]


async def test_kruise_game_webhook_denials_become_invalid_argument(api, testbed: Testbed) -> None:
    """The rules refuse every network type but Kubernetes-Ingress before the cluster sees it, so the
    adapter is driven directly here: the real kruise-game webhook's 403s must reach the caller as bad
    input naming the webhook's reason, not as an operator error."""
    import yaml

    from aigc_gateway.config import KubernetesConfig
    from aigc_gateway.errors import Aborted, InvalidArgument
    from aigc_gateway.kube import KubeHandle
    from aigc_gateway.services.template.cluster import TemplateCluster
    from aigc_gateway.services.template.policy import Policy

    handle = KubeHandle(KubernetesConfig(kubeconfig=str(testbed.kubeconfig)))
    cluster = TemplateCluster(handle, Policy(namespaces=(api.namespace,), domain=testbed.domain))
    try:
        obj = yaml.safe_load(text_for("stable-diffusion-cpu", testbed.domain, api.namespace))
        obj["spec"]["network"]["networkType"] = "No-Such-Network"
        with pytest.raises(InvalidArgument) as created:
            await cluster.create(obj, dry_run=True)
        assert created.value.reason == "ADMISSION_DENIED"
        assert "network type must be one of" in created.value.message
        assert [v.reason for v in created.value.violations] == ["ADMISSION_DENIED"]

        await publish(api, testbed)
        for _ in range(10):  # the controller writes the new template too: read again after a 409
            current = await cluster.get(api.namespace, "stable-diffusion-cpu")
            current["spec"]["network"]["networkType"] = "Kubernetes-NodePort"
            try:
                await cluster.replace(current)
            except Aborted:
                await asyncio.sleep(0.2)
                continue
            except InvalidArgument as exc:
                replaced = exc
                break
            raise AssertionError("the webhook let a change of network type through")
        else:
            raise AssertionError("the GameServerSet kept changing")
        assert replaced.reason == "ADMISSION_DENIED"
        assert "change network type is not allowed" in replaced.message
    finally:
        await handle.close()


async def test_a_template_the_service_cannot_describe_breaks_no_list_and_can_be_read_and_deleted(
        api, testbed: Testbed) -> None:
    """`aliyun.com/gpu-mem: 3Gi` used to pass as 3221225472 GiB: CreateTemplate wrote the GameServerSet and
    answered INTERNAL (int32 overflow), and from then on ListTemplates failed for everyone. Now the unit is
    refused before any write, and an object written around the service (kubectl) is flagged, not fatal."""
    from .conftest import TEMPLATE_LABELS
    from .samples import container, sample

    gpushare = text_for("stable-diffusion-gpushare", testbed.domain, api.namespace)
    assert "aliyun.com/gpu-mem: 3 " in gpushare
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(
            parent=api.parent, source=source_text(gpushare.replace("aliyun.com/gpu-mem: 3 ",
                                                                   "aliyun.com/gpu-mem: 3Gi "))),
            metadata=api.admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == [
        ("spec.gameServerTemplate.spec.containers[0].resources.limits[aliyun.com/gpu-mem]", "INVALID_QUANTITY")]
    await publish(api, testbed)  # a good template beside the bad one
    async with api_client(testbed.kubeconfig) as client:
        game = Game(client, api.namespace)
        assert await gss_names(game) == {"stable-diffusion-cpu"}  # the refused one wrote nothing
        broken = sample("stable-diffusion-gpushare", namespace=api.namespace, rename="broken", domain=testbed.domain)
        broken["metadata"]["labels"] = dict(TEMPLATE_LABELS)
        container(broken)["resources"]["limits"]["aliyun.com/gpu-mem"] = 3 * 2**30  # what "3Gi" used to become
        await game.create_gss(broken)  # straight to the Kubernetes API, around the service's validation

        # Around the service: the admin list shows it once the watch delivers it; the user list is read after
        # that, so "broken" is hidden from it, not merely not delivered yet.
        listed = await read_until(
            lambda: api.stub.ListTemplates(template_pb2.ListTemplatesRequest(parent=api.parent), metadata=api.admin),
            lambda r: api.name("broken") in {t.name for t in r.templates}, "the admin list to show broken")
        user_listed = await api.stub.ListTemplates(template_pb2.ListTemplatesRequest(parent=api.parent),
                                                   metadata=api.user)
        assert [t.name for t in user_listed.templates] == [api.name("stable-diffusion-cpu")]
        assert user_listed.total_size == 1
        by_name = {t.name: t for t in listed.templates}
        assert set(by_name) == {api.name("stable-diffusion-cpu"), api.name("broken")} and listed.total_size == 2
        flagged = by_name[api.name("broken")]
        assert not flagged.usable and flagged.uid and flagged.manifest["metadata"]["name"] == "broken"
        [reason] = flagged.unusable_reasons
        assert reason.startswith("UNDESCRIBABLE:") and "aliyun.com/gpu-mem" in reason
        assert by_name[api.name("stable-diffusion-cpu")].usable

        got = await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name("broken")), metadata=api.admin)
        assert got.unusable_reasons == flagged.unusable_reasons
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name("broken")), metadata=api.user)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # hidden from users, as in the list

        reply = await api.stub.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=api.name("broken"), force=True),
                                              metadata=api.admin, timeout=60)
        assert reply.template.name == api.name("broken") and not reply.template.usable
        assert await gss_names(game) == {"stable-diffusion-cpu"}


async def test_update_refuses_with_exactly_the_violations_validate_reports(api, testbed: Testbed) -> None:
    """ValidateTemplate(as_update) answers OK with valid=false; UpdateTemplate must refuse the same manifest
    with exactly the same violations (and one ValidateTemplate finds valid must pass as an update too)."""
    import json

    import yaml

    from .samples import variant
    from .test_validate_matches_writes import refusal, reported
    from .test_validation import BAD

    await publish(api, testbed)
    name = "stable-diffusion-cpu"
    base = yaml.safe_load(text_for(name, testbed.domain, api.namespace))
    refused = 0
    for case, mutate, _path, _reason in BAD:
        obj = variant(mutate, base)
        meta = obj.get("metadata") or {}
        if (meta.get("name"), meta.get("namespace")) != (name, api.namespace):
            continue  # ValidateTemplate finds the template to update by the manifest's name; UpdateTemplate by its own
        source = template_pb2.TemplateSource(manifest=json.dumps(obj))
        validated = await api.stub.ValidateTemplate(template_pb2.ValidateTemplateRequest(
            parent=api.parent, source=source, as_update=True), metadata=api.admin)
        update = template_pb2.UpdateTemplateRequest(name=api.name(name), source=source, allow_restart=True,
                                                    validate_only=True)
        if validated.valid:
            await api.stub.UpdateTemplate(update, metadata=api.admin)
            continue
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.stub.UpdateTemplate(update, metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err.value.details())
        assert refusal(err.value) == reported(validated), case
        refused += 1
    assert refused >= 30  # nearly every case of the table is an invalid update too
