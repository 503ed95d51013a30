"""Per-call context carried in contextvars: the request id and the principal.

Set by the gRPC call wrapper (see :mod:`aigc_gateway.calls`) before a handler
runs, read by logging, auditing and by outgoing calls so that a request id and
the end user's identity travel from service to service.
"""
from __future__ import annotations

import contextvars
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .identity import Principal

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)
# Credentials of the current call, forwarded on service-to-service calls so the
# callee sees the same end user.
credentials_var: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "credentials", default=()
)
method_var: contextvars.ContextVar[str] = contextvars.ContextVar("method", default="")

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_principal() -> Principal | None:
    return principal_var.get()
