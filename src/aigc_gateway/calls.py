"""What happens around every RPC, in one place.

:class:`CallInterceptor` wraps each method handler of the gateway's services:

1. request id: taken from ``x-request-id`` metadata or made, set in the log
   context and returned in the trailing metadata;
2. metrics: started, handled by code, latency, in flight;
3. identity: the call's credentials become a :class:`~aigc_gateway.identity.Principal`
   (health and reflection are the only unauthenticated methods);
4. replay: a mutating RPC (its request has ``request_id``) with a request id
   seen before gets the stored first outcome (:mod:`aigc_gateway.idempotency`);
   the running call's claim is in ``idempotency.current_claim`` for the service
   (which records its effect on it, and answers a taken-over claim from it);
5. audit: every mutating RPC and every denied call is written to the audit log;
6. errors: domain errors become canonical codes with ``google.rpc`` details;
   a database that went away during the call (a restart, a failover) is
   UNAVAILABLE with ``retry_after``, like any other backend a client may retry
   on; anything else unexpected is logged with its trace and answered INTERNAL
   with a generic message.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import status_pb2
from grpc_status import rpc_status

from . import audit, db, faults, metrics
from .context import REQUEST_ID_HEADER, credentials_var, method_var, new_request_id, principal_var, request_id_var
from .errors import GatewayError, Unauthenticated, Unavailable, internal_status, invalid
from .idempotency import RETRYABLE, Claim, current_claim
from .identity import Authenticator

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]  # any method's: the pipeline wraps them all

OPEN_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection",
                 "grpc.reflection.v1.ServerReflection")
# Metadata forwarded on the gateway's own outgoing calls so the callee sees the same end user.
FORWARDED_CREDENTIALS = ("authorization", "cookie", "x-aigc-session")
_RESOURCE_FIELDS = ("name", "parent", "template", "user")


@dataclass(frozen=True)
class MethodInfo:
    service: str  # "aigc.gateway.v1.TemplateService"
    method: str  # "CreateTemplate"
    mutating: bool
    response_class: Any

    @property
    def short_service(self) -> str:
        return self.service.rsplit(".", 1)[-1]

    @property
    def action(self) -> str:
        return f"{self.short_service}.{self.method}"


def method_info(full_method: str) -> MethodInfo:
    """Describe ``/pkg.Service/Method`` from the protobuf descriptor pool."""
    service, _, method = full_method.lstrip("/").partition("/")
    try:
        desc = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    except KeyError:
        return MethodInfo(service, method, False, None)
    return MethodInfo(service, method, "request_id" in desc.input_type.fields_by_name,
                      message_factory.GetMessageClass(desc.output_type))


def nul_field(message: Any, prefix: str = "") -> str | None:
    """Path of the first string in ``message`` holding a NUL character, else None.

    Protobuf allows NUL in strings; PostgreSQL and most of what a value reaches do
    not, so it is refused as bad input at the door rather than failing deep inside.
    """
    for field, value in message.ListFields():
        path: str = prefix + field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if isinstance(key, str) and "\x00" in key:
                    return path
                found = _nul_in(item, value_field, f"{path}[{key}]")
                if found:
                    return found
        elif field.is_repeated:
            for index, item in enumerate(value):
                found = _nul_in(item, field, f"{path}[{index}]")
                if found:
                    return found
        else:
            found = _nul_in(value, field, path)
            if found:
                return found
    return None


def _nul_in(value: Any, field: Any, path: str) -> str | None:
    if field.type == field.TYPE_STRING:
        return path if "\x00" in value else None
    if field.type == field.TYPE_MESSAGE:
        return nul_field(value, path + ".")
    return None


def resource_of(request: Any) -> str:
    for field in _RESOURCE_FIELDS:
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    for field, value in request.ListFields():  # an Update request names its resource in the message (AIP-134)
        if field.message_type is not None and not field.is_repeated and "name" in field.message_type.fields_by_name:
            return str(value.name)
    return ""


class CallInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, service: str, authenticator: Authenticator, audit_log: audit.AuditLog | None = None,
                 idempotency: Any = None):
        self.service = service
        self.authenticator = authenticator
        self.audit_log = audit_log
        self.idempotency = idempotency

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        info = method_info(details.method)
        open_method = info.service in OPEN_SERVICES
        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                return await self._unary(info, open_method, inner, request, context)

            return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer,
                                                       handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
                async for item in self._stream(info, open_method, inner_stream, request, context):
                    yield item

            return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer,
                                                        handler.response_serializer)
        return handler  # the API has no client-streaming methods

    # -- the steps -------------------------------------------------------

    async def _begin(self, info: MethodInfo, open_method: bool, context: Context) -> None:
        metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        request_id_var.set(metadata.get(REQUEST_ID_HEADER, "")[:128] or new_request_id())
        method_var.set(info.action)
        principal_var.set(None)
        credentials_var.set(tuple((k, metadata[k]) for k in FORWARDED_CREDENTIALS if k in metadata))
        audit.details_var.set({})
        if open_method:
            return
        principal = await self.authenticator.authenticate(metadata)
        if principal is None:
            raise Unauthenticated("this call needs credentials: a bearer token or a session cookie",
                                  reason="UNAUTHENTICATED")
        principal_var.set(principal)

    @staticmethod
    def _check_request(request: Any) -> None:
        bad = nul_field(request)
        if bad:
            raise invalid(bad, "must not contain NUL characters", reason="NUL_CHARACTER")

    async def _unary(self, info: MethodInfo, open_method: bool, inner: Callable[..., Awaitable[Any]],
                     request: Any, context: Context) -> Any:
        labels = (info.service, info.method)
        metrics.STARTED.labels(*labels).inc()
        metrics.IN_FLIGHT.labels(*labels).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        claim: Claim | None = None
        current_claim.set(None)
        try:
            await self._begin(info, open_method, context)
            self._check_request(request)
            request_id = getattr(request, "request_id", "") if info.mutating else ""
            if request_id and self.idempotency is not None:
                principal = principal_var.get()
                claim, stored = await self.idempotency.claim(
                    info.action, principal.subject if principal else "", request_id, request.SerializeToString(
                        deterministic=True))
                if stored is not None:
                    claim = None
                    audit.note(replayed=True)
                    if stored.status_code == 0:
                        return info.response_class.FromString(stored.payload)
                    code = grpc.StatusCode(_code_tuple(stored.status_code))
                    await self._abort(context, status_pb2.Status.FromString(stored.payload))
                current_claim.set(claim)
                if claim.effect is not None:
                    audit.note(resumed=True)  # taken over from a dead replica after it committed the effect
                await faults.reach("call.after_claim")
            response = await inner(request, context)
            if claim:
                await faults.reach("call.before_finish")
                await self.idempotency.finish(claim, grpc.StatusCode.OK, response.SerializeToString())
            if info.mutating:
                await self._audit(info, request, audit.SUCCESS, "")
            return response
        except GatewayError as exc:
            code = exc.code
            await self._after_error(info, request, exc.code, claim, exc.to_status())
            await self._abort(context, exc.to_status())
        except (asyncio.CancelledError, grpc.aio.AbortError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED
            elif code == grpc.StatusCode.OK:
                code = context.code() or grpc.StatusCode.UNKNOWN
            if claim:
                await asyncio.shield(self.idempotency.finish(claim, grpc.StatusCode.CANCELLED, b""))
            raise
        except Exception as exc:
            status = _unexpected(info, exc)
            code = grpc.StatusCode(_code_tuple(status.code))
            await self._after_error(info, request, code, claim, status)
            await self._abort(context, status)
        finally:
            _finish(labels, code, started)
            _set_request_id_trailer(context)

    async def _stream(self, info: MethodInfo, open_method: bool, inner: Callable[..., AsyncIterator[Any]],
                      request: Any, context: Context) -> AsyncIterator[Any]:
        labels = (info.service, info.method)
        metrics.STARTED.labels(*labels).inc()
        metrics.IN_FLIGHT.labels(*labels).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            await self._begin(info, open_method, context)
            self._check_request(request)
            async for item in inner(request, context):
                yield item
        except GatewayError as exc:
            code = exc.code
            await self._after_error(info, request, exc.code, None, exc.to_status())
            await self._abort(context, exc.to_status())
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            status = _unexpected(info, exc)
            code = grpc.StatusCode(_code_tuple(status.code))
            await self._abort(context, status)
        finally:
            _finish(labels, code, started)

    async def _after_error(self, info: MethodInfo, request: Any, code: grpc.StatusCode, claim: Claim | None,
                           status: status_pb2.Status) -> None:
        """Store (or let go) the claim's outcome and audit the failure. With the database gone, neither can be
        written and the caller still gets the call's own answer: the claim is left to a retry (idempotency.py,
        a claim this replica no longer runs), the audit row is lost and logged as lost."""
        try:
            if claim:
                if code not in RETRYABLE:
                    await faults.reach("call.before_finish")
                await self.idempotency.finish(claim, code, status.SerializeToString())
            denied = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
            if denied or info.mutating:
                await self._audit(info, request, audit.DENIED if denied else audit.FAILURE, code.name)
        except Exception as exc:
            if not db.unreachable(exc):
                raise
            log.warning("%s answered %s; its outcome and audit record were not written: the database is not "
                        "reachable (%s)", info.action, code.name, type(exc).__name__)

    async def _audit(self, info: MethodInfo, request: Any, outcome: str, error_code: str) -> None:
        if self.audit_log is None:
            return
        await self.audit_log.record(info.action, resource_of(request), outcome=outcome, error_code=error_code,
                                    details=audit.details_var.get() or {})

    @staticmethod
    async def _abort(context: Context, status: status_pb2.Status) -> NoReturn:
        converted = rpc_status.to_status(status)
        trailing = tuple(converted.trailing_metadata) + ((REQUEST_ID_HEADER, request_id_var.get()),)
        await context.abort(converted.code, converted.details, trailing)


def _unexpected(info: MethodInfo, exc: Exception) -> status_pb2.Status:
    """The answer to an exception that is not a domain error: UNAVAILABLE for a database that went away, else
    INTERNAL (logged with its trace: a bug)."""
    if db.unreachable(exc):
        log.warning("%s: the database is not reachable: %s: %s", info.action, type(exc).__name__, exc)
        return Unavailable("the database is not reachable; retry", reason="DATABASE_UNAVAILABLE",
                           retry_after=1.0).to_status()
    log.exception("unhandled error in %s", info.action)
    return internal_status()


def _finish(labels: tuple[str, str], code: grpc.StatusCode, started: float) -> None:
    elapsed = time.perf_counter() - started
    metrics.IN_FLIGHT.labels(*labels).dec()
    metrics.HANDLED.labels(*labels, code.name).inc()
    metrics.LATENCY.labels(*labels).observe(elapsed)
    # The access log line; the log context adds the request id, the method and the caller.
    log.info("handled %s in %.1f ms", code.name, elapsed * 1000, extra={"grpc_code": code.name})


def _code_tuple(value: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.value
    return grpc.StatusCode.UNKNOWN.value


def _set_request_id_trailer(context: Context) -> None:
    try:
        if not context.trailing_metadata():
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id_var.get()),))
    except Exception:  # the call may already be closed
        pass


def outgoing_metadata(service_token: str = "", service_name: str = "") -> tuple[tuple[str, str], ...]:
    """Metadata for a call to another gateway service: the request id and the end user's credentials,
    or, for background work with no end user, the service credential."""
    metadata: list[tuple[str, str]] = [(REQUEST_ID_HEADER, request_id_var.get() or new_request_id())]
    forwarded = credentials_var.get()
    if forwarded:
        metadata.extend(forwarded)
    elif service_token:
        metadata.extend((("x-aigc-service-token", service_token), ("x-aigc-service-name", service_name)))
    return tuple(metadata)

