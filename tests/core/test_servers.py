"""Each gateway server starts, reports SERVING, lists its services over
reflection, refuses calls without credentials, and answers UNIMPLEMENTED
(with the method's name) for RPCs not built yet."""
from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from aigc_gateway.api.v1 import audit_pb2, audit_pb2_grpc

from ..plugins.gateway import bearer

SERVICES = {
    "template": "aigc.gateway.v1.TemplateService",
    "instance": "aigc.gateway.v1.InstanceService",
    "auth": "aigc.gateway.v1.AuthService",
    "usersync": "aigc.gateway.v1.UserSyncService",
}


async def _reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    names: set[str] = set()
    async for response in stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])):
        names.update(s.name for s in response.list_services_response.service)
    return names


@pytest.mark.parametrize("name", sorted(SERVICES))
async def test_server_health_and_reflection(start_gateway, name: str) -> None:
    gateway = await start_gateway(name)
    channel = gateway.channel(name)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICES[name], "aigc.gateway.v1.AuditService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    listed = await _reflected_services(channel)
    assert {SERVICES[name], "aigc.gateway.v1.AuditService", "grpc.health.v1.Health"} <= listed
    assert not (set(SERVICES.values()) - {SERVICES[name]}) & listed  # one service per server


async def test_call_without_credentials_is_unauthenticated(start_gateway) -> None:
    gateway = await start_gateway("template")
    stub = audit_pb2_grpc.AuditServiceStub(gateway.channel("template"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unbuilt_rpc_is_unimplemented_with_clear_message(start_gateway, issuer) -> None:
    """A servicer that builds nothing: every method answers UNIMPLEMENTED naming itself."""
    from aigc_gateway.api.v1 import usersync_pb2, usersync_pb2_grpc
    from aigc_gateway.server import Registration, ServiceParts

    bare = ServiceParts([Registration("aigc.gateway.v1.UserSyncService", usersync_pb2_grpc.UserSyncServiceServicer(),
                                      usersync_pb2_grpc.add_UserSyncServiceServicer_to_server,
                                      base=usersync_pb2_grpc.UserSyncServiceServicer)])
    gateway = await start_gateway("usersync", parts={"usersync": bare})
    stub = usersync_pb2_grpc.UserSyncServiceStub(gateway.channel("usersync"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Reconcile(usersync_pb2.ReconcileRequest(), metadata=bearer(issuer.mint(roles=["admin"])))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "UserSyncService.Reconcile is not implemented yet" in err.value.details()
    status = rpc_status.from_call(err.value)
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) for d in status.details) and info.reason == "NOT_IMPLEMENTED"


async def test_a_failing_start_hook_leaves_no_server_behind(start_gateway) -> None:
    import socket

    from aigc_gateway.api.v1 import usersync_pb2_grpc
    from aigc_gateway.server import GatewayServer, Registration, ServiceParts

    async def broken() -> None:
        raise RuntimeError("cannot start the background part")

    gateway = await start_gateway()
    parts = ServiceParts([Registration("aigc.gateway.v1.UserSyncService", usersync_pb2_grpc.UserSyncServiceServicer(),
                                       usersync_pb2_grpc.add_UserSyncServiceServicer_to_server,
                                       base=usersync_pb2_grpc.UserSyncServiceServicer)], on_start=[broken])
    server = GatewayServer("usersync", gateway.runtime, parts)
    with pytest.raises(RuntimeError):
        await server.start()
    assert server.server is None
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", int(gateway.runtime.settings.servers.usersync.listen.rsplit(":", 1)[1])))
