"""Checks of a Logto webhook delivery that need no I/O: signature and age.

Logto signs the raw body: header ``logto-signature-sha-256`` = hex HMAC-SHA256(signing key, body)
(docs/usersync.md#webhooks-post-webhookslogto). Some Logto versions prefix the hex with ``sha256=``; both forms are accepted. The
comparison is constant-time. ``createdAt`` (ISO 8601) bounds the age; together with the replay
store (deliveries remembered for longer than that age) a captured delivery cannot be sent again.
"""
from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

SIGNATURE_HEADER = "logto-signature-sha-256"
FUTURE_SKEW = timedelta(seconds=60)


@dataclass
class Refused(Exception):
    """A delivery that is refused: HTTP ``status`` with a stable ``code``."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(key: bytes, body: bytes, header: str | None) -> None:
    if not header:
        raise Refused(401, "SIGNATURE_MISSING", f"the {SIGNATURE_HEADER} header is missing")
    presented = header.strip()
    if presented.lower().startswith("sha256="):
        presented = presented[len("sha256="):]
    if not hmac.compare_digest(presented.lower().encode(), sign(key, body).encode()):
        raise Refused(401, "BAD_SIGNATURE", "the signature does not match the body")


def parse_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        raise Refused(400, "MALFORMED", "the body is not JSON") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), str) or not payload["event"]:
        raise Refused(400, "MALFORMED", "the body must be an object with an `event`")
    return payload


def check_age(payload: dict[str, Any], now: datetime, max_age: timedelta) -> datetime:
    """The delivery's ``createdAt``; refused when missing, older than ``max_age`` or from the future."""
    raw = payload.get("createdAt")
    try:
        created = datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None
    except ValueError:
        created = None
    if created is None:
        raise Refused(400, "MALFORMED", "createdAt is missing or not an ISO 8601 time")
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    if now - created > max_age:
        raise Refused(400, "STALE", f"the delivery is older than {int(max_age.total_seconds())} s")
    if created - now > FUTURE_SKEW:
        raise Refused(400, "STALE", "createdAt is in the future")
    return created


def subject_user(payload: dict[str, Any]) -> str:
    """The user a data-hook event is about: ``data.id``, else ``params.userId``, else ``userId``."""
    data, params = payload.get("data"), payload.get("params")
    for value in ((data or {}).get("id") if isinstance(data, dict) else None,
                  (params or {}).get("userId") if isinstance(params, dict) else None,
                  payload.get("userId")):
        if isinstance(value, str) and value:
            return value
    return ""
