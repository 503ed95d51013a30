"""The TemplateService's messages, and nothing else builds them: the Template resource derived from a
GameServerSet (the object alone), the responses of reads and writes, and a TemplateSource read into a
manifest. Protobuf conversion only, no I/O: server.py maps RPCs onto the catalog, the publisher and the
cascade, and those build their answers here.

Display metadata comes from `<prefix>display-name|description|icon-url|category|sort-order`
annotations; what the template runs on from its first container's limits (requests when no limit)
and the ECI label and annotation of the pod template. An object the Template message cannot
carry (a number beyond int32, written around the service's rules) is *flagged* instead: named,
unusable with reason UNDESCRIBABLE, still readable and deletable (:func:`describe_or_flag`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from aigc_gateway import upgrades
from aigc_gateway.accelerator import GPU, GPU_MEMORY, accelerator_of, containers
from aigc_gateway.api.v1 import common_pb2, template_pb2
from aigc_gateway.errors import Violation
from aigc_gateway.names import template_name
from aigc_gateway.quantity import INT32_MAX

from . import changes, manifest, network, rollout_preview, rollout_write, rules
from .manifest import to_struct
from .policy import Policy

log = logging.getLogger(__name__)
# The message types the catalog, the publisher and the cascade answer with (they build none themselves).
Template = template_pb2.Template


def serialized(template: Template) -> bytes:
    """A Template's bytes, as a stored answer keeps it (deterministic: a replay is byte-identical)."""
    return template.SerializeToString(deterministic=True)


def parsed(data: bytes) -> Template:
    return Template.FromString(data)
TemplateSource = template_pb2.TemplateSource
ListTemplatesResponse = template_pb2.ListTemplatesResponse
ValidateTemplateResponse = template_pb2.ValidateTemplateResponse
TemplateChange = template_pb2.TemplateChange
PreviewTemplateUpdateResponse = template_pb2.PreviewTemplateUpdateResponse
DeleteTemplateResponse = template_pb2.DeleteTemplateResponse
UNDESCRIBABLE = "UNDESCRIBABLE"


@dataclass(frozen=True)
class Counts:
    live: int = 0
    paused: int = 0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class Undescribable(ValueError):
    """The object holds a value the Template message cannot carry (a number beyond int32)."""


def _int32(value: int, what: str) -> int:
    if not -INT32_MAX - 1 <= value <= INT32_MAX:
        raise Undescribable(f"{what} is {value}, beyond what the API's int32 field holds")
    return value


def accelerator(obj: dict[str, Any]) -> common_pb2.Accelerator:
    acc = accelerator_of(obj)
    return common_pb2.Accelerator(
        type=common_pb2.Accelerator.Type.Value(acc.kind.value), cpu=acc.cpu, memory=acc.memory,
        gpu_count=_int32(acc.gpu_count, GPU), gpu_memory_gib=_int32(acc.gpu_memory_gib, GPU_MEMORY), eci=acc.eci,
        eci_instance_type=acc.eci_instance_type)


def disks(obj: dict[str, Any]) -> list[common_pb2.Disk]:
    claims = _dict(_dict(obj.get("spec")).get("gameServerTemplate")).get("volumeClaimTemplates") or []
    out = []
    for claim in claims:
        if not isinstance(claim, dict):
            continue
        spec = _dict(claim.get("spec"))
        size = _dict(_dict(spec.get("resources")).get("requests")).get("storage")
        out.append(common_pb2.Disk(volume_claim_template=str(_dict(claim.get("metadata")).get("name", "")),
                                   size="" if size is None else str(size),
                                   storage_class=str(spec.get("storageClassName") or "")))
    return out


def sort_order(obj: dict[str, Any], policy: Policy) -> int:
    raw = _dict(_dict(obj.get("metadata")).get("annotations")).get(f"{policy.annotation_prefix}sort-order")
    try:
        return max(min(int(str(raw).strip()), 2**31 - 1), -(2**31)) if raw is not None else 0
    except ValueError:
        return 0


def _timestamp(value: Any) -> timestamp_pb2.Timestamp | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)  # Python 3.11 reads the trailing Z
    except ValueError:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def describe(obj: dict[str, Any], policy: Policy, counts: Counts, *, with_manifest: bool) -> template_pb2.Template:
    meta = _dict(obj.get("metadata"))
    notes = _dict(meta.get("annotations"))
    prefix = policy.annotation_prefix
    name = str(meta.get("name", ""))
    report = rules.check(obj, policy, rules.Mode.EXISTING)
    reasons = rules.unusable_reasons(report)
    if meta.get("deletionTimestamp"):
        reasons.insert(0, "the template is being deleted")
    template = template_pb2.Template(
        name=template_name(str(meta.get("namespace", "")), name),
        display_name=str(notes.get(f"{prefix}display-name") or name),
        description=str(notes.get(f"{prefix}description", "")),
        icon_uri=str(notes.get(f"{prefix}icon-url", "")) if not any(
            v.reason == "INVALID_ICON_URL" for v in report.violations) else "",
        category=str(notes.get(f"{prefix}category", "")),
        sort_order=sort_order(obj, policy),
        accelerator=accelerator(obj),
        images=[str(c.get("image", "")) for c in containers(obj)],
        port=_int32(network.port(obj), "the network Port"),
        disks=disks(obj),
        host_pattern=network.first(obj, "Host"),
        path_pattern=network.first(obj, "Path"),
        live_instance_count=_int32(counts.live, "spec.replicas"),
        paused_instance_count=_int32(counts.paused, "the paused instance count"),
        usable=not reasons,
        unusable_reasons=reasons,
        etag=changes.etag(obj),
        uid=str(meta.get("uid", "")),
    )
    created = _timestamp(meta.get("creationTimestamp"))
    if created is not None:
        template.create_time.CopyFrom(created)
    # Only what the template records; unset means the configured default (template.rollout_*).
    recorded_policy = upgrades.policy_of(notes, prefix)
    if recorded_policy is not None:
        template.rollout_policy = template_pb2.RolloutPolicy.Value(recorded_policy.value)
    recorded_idle_after = upgrades.idle_after_of(notes, prefix)
    if recorded_idle_after is not None:
        template.rollout_idle_after.FromTimedelta(recorded_idle_after)
    if with_manifest:
        template.manifest.CopyFrom(to_struct(obj))
    return template


def flagged(obj: dict[str, Any], error: Exception, *, with_manifest: bool) -> template_pb2.Template:
    """What can be said of a template :func:`describe` failed on: its name, why it is unusable, and
    (for admins) the manifest, so that one bad object is listed, read and deleted instead of failing
    every call that meets it."""
    meta = _dict(obj.get("metadata"))
    name = str(meta.get("name", ""))
    template = template_pb2.Template(
        name=template_name(str(meta.get("namespace", "")), name), display_name=name, usable=False,
        unusable_reasons=[(f"{UNDESCRIBABLE}: the gateway cannot describe this template ({error}); fix it with "
                           "UpdateTemplate or delete it with DeleteTemplate")],
        uid=str(meta.get("uid", "")))
    try:
        template.etag = changes.etag(obj)
        if with_manifest:
            template.manifest.CopyFrom(to_struct(obj))
    except Exception:  # whatever else is odd in the object, the name and the reason are shown
        log.warning("template %s: etag or manifest not shown", template.name, exc_info=True)
    return template


def describe_or_flag(obj: dict[str, Any], policy: Policy, counts: Counts, *,
                     with_manifest: bool) -> tuple[template_pb2.Template, bool]:
    """(the Template, True), or (:func:`flagged`, False) when the object cannot be described."""
    try:
        return describe(obj, policy, counts, with_manifest=with_manifest), True
    except Exception as exc:  # one object must never fail a list (see flagged)
        log.warning("template %s/%s cannot be described: %s", _dict(obj.get("metadata")).get("namespace"),
                    _dict(obj.get("metadata")).get("name"), exc, exc_info=not isinstance(exc, Undescribable))
        return flagged(obj, exc, with_manifest=with_manifest), False


