"""gRPC mapping of the AuthService (RPC <-> domain only): the checker decides, messages.py builds the
answers, app.py wires the service (and Envoy's ext_authz servicer, envoy.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc
from aigc_gateway.context import credentials_var
from aigc_gateway.errors import NotFound, invalid
from aigc_gateway.identity import require_admin, require_principal
from aigc_gateway.sessions import SESSION_METADATA, AmbiguousCookie, single_cookie

from .checker import Credentials
from .messages import decision_to_proto, principal_to_proto, session_to_proto

if TYPE_CHECKING:
    from .app import AuthService


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
        return decision_to_proto(self.service.checker.for_caller(request.url, caller))

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
        return session_to_proto(record, sessions.admin_role)

    async def RevokeUserSessions(self, request: auth_pb2.RevokeUserSessionsRequest,
                                 context: Any) -> auth_pb2.RevokeUserSessionsResponse:
        require_admin()
        if not request.user.strip():
            raise invalid("user", "the user id whose sessions to revoke is required")
        if self.service.sessions is None:
            return auth_pb2.RevokeUserSessionsResponse(revoked_count=0)
        count = await self.service.sessions.store.revoke_user(request.user)
        return auth_pb2.RevokeUserSessionsResponse(revoked_count=count)
