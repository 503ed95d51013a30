"""SyncUser and CleanupTemplate: Logto custom data written from the ownership rows.

Both find users from PostgreSQL only — ``instances`` (ownership), the outbox and ``usersync_mirror``
(what usersync last wrote) — never by scanning Logto. Both commit their answer on the call's replay claim
(replay.py): SyncUser before its Logto write, CleanupTemplate with the removals it queues.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway import okg
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, UserSyncOutboxRow
from aigc_gateway.idempotency import Claim, IdempotencyStore

from . import disputes, faults, metrics, mirrorstore, replay
from .customdata import CustomDataWriter, WriteResult, user_lock_name
from .entries import desired_entries, diff
from .logto import LogtoClient
from .outbox import OutboxDelivery

log = logging.getLogger(__name__)

OWNED_SLOTS = tuple(s.value for s in okg.OWNED)


def utcnow() -> datetime:
    return datetime.now(UTC)


async def owned_by(session: AsyncSession, user: str) -> list[tuple[str, str, int]]:
    rows = await session.execute(
        select(InstanceRow.namespace, InstanceRow.template, InstanceRow.id)
        .where(InstanceRow.owner == user, InstanceRow.slot.in_(OWNED_SLOTS))
        .order_by(InstanceRow.namespace, InstanceRow.template))
    return [(ns, tpl, i) for ns, tpl, i in rows]


async def managed_templates(session: AsyncSession) -> set[tuple[str, str]]:
    """Templates the gateway holds rows for (or has written entries of): entries of other templates are
    never removed from custom data."""
    rows = await session.execute(select(InstanceRow.namespace, InstanceRow.template).distinct())
    return {(ns, tpl) for ns, tpl in rows} | await mirrorstore.templates(session)


async def pending_rows(session: AsyncSession, user: str) -> list[UserSyncOutboxRow]:
    return list((await session.execute(
        select(UserSyncOutboxRow).where(UserSyncOutboxRow.user == user, UserSyncOutboxRow.delivered_at.is_(None))
        .order_by(UserSyncOutboxRow.id).with_for_update())).scalars())


class Syncer:
    def __init__(self, db: Database, client: LogtoClient, writer: CustomDataWriter, delivery: OutboxDelivery):
        self.db = db
        self.client = client
        self.writer = writer
        self.delivery = delivery

    async def sync_user(self, user: str, *, dry_run: bool = False, source: str = "sync",
                        claim: Claim | None = None) -> WriteResult:
        """Write ``user``'s entries from their ownership rows now; returns what changed (or would).

        An earlier attempt of the same request that died after recording what it would change is answered
        with that, after writing whatever of it is still missing (its Logto write may not have landed)."""
        done = None if dry_run else replay.prior(claim, "sync")
        async with self.db.lock(user_lock_name(user)) as session:
            # The outbox rows are read before the ownership rows: a change committed in between is then
            # in the rows written now, and its outbox row, not closed here, is delivered again (harmless).
            pending = await pending_rows(session, user)
            owned = await owned_by(session, user)
            managed = await managed_templates(session)
            current = await self.client.get_custom_data(user)
            keep = (await disputes.protected_keys(session)).get(user, set())  # see disputes.py
            changes = diff(current, desired_entries(owned), managed, keep)
            if not dry_run and done is None and claim is not None:
                planned = await self.writer.apply(user, changes, source=source, dry_run=True, current=current)
                await IdempotencyStore.commit_effect_now(self.db, claim, {
                    "op": "sync", "changes": planned.changes,
                    "before": {k: planned.before.get(k) for k in planned.changes}})
            result = await self.writer.apply(user, changes, source=source, dry_run=dry_run, current=current)
            if not dry_run:
                await faults.reach("usersync.sync.after_write")
                now = utcnow()
                for row in pending:  # the ownership rows already include what they say
                    row.delivered_at, row.attempts, row.last_error = now, row.attempts + 1, ""
                metrics.OUTBOX_ROWS.labels("superseded").inc(len(pending))
                await mirrorstore.replace_user(session, user, owned, now)
            return result if done is None else WriteResult(done["changes"], done["before"])

    async def cleanup_template(self, namespace: str, template: str, *, deliver: bool = True,
                               claim: Claim | None = None) -> list[str]:
        """Queue the removal of the template's key for every user who owns or may hold it, then deliver.

        An earlier attempt of the same request that queued them and died is answered with its users (their
        removals, queued with its answer, may be delivered by now), and their delivery is tried again."""
        now = utcnow()
        done = replay.prior(claim, "cleanup")
        if done is not None:
            return await self._deliver(list(done["users"]), deliver)
        async with self.db.session() as session:
            owners = {u for (u,) in await session.execute(
                select(InstanceRow.owner).where(InstanceRow.namespace == namespace, InstanceRow.template == template,
                                                InstanceRow.owner.is_not(None)).distinct()) if u is not None}
            queued = {u for (u,) in await session.execute(
                select(UserSyncOutboxRow.user).where(UserSyncOutboxRow.namespace == namespace,
                                                     UserSyncOutboxRow.template == template,
                                                     UserSyncOutboxRow.delivered_at.is_(None)).distinct())}
            users = sorted(owners | queued | await mirrorstore.holders(session, namespace, template))
            # Removals go through the outbox so they are ordered after any change still queued for the user.
            session.add_all(UserSyncOutboxRow(user=u, namespace=namespace, template=template, instance_id=None,
                                              created_at=now, attempts=0, last_error="") for u in users)
            await IdempotencyStore.commit_effect(session, claim, {"op": "cleanup", "users": users})
        await faults.reach("usersync.cleanup.after_queue")
        return await self._deliver(users, deliver)

    async def _deliver(self, users: list[str], deliver: bool) -> list[str]:
        if not deliver:
            return users
        semaphore = asyncio.Semaphore(4)

        async def deliver_now(user: str) -> None:
            async with semaphore:
                try:  # best effort now: the removals are queued, and the delivery loop retries them
                    await self.delivery.deliver_user(user)
                except Exception:
                    log.exception("immediate delivery of the cleanup for %s failed; it stays queued", user)

        await asyncio.gather(*(deliver_now(u) for u in users))
        self.delivery.kick()
        return users
