"""PreviewTemplateUpdate per instance (issue 14, docs/upgrade.md) on the test bed: what a change of the pod template
would do to each instance under the template's rollout policy, from the activity the auth service recorded
(`instances.last_access_at`), and whether it happens in place."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from sqlalchemy import update

from aigc_gateway.api.v1 import template_pb2
from aigc_gateway.db.models import InstanceRow

from .cluster_helpers import add_instances, text_for
from .conftest import source_text
from .test_access import violations
from .test_templates_testbed import RECORDED, api, publish  # noqa: F401 - the fixture

if TYPE_CHECKING:
    from ..plugins.testbed import Testbed

pytestmark = pytest.mark.testbed

NAME = "stable-diffusion-cpu"
Affected = template_pb2.AffectedInstance


async def _accessed(api, ago: dict[int, timedelta]) -> dict[int, datetime]:
    """Record a last access `ago` before now per id, as the auth service would."""
    now = datetime.now(UTC).replace(microsecond=0)
    async with api.gateway.runtime.db.session() as session:
        for i, delta in ago.items():
            await session.execute(update(InstanceRow).where(
                InstanceRow.namespace == api.namespace, InstanceRow.template == NAME, InstanceRow.id == i)
                .values(last_access_at=now - delta))
        await session.commit()
    return {i: now - delta for i, delta in ago.items()}


def _entries(preview: template_pb2.PreviewTemplateUpdateResponse) -> list[tuple[str, str, str, str, bool]]:
    return [(a.instance.rsplit("/", 1)[1], a.owner, Affected.Action.Name(a.action), a.reason, a.in_place)
            for a in preview.affected_instances]


async def test_preview_says_per_instance_what_happens_and_when(api, testbed: Testbed) -> None:  # noqa: F811
    await publish(api, testbed)
    # Rows as the instance service writes them: alice busy, bob idle for 20 minutes, carol paused, dave never used
    # (each running one started two hours ago: one started within the threshold counts as in use).
    await add_instances(api.gateway.runtime.db, api.namespace, NAME, {
        0: ("LIVE", "alice"), 1: ("LIVE", "bob"), 2: ("PAUSED", "carol"), 3: ("LIVE", "dave")})
    at = await _accessed(api, {0: timedelta(seconds=30), 1: timedelta(minutes=20), 2: timedelta(days=1)})
    async with api.gateway.runtime.db.session() as session:
        await session.execute(update(InstanceRow).where(
            InstanceRow.namespace == api.namespace, InstanceRow.template == NAME, InstanceRow.id.in_((0, 1, 3)))
            .values(state_changed_at=datetime.now(UTC) - timedelta(hours=2)))
    text = text_for(NAME, testbed.domain, api.namespace)
    image = source_text(text.replace(":v1.0.0-cpu", ":v2.0.0-cpu"))

    async def preview(source: template_pb2.TemplateSource, **kw) -> template_pb2.PreviewTemplateUpdateResponse:
        return await api.stub.PreviewTemplateUpdate(template_pb2.PreviewTemplateUpdateRequest(
            name=api.name(NAME), source=source, **kw), metadata=api.admin)

    # The configured default: WHEN_IDLE after 900 s (plus 65 s for how late accesses are recorded).
    seen = await preview(image)
    assert not seen.violations and seen.restarts_instances and seen.in_place
    assert template_pb2.RolloutPolicy.Name(seen.rollout_policy) == "WHEN_IDLE"
    assert seen.rollout_idle_after.ToTimedelta() == timedelta(seconds=900)
    assert _entries(seen) == [("0", "alice", "WHEN_IDLE", "busy", True), ("1", "bob", "RESTART_NOW", "idle", True),
                              ("2", "carol", "ON_RESUME", "paused", False), ("3", "dave", "RESTART_NOW", "idle", True)]
    assert seen.affected_instances[0].last_access_time.ToDatetime(tzinfo=UTC) == at[0]  # busy: since when
    assert not seen.affected_instances[3].HasField("last_access_time")  # never accessed counts as idle

    # A shorter threshold in the request: alice (30 s ago) is still busy within 60 s + 65 s.
    seen = await preview(image, rollout_idle_after=duration_pb2.Duration(seconds=60))
    assert [e[2] for e in _entries(seen)] == ["WHEN_IDLE", "RESTART_NOW", "ON_RESUME", "RESTART_NOW"]
    # A threshold longer than bob's 20 minutes makes him busy too.
    seen = await preview(image, rollout_idle_after=duration_pb2.Duration(seconds=3600))
    assert [e[2] for e in _entries(seen)] == ["WHEN_IDLE", "WHEN_IDLE", "ON_RESUME", "RESTART_NOW"]
    seen = await preview(image, rollout_policy=template_pb2.MANUAL)
    assert [e[2:4] for e in _entries(seen)] == [("WHEN_ASKED", "manual"), ("WHEN_ASKED", "manual"),
                                                ("ON_RESUME", "paused"), ("WHEN_ASKED", "manual")]
    seen = await preview(image, rollout_policy=template_pb2.IMMEDIATE)
    assert [e[2:4] for e in _entries(seen)] == [("RESTART_NOW", "immediate"), ("RESTART_NOW", "immediate"),
                                                ("ON_RESUME", "paused"), ("RESTART_NOW", "immediate")]

    # A probe change cannot be made in place: the pods are recreated (on their disks).
    seen = await preview(source_text(text.replace("periodSeconds: 10", "periodSeconds: 20")))
    assert list(seen.changed_paths) == RECORDED + [
        "spec.gameServerTemplate.spec.containers[0].readinessProbe.periodSeconds"]
    assert not seen.in_place and [e[4] for e in _entries(seen)] == [False, False, False, False]
    # A change outside the pod template restarts nothing and lists nobody.
    seen = await preview(source_text(text.replace("Stable Diffusion (CPU)", "SD (CPU)")))
    assert seen.changed_paths and not seen.restarts_instances and not seen.affected_instances


async def test_the_recorded_policy_is_shown_and_previewed(api, testbed: Testbed) -> None:  # noqa: F811
    await publish(api, testbed)
    await add_instances(api.gateway.runtime.db, api.namespace, NAME, {0: ("LIVE", "alice")})
    notes = template_pb2.TemplateSource()
    notes.object.update({"metadata": {"annotations": {"aigc.gateway.io/rollout-policy": "MANUAL",
                                                      "aigc.gateway.io/rollout-idle-after": "30m"}}})
    change = await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
        name=api.name(NAME), source=notes, update_mask=field_mask_pb2.FieldMask(paths=["metadata.annotations"])),
        metadata=api.admin)
    assert template_pb2.RolloutPolicy.Name(change.template.rollout_policy) == "MANUAL"
    assert change.template.rollout_idle_after.ToTimedelta() == timedelta(minutes=30)
    image = source_text(text_for(NAME, testbed.domain, api.namespace).replace(":v1.0.0-cpu", ":v2.0.0-cpu"))
    seen = await api.stub.PreviewTemplateUpdate(template_pb2.PreviewTemplateUpdateRequest(
        name=api.name(NAME), source=image), metadata=api.admin)
    assert template_pb2.RolloutPolicy.Name(seen.rollout_policy) == "MANUAL"
    assert seen.rollout_idle_after.ToTimedelta() == timedelta(minutes=30)
    assert _entries(seen)[0][2:4] == ("WHEN_ASKED", "manual")

    # A setting the gateway could not read is refused, named, and nothing is written.
    bad = template_pb2.TemplateSource()
    bad.object.update({"metadata": {"annotations": {"aigc.gateway.io/rollout-policy": "SOMETIMES"}}})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.stub.UpdateTemplate(template_pb2.UpdateTemplateRequest(
            name=api.name(NAME), source=bad, update_mask=field_mask_pb2.FieldMask(paths=["metadata.annotations"])),
            metadata=api.admin)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(err.value) == [("metadata.annotations[aigc.gateway.io/rollout-policy]", "INVALID_ROLLOUT_POLICY")]
    now = await api.stub.GetTemplate(template_pb2.GetTemplateRequest(name=api.name(NAME)), metadata=api.admin)
    assert template_pb2.RolloutPolicy.Name(now.rollout_policy) == "MANUAL"
