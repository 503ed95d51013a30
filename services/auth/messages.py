"""The AuthService's messages, built from the domain's values: a principal, a decision, a session.
Protobuf conversion only; server.py maps the RPCs and answers with these.
"""
from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2

from aigc_gateway.api.v1 import auth_pb2
from aigc_gateway.identity import Principal
from aigc_gateway.sessions import SessionRecord

from .decision import Decision, Outcome

_KINDS = {"user": auth_pb2.Principal.USER, "service": auth_pb2.Principal.SERVICE}
_DECISIONS = {Outcome.ALLOW: auth_pb2.CheckResponse.ALLOW, Outcome.UNAUTHENTICATED: auth_pb2.CheckResponse.UNAUTHENTICATED,
              Outcome.FORBIDDEN: auth_pb2.CheckResponse.FORBIDDEN}


def principal_to_proto(principal: Principal) -> auth_pb2.Principal:
    return auth_pb2.Principal(
        subject=principal.subject, kind=_KINDS.get(principal.kind, auth_pb2.Principal.KIND_UNSPECIFIED),
        email=principal.email, preferred_username=principal.preferred_username,
        display_name=principal.display_name, roles=list(principal.roles), admin=principal.admin,
    )


def decision_to_proto(decision: Decision) -> auth_pb2.CheckResponse:
    p = decision.principal
    return auth_pb2.CheckResponse(
        decision=_DECISIONS[decision.outcome], http_status=decision.status, user=p.subject if p else "",
        email=p.email if p else "", preferred_username=p.preferred_username if p else "",
        instance=decision.instance.name if decision.instance else "", reason=decision.reason)


def session_to_proto(record: SessionRecord, admin_role: str) -> auth_pb2.Session:
    return auth_pb2.Session(name=f"sessions/{record.id_hash}", principal=principal_to_proto(record.principal(admin_role)),
                            create_time=_timestamp(record.created_at), expire_time=_timestamp(record.expires_at))


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts
