"""Reconcile: compare every user's custom data with the ownership rows and repair Logto (PostgreSQL wins).

One replica at a time: a run holds the lease ``usersync:reconcile`` (a PostgreSQL advisory lock held by
an open transaction for the run's length). The periodic loop skips a round when another replica holds
it; the Reconcile RPC waits for it.

A run reads the ownership rows once, pages through every Logto user, and compares each one's custom
data (from the listing) with what the rows say (:func:`.entries.diff`: only templates the gateway
manages, so data of templates never imported is left alone). A user who differs is re-checked under
the per-user lock with a fresh read, and skipped if outbox rows are still waiting for them (the
delivery will write them). Owners missing from the listing are looked up one by one. The entries
a claimant of a disputed id holds for that template are never touched (disputes.py): only an
admin's decision changes them.

The Reconcile RPC commits each user's drift on the call's replay claim before repairing it (replay.py): a
retry of the same request after a crash reports that drift as found (its repair written again if it had
not landed) instead of finding none, and reconciles the users the first attempt had not reached.
"""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.locks import try_transaction_lock

from . import disputes, faults, metrics, mirrorstore, replay
from .customdata import CustomDataWriter, user_lock_name
from .entries import Changes, describe_change, desired_entries, diff
from .logto import LogtoClient, LogtoUserNotFound
from .sync import OWNED_SLOTS, managed_templates, owned_by, pending_rows

log = logging.getLogger(__name__)

LEASE = "usersync:reconcile"


@dataclass(frozen=True)
class Drift:
    """An entry that differs: what PostgreSQL says it should be (``id`` -1: there should be none)."""

    user: str
    key: str
    namespace: str
    template: str
    id: int

    @classmethod
    def of(cls, user: str, key: str, value: dict[str, str] | None, current: Any) -> Drift:
        return cls(user, key, *describe_change(key, value, current))


@dataclass
class ReconcileResult:
    users_checked: int = 0
    drift: list[Drift] = field(default_factory=list)
    repaired: int = 0
    ran: bool = True  # False: another replica held the lease


@dataclass
class Found:
    """A Reconcile RPC's replay claim and the drift it recorded on it so far (``earlier``: this user's was
    recorded by an earlier attempt of the request)."""

    claim: Claim | None = None
    drift: dict[str, list[list[Any]]] = field(default_factory=dict)
    earlier: bool = False


class MirrorReconciler:
    def __init__(self, db: Database, client: LogtoClient, writer: CustomDataWriter):
        self.db = db
        self.client = client
        self.writer = writer

    async def run(self, *, dry_run: bool = False, wait: bool = True, claim: Claim | None = None) -> ReconcileResult:
        if wait:
            async with self.db.lock(LEASE):
                return await self._run(dry_run, claim)
        async with try_transaction_lock(self.db, LEASE) as held:
            if held is None:
                return ReconcileResult(ran=False)
            return await self._run(dry_run, claim)

    async def _run(self, dry_run: bool, claim: Claim | None = None) -> ReconcileResult:
        result = ReconcileResult()
        # user -> the drift found (and being repaired) for them by this request, an earlier attempt's too.
        found: dict[str, list[list[Any]]] = {} if dry_run else dict(
            (replay.prior(claim, "reconcile") or {}).get("drift") or {})
        earlier = set(found)
        async with self.db.session() as session:
            rows = await session.execute(select(InstanceRow.owner, InstanceRow.namespace, InstanceRow.template,
                                                InstanceRow.id).where(InstanceRow.slot.in_(OWNED_SLOTS)))
            owned: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
            for owner, ns, tpl, i in rows:
                if owner is not None:  # an owned slot has one; the column allows NULL for free slots
                    owned[owner].append((ns, tpl, i))
            managed = await managed_templates(session)
            protected = await disputes.protected_keys(session)
        seen: set[str] = set()
        async for user in self.client.iter_users():
            user_id = str(user.get("id") or "")
            if not user_id:
                continue
            seen.add(user_id)
            result.users_checked += 1
            current = user.get("customData")
            if not isinstance(current, dict):
                current = {}
            if user_id in earlier or diff(current, desired_entries(owned.get(user_id, [])), managed,
                                          protected.get(user_id, ())):
                await self._repair(user_id, managed, dry_run, result, Found(claim, found, user_id in earlier))
        for user_id in sorted(set(owned) - seen):  # created after the listing began, or gone from Logto
            result.users_checked += 1
            await self._repair(user_id, managed, dry_run, result, Found(claim, found, user_id in earlier))
        metrics.DRIFT_FOUND.inc(len(result.drift))
        metrics.DRIFT_REPAIRED.inc(result.repaired)
        if result.drift:
            log.info("reconcile: %d drifted entries, %d repaired", len(result.drift), result.repaired)
        return result

    async def _repair(self, user: str, managed: set[tuple[str, str]], dry_run: bool,
                      result: ReconcileResult, found: Found | None = None) -> None:
        found = found or Found()
        if found.earlier:  # reported as the earlier attempt found it; its repair is written again below if needed
            drift = [Drift(*d) for d in found.drift[user]]
            result.drift += drift
            result.repaired += len(drift)
        async with self.db.lock(user_lock_name(user)) as session:
            if await pending_rows(session, user):
                return  # the outbox delivery owns this user's next write
            owned = await owned_by(session, user)
            try:
                current = await self.client.get_custom_data(user)
            except LogtoUserNotFound:
                log.warning("reconcile: user %s owns instances but does not exist in Logto", user)
                return
            keep = (await disputes.protected_keys(session)).get(user, set())  # read again under the lock
            changes: Changes = diff(current, desired_entries(owned), managed, keep)
            if not changes:
                return
            drift = [Drift.of(user, k, v, current.get(k)) for k, v in changes.items()]
            if not found.earlier:
                result.drift += drift
            if dry_run:
                return
            if not found.earlier and found.claim is not None:
                found.drift[user] = [[d.user, d.key, d.namespace, d.template, d.id] for d in drift]
                await IdempotencyStore.commit_effect_now(self.db, found.claim, {"op": "reconcile", "drift": found.drift})
            await self.writer.apply(user, changes, source="reconcile", current=current)
            await faults.reach("usersync.reconcile.after_write")
            if not found.earlier:
                result.repaired += len(changes)
            await mirrorstore.replace_user(session, user, owned, datetime.now(UTC))

    async def run_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run(wait=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Logto or the database down: the next round tries again
                log.warning("reconcile round failed: %s", exc)

