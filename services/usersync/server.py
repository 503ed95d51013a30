"""gRPC mapping of the UserSyncService (RPCs not built yet answer UNIMPLEMENTED)."""
from __future__ import annotations

from aigc_gateway.api.v1 import usersync_pb2_grpc
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts


class UserSyncServiceServicer(usersync_pb2_grpc.UserSyncServiceServicer):
    """Maps UserSyncService RPCs onto the domain logic."""


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts([Registration("aigc.gateway.v1.UserSyncService", UserSyncServiceServicer(), usersync_pb2_grpc.add_UserSyncServiceServicer_to_server,
                                      base=usersync_pb2_grpc.UserSyncServiceServicer)])
