"""Replay protection for mutating RPCs (`request_id`, AIP-155).

The first call with a (method, caller, request_id) claims a row in state
"pending", runs, and stores its outcome: the response, or the refusal as a
``google.rpc.Status``. A replay gets that stored outcome without running the
handler again. Outcomes worth retrying (UNAVAILABLE, ABORTED, INTERNAL…) are
not stored, so a retry with the same request_id really retries. A pending row
older than ``stale_after`` is taken over: its process died mid-call, and the
handlers are written so that running them again converges.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import grpc
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from .db import Database
from .db.models import IdempotencyKeyRow
from .errors import Aborted, invalid

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@dataclass(frozen=True)
class Stored:
    """A finished first outcome: ``status_code`` 0 with a response, else a serialized google.rpc.Status."""

    status_code: int
    payload: bytes


def _key(method: str, subject: str, request_id: str) -> str:
    return hashlib.sha256(f"{method}\0{subject}\0{request_id}".encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, db: Database, stale_after: timedelta = timedelta(minutes=5),
                 retention: timedelta = timedelta(days=1)):
        self.db = db
        self.stale_after = stale_after
        self.retention = retention

    async def claim(self, method: str, subject: str, request_id: str, request: bytes) -> tuple[str, Stored | None]:
        """Claim the key. Returns (key, None) to run the call, or (key, Stored) to replay it."""
        if len(request_id) > 128:
            raise invalid("request_id", "must be at most 128 characters")
        key = _key(method, subject, request_id)
        digest = hashlib.sha256(request).hexdigest()
        now = datetime.now(timezone.utc)
        try:
            async with self.db.session() as session:
                session.add(IdempotencyKeyRow(key=key, method=method, request_hash=digest, state="pending",
                                              status_code=0, payload=None, created_at=now))
            return key, None
        except IntegrityError:
            pass
        async with self.db.session() as session:
            row = (await session.execute(select(IdempotencyKeyRow).where(IdempotencyKeyRow.key == key))).scalar_one_or_none()
            if row is None:  # finished as retryable and removed between our insert and this read
                return await self.claim(method, subject, request_id, request)
            if row.request_hash != digest:
                raise invalid("request_id", "was already used for a different request", reason="REQUEST_ID_REUSED")
            if row.state == "done":
                return key, Stored(row.status_code, row.payload or b"")
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=timezone.utc)
            if now - created < self.stale_after:
                raise Aborted("a request with this request_id is still in progress", reason="REQUEST_IN_PROGRESS",
                              retry_after=1.0)
            taken = await session.execute(
                update(IdempotencyKeyRow)
                .where(IdempotencyKeyRow.key == key, IdempotencyKeyRow.created_at == row.created_at)
                .values(created_at=now))
            if taken.rowcount != 1:
                raise Aborted("a request with this request_id is still in progress", reason="REQUEST_IN_PROGRESS",
                              retry_after=1.0)
            return key, None

    async def finish(self, key: str, code: grpc.StatusCode, payload: bytes) -> None:
        """Store the outcome, or forget the claim when the outcome is worth retrying."""
        async with self.db.session() as session:
            if code in RETRYABLE:
                await session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.key == key))
            else:
                await session.execute(update(IdempotencyKeyRow).where(IdempotencyKeyRow.key == key)
                                      .values(state="done", status_code=code.value[0], payload=payload))

    async def prune(self) -> int:
        cutoff = datetime.now(timezone.utc) - self.retention
        async with self.db.session() as session:
            result = await session.execute(delete(IdempotencyKeyRow).where(IdempotencyKeyRow.created_at < cutoff))
            return int(result.rowcount or 0)
