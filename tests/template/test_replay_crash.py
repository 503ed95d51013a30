"""Template writes survive a crash (issue 20): `aigc-gateway serve template` is held at each named point after
its Kubernetes write (or the effect committed before it) and before its stored outcome, shown to keep its claim
while alive, killed there with SIGKILL, and the same request retried on a second process: it answers with what
the first attempt did (the created template, the deleted template as it was), never ALREADY_EXISTS or
NOT_FOUND; replaying it again gives the same bytes. Points are forced (AIGC_GATEWAY_HOLD), never timed.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format, struct_pb2

from aigc_gateway.api.v1 import template_pb2, template_pb2_grpc
from aigc_gateway.services.template import faults  # noqa: F401  (registers the points held at)

from ..plugins.gateway import TEST_SERVICE_TOKEN, bearer
from ..plugins.kube import Game, api_client
from ..plugins.oidc import Issuer
from ..plugins.testbed import Testbed
from ..served import LEASE, ServiceProcess, held_then_killed, launch, write_config
from .cluster_helpers import gss_names, text_for
from .conftest import TEMPLATE_LABELS, source_text

pytestmark = pytest.mark.testbed

SAMPLE = "stable-diffusion-cpu"
CREATE = ["template.create.after_write", "call.before_finish"]
UPDATE = ["template.update.after_write", "call.before_finish"]
DELETE = ["template.delete.after_effect", "template.delete.after_delete", "call.before_finish"]


@pytest.fixture
async def game(testbed: Testbed, k8s_namespace: str) -> AsyncIterator[Game]:
    async with api_client(testbed.kubeconfig) as api:
        yield Game(api, k8s_namespace)


@pytest.fixture
async def template_process(tmp_path: Path, database_url: str, issuer: Issuer, testbed: Testbed,
                           k8s_namespace: str) -> AsyncIterator[Callable[[], ServiceProcess]]:
    made: list[ServiceProcess] = []

    def make() -> ServiceProcess:
        made.append(write_config(tmp_path, "template", len(made), {
            "domain": testbed.domain, "namespaces": [k8s_namespace], "gss_labels": TEMPLATE_LABELS,
            "database": {"url": database_url, "pool_size": 5},
            "oidc": {"issuer": issuer.url, "audience": [issuer.audience]},
            "service_identity": {"token": TEST_SERVICE_TOKEN},
            "kubernetes": {"kubeconfig": str(testbed.kubeconfig)},
            "logging": {"level": "INFO", "json": True},
            "template": {"delete_wait_seconds": 90},
        }))
        return made[-1]

    yield make
    for process in made:
        await process.stop()


async def two_processes(template_process: Callable[[], ServiceProcess], point: str, hold_dir: Path
                        ) -> tuple[ServiceProcess, template_pb2_grpc.TemplateServiceStub,
                                   template_pb2_grpc.TemplateServiceStub]:
    held, other = template_process(), template_process()
    b = template_pb2_grpc.TemplateServiceStub(await launch(other))
    a = template_pb2_grpc.TemplateServiceStub(await launch(held, hold=point, hold_dir=hold_dir))
    return held, a, b


async def crash_and_retry(held: ServiceProcess, a: Any, b: Any, method: str, message: Any, admin: Any,
                          point: str, hold_dir: Path) -> Any:
    def send(stub: Any) -> Awaitable[Any]:
        return getattr(stub, method)(message, metadata=admin)
    answer, seconds, waited = await held_then_killed(held, send(a), point, hold_dir, lambda: send(b))
    print(f"{method} killed at {point}: answered {seconds:.2f}s after the kill ({waited} in-progress answers; "
          f"lease {LEASE}s)")
    again = await send(b)  # the stored outcome, byte for byte
    assert again.SerializeToString(deterministic=True) == answer.SerializeToString(deterministic=True)
    return answer


@pytest.mark.parametrize("point", CREATE)
async def test_create_killed_after_its_write_answers_the_created_template(
        point: str, tmp_path: Path, testbed: Testbed, game: Game, issuer: Issuer, template_process) -> None:
    held, a, b = await two_processes(template_process, point, tmp_path)
    admin = bearer(issuer.mint("root-admin", roles=["admin"]))
    message = template_pb2.CreateTemplateRequest(parent=f"namespaces/{game.namespace}", request_id="create-1",
                                                 source=source_text(text_for(SAMPLE, testbed.domain, game.namespace)))

    answer = await crash_and_retry(held, a, b, "CreateTemplate", message, admin, point, tmp_path)

    gss = await game.get_gss(SAMPLE)
    assert answer.template.name == f"namespaces/{game.namespace}/templates/{SAMPLE}"
    assert answer.template.uid == gss["metadata"]["uid"]  # the object the first attempt created, once
    assert [w.reason for w in answer.warnings] == ["LABELS_ADDED"]  # as a create that was not killed says
    assert await gss_names(game) == {SAMPLE}
    # The digest the write carried is the service's, not the admin's: an update of the manifest read back
    # changes nothing.
    read = await b.GetTemplate(template_pb2.GetTemplateRequest(name=answer.template.name), metadata=admin)
    same = await b.UpdateTemplate(template_pb2.UpdateTemplateRequest(
        name=read.name, source=template_pb2.TemplateSource(object=read.manifest)), metadata=admin)
    assert [w.reason for w in same.warnings if w.reason == "NO_CHANGE"] == ["NO_CHANGE"]


@pytest.mark.parametrize("point", DELETE)
async def test_delete_killed_after_its_effect_answers_the_template_as_it_was(
        point: str, tmp_path: Path, testbed: Testbed, game: Game, issuer: Issuer, template_process) -> None:
    held, a, b = await two_processes(template_process, point, tmp_path)
    admin = bearer(issuer.mint("root-admin", roles=["admin"]))
    created = await b.CreateTemplate(template_pb2.CreateTemplateRequest(
        parent=f"namespaces/{game.namespace}", source=source_text(text_for(SAMPLE, testbed.domain, game.namespace))),
        metadata=admin)
    before = created.template
    message = template_pb2.DeleteTemplateRequest(name=before.name, request_id="delete-1")

    answer = await crash_and_retry(held, a, b, "DeleteTemplate", message, admin, point, tmp_path)

    assert (answer.template.name, answer.template.uid, answer.template.etag) == (before.name, before.uid, before.etag)
    assert answer.deleted_instance_count == 0 and not answer.warnings
    assert await gss_names(game) == set()  # deleted (by the first attempt, or by the retry when it had not yet)


@pytest.mark.parametrize("point", UPDATE)
async def test_update_killed_after_its_write_answers_the_updated_template(
        point: str, tmp_path: Path, testbed: Testbed, game: Game, issuer: Issuer, template_process) -> None:
    """With the etag read before the update: the retry finds its own write, not a stale etag, nor nothing to
    change."""
    held, a, b = await two_processes(template_process, point, tmp_path)
    admin = bearer(issuer.mint("root-admin", roles=["admin"]))
    created = await b.CreateTemplate(template_pb2.CreateTemplateRequest(
        parent=f"namespaces/{game.namespace}", source=source_text(text_for(SAMPLE, testbed.domain, game.namespace))),
        metadata=admin)
    manifest = json_format.MessageToDict(created.template.manifest)
    manifest["metadata"].setdefault("annotations", {})["aigc.gateway.io/sort-order"] = "7"
    changed = struct_pb2.Struct()
    changed.update(manifest)
    message = template_pb2.UpdateTemplateRequest(name=created.template.name, etag=created.template.etag,
                                                 request_id="update-1",
                                                 source=template_pb2.TemplateSource(object=changed))

    answer = await crash_and_retry(held, a, b, "UpdateTemplate", message, admin, point, tmp_path)

    now = await b.GetTemplate(template_pb2.GetTemplateRequest(name=created.template.name), metadata=admin)
    assert answer.template.sort_order == now.sort_order == 7
    assert answer.template.etag == now.etag != created.template.etag  # written once, by the first attempt
    assert [w.reason for w in answer.warnings] == []  # as an update that was not killed says
    # The digest is not shown as a change: the same manifest again changes nothing.
    again = await b.UpdateTemplate(template_pb2.UpdateTemplateRequest(
        name=now.name, source=template_pb2.TemplateSource(object=now.manifest)), metadata=admin)
    assert [w.reason for w in again.warnings] == ["NO_CHANGE"]
