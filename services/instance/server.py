"""gRPC mapping of the InstanceService (RPCs not built yet answer UNIMPLEMENTED)."""
from __future__ import annotations

from aigc_gateway.api.v1 import instance_pb2_grpc
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts


class InstanceServiceServicer(instance_pb2_grpc.InstanceServiceServicer):
    """Maps InstanceService RPCs onto the domain logic."""


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts([Registration("aigc.gateway.v1.InstanceService", InstanceServiceServicer(), instance_pb2_grpc.add_InstanceServiceServicer_to_server,
                                      base=instance_pb2_grpc.InstanceServiceServicer)])
