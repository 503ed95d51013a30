"""What the benches that run gateway processes share: a free loopback port, and waiting for gRPC health to say
SERVING for a service."""
from __future__ import annotations

import asyncio
import socket
import time

import grpc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_serving(channel: grpc.aio.Channel, service: str, timeout: float = 120, poll: float = 0.05,
                       alive: object = None) -> bool:
    """Until gRPC health says SERVING for ``aigc.gateway.v1.<service>``; False after ``timeout`` seconds or, when
    ``alive`` is a process (``poll() is None`` while it runs), once it has exited."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (alive is None or alive.poll() is None):  # type: ignore[attr-defined]
        try:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=f"aigc.gateway.v1.{service}"),
                                       timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return True
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(poll)
    return False
