"""The audit log: who did what to which resource, with what outcome.

Every service writes through :class:`AuditLog`. Details are scrubbed of
anything that looks like a secret before they are stored. Denied attempts are
rate limited per process: past ``denied_per_minute`` they are counted and
written as one aggregate event per minute, so a flood cannot fill the table.
"""
from __future__ import annotations

import contextvars
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, insert, select

from . import paging
from .context import principal_var, request_id_var
from .db import Database
from .db.models import AuditEventRow

log = logging.getLogger(__name__)

_TABLE = cast(Table, AuditEventRow.__table__)  # typed as any FromClause; a declarative class's is its Table

SUCCESS, DENIED, FAILURE = "SUCCESS", "DENIED", "FAILURE"

_SECRET_KEY = re.compile(r"secret|token|password|passwd|cookie|authorization|credential|private|signature|api[-_]?key",
                         re.I)
_TEMPLATE_OF = re.compile(r"^(namespaces/[^/]+/templates/[^/]+)")
REDACTED = "[redacted]"

# Extra details the current call's handler wants on its audit event.
details_var: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("audit_details", default=None)


def note(**details: Any) -> None:
    """Attach details to the audit event of the call being handled."""
    current = details_var.get()
    if current is not None:
        current.update(details)


def scrub(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of ``value`` with secret-looking keys redacted and large values cut."""
    if depth > 6:
        return "…"
    if isinstance(value, dict):
        return {str(k): (REDACTED if _SECRET_KEY.search(str(k)) else scrub(v, depth + 1)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, depth + 1) for v in list(value)[:50]]
    if isinstance(value, str):
        return value if len(value) <= 1024 else value[:1024] + "…"
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:1024]


def template_of(resource: str) -> str:
    match = _TEMPLATE_OF.match(resource)
    return match.group(1) if match else ""


@dataclass(frozen=True)
class AuditQuery:
    actor: str = ""
    action: str = ""
    template: str = ""
    instance: str = ""
    outcome: str = ""
    start: datetime | None = None
    end: datetime | None = None

    def fingerprint(self) -> str:
        return paging.fingerprint(self)


class AuditLog:
    def __init__(self, db: Database, service: str, denied_per_minute: int = 60):
        self.db = db
        self.service = service
        self.denied_per_minute = denied_per_minute
        self._window = 0
        self._denied_in_window = 0
        self._suppressed: Counter[str] = Counter()

    async def record(self, action: str, resource: str = "", *, outcome: str = SUCCESS, error_code: str = "",
                     details: dict[str, Any] | None = None, actor: str | None = None,
                     actor_kind: str | None = None) -> None:
        """Append one event; the actor and request id default to the current call's."""
        if outcome == DENIED and not await self._admit_denied(action):
            return
        await self.write([self.event(action, resource, outcome=outcome, error_code=error_code, details=details,
                                     actor=actor, actor_kind=actor_kind)])

    def event(self, action: str, resource: str = "", *, outcome: str = SUCCESS, error_code: str = "",
              details: dict[str, Any] | None = None, actor: str | None = None,
              actor_kind: str | None = None) -> dict[str, Any]:
        """One event as the row :meth:`write` inserts, stamped now and scrubbed; the actor and request id
        default to the current call's. For a caller that writes events later, in batches (the ingress
        check's denials), so that what it stores is what was true when the event happened."""
        if actor is None:
            principal = principal_var.get()
            actor = principal.subject if principal else "anonymous"
            actor_kind = principal.kind if principal else "anonymous"
        return {"time": datetime.now(UTC), "actor": actor[:255], "actor_kind": actor_kind or "user",
                "action": action, "resource": resource[:512], "template": template_of(resource),
                "request_id": request_id_var.get()[:128], "outcome": outcome, "error_code": error_code,
                "service": self.service, "details": scrub(details or {})}

    async def write(self, events: list[dict[str, Any]]) -> None:
        """Insert ``events`` (from :meth:`event`) in one statement and one transaction. A failure is logged,
        never raised: the audit log must not turn a done change into a reported failure. Many to a
        transaction is what makes a busy caller cheap: a transaction costs about a millisecond of the
        event loop's CPU whatever it writes (one event: 1,101 us through the ORM, 948 us this way; ten
        to a transaction: 117 us an event), which the ingress check's workers showed in their tail
        (bench/auth_check.py --timeline)."""
        if not events:
            return
        try:
            async with self.db.session() as session:
                await session.execute(insert(_TABLE), events)
        except Exception:
            log.exception("could not write %d audit event(s): %s", len(events),
                          ", ".join(sorted({f"{e['action']} on {e['resource']}" for e in events})[:5]))

    async def _admit_denied(self, action: str) -> bool:
        window = int(time.monotonic() // 60)
        if window != self._window:
            suppressed, self._suppressed = self._suppressed, Counter()
            self._window, self._denied_in_window = window, 0
            if suppressed:
                await self.record("audit.denied_suppressed", outcome=FAILURE, actor="audit", actor_kind="service",
                                  details={"counts": dict(suppressed)})
        self._denied_in_window += 1
        if self._denied_in_window > self.denied_per_minute:
            self._suppressed[action] += 1
            return False
        return True

    async def list(self, query: AuditQuery, page_size: int, page_token: str) -> tuple[list[AuditEventRow], str]:
        """Newest first, keyset-paged on the id. The token is bound to the filters it was issued for."""
        page_size = paging.clamp(page_size, default=100, maximum=1000)
        bound_to = query.fingerprint()
        stmt = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(page_size + 1)
        if page_token:
            stmt = stmt.where(AuditEventRow.id < int(paging.decode(page_token, bound_to)))
        if query.actor:
            stmt = stmt.where(AuditEventRow.actor == query.actor)
        if query.action:
            stmt = stmt.where(AuditEventRow.action == query.action)
        if query.template:
            stmt = stmt.where(AuditEventRow.template == query.template)
        if query.instance:
            stmt = stmt.where(AuditEventRow.resource == query.instance)
        if query.outcome:
            stmt = stmt.where(AuditEventRow.outcome == query.outcome)
        if query.start:
            stmt = stmt.where(AuditEventRow.time >= query.start)
        if query.end:
            stmt = stmt.where(AuditEventRow.time < query.end)
        async with self.db.session() as session:
            rows = list((await session.execute(stmt)).scalars())
        token = ""
        if len(rows) > page_size:
            rows = rows[:page_size]
            token = paging.encode(rows[-1].id, bound_to)
        return rows, token

