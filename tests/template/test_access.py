"""Who may do what, and what is audited, on a real template server and real PostgreSQL (no cluster needed:
these requests are refused before any Kubernetes call; the server's kubeconfig does not even exist)."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aigc_gateway.api.v1 import audit_pb2, template_pb2

from .conftest import source_text
from .samples import sample_text

MUTATIONS = {
    "CreateTemplate": lambda api: template_pb2.CreateTemplateRequest(parent=api.parent,
                                                                     source=source_text(sample_text())),
    "UpdateTemplate": lambda api: template_pb2.UpdateTemplateRequest(name=api.name("stable-diffusion-cpu"),
                                                                     source=source_text(sample_text())),
    "DeleteTemplate": lambda api: template_pb2.DeleteTemplateRequest(name=api.name("stable-diffusion-cpu"),
                                                                     force=True),
    "ValidateTemplate": lambda api: template_pb2.ValidateTemplateRequest(parent=api.parent,
                                                                         source=source_text(sample_text())),
    "PreviewTemplateUpdate": lambda api: template_pb2.PreviewTemplateUpdateRequest(
        name=api.name("stable-diffusion-cpu"), source=source_text(sample_text())),
}


def violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(err)
    out = []
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out += [(v.field, v.reason) for v in bad.field_violations]
    return out


async def test_non_admin_is_denied_every_mutation_and_it_is_audited(template_api) -> None:
    api = await template_api()
    for method, make in MUTATIONS.items():
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(api.stub, method)(make(api), metadata=api.user)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
    denied = {e.action: e for e in await api.events(outcome="DENIED")}
    assert set(denied) == {f"TemplateService.{m}" for m in MUTATIONS}
    assert all(e.actor == "alice" for e in denied.values())
    assert denied["TemplateService.DeleteTemplate"].resource == api.name("stable-diffusion-cpu")


async def test_unauthenticated_calls_are_refused(template_api) -> None:
    api = await template_api()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.ListTemplates(template_pb2.ListTemplatesRequest(parent=api.parent))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("text,field,reason", [
    ("kind: [", "source.manifest", "MANIFEST_SYNTAX"),
    (sample_text().replace("replicas: 0", "replicas: 3"), "spec.replicas", "REPLICAS_NOT_ZERO"),
    (sample_text().replace("namespace: default", "namespace: other"), "metadata.namespace", "NAMESPACE_MISMATCH"),
])
async def test_invalid_create_is_refused_with_field_violations_and_audited(template_api, text, field,
                                                                           reason) -> None:
    api = await template_api()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.CreateTemplate(template_pb2.CreateTemplateRequest(parent=api.parent, source=source_text(text),
                                                                         request_id="r-1"), metadata=api.admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (field, reason) in violations(err.value)
    [event] = await api.events(action="TemplateService.CreateTemplate")
    assert (event.outcome, event.error_code) == (audit_pb2.AuditEvent.FAILURE, "INVALID_ARGUMENT")
    assert f"{field}: {reason}" in list(event.details["violations"])


async def test_missing_source_and_bad_names(template_api) -> None:
    api = await template_api()
    cases = [
        (api.stub.CreateTemplate, template_pb2.CreateTemplateRequest(parent=api.parent), "source"),
        (api.stub.CreateTemplate, template_pb2.CreateTemplateRequest(parent="default", source=source_text("a: 1")),
         "parent"),
        (api.stub.UpdateTemplate, template_pb2.UpdateTemplateRequest(name="namespaces/default/templates/Bad",
                                                                     source=source_text("a: 1")), "name"),
        (api.stub.GetTemplate, template_pb2.GetTemplateRequest(name="templates/x"), "name"),
    ]
    for method, request, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await method(request, metadata=api.admin)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations(err.value)] == [field]


async def test_validate_reports_every_violation_without_a_cluster(template_api) -> None:
    api = await template_api()
    # The GPU sample: it has the nvidia.com/gpu line to break (the CPU sample has none).
    text = sample_text("stable-diffusion-gpu")
    for old, new in (("replicas: 0", "replicas: 3"), ("ReserveIds", "General"),
                     ("nvidia.com/gpu: 1", 'nvidia.com/gpu: "half"'), ("instances<id>-gpu", "instances-gpu")):
        assert old in text, old  # each edit must change the manifest
        text = text.replace(old, new)
    reply = await api.stub.ValidateTemplate(template_pb2.ValidateTemplateRequest(parent=api.parent,
                                                                                 source=source_text(text)),
                                            metadata=api.admin)
    assert not reply.valid
    assert {v.field for v in reply.violations} == {
        "spec.replicas", "spec.scaleStrategy.scaleDownStrategyType", "spec.network.networkConf[Host]",
        "spec.gameServerTemplate.spec.containers[0].resources.limits[nvidia.com/gpu]"}
    assert reply.normalized_manifest["metadata"]["labels"]["aigc.gateway.io/template"] == "true"
