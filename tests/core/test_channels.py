"""The client channel options retry a read that meets UNAVAILABLE, never a mutation (aigc_gateway.channels)."""
from __future__ import annotations

from collections import Counter

import grpc
import pytest

from aigc_gateway.api.v1 import instance_pb2, instance_pb2_grpc
from aigc_gateway.channels import CLIENT_CHANNEL_OPTIONS, read_methods


def test_reads_are_the_get_mapped_methods_and_the_health_check() -> None:
    names = {f"{n['service']}/{n['method']}" for n in read_methods()}
    assert {"aigc.gateway.v1.InstanceService/GetInstance", "aigc.gateway.v1.InstanceService/ListInstances",
            "aigc.gateway.v1.TemplateService/ListTemplates", "grpc.health.v1.Health/Check"} <= names
    assert not names & {"aigc.gateway.v1.InstanceService/CreateInstance",
                        "aigc.gateway.v1.InstanceService/DeleteInstance",
                        "aigc.gateway.v1.TemplateService/UpdateTemplate"}


class _Unavailable(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers every call UNAVAILABLE, as a connection of a killed replica does, and counts the attempts."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        self.attempts[details.method.rsplit("/", 1)[1]] += 1

        async def refuse(request, context):  # type: ignore[no-untyped-def]
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")

        return grpc.unary_unary_rpc_method_handler(refuse)


async def test_a_read_is_attempted_four_times_and_a_mutation_once() -> None:
    interceptor = _Unavailable()
    server = grpc.aio.server(interceptors=[interceptor])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CLIENT_CHANNEL_OPTIONS) as channel:
            stub = instance_pb2_grpc.InstanceServiceStub(channel)
            for call, request in ((stub.GetInstance, instance_pb2.GetInstanceRequest(name="x")),
                                  (stub.DeleteInstance, instance_pb2.DeleteInstanceRequest(name="x"))):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await call(request, timeout=10)
                assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)
    assert interceptor.attempts == Counter({"GetInstance": 4, "DeleteInstance": 1})
