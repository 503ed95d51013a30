"""Domain errors and their canonical gRPC form.

Domain code raises these; the call wrapper turns them into a gRPC status with
``google.rpc`` details (BadRequest field violations, QuotaFailure, ErrorInfo, RetryInfo).
Anything else that escapes a handler becomes INTERNAL with a generic message:
the trace goes to the log, never to the client.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "aigc.gateway.io"


@dataclass(frozen=True)
class Violation:
    """One bad field: a path into the request or the manifest, and why."""

    field: str
    description: str
    reason: str = ""


@dataclass(eq=False)
class GatewayError(Exception):
    """Base of domain errors. ``reason`` is a stable UPPER_SNAKE identifier."""

    message: str
    reason: str = ""
    violations: list[Violation] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    # google.rpc.QuotaFailure violations: (subject, limit description) pairs, e.g. ("user:alice", "running ...").
    quota: list[tuple[str, str]] = field(default_factory=list)

    code = grpc.StatusCode.UNKNOWN

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    def __str__(self) -> str:
        return self.message

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        if self.violations:
            details.append(_pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description, reason=v.reason)
                for v in self.violations
            ])))
        if self.quota:
            details.append(_pack(error_details_pb2.QuotaFailure(violations=[
                error_details_pb2.QuotaFailure.Violation(subject=subject, description=description)
                for subject, description in self.quota
            ])))
        if self.reason or self.metadata:
            details.append(_pack(error_details_pb2.ErrorInfo(
                reason=self.reason or self.code.name, domain=ERROR_DOMAIN, metadata=self.metadata)))
        if self.retry_after is not None:
            seconds = max(self.retry_after, 0.0)
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
                seconds=int(seconds), nanos=int((seconds % 1) * 1e9)))))
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=details)


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


class InvalidArgument(GatewayError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GatewayError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GatewayError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(GatewayError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Aborted(GatewayError):
    """Lost a race (for example a stale resourceVersion); safe to retry."""

    code = grpc.StatusCode.ABORTED


class Unavailable(GatewayError):
    """A dependency is down; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unimplemented(GatewayError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(GatewayError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def invalid(field_path: str, description: str, reason: str = "INVALID_FIELD") -> InvalidArgument:
    """Shorthand for the common single-field INVALID_ARGUMENT."""
    return InvalidArgument(
        f"{field_path}: {description}", reason=reason, violations=[Violation(field_path, description, reason)]
    )


INTERNAL_MESSAGE = "internal error; the request id in the logs identifies it"


def internal_status() -> status_pb2.Status:
    return status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
