"""Fixtures of the template service's tests: a running template server and stubs with admin/user credentials."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from aigc_gateway.api.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    template_pb2,
    template_pb2_grpc,
)

from ..plugins.gateway import RunningGateway, bearer, make_settings
from ..plugins.kube import wait_for

TEMPLATE_LABELS = {"aigc.gateway.io/template": "true"}
# ListTemplates/GetTemplate read a watch cache: a write made around the service (the Kubernetes API, another
# service's process) is seen once the watch delivers it. Milliseconds normally; the bound is for a loaded machine.
WATCH_DELIVERY_SECONDS = 30.0
R = TypeVar("R")


async def read_until(read: Callable[[], Awaitable[R]], shows: Callable[[R], bool], what: str) -> R:
    """Repeat a template-service read until its answer shows a write made around the service; that answer
    (the caller asserts on it). A condition wait, bounded by WATCH_DELIVERY_SECONDS, never a sleep."""
    async def attempt() -> tuple[R] | None:
        reply = await read()
        return (reply,) if shows(reply) else None
    return (await wait_for(attempt, WATCH_DELIVERY_SECONDS, interval=0.1, what=what))[0]


@dataclass
class TemplateApi:
    gateway: RunningGateway
    stub: template_pb2_grpc.TemplateServiceStub
    audit: audit_pb2_grpc.AuditServiceStub
    admin: tuple[tuple[str, str], ...]
    user: tuple[tuple[str, str], ...]
    namespace: str

    @property
    def parent(self) -> str:
        return f"namespaces/{self.namespace}"

    def name(self, template: str) -> str:
        return f"namespaces/{self.namespace}/templates/{template}"

    async def events(self, outcome: str = "", **filters: Any) -> list[audit_pb2.AuditEvent]:
        """Audit events, oldest first (``outcome``: SUCCESS, DENIED or FAILURE)."""
        if outcome:
            filters["outcome"] = audit_pb2.AuditEvent.Outcome.Value(outcome)
        reply = await self.audit.ListAuditEvents(audit_pb2.ListAuditEventsRequest(page_size=500, **filters),
                                                 metadata=self.admin)
        return list(reversed(reply.audit_events))


def source_text(text: str) -> template_pb2.TemplateSource:
    return template_pb2.TemplateSource(manifest=text)


@pytest.fixture
def template_api(start_gateway, database_url, issuer):
    """``await template_api(namespace, kubeconfig=..., services=(...))``: the template service (plus others)."""
    async def start(namespace: str = "default", *, kubeconfig: str = "/nonexistent/kubeconfig",
                    services: tuple[str, ...] = (), **overrides: Any) -> TemplateApi:
        overrides = {"namespaces": [namespace], "gss_labels": TEMPLATE_LABELS,
                     "kubernetes": {"kubeconfig": kubeconfig}, "template": {"delete_wait_seconds": 90}} | overrides
        settings = make_settings(database_url, issuer, **overrides)
        gateway = await start_gateway("template", *services, settings=settings)
        channel = gateway.channel("template")
        return TemplateApi(gateway, template_pb2_grpc.TemplateServiceStub(channel),
                           audit_pb2_grpc.AuditServiceStub(channel),
                           bearer(issuer.mint("root-admin", roles=["admin"])), bearer(issuer.mint("alice")),
                           namespace)
    return start
