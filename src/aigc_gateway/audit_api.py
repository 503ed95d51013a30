"""AuditService: admins read the audit log. Hosted by every gateway server."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from .api.v1 import audit_pb2, audit_pb2_grpc
from .audit import AuditLog, AuditQuery
from .db.models import AuditEventRow
from .identity import require_admin

_OUTCOMES = {audit_pb2.AuditEvent.SUCCESS: "SUCCESS", audit_pb2.AuditEvent.DENIED: "DENIED",
             audit_pb2.AuditEvent.FAILURE: "FAILURE"}


def _time(ts: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if present else None


def to_proto(row: AuditEventRow) -> audit_pb2.AuditEvent:
    event = audit_pb2.AuditEvent(
        name=f"auditEvents/{row.id}", actor=row.actor, actor_kind=row.actor_kind, action=row.action,
        resource=row.resource, request_id=row.request_id, error_code=row.error_code, service=row.service,
        outcome=audit_pb2.AuditEvent.Outcome.Value(row.outcome),
    )
    when = row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC)
    event.time.FromDatetime(when)
    details = struct_pb2.Struct()
    details.update(row.details or {})
    event.details.CopyFrom(details)
    return event


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):
    def __init__(self, log: AuditLog):
        self.log = log

    async def ListAuditEvents(self, request: audit_pb2.ListAuditEventsRequest, context: Any) -> audit_pb2.ListAuditEventsResponse:
        require_admin()
        query = AuditQuery(
            actor=request.actor, action=request.action, template=request.template, instance=request.instance,
            outcome=_OUTCOMES.get(request.outcome, ""),
            start=_time(request.start_time, request.HasField("start_time")),
            end=_time(request.end_time, request.HasField("end_time")),
        )
        rows, token = await self.log.list(query, request.page_size, request.page_token)
        return audit_pb2.ListAuditEventsResponse(audit_events=[to_proto(r) for r in rows], next_page_token=token)
