"""Delivering ``usersync_outbox`` to Logto: at least once, idempotently, in order per user.

The instance service writes an outbox row in the same transaction as each ownership change. A
delivery pass takes the users with undelivered rows, oldest first, and for each one:

1. takes the user's advisory lock *without waiting* (:func:`aigc_gateway.locks.try_transaction_lock`): a user another
   replica is delivering is skipped, so two replicas never write one user's custom data at once
   and never out of order;
2. reads that user's undelivered rows in id order (``FOR UPDATE``), collapses them into one change
   set (the last row per key wins — what applying them one by one would leave), and makes it in
   one read-modify-write (:class:`.customdata.CustomDataWriter`);
3. marks the rows delivered in the same transaction as the lock. A crash after the Logto write and
   before the commit leaves the rows undelivered; the next pass writes the same values again, which
   changes nothing (idempotent).

Logto unavailable (down, 5xx, 429, timeouts, refused credentials): the rows stay, ``attempts`` and
``last_error`` record it, the pass stops at once, and passes back off up to
``delivery_max_backoff_seconds`` until Logto answers; the backlog then drains. Logto refusing a
user (unknown there: deleted; or a 4xx) cannot be fixed by retrying: those rows are closed with
``last_error`` starting with ``abandoned:`` and the event is audited.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.audit import FAILURE, AuditLog
from aigc_gateway.background import Backoff, wait_event
from aigc_gateway.config import UserSyncConfig
from aigc_gateway.db import Database
from aigc_gateway.db.models import UserSyncOutboxRow
from aigc_gateway.errors import GatewayError
from aigc_gateway.locks import try_transaction_lock

from . import metrics, mirrorstore
from .customdata import CustomDataWriter, user_lock_name
from .entries import collapse
from .logto import LogtoRejected, LogtoUserNotFound
from .models import WebhookDeliveryRow

log = logging.getLogger(__name__)

ABANDONED = "abandoned: "
HOUSEKEEPING_EVERY = 600.0


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class UserOutcome:
    rows: int = 0  # rows closed (delivered or abandoned)
    unavailable: bool = False
    skipped: bool = False  # another replica holds the user
    full_batch: bool = False
    retry_after: float = 0.0  # what Logto asked for (Retry-After), when unavailable


@dataclass
class PassResult:
    delivered: int = 0
    unavailable: bool = False
    more: bool = False  # a batch was full, or users were left for the next pass
    retry_after: float = 0.0


class OutboxDelivery:
    def __init__(self, db: Database, writer: CustomDataWriter, cfg: UserSyncConfig, audit: AuditLog):
        self.db = db
        self.writer = writer
        self.cfg = cfg
        self.audit = audit
        self._wake = asyncio.Event()
        self._last_housekeeping = 0.0
        self.delivered_rows = 0  # by this replica, since it started

    def kick(self) -> None:
        """Start the next pass now (e.g. after CleanupTemplate queued rows)."""
        self._wake.set()

    async def pending_users(self, limit: int) -> list[str]:
        async with self.db.session() as session:
            first = func.min(UserSyncOutboxRow.id).label("first")
            rows = await session.execute(
                select(UserSyncOutboxRow.user, first).where(UserSyncOutboxRow.delivered_at.is_(None))
                .group_by(UserSyncOutboxRow.user).order_by(first).limit(limit))
            return [user for user, _ in rows]

    async def pending_count(self) -> int:
        async with self.db.session() as session:
            return int((await session.execute(select(func.count()).select_from(UserSyncOutboxRow).where(
                UserSyncOutboxRow.delivered_at.is_(None)))).scalar() or 0)

    async def run_once(self) -> PassResult:
        """One pass over the users with undelivered rows (oldest first)."""
        limit = self.cfg.delivery_concurrency * 8
        users = await self.pending_users(limit)
        result = PassResult(more=len(users) >= limit)
        semaphore = asyncio.Semaphore(self.cfg.delivery_concurrency)

        async def one(user: str) -> None:
            async with semaphore:
                if result.unavailable:  # Logto is down: leave the rest for a later pass
                    return
                try:
                    outcome = await self.deliver_user(user)
                except Exception:  # e.g. the database went away: this user waits for a later pass
                    log.exception("delivery to %s failed", user)
                    outcome = UserOutcome(unavailable=True)
                result.delivered += outcome.rows
                result.unavailable |= outcome.unavailable
                result.more |= outcome.full_batch
                result.retry_after = max(result.retry_after, outcome.retry_after)

        await asyncio.gather(*(one(u) for u in users))
        metrics.OUTBOX_PENDING.set(await self.pending_count())
        return result

    async def deliver_user(self, user: str) -> UserOutcome:
        async with try_transaction_lock(self.db, user_lock_name(user)) as session:
            if session is None:
                return UserOutcome(skipped=True)
            return await self._deliver_locked(session, user)

    async def _deliver_locked(self, session: AsyncSession, user: str) -> UserOutcome:
        rows = list((await session.execute(
            select(UserSyncOutboxRow).where(UserSyncOutboxRow.user == user, UserSyncOutboxRow.delivered_at.is_(None))
            .order_by(UserSyncOutboxRow.id).limit(self.cfg.delivery_batch_size).with_for_update())).scalars())
        if not rows:
            return UserOutcome()
        items = [(r.namespace, r.template, r.instance_id) for r in rows]
        full = len(rows) >= self.cfg.delivery_batch_size
        now = utcnow()
        try:
            await self.writer.apply(user, collapse(items), source="outbox")
        except (LogtoUserNotFound, LogtoRejected) as exc:
            _close(rows, now, f"{ABANDONED}{exc}")
            if isinstance(exc, LogtoUserNotFound):
                await mirrorstore.forget_user(session, user)
            metrics.OUTBOX_ROWS.labels("abandoned").inc(len(rows))
            log.warning("outbox rows %s of user %s abandoned: %s", [r.id for r in rows], user, exc)
            await self.audit.record("UserSync.WriteCustomData", f"users/{user}", outcome=FAILURE,
                                    error_code=exc.reason, actor="service:usersync", actor_kind="service",
                                    details={"source": "outbox", "abandoned_rows": [r.id for r in rows]})
            return UserOutcome(rows=len(rows), full_batch=full)
        except GatewayError as exc:  # unavailable, or our credentials refused: retry later
            for row in rows:
                row.attempts += 1
                row.last_error = str(exc)[:1024]
            metrics.OUTBOX_FAILURES.inc()
            log.info("Logto unavailable while delivering to %s (%d rows pending): %s", user, len(rows), exc)
            return UserOutcome(unavailable=True, retry_after=exc.retry_after or 0.0)
        _close(rows, now, "")
        await mirrorstore.record(session, user, items, now)
        metrics.OUTBOX_ROWS.labels("delivered").inc(len(rows))
        self.delivered_rows += len(rows)
        return UserOutcome(rows=len(rows), full_batch=full)

    async def run_forever(self) -> None:
        # Exponential from the poll interval while Logto is away (never sooner than its Retry-After), reset
        # by a pass that delivered.
        backoff = Backoff(initial=self.cfg.delivery_poll_seconds, cap=self.cfg.delivery_max_backoff_seconds)
        while True:
            try:
                result = await self.run_once()
                await self._housekeeping()
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be restarting: keep the loop alive
                log.exception("outbox delivery pass failed")
                result = PassResult(unavailable=True)
            if result.unavailable:
                wait = min(max(backoff.next_delay(), result.retry_after), self.cfg.delivery_max_backoff_seconds)
            else:
                backoff.reset()
                wait = 0.0 if result.more else self.cfg.delivery_poll_seconds
            if wait:
                await wait_event(self._wake, wait)
            self._wake.clear()

    async def _housekeeping(self) -> None:
        loop_time = asyncio.get_running_loop().time()
        if loop_time - self._last_housekeeping < HOUSEKEEPING_EVERY:
            return
        self._last_housekeeping = loop_time
        retention = timedelta(hours=self.cfg.outbox_retention_hours)
        replay_window = timedelta(seconds=2 * self.cfg.webhook_max_age_seconds + 120)
        async with self.db.session() as session:
            await session.execute(delete(UserSyncOutboxRow).where(
                UserSyncOutboxRow.delivered_at.is_not(None), UserSyncOutboxRow.delivered_at < utcnow() - retention))
            await session.execute(delete(WebhookDeliveryRow).where(
                WebhookDeliveryRow.received_at < utcnow() - max(retention, replay_window)))


def _close(rows: list[UserSyncOutboxRow], now: datetime, error: str) -> None:
    for row in rows:
        row.delivered_at = now
        row.attempts += 1
        row.last_error = error[:1024]
