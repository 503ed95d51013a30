"""gRPC server bootstrap on grpc.aio: one server per gateway service.

Each server gets the call interceptor (identity, request ids, metrics, audit,
errors), gRPC health checking with a status per service, server reflection,
and the AuditService. SIGTERM marks every service NOT_SERVING, then drains
in-flight RPCs for ``shutdown_grace_seconds`` before stopping.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import metrics
from .audit_api import AuditServicer
from .calls import CallInterceptor
from .config import SERVICE_NAMES
from .errors import Unimplemented
from .runtime import Runtime

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Registration:
    """One gRPC service a gateway server hosts."""

    full_name: str  # e.g. "aigc.gateway.v1.TemplateService"
    servicer: Any
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    base: type | None = None  # the generated servicer base, to find unbuilt methods


@dataclass
class ServiceParts:
    """What a service's ``build(runtime)`` returns."""

    registrations: list[Registration]
    # Background tasks and extra listeners (HTTP endpoints, reconcilers), started with the server.
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The service object build() made, for tests and benches that drive it directly (see service_as).
    service: object | None = None

    def service_as(self, kind: type[T]) -> T:
        """The service object, checked to be a ``kind``: ``parts.service_as(AuthService)``."""
        if not isinstance(self.service, kind):
            raise TypeError(f"the service object is a {type(self.service).__name__}, not a {kind.__name__}")
        return self.service


def fill_unimplemented(registration: Registration, issue: str = "") -> None:
    """Answer UNIMPLEMENTED, with a message naming the method, for methods not built yet."""
    if registration.base is None:
        return
    from google.protobuf import descriptor_pool

    service = descriptor_pool.Default().FindServiceByName(registration.full_name)
    for method in service.methods:
        if getattr(type(registration.servicer), method.name, None) is getattr(registration.base, method.name, None):
            message = f"{service.name}.{method.name} is not implemented yet{f' ({issue})' if issue else ''}"

            def make(msg: str, streaming: bool) -> Callable[..., Any]:
                if streaming:
                    async def stream(request: Any, context: Any) -> Any:
                        raise Unimplemented(msg, reason="NOT_IMPLEMENTED")
                        yield  # pragma: no cover - makes this an async generator

                    return stream

                async def unary(request: Any, context: Any) -> Any:
                    raise Unimplemented(msg, reason="NOT_IMPLEMENTED")

                return unary

            setattr(registration.servicer, method.name, make(message, method.server_streaming))


def load_service(name: str, runtime: Runtime) -> ServiceParts:
    if name not in SERVICE_NAMES:
        raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICE_NAMES)}")
    # Every service wires itself in its app.py (docs/architecture.md, "Inside a service").
    module = importlib.import_module(f"aigc_gateway.services.{name}.app")
    parts: ServiceParts = module.build(runtime)
    return parts


class GatewayServer:
    """The gRPC server of one gateway service."""

    def __init__(self, name: str, runtime: Runtime, parts: ServiceParts):
        self.name = name
        self.runtime = runtime
        self.parts = parts
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, listen: str | None = None) -> int:
        settings = self.runtime.settings
        interceptor = CallInterceptor(self.name, self.runtime.authenticator, self.runtime.audit_log(self.name),
                                      self.runtime.idempotency)
        self.server = grpc.aio.server(interceptors=[interceptor], options=[("grpc.so_reuseport", 0)])
        from .api.v1 import audit_pb2_grpc

        registrations = [*self.parts.registrations, Registration(
            "aigc.gateway.v1.AuditService", AuditServicer(self.runtime.audit_log(self.name)),
            audit_pb2_grpc.add_AuditServiceServicer_to_server)]
        for registration in registrations:
            fill_unimplemented(registration)
            registration.add_to_server(registration.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [r.full_name for r in registrations]
        if settings.servers.reflection:
            reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = listen or settings.servers.endpoint(self.name).listen
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind {address}")
        await self.server.start()
        try:
            for hook in self.parts.on_start:
                await hook()
        except BaseException:
            # A service that cannot start its background parts must not stay half up on its port.
            await self.server.stop(0)
            self.server = None
            raise
        for full_name in ["", *names]:
            await self.health.set(full_name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s service listening on %s", self.name, address.rsplit(":", 1)[0] + f":{self.port}")
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        for hook in self.parts.on_stop:
            try:
                await hook()
            except Exception:
                log.exception("stop hook of %s failed", self.name)
        self.server = None


async def serve(names: list[str], runtime: Runtime) -> None:
    """Run the named services in this process until SIGTERM or SIGINT."""
    metrics.serve(runtime.settings.servers.metrics_listen)
    servers = [GatewayServer(name, runtime, load_service(name, runtime)) for name in names]
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        for server in servers:
            await server.start()
        await stopping.wait()
        log.info("shutting down: draining in-flight calls for up to %.0fs",
                 runtime.settings.servers.shutdown_grace_seconds)
    finally:
        await asyncio.gather(*(s.stop(runtime.settings.servers.shutdown_grace_seconds) for s in servers))
        await runtime.close()
