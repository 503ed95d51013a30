"""gRPC mapping of the AuthService (RPC <-> domain only)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from google.protobuf import timestamp_pb2

from aigc_gateway.api.envoy import envoy_service_auth_v3_external_auth_pb2_grpc as ext_grpc
from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc
from aigc_gateway.context import credentials_var
from aigc_gateway.errors import NotFound, invalid
from aigc_gateway.identity import Principal, require_admin, require_principal
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts
from aigc_gateway.sessions import SESSION_METADATA, AmbiguousCookie, single_cookie

from .checker import Credentials
from .decision import Decision, Outcome, decide
from .envoy import EnvoyAuthorizationServicer
from .service import AuthService
from .urls import BadURL, parse_original_url

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


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


class AuthServiceServicer(auth_pb2_grpc.AuthServiceServicer):
    """Maps AuthService RPCs onto the domain logic."""

    def __init__(self, service: AuthService):
        self.service = service

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context: Any) -> auth_pb2.Principal:
        return principal_to_proto(require_principal())

    async def Check(self, request: auth_pb2.CheckRequest, context: Any) -> auth_pb2.CheckResponse:
        caller = require_principal()
        if not request.url:
            raise invalid("url", "the URL to check is required (X-Original-URL)")
        if request.session_cookie or request.bearer_token:
            # Deciding for someone else's credentials is the ingress' job, not a user's.
            require_admin()
            credentials = Credentials(session_cookie=request.session_cookie or None,
                                      bearer_token=request.bearer_token or None)
            return decision_to_proto(await self.service.checker.check(request.url, credentials,
                                                                      method=request.method))
        # No credentials in the request: decide for the caller (e.g. the dashboard asking for its user).
        try:
            target = parse_original_url(request.url)
        except BadURL:
            target = None
        return decision_to_proto(decide(target, caller if caller.kind == "user" else None, self.service.owners,
                                        allow_admin=self.service.settings.auth.allow_admin_access))

    async def GetSession(self, request: auth_pb2.GetSessionRequest, context: Any) -> auth_pb2.Session:
        require_principal()
        sessions = self.service.sessions
        forwarded = dict(credentials_var.get())
        try:
            value = forwarded.get(SESSION_METADATA) or (
                single_cookie(forwarded.get("cookie"), sessions.cookie_name) if sessions else None)
        except AmbiguousCookie:
            value = None
        resolved = await sessions.resolve(value) if sessions and value else None
        if resolved is None or sessions is None:
            raise NotFound("this call carries no session cookie", reason="NO_SESSION")
        _, record = resolved
        return auth_pb2.Session(name=f"sessions/{record.id_hash}",
                                principal=principal_to_proto(record.principal(sessions.admin_role)),
                                create_time=_timestamp(record.created_at), expire_time=_timestamp(record.expires_at))

    async def RevokeUserSessions(self, request: auth_pb2.RevokeUserSessionsRequest,
                                 context: Any) -> auth_pb2.RevokeUserSessionsResponse:
        require_admin()
        if not request.user.strip():
            raise invalid("user", "the user id whose sessions to revoke is required")
        if self.service.sessions is None:
            return auth_pb2.RevokeUserSessionsResponse(revoked_count=0)
        count = await self.service.sessions.store.revoke_user(request.user)
        return auth_pb2.RevokeUserSessionsResponse(revoked_count=count)


def build(runtime: Runtime) -> ServiceParts:
    service = AuthService(runtime)
    registrations = [Registration("aigc.gateway.v1.AuthService", AuthServiceServicer(service),
                                  auth_pb2_grpc.add_AuthServiceServicer_to_server,
                                  base=auth_pb2_grpc.AuthServiceServicer),
                     Registration("envoy.service.auth.v3.Authorization",
                                  EnvoyAuthorizationServicer(service.checker, runtime.settings.auth.cookie_name),
                                  ext_grpc.add_AuthorizationServicer_to_server)]
    return ServiceParts(registrations, on_start=[service.start], on_stop=[service.stop], service=service)
