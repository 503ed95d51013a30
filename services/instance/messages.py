"""The InstanceService's messages: the Instance (from its slot row, its derived view, its template and its
claims), watch events, and the answers of the list, purge, consistency, quota-usage and idle-exemption calls.
Protobuf conversion only, no I/O; quota policies have their own conversions (quota_messages.py).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from aigc_gateway.api.v1 import common_pb2, instance_pb2
from aigc_gateway.names import InstanceRef, TemplateRef
from aigc_gateway.okg import claim_name

from . import templates
from .idle_api import EXEMPTIONS, Exemption
from .invariants import Finding
from .status import View

Obj = dict[str, Any]
# The types reads.py hands to server.py (it builds none itself).
Instance = instance_pb2.Instance
InstanceEvent = instance_pb2.InstanceEvent
ListInstancesResponse = instance_pb2.ListInstancesResponse


def _timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    out = Timestamp()
    out.FromDatetime(value)
    return out


def disks(gss: Obj | None, ref: InstanceRef, claims: Mapping[str, Obj] | None) -> list[common_pb2.Disk]:
    out = []
    for vct in templates.volume_claim_templates(gss or {}):
        name = (vct.get("metadata") or {}).get("name", "")
        spec = vct.get("spec") or {}
        claim = (claims or {}).get(claim_name(name, ref.template, ref.id)) or {}
        size = ((spec.get("resources") or {}).get("requests") or {}).get("storage", "")
        out.append(common_pb2.Disk(
            volume_claim_template=name, size=str(size), storage_class=spec.get("storageClassName") or "",
            claim_name=claim_name(name, ref.template, ref.id), claim_uid=(claim.get("metadata") or {}).get("uid", ""),
            phase=(claim.get("status") or {}).get("phase", "")))
    return out


def to_proto(ref: InstanceRef, row: Any, view: View, gss: Obj | None,
             claims: Mapping[str, Obj] | None) -> instance_pb2.Instance:
    """The `Instance` message; ``row`` is the slot row (InstanceRow)."""
    acc: dict[str, Any] = templates.accelerator(gss) if gss else {"type": "TYPE_UNSPECIFIED"}
    message = instance_pb2.Instance(
        name=ref.name, template=ref.template_ref.name, id=ref.id, owner=row.owner or "",
        state=instance_pb2.Instance.State.Value(view.state.name),
        state_message=view.message, access_uri=view.access_uri,
        accelerator=common_pb2.Accelerator(type=common_pb2.Accelerator.Type.Value(acc["type"]),
                                           **{k: v for k, v in acc.items() if k != "type"}),
        disks=disks(gss, ref, claims), orphaned=bool(row.orphaned))
    for field, value in (("create_time", row.created_at), ("update_time", row.updated_at),
                         ("state_change_time", row.state_changed_at), ("last_access_time", row.last_access_at)):
        stamp = _timestamp(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    return message


def revision(message: instance_pb2.Instance, running: str, update_available: bool) -> None:
    """The template revision the instance runs and whether its template has a newer one (docs/upgrade.md)."""
    message.revision, message.update_available = running, update_available


def uninstalled(message: instance_pb2.Instance, former_owner: str) -> None:
    """An instance whose slot is already free, as the owner it was uninstalled for last saw it."""
    message.state = instance_pb2.Instance.UNINSTALLING
    message.state_message, message.owner = "Uninstalled; the disk is deleted", former_owner


def announce(message: instance_pb2.Instance, at: datetime) -> None:
    """The pause for idleness announced for ``at``."""
    message.scheduled_pause_time.FromDatetime(at)


def scheduled_pause(message: instance_pb2.Instance) -> int:
    """The announced pause time in seconds, 0 for none."""
    return message.scheduled_pause_time.ToSeconds() if message.HasField("scheduled_pause_time") else 0


def instance_list(instances: list[instance_pb2.Instance], next_page_token: str,
                  total: int) -> instance_pb2.ListInstancesResponse:
    return instance_pb2.ListInstancesResponse(instances=instances, next_page_token=next_page_token, total_size=total)


def event(ref: InstanceRef, message: instance_pb2.Instance | None, source: str, reason: str = "",
          text: str = "") -> instance_pb2.InstanceEvent:
    """A watch event: the instance now (None: gone, shown UNINSTALLING with ``text``), what changed and why."""
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    instance = message or instance_pb2.Instance(name=ref.name, template=ref.template_ref.name, id=ref.id,
                                                state=instance_pb2.Instance.UNINSTALLING, state_message=text)
    shown = text if source == "event" and text else instance.state_message
    return instance_pb2.InstanceEvent(instance=instance, time=now, source=source, reason=reason, message=shown)


def purged(ref: TemplateRef, owned: Sequence[tuple[int, str]]) -> instance_pb2.PurgeInstancesResponse:
    """``owned``: (id, owner) of each instance of the template forgotten."""
    return instance_pb2.PurgeInstancesResponse(instances=[ref.instance(i).name for i, _ in owned],
                                               owners=[o for _, o in owned])


def consistency(templates_checked: int, findings: Sequence[Finding],
                over_quota: Sequence[tuple[str, str]]) -> instance_pb2.CheckConsistencyResponse:
    """``findings``: of every template checked; ``over_quota``: (subject, text) notices."""
    violations = [instance_pb2.ConsistencyViolation(template=f.template, id=f.id, code=f.code,
                                                    description=f.description) for f in findings]
    notices = [instance_pb2.ConsistencyViolation(template=subject, id=-1, code="OVER_QUOTA", description=text)
               for subject, text in over_quota]
    return instance_pb2.CheckConsistencyResponse(consistent=not violations, templates_checked=templates_checked,
                                                 violations=violations, notices=notices)


def quota_usage(user: str, rows: Sequence[tuple[str, int, int | None]]) -> instance_pb2.QuotaUsage:
    """``rows``: (limit, usage, maximum or None for unlimited)."""
    return instance_pb2.QuotaUsage(user=user, limits=[
        instance_pb2.QuotaLimitUsage(limit=name, usage=used, maximum=maximum or 0, unlimited=maximum is None)
        for name, used, maximum in rows])


def exemption(found: Exemption) -> instance_pb2.IdleExemption:
    message = instance_pb2.IdleExemption(name=f"{EXEMPTIONS}{found.user}", reason=found.reason,
                                         created_by=found.created_by)
    message.create_time.FromDatetime(found.created_at)
    return message


def exemption_list(found: Sequence[Exemption], next_page_token: str) -> instance_pb2.ListIdleExemptionsResponse:
    return instance_pb2.ListIdleExemptionsResponse(idle_exemptions=[exemption(e) for e in found],
                                                   next_page_token=next_page_token)
