"""Disputed instances: an id the original gateway handed to several users, and an admin's decision on it.

The import (importplan.py) records a dispute instead of guessing: the id gets no row in
``instances`` (so the allocator never hands it out; a running one keeps running, a reserved one stays
reserved with its disk), and the claimants' Logto entries stay as the original wrote them — Reconcile
and SyncUser leave every key a claimant holds for a disputed template alone (:func:`protected_keys`).

ResolveDisputedInstance (:class:`Resolver`) ends a dispute under the template's allocator lock, after
reading the GameServerSet again:

- to one claimant: the id becomes theirs (LIVE when running, PAUSED when reserved with its disk),
  with the outbox rows that write their entry and remove every other claimant's;
- to none: every claimant's entry is removed and the id is released: a running one is first reserved
  in the GameServerSet (R-1, X + the id, as an uninstall writes it: the controller stops its pod and
  keeps its disk), then it becomes RELEASING (the instance service deletes its disk, then frees it),
  or FREE when no disk is left. The write is checked like the allocator's (exactly that id stops);
  after a crash between it and the commit, the dispute is still there and resolving it again finds
  the id reserved.

The RPC layer audits the decision (calls.py); the details say who got it and from whom. The decision is
committed on the call's replay claim in its transaction (replay.py): a retry after a crash answers with it
instead of "not disputed".
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway import audit, kube, okg
from aigc_gateway.db import Database
from aigc_gateway.db.models import (
    DisputedInstanceRow,
    InstanceRow,
    UserSyncOutboxRow,
    allocator_lock,
    notify_instance_change,
)
from aigc_gateway.errors import Aborted, FailedPrecondition, NotFound, invalid
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.okg import SlotState

from . import faults, metrics, mirrorstore, replay
from .entries import entry_key
from .importplan import Dispute, GssState

ReadGss = Callable[[str, str], Awaitable[GssState]]
KubeFactory = Callable[[], Awaitable[kube.Kube]]
WRITE_ATTEMPTS = 5  # the controller writes the object's status too: re-read after a 409


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
    def __init__(self, db: Database, read_gss: ReadGss, kube_factory: KubeFactory):
        self.db = db
        self.read_gss = read_gss
        self.kube_factory = kube_factory

    async def resolve(self, namespace: str, template: str, instance_id: int, owner: str,
                      claim: Claim | None = None) -> Resolution:
        name = f"namespaces/{namespace}/templates/{template}/instances/{instance_id}"
        done = replay.prior(claim, "resolve")
        if done is not None:  # an earlier attempt of this request committed the decision, then died
            return Resolution(done["owner"], done["slot"], tuple(done["claimants"]))
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
            if not owner and instance_id in gss.live():
                await self._stop(name, namespace, template, instance_id)  # then its disk goes as an uninstall's
                audit.note(stopped=True)
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
                                        state_changed_at=since if slot == SlotState.LIVE.value else now, last_access_at=None))
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
            await IdempotencyStore.commit_effect(session, claim, {"op": "resolve", "owner": owner, "slot": slot,
                                                    "claimants": list(dispute.claimants)})
        await faults.reach("usersync.resolve.after_commit")
        audit.note(owner=owner or None, slot=slot, claimants=list(dispute.claimants))
        await update_gauge(self.db)
        return Resolution(owner, slot, dispute.claimants)

    @staticmethod
    def _slot(name: str, gss: GssState, instance_id: int, owner: str) -> str:
        """The id's slot after the decision, from the GameServerSet as it is now."""
        if instance_id in gss.live():
            if not owner:
                return SlotState.RELEASING.value  # stopped by _stop; the instance service frees it once pod and disk are gone
            return SlotState.LIVE.value
        if instance_id not in gss.reserved:
            raise FailedPrecondition(f"{name} is neither running nor reserved in the GameServerSet any more; "
                                     "CheckConsistency shows what happened to it", reason="DISPUTED_ID_GONE")
        if owner:
            if gss.disk_gone(instance_id):
                raise FailedPrecondition(f"{name} is paused but its disk is gone: a resume would start on an "
                                         "empty disk; give it to none", reason="DISK_GONE")
            return SlotState.PAUSED.value
        return SlotState.RELEASING.value if instance_id in gss.pvc_ids else SlotState.FREE.value

    async def _stop(self, name: str, namespace: str, template: str, instance_id: int) -> None:
        """Reserve a running id as an uninstall does: replicas one less, the id (and any hole, which the
        allocator would reserve too) added to reserveGameServerIds; checked to stop exactly that id.
        Called holding the template's allocator lock, so no other gateway write interleaves."""
        client = await self.kube_factory()
        for _ in range(WRITE_ATTEMPTS):
            gss = await client.get(kube.GSS, namespace, template)
            spec = gss.get("spec") or {}
            now = GssState(replicas=int(spec.get("replicas") or 0),
                           reserved=okg.parse_reserve(spec.get("reserveGameServerIds")))
            live = now.live()
            if instance_id not in live:
                return  # reserved already (a resolve that crashed after its write)
            after = GssState(replicas=now.replicas - 1, reserved=now.reserved | now.holes() | {instance_id})
            if after.live() != live - {instance_id}:
                raise FailedPrecondition(f"{name}: reserving it would not stop exactly this id; an admin should run "
                                         "`aigc-gateway doctor`", reason="ALLOCATOR_DRIFT")
            body = okg.with_scale(gss, after.replicas, after.reserved)
            try:
                await client.replace(kube.GSS, namespace, body)  # with the resourceVersion read
                return
            except Aborted:
                continue
        raise Aborted(f"{name}: the GameServerSet kept changing; retry", reason="CONCURRENT_UPDATE", retry_after=1.0)
