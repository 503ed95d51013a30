"""gRPC mapping of the AuthService (RPCs not built yet answer UNIMPLEMENTED)."""
from __future__ import annotations

from aigc_gateway.api.v1 import auth_pb2, auth_pb2_grpc
from aigc_gateway.identity import Principal, require_principal
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts

_KINDS = {"user": auth_pb2.Principal.USER, "service": auth_pb2.Principal.SERVICE}


def principal_to_proto(principal: Principal) -> auth_pb2.Principal:
    return auth_pb2.Principal(
        subject=principal.subject, kind=_KINDS.get(principal.kind, auth_pb2.Principal.KIND_UNSPECIFIED),
        email=principal.email, preferred_username=principal.preferred_username,
        display_name=principal.display_name, roles=list(principal.roles), admin=principal.admin,
    )


class AuthServiceServicer(auth_pb2_grpc.AuthServiceServicer):
    """Maps AuthService RPCs onto the domain logic."""

    async def WhoAmI(self, request: auth_pb2.WhoAmIRequest, context) -> auth_pb2.Principal:  # type: ignore[no-untyped-def]
        return principal_to_proto(require_principal())


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts([Registration("aigc.gateway.v1.AuthService", AuthServiceServicer(),
                                      auth_pb2_grpc.add_AuthServiceServicer_to_server,
                                      base=auth_pb2_grpc.AuthServiceServicer)])
