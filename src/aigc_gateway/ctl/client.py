"""The gRPC side of aigcctl: one channel per address, the caller's token on every
call, request ids on mutating calls, and retries where the contract says a retry
is safe."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import grpc
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from ..api.v1 import audit_pb2_grpc, auth_pb2_grpc, instance_pb2_grpc, template_pb2_grpc, usersync_pb2_grpc
from ..channels import CLIENT_CHANNEL_OPTIONS
from .exitcodes import RETRYABLE, CallFailed
from .settings import CtlSettings

_STUBS = {
    "template": template_pb2_grpc.TemplateServiceStub,
    "instance": instance_pb2_grpc.InstanceServiceStub,
    "auth": auth_pb2_grpc.AuthServiceStub,
    "usersync": usersync_pb2_grpc.UserSyncServiceStub,
    "audit": audit_pb2_grpc.AuditServiceStub,
}
ATTEMPTS = 4


def _worth_retrying(exc: BaseException) -> bool:
    # ABORTED is retried only when the server says when (RetryInfo): an ABORTED for a stale etag
    # would fail the same way again.
    return isinstance(exc, CallFailed) and (exc.code == grpc.StatusCode.UNAVAILABLE or (
        exc.code in RETRYABLE and exc.retry_after is not None))


def _wait(state: RetryCallState) -> float:
    """The server's RetryInfo delay when it gave one, else 0.5 s doubled after each attempt."""
    exc = state.outcome.exception() if state.outcome is not None else None
    if isinstance(exc, CallFailed) and exc.retry_after is not None:
        return float(exc.retry_after)
    return 0.5 * 2.0 ** (state.attempt_number - 1)


class ServerStream(Protocol):
    """What a server-streaming call returns: an iterator of the replies that can also be cancelled."""

    def __iter__(self) -> Iterator[Any]: ...
    def __next__(self) -> Any: ...
    def cancel(self) -> bool: ...


class Client:
    def __init__(self, settings: CtlSettings):
        self.settings = settings
        self._channels: dict[str, grpc.Channel] = {}

    def channel(self, service: str) -> grpc.Channel:
        address = self.settings.address(service)
        if address not in self._channels:
            # round_robin: an address naming several replicas (dns:///..., ipv4:a,b) spreads the calls.
            if self.settings.tls:
                roots = Path(self.settings.ca_file).expanduser().read_bytes() if self.settings.ca_file else None
                self._channels[address] = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots),
                                                              options=CLIENT_CHANNEL_OPTIONS)
            else:
                self._channels[address] = grpc.insecure_channel(address, options=CLIENT_CHANNEL_OPTIONS)
        return self._channels[address]

    def metadata(self) -> list[tuple[str, str]]:
        md = [("x-request-id", uuid.uuid4().hex)]
        if self.settings.token:
            md.append(("authorization", f"Bearer {self.settings.token}"))
        return md

    def call(self, service: str, method: str, request: Any, *, timeout: float | None = None) -> Any:
        """A unary call. A request with a `request_id` field gets one (kept across retries, so a
        retried mutation is answered with the first result); UNAVAILABLE and ABORTED are retried."""
        if "request_id" in request.DESCRIPTOR.fields_by_name and not request.request_id:
            request.request_id = uuid.uuid4().hex
        stub = _STUBS[service](self.channel(service))
        for attempt in Retrying(retry=retry_if_exception(_worth_retrying), wait=_wait,
                                stop=stop_after_attempt(ATTEMPTS), reraise=True):
            with attempt:
                try:
                    return getattr(stub, method)(request, metadata=self.metadata(),
                                                 timeout=timeout or self.settings.timeout_seconds)
                except grpc.RpcError as error:
                    raise CallFailed.from_rpc_error(error) from None
        raise AssertionError("unreachable")

    def stream(self, service: str, method: str, request: Any, *, timeout: float | None = None) -> ServerStream:
        """A server stream; the returned iterator has `.cancel()`."""
        stub = _STUBS[service](self.channel(service))
        stream: ServerStream = getattr(stub, method)(request, metadata=self.metadata(), timeout=timeout)
        return stream

    def pages(self, service: str, method: str, request: Any, items: str, limit: int = 0) -> Iterator[Any]:
        """Every item of a List call, page after page (at most `limit` when set)."""
        count = 0
        while True:
            response = self.call(service, method, request)
            for item in getattr(response, items):
                yield item
                count += 1
                if limit and count >= limit:
                    return
            if not response.next_page_token:
                return
            request.page_token = response.next_page_token

    def health(self, service: str) -> str:
        """The gRPC health status name of one service (UNREACHABLE when it cannot be asked)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            # The grpcio-health-checking stubs declare HealthStub without its (generated) methods.
            reply = health_pb2_grpc.HealthStub(self.channel(service)).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(), timeout=min(5.0, self.settings.timeout_seconds))
        except grpc.RpcError as error:
            return "UNREACHABLE" if error.code() == grpc.StatusCode.UNAVAILABLE else error.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
