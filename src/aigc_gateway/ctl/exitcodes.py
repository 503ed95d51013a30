"""Exit codes that scripts can rely on, and what a failed call says.

Every gRPC status maps to one exit code (docs/delivery.md lists them); the CLI's
own outcomes (a check that found problems, a wait that timed out) have theirs.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

Metadata = Iterable[tuple[str, str | bytes]]


class Exit(IntEnum):
    OK = 0
    ERROR = 1  # INTERNAL, UNKNOWN, DATA_LOSS, CANCELLED: not the caller's fault, not known to be transient
    USAGE = 2  # bad flags or input files; nothing was sent
    INVALID = 3  # INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE: refused as asked; fix the request
    NOT_FOUND = 4
    CONFLICT = 5  # ALREADY_EXISTS, ABORTED: exists already, or lost a race (safe to retry)
    UNAUTHENTICATED = 6  # no token, or a bad or expired one
    PERMISSION_DENIED = 7  # authenticated, not allowed (not an admin, not the owner)
    RESOURCE_EXHAUSTED = 8  # quota or rate limit; retry later
    UNAVAILABLE = 9  # UNAVAILABLE, DEADLINE_EXCEEDED: a service or dependency is down; safe to retry
    UNIMPLEMENTED = 10  # the server does not offer this call
    CHECK_FAILED = 11  # the call worked and found problems: doctor, validate, an instance that crashed
    TIMEOUT = 12  # --wait gave up before the instance reached the state; the operation goes on
    INTERRUPTED = 130  # Ctrl-C


_BY_CODE: dict[grpc.StatusCode, Exit] = {
    grpc.StatusCode.OK: Exit.OK,
    grpc.StatusCode.INVALID_ARGUMENT: Exit.INVALID,
    grpc.StatusCode.FAILED_PRECONDITION: Exit.INVALID,
    grpc.StatusCode.OUT_OF_RANGE: Exit.INVALID,
    grpc.StatusCode.NOT_FOUND: Exit.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: Exit.CONFLICT,
    grpc.StatusCode.ABORTED: Exit.CONFLICT,
    grpc.StatusCode.UNAUTHENTICATED: Exit.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: Exit.PERMISSION_DENIED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Exit.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE: Exit.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Exit.UNAVAILABLE,
    grpc.StatusCode.UNIMPLEMENTED: Exit.UNIMPLEMENTED,
}

# Statuses a call may simply be sent again for: mutating calls carry a request id,
# so the server answers a replay with the first result.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})


def exit_code(code: grpc.StatusCode) -> Exit:
    return _BY_CODE.get(code, Exit.ERROR)


@dataclass
class CallFailed(Exception):
    """A gRPC call that ended in a non-OK status, with its google.rpc details decoded."""

    code: grpc.StatusCode
    message: str
    violations: list[tuple[str, str]] = field(default_factory=list)  # (field, description)
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    request_id: str = ""

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)

    @property
    def exit(self) -> Exit:
        return exit_code(self.code)

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> CallFailed:
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        # grpc's trailers are (key, value) named tuples; its stubs declare a class with the two attributes only.
        trailing = dict(cast(Metadata, error.trailing_metadata() or ())) if hasattr(error, "trailing_metadata") else {}
        failed = cls(code or grpc.StatusCode.UNKNOWN, message or "", request_id=str(trailing.get("x-request-id", "")))
        try:
            # It has the call's trailers (checked), which is what from_call reads.
            status = rpc_status.from_call(cast(grpc.Call, error)) if hasattr(error, "trailing_metadata") else None
        except ValueError:  # details that disagree with the code: keep the message alone
            status = None
        if status is not None:
            failed._decode(status)
        return failed

    def _decode(self, status: status_pb2.Status) -> None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                self.violations += [(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                self.reason, self.metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                self.retry_after = retry.retry_delay.ToTimedelta().total_seconds()

    def describe(self) -> list[str]:
        """Lines for stderr: the status, each bad field, what to do next."""
        lines = [f"error: {self.code.name}: {self.message}" + (f" [{self.reason}]" if self.reason else "")]
        lines += [f"  - {f}: {d}" if f else f"  - {d}" for f, d in self.violations]
        lines += [f"  {k}: {v}" for k, v in sorted(self.metadata.items())]
        if self.retry_after is not None:
            lines.append(f"  retry after {self.retry_after:.0f}s")
        if self.code == grpc.StatusCode.UNAUTHENTICATED:
            lines.append("  hint: give a token with --token-file, $AIGC_TOKEN_FILE or $AIGC_TOKEN")
        if self.code == grpc.StatusCode.UNAVAILABLE and not self.violations:
            lines.append("  hint: is the service running at the address aigcctl uses? (aigcctl config)")
        if self.request_id:
            lines.append(f"  request id: {self.request_id}")
        return lines


class Failure(Exception):
    """A CLI-level failure with its exit code (bad input, a wait that timed out, a failed check)."""

    def __init__(self, message: str, exit: Exit):
        super().__init__(message)
        self.exit = exit
