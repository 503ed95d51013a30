"""gRPC mapping of the TemplateService: request fields in, domain calls, responses out. Nothing else.

Reads are open to every signed-in user (the manifest only to admins); every
other method needs the admin role. The call interceptor authenticates, audits
every mutation and every refusal, and maps domain errors to gRPC statuses. The service is wired in
app.py; the messages are built in messages.py.
"""
from __future__ import annotations

from typing import Any

from aigc_gateway.api.v1 import template_pb2, template_pb2_grpc
from aigc_gateway.errors import invalid
from aigc_gateway.identity import require_admin, require_principal
from aigc_gateway.names import parse_namespace_parent, parse_template

from . import rollout_write
from .cascade import Cascade
from .catalog import Catalog
from .manifest import Parsed
from .messages import source_manifest
from .policy import Policy
from .publishing import Publisher


class TemplateServiceServicer(template_pb2_grpc.TemplateServiceServicer):
    def __init__(self, catalog: Catalog, publisher: Publisher, cascade: Cascade, policy: Policy):
        self.catalog = catalog
        self.publisher = publisher
        self.cascade = cascade
        self.policy = policy

    def _source(self, request: Any) -> Parsed:
        if not request.HasField("source") or request.source.WhichOneof("source") is None:
            raise invalid("source", "give the GameServerSet manifest as text (source.manifest) or as an object "
                                    "(source.object)", "REQUIRED")
        return source_manifest(request.source, self.policy.max_manifest_bytes)

    async def ListTemplates(self, request: template_pb2.ListTemplatesRequest, context: Any) -> Any:
        principal = require_principal()
        namespace = parse_namespace_parent(request.parent)
        return await self.catalog.list(request.parent, namespace, request.page_size, request.page_token,
                                       admin=principal.admin)

    async def GetTemplate(self, request: template_pb2.GetTemplateRequest, context: Any) -> Any:
        principal = require_principal()
        namespace, name = _template(request.name)
        return await self.catalog.get(namespace, name, admin=principal.admin)

    async def CreateTemplate(self, request: template_pb2.CreateTemplateRequest, context: Any) -> Any:
        require_admin()
        namespace = parse_namespace_parent(request.parent)
        return await self.publisher.create(namespace, self._source(request), request.validate_only)

    async def UpdateTemplate(self, request: template_pb2.UpdateTemplateRequest, context: Any) -> Any:
        require_admin()
        namespace, name = _template(request.name)
        return await self.publisher.update(namespace, name, self._source(request), list(request.update_mask.paths),
                                           allow_restart=request.allow_restart, etag=request.etag,
                                           validate_only=request.validate_only, asked=_asked(request))

    async def DeleteTemplate(self, request: template_pb2.DeleteTemplateRequest, context: Any) -> Any:
        require_admin()
        namespace, name = _template(request.name)
        return await self.cascade.delete(namespace, name, force=request.force, etag=request.etag)

    async def ValidateTemplate(self, request: template_pb2.ValidateTemplateRequest, context: Any) -> Any:
        require_admin()
        namespace = parse_namespace_parent(request.parent)
        return await self.publisher.validate(namespace, self._source(request), request.as_update)

    async def PreviewTemplateUpdate(self, request: template_pb2.PreviewTemplateUpdateRequest, context: Any) -> Any:
        require_admin()
        namespace, name = _template(request.name)
        return await self.publisher.preview(namespace, name, self._source(request), list(request.update_mask.paths),
                                            _asked(request))


def _template(name: str) -> tuple[str, str]:
    ref = parse_template(name, "name")
    return ref.namespace, ref.template


def _asked(request: template_pb2.UpdateTemplateRequest | template_pb2.PreviewTemplateUpdateRequest
           ) -> rollout_write.Requested:
    idle_after = request.rollout_idle_after.ToTimedelta() if request.HasField("rollout_idle_after") else None
    known = request.rollout_policy in template_pb2.RolloutPolicy.values()
    return rollout_write.requested(template_pb2.RolloutPolicy.Name(request.rollout_policy) if known
                                   else str(request.rollout_policy), idle_after)
