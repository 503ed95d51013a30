"""Gateway servers started in the test's event loop, on free ports, against real PostgreSQL."""
from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest

from aigc_gateway.config import Settings
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import GatewayServer, ServiceParts, load_service

from .oidc import Issuer

TEST_SERVICE_TOKEN = "test-service-token-" + "x" * 32


T = TypeVar("T")


@dataclass
class RunningGateway:
    runtime: Runtime
    servers: dict[str, GatewayServer] = field(default_factory=dict)
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def service(self, name: str, kind: type[T]) -> T:
        """The service object of server ``name`` (its build()'s), checked to be a ``kind``."""
        return self.servers[name].parts.service_as(kind)

    def channel(self, name: str) -> grpc.aio.Channel:
        if name not in self.channels:
            self.channels[name] = grpc.aio.insecure_channel(f"127.0.0.1:{self.servers[name].port}")
        return self.channels[name]

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        for server in self.servers.values():
            await server.stop(0)
        await self.runtime.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_settings(database_url: str, issuer: Issuer, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "domain": "aigc.test",
        "database": {"url": database_url, "pool_size": 5},
        "oidc": {"issuer": issuer.url, "audience": [issuer.audience]},
        "service_identity": {"token": TEST_SERVICE_TOKEN},
        # Real free ports (not :0) so that services can dial each other through Runtime.channel().
        "servers": {name: {"listen": f"127.0.0.1:{free_port()}"} for name in ("template", "instance", "auth", "usersync")}
        | {"metrics_listen": ""},
        "logging": {"level": "INFO", "json": True},
    }
    for key, value in overrides.items():
        data[key] = value if not isinstance(value, dict) else {**data.get(key, {}), **value}
    return Settings.model_validate(data)


@pytest.fixture
def gateway_settings(database_url: str, issuer: Issuer) -> Settings:
    return make_settings(database_url, issuer)


@pytest.fixture
async def start_gateway(gateway_settings: Settings) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    """``await start_gateway("template", ...)`` starts those services; ``parts=`` substitutes test services."""
    running: list[RunningGateway] = []

    async def start(*names: str, settings: Settings | None = None,
                    parts: dict[str, ServiceParts] | None = None) -> RunningGateway:
        runtime = Runtime.create(settings or gateway_settings)
        gateway = RunningGateway(runtime)
        for name in names:
            service_parts = (parts or {}).get(name) or load_service(name, runtime)
            server = GatewayServer(name, runtime, service_parts)
            await server.start()
            gateway.servers[name] = server
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        await gateway.close()