def sort_key(obj: dict[str, Any], policy: Policy) -> tuple[int, str, str]:
    """ListTemplates order: sort order, then namespace, then name."""
    meta = _dict(obj.get("metadata"))
    return sort_order(obj, policy), str(meta.get("namespace", "")), str(meta.get("name", ""))


# -- requests in ---------------------------------------------------------------------------------------

def source_manifest(source: template_pb2.TemplateSource, max_bytes: int) -> manifest.Parsed:
    """The manifest of a TemplateSource, given as text or as an object."""
    which = source.WhichOneof("source")
    if which == "manifest":
        return manifest.parse_text(source.manifest, max_bytes)
    if which == "object":
        return manifest.parse_struct(source.object, max_bytes)
    return manifest.Parsed(None, [Violation("source", "give the manifest as text or as an object", "REQUIRED")])


# -- responses out -------------------------------------------------------------------------------------

def field_violations(items: list[Violation]) -> list[common_pb2.FieldViolation]:
    return [common_pb2.FieldViolation(field=v.field, description=v.description, reason=v.reason) for v in items]


def template_list(templates: list[template_pb2.Template], total: int,
                  next_page_token: str = "") -> template_pb2.ListTemplatesResponse:
    return template_pb2.ListTemplatesResponse(total_size=total, templates=templates, next_page_token=next_page_token)


def validation(violations: list[Violation], warnings: list[Violation],
               normalized: dict[str, Any] | None) -> template_pb2.ValidateTemplateResponse:
    response = template_pb2.ValidateTemplateResponse(valid=not violations, violations=field_violations(violations),
                                                     warnings=field_violations(warnings))
    if normalized is not None:
        response.normalized_manifest.CopyFrom(to_struct(normalized))
    return response


def change(template: template_pb2.Template, warnings: list[Violation]) -> template_pb2.TemplateChange:
    return template_pb2.TemplateChange(template=template, warnings=field_violations(warnings))


def preview(violations: list[Violation], changed_paths: list[str] | None = None,
            entries: Sequence[rollout_preview.Entry] = (), chosen: rollout_write.Settings | None = None,
            in_place: bool = False, name: tuple[str, str] = ("", "")) -> template_pb2.PreviewTemplateUpdateResponse:
    """``entries``: what the change does to each instance of the template ``name`` (namespace, template), under the
    policy and threshold ``chosen``."""
    response = template_pb2.PreviewTemplateUpdateResponse(violations=field_violations(violations))
    response.changed_paths.extend(changed_paths or [])
    base = template_name(*name)
    for e in entries:
        entry = template_pb2.AffectedInstance(
            instance=f"{base}/instances/{e.id}", owner=e.owner, reason=e.reason, in_place=e.in_place,
            action=template_pb2.AffectedInstance.Action.Value(e.action.value))
        if e.last_access is not None:
            entry.last_access_time.FromDatetime(e.last_access)
        response.affected_instances.append(entry)
    response.restarts_instances = any(e.action is not rollout_preview.Action.ON_RESUME for e in entries)
    if changed_paths:
        response.in_place = in_place
    if chosen is not None:
        response.rollout_policy = template_pb2.RolloutPolicy.Value(chosen.policy.value)
        response.rollout_idle_after.FromTimedelta(chosen.idle_after)
    return response


def deletion(template: template_pb2.Template | None, deleted_instance_count: int, deleted_claims: list[str],
             cleaned_users: list[str], warnings: list[Violation]) -> template_pb2.DeleteTemplateResponse:
    response = template_pb2.DeleteTemplateResponse(
        deleted_instance_count=deleted_instance_count, deleted_claims=deleted_claims, cleaned_users=cleaned_users,
        warnings=field_violations(warnings))
    if template is not None:
        response.template.CopyFrom(template)
    return response
