"""Disputed instances: an id the original gateway handed to several users, and an admin's decision on it.

The import (importplan.py) records a dispute instead of guessing: the id gets no row in
``instances`` (so the allocator never hands it out; a running one keeps running, a reserved one stays
reserved with its disk), and the claimants' Logto entries stay as the original wrote them — Reconcile
and SyncUser leave every key a claimant holds for a disputed template alone (:func:`protected_keys`).

ResolveDisputedInstance (:class:`Resolver`) ends a dispute under the template's allocator lock, after
reading the GameServerSet again:

- to one claimant: the id becomes theirs (LIVE when running, PAUSED when reserved with its disk),
  with the outbox rows that write their entry and remove every other claimant's;
- to none: a reserved id becomes RELEASING (its disk is deleted by the instance service, then FREE)
  or FREE (no disk left), and every claimant's entry is removed. A running id cannot be given to
  none here (only the instance service stops pods): give it to a claimant, then delete it.

The RPC layer audits the decision (calls.py); the details say who got it and from whom.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway import audit
from aigc_gateway.db import Database
from aigc_gateway.db.models import (
    DisputedInstanceRow,
    InstanceRow,
    UserSyncOutboxRow,
    allocator_lock,
    notify_instance_change,
)
from aigc_gateway.errors import FailedPrecondition, NotFound, invalid

from . import metrics, mirrorstore
from .entries import entry_key
from .importplan import Dispute, GssState

ReadGss = Callable[[str, str], Awaitable[GssState]]


async def recorded(session: AsyncSession, namespace: str, template: str) -> dict[int, Dispute]:
    rows = await session.execute(select(DisputedInstanceRow).where(
        DisputedInstanceRow.namespace == namespace, DisputedInstanceRow.template == template))
    return {r.id: Dispute(r.id, tuple(r.claimants), r.state) for r in rows.scalars()}


async def protected_keys(session: AsyncSession) -> dict[str, set[str]]:
    """user -> the custom-data keys nothing may change while the user claims a disputed id there."""
    out: dict[str, set[str]] = defaultdict(set)
    for row in (await session.execute(select(DisputedInstanceRow))).scalars():
        for user in row.claimants:
            out[user].add(entry_key(row.namespace, row.template))
    return dict(out)


async def update_gauge(db: Database) -> None:
    async with db.session() as session:
        count = (await session.execute(select(func.count()).select_from(DisputedInstanceRow))).scalar_one()
    metrics.DISPUTED_INSTANCES.set(count)


@dataclass(frozen=True)
class Resolution:
    owner: str  # "" : none
    slot: str  # the id's slot now: LIVE, PAUSED, RELEASING or FREE ("" : the template is gone, no slot)
    claimants: tuple[str, ...]


class Resolver:
    def __init__(self, db: Database, read_gss: ReadGss):
        self.db = db
        self.read_gss = read_gss

    async def resolve(self, namespace: str, template: str, instance_id: int, owner: str) -> Resolution:
        name = f"namespaces/{namespace}/templates/{template}/instances/{instance_id}"
        async with self.db.lock(allocator_lock(namespace, template)) as session:
            dispute = (await recorded(session, namespace, template)).get(instance_id)
            if dispute is None:
                raise NotFound(f"{name} is not disputed", reason="DISPUTE_NOT_FOUND")
            if owner and owner not in dispute.claimants:
                raise invalid("owner", f"{owner!r} does not claim {name}; its claimants are "
                              f"{', '.join(dispute.claimants)} (or give it to none: leave owner empty)",
                              "NOT_A_CLAIMANT")
            gss = await self.read_gss(namespace, template)
            if gss.problem and owner:
                raise FailedPrecondition(f"{name}: {gss.problem}; give it to none", reason="TEMPLATE_UNUSABLE")
            slot = "" if gss.problem else self._slot(name, gss, instance_id, owner)
            if owner:
                taken = (await session.execute(select(InstanceRow.id).where(
                    InstanceRow.namespace == namespace, InstanceRow.template == template,
                    InstanceRow.owner == owner))).scalar_one_or_none()
                if taken is not None:
                    raise FailedPrecondition(f"{owner} already has id {taken} of this template: one instance per "
                                             "user and template", reason="OWNER_HAS_INSTANCE")
            now = datetime.now(UTC)
            since = min(gss.pvc_created.get(instance_id, now), now) if owner else now
            if slot:  # none when the template itself is gone: nothing is left to keep
                session.add(InstanceRow(namespace=namespace, template=template, id=instance_id, slot=slot,
                                        owner=owner or None, orphaned=False, created_at=since, updated_at=now,
                                        state_changed_at=since if slot == "LIVE" else now, last_access_at=None))
            # Through the outbox, as every ownership change: the owner's entry written, the others' removed.
            for user in dispute.claimants:
                session.add(UserSyncOutboxRow(user=user, namespace=namespace, template=template,
                                              instance_id=instance_id if user == owner else None,
                                              created_at=now, attempts=0, last_error=""))
            if owner:
                await mirrorstore.record(session, owner, [(namespace, template, instance_id)], now)
            await session.execute(delete(DisputedInstanceRow).where(
                DisputedInstanceRow.namespace == namespace, DisputedInstanceRow.template == template,
                DisputedInstanceRow.id == instance_id))
            await session.flush()
            await notify_instance_change(session, namespace, template, instance_id)
        audit.note(owner=owner or None, slot=slot, claimants=list(dispute.claimants))
        await update_gauge(self.db)
        return Resolution(owner, slot, dispute.claimants)

    @staticmethod
    def _slot(name: str, gss: GssState, instance_id: int, owner: str) -> str:
        """The id's slot after the decision, from the GameServerSet as it is now."""
        if instance_id in gss.live():
            if not owner:
                raise FailedPrecondition(
                    f"{name} is running: only the instance service stops it. Give it to one claimant, then "
                    "delete it with DeleteInstance if nobody should keep it", reason="DISPUTED_INSTANCE_RUNNING")
            return "LIVE"
        if instance_id not in gss.reserved:
            raise FailedPrecondition(f"{name} is neither running nor reserved in the GameServerSet any more; "
                                     "CheckConsistency shows what happened to it", reason="DISPUTED_ID_GONE")
        if owner:
            if gss.disk_gone(instance_id):
                raise FailedPrecondition(f"{name} is paused but its disk is gone: a resume would start on an "
                                         "empty disk; give it to none", reason="DISK_GONE")
            return "PAUSED"
        return "RELEASING" if instance_id in gss.pvc_ids else "FREE"
