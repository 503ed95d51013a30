"""gRPC mapping of the TemplateService (RPCs not built yet answer UNIMPLEMENTED)."""
from __future__ import annotations

from aigc_gateway.api.v1 import template_pb2_grpc
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts


class TemplateServiceServicer(template_pb2_grpc.TemplateServiceServicer):
    """Maps TemplateService RPCs onto the domain logic."""


def build(runtime: Runtime) -> ServiceParts:
    return ServiceParts([Registration("aigc.gateway.v1.TemplateService", TemplateServiceServicer(), template_pb2_grpc.add_TemplateServiceServicer_to_server,
                                      base=template_pb2_grpc.TemplateServiceServicer)])
