"""``POST /webhooks/logto``: Logto webhook deliveries, verified, de-duplicated, acted on.

Answers (Logto retries a delivery only on 5xx):

- 200: verified and done (``User.Deleted`` acted on; other events acknowledged and ignored);
- 400 ``MALFORMED`` / ``STALE``: not JSON, no ``event``, no ``createdAt``, older than
  ``webhook_max_age_seconds`` or from the future;
- 401 ``SIGNATURE_MISSING`` / ``BAD_SIGNATURE``;
- 409 ``REPLAYED``: this exact body was accepted before;
- 503: acting failed (e.g. the instance service is down) — nothing was kept, so Logto's retry is
  accepted; or webhooks are not configured.

The replay record (sha256 of the raw body) is inserted in the same transaction as the action's
database writes and committed only when the action succeeded. A second copy arriving while the
first is being handled waits on the primary key and is then refused as a replay.

Served on ``usersync.http_listen`` by the gateway's one HTTP stack (:mod:`aigc_gateway.httpserver`,
with Starlette's request and response classes, as auth's endpoints are); a body over
``MAX_BODY`` is refused with 413 before it is read further.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aigc_gateway.audit import DENIED, FAILURE, AuditLog
from aigc_gateway.context import new_request_id, request_id_var
from aigc_gateway.db import Database
from aigc_gateway.errors import GatewayError
from aigc_gateway.httpserver import HTTPServer

from . import metrics
from .models import WebhookDeliveryRow
from .signature import SIGNATURE_HEADER, Refused, check_age, parse_payload, subject_user, verify_signature
from .userdeleted import UserDeletedPolicy

log = logging.getLogger(__name__)

PATH = "/webhooks/logto"
MAX_BODY = 256 * 1024
ACTOR = "logto-webhook"
ACTION = "UserSync.Webhook"


class _Replayed(Exception):
    pass


class WebhookReceiver:
    def __init__(self, db: Database, signing_key: str, max_age_seconds: float, policy: UserDeletedPolicy,
                 audit: AuditLog):
        self.db = db
        self.key = signing_key.encode()
        self.max_age = timedelta(seconds=max_age_seconds)
        self.policy = policy
        self.audit = audit

    def app(self) -> Starlette:
        return Starlette(routes=[Route(PATH, self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> JSONResponse:
        request_id_var.set(request.headers.get("x-request-id", "")[:128] or new_request_id())
        body = await _body(request)
        if body is None:
            return JSONResponse({"code": "TOO_LARGE", "message": f"the body is over {MAX_BODY} bytes"}, status_code=413)
        event = "unknown"
        try:
            if not self.key:
                raise Refused(503, "NOT_CONFIGURED", "webhooks are not configured (no signing key)")
            verify_signature(self.key, body, request.headers.get(SIGNATURE_HEADER))
            payload = parse_payload(body)
            event = payload["event"][:64]
            created = check_age(payload, datetime.now(UTC), self.max_age)
            result = await self._accept(body, payload, created)
        except Refused as refusal:
            metrics.WEBHOOKS.labels(event, refusal.code.lower()).inc()
            if refusal.status != 503:
                await self.audit.record(ACTION, "", outcome=DENIED, error_code=refusal.code, actor=ACTOR,
                                        actor_kind="service", details={"event": event, "reason": refusal.message})
            log.warning("webhook delivery refused: %s (%s)", refusal.code, refusal.message)
            return JSONResponse({"code": refusal.code, "message": refusal.message}, status_code=refusal.status)
        metrics.WEBHOOKS.labels(event, result.get("outcome", "acknowledged")).inc()
        return JSONResponse(result)

    async def _accept(self, body: bytes, payload: dict[str, Any], created: datetime) -> dict[str, Any]:
        event = payload["event"]
        user = subject_user(payload)
        digest = hashlib.sha256(body).hexdigest()
        details: dict[str, Any] = {}
        try:
            async with self.db.session() as session:
                session.add(WebhookDeliveryRow(digest=digest, hook_id=str(payload.get("hookId") or "")[:128],
                                               event=event[:64], created_at=created,
                                               received_at=datetime.now(UTC)))
                try:
                    await session.flush()
                except IntegrityError:
                    raise _Replayed() from None
                if event == "User.Deleted" and user:
                    details = await self.policy.apply(session, user)
        except _Replayed:
            raise Refused(409, "REPLAYED", "this delivery was received before") from None
        except GatewayError as exc:
            await self.audit.record(ACTION, f"users/{user}", outcome=FAILURE, error_code=exc.reason,
                                    actor=ACTOR, actor_kind="service", details={"event": event, "error": str(exc)})
            raise Refused(503, "ACTION_FAILED", str(exc)) from None
        if event != "User.Deleted" or not user:
            return {"outcome": "acknowledged", "event": event}
        await self.audit.record(ACTION, f"users/{user}", actor=ACTOR, actor_kind="service",
                                details={"event": event, "hook_id": payload.get("hookId"), **details})
        log.info("User.Deleted for %s handled: %s", user, details)
        return {"outcome": "acted", "event": event, "user": user, **details}


async def _body(request: Request) -> bytes | None:
    """The request body, or None once it is over MAX_BODY (the rest is not read)."""
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class WebhookServer:
    """The listener on ``usersync.http_listen`` (the core's HTTP server)."""

    def __init__(self, receiver: WebhookReceiver, listen: str):
        self.receiver = receiver
        self.listen = listen
        self.server: HTTPServer | None = None
        self.port = 0

    async def start(self) -> None:
        server = HTTPServer(self.receiver.app(), self.listen, name="usersync-webhooks", setting="usersync.http_listen")
        self.port = await server.start()
        self.server = server
        log.info("Logto webhooks on http://%s:%d%s", server.host, self.port, PATH)

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()
