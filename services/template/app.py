"""The template service object and its wiring: ``build(runtime)`` (what ``server.load_service`` calls).

A :class:`TemplateService` is the catalog (reads), the publisher (writes) and the cascade (deletes)
over one Kubernetes handle and the read-only view of the `instances` table; server.py maps the RPCs
onto it. Nothing here decides anything: it makes the parts and says how they stop.
"""
from __future__ import annotations

from dataclasses import dataclass

from aigc_gateway.api.v1 import template_pb2_grpc
from aigc_gateway.kube import KubeHandle
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import Registration, ServiceParts

from . import faults
from .cascade import Cascade
from .catalog import Catalog
from .cluster import TemplateCluster
from .handoff import Handoff
from .instances import InstanceTable
from .policy import Policy
from .publishing import Publisher
from .server import TemplateServiceServicer


@dataclass
class TemplateService:
    policy: Policy
    handle: KubeHandle
    cluster: TemplateCluster
    catalog: Catalog
    publisher: Publisher
    cascade: Cascade

    async def close(self) -> None:
        await self.cluster.cache.close()
        await self.handle.close()


def make(runtime: Runtime) -> TemplateService:
    faults.armed()  # a crash test's switch naming no point is reported at start
    policy = Policy.from_settings(runtime.settings)
    handle = KubeHandle(runtime.settings.kubernetes)
    cluster = TemplateCluster(handle, policy)
    table = InstanceTable(runtime.db)
    catalog = Catalog(cluster, table, policy)
    publisher = Publisher(cluster, catalog, table, policy)
    cascade = Cascade(cluster, table, Handoff(runtime), policy, runtime.settings.template.delete_wait_seconds)
    return TemplateService(policy, handle, cluster, catalog, publisher, cascade)


def build(runtime: Runtime) -> ServiceParts:
    service = make(runtime)
    servicer = TemplateServiceServicer(service.catalog, service.publisher, service.cascade, service.policy)
    return ServiceParts(
        [Registration("aigc.gateway.v1.TemplateService", servicer,
                      template_pb2_grpc.add_TemplateServiceServicer_to_server,
                      base=template_pb2_grpc.TemplateServiceServicer)],
        on_stop=[service.close], service=service)
