"""PostgreSQL side of the allocator: slot rows, the usersync outbox, and intents.

Every change to a slot's owner writes the matching outbox row and a
`pg_notify` in the same transaction, so the Logto mirror and the auth owner
map can never miss or invent an ownership change. Callers hold the template
lock (:meth:`Lifecycle.locked`) around everything here except
:meth:`SlotStore.record_intent`, which must commit on its own before the
GameServerSet write it announces.
"""
from __future__ import annotations

import os
import socket
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, UserSyncOutboxRow, notify_instance_change
from aigc_gateway.names import InstanceRef, TemplateRef
from aigc_gateway.okg import SlotState

from .allocator import Plan, Slot
from .invariants import SlotRecord
from .models import IntentRow
from .resolution import recorded

HOLDER = f"{socket.gethostname()}:{os.getpid()}"


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def to_slot(row: InstanceRow) -> Slot:
    return Slot(row.id, SlotState(row.slot), row.owner)


def slots_of(rows: dict[int, InstanceRow]) -> dict[int, Slot]:
    return {i: to_slot(r) for i, r in rows.items()}


def to_record(row: InstanceRow) -> SlotRecord:
    return SlotRecord(row.id, SlotState(row.slot), row.owner, aware(row.created_at), aware(row.state_changed_at))


class SlotStore:
    def __init__(self, db: Database):
        self.db = db

    # -- slots -------------------------------------------------------------------------------------------

    async def load(self, session: AsyncSession, ref: TemplateRef) -> dict[int, InstanceRow]:
        rows = await session.execute(select(InstanceRow).where(
            InstanceRow.namespace == ref.namespace, InstanceRow.template == ref.template))
        return {r.id: r for r in rows.scalars()}

    async def get(self, ref: InstanceRef) -> InstanceRow | None:
        async with self.db.session() as session:
            return await session.get(InstanceRow, (ref.namespace, ref.template, ref.id))

    async def apply(self, session: AsyncSession, ref: TemplateRef, plan: Plan, *,
                    owner_since: datetime | None = None) -> None:
        """Write the plan's transitions, their outbox rows and notifications (in the caller's transaction)."""
        when = now()
        for t in plan.transitions:
            row = await session.get(InstanceRow, (ref.namespace, ref.template, t.id))
            old_owner = row.owner if row is not None else None
            if t.state is None:
                if row is not None:
                    await session.delete(row)
            elif row is None:
                since = owner_since or when
                session.add(InstanceRow(
                    namespace=ref.namespace, template=ref.template, id=t.id, slot=t.state.value, owner=t.owner,
                    orphaned=False, created_at=since, updated_at=when, state_changed_at=since))
            else:
                if row.slot != t.state.value:
                    row.state_changed_at = when
                row.slot, row.owner, row.updated_at = t.state.value, t.owner, when
                if t.owner != old_owner and t.owner is not None:
                    # A new owner starts a new instance: its own install time, no inherited flags. The state
                    # change time equals the install time until the first pause (status.derive relies on it).
                    since = owner_since or when
                    row.created_at, row.state_changed_at, row.orphaned, row.last_access_at = since, since, False, None
            new_owner = t.owner if t.state is not None else None
            if old_owner != new_owner:
                if old_owner is not None:
                    session.add(_outbox(old_owner, ref, None, when))
                if new_owner is not None:
                    session.add(_outbox(new_owner, ref, t.id, when))
            await session.flush()
            await notify_instance_change(session, ref.namespace, ref.template, t.id)

    async def purge(self, session: AsyncSession, ref: TemplateRef) -> list[tuple[int, str]]:
        """Forget every slot and intent of a template; returns the (id, owner) of the owned ones."""
        rows = await self.load(session, ref)
        when = now()
        owned = sorted((r.id, r.owner) for r in rows.values() if r.owner)
        for _, owner in owned:
            session.add(_outbox(owner, ref, None, when))
        for row in rows.values():
            await session.delete(row)
        await session.execute(delete(IntentRow).where(IntentRow.namespace == ref.namespace,
                                                      IntentRow.template == ref.template))
        await session.flush()
        for row in rows.values():
            await notify_instance_change(session, ref.namespace, ref.template, row.id)
        return owned

    # -- intents -----------------------------------------------------------------------------------------

    async def record_intent(self, ref: TemplateRef, plan: Plan, gss: dict[str, Any] | None = None) -> IntentRow:
        """Commit the intent on its own (the lock's transaction stays open) before the write it announces. ``gss``:
        the object the write replaces; its resourceVersion is recorded for the judge (resolution.py)."""
        row = IntentRow(namespace=ref.namespace, template=ref.template, operation=plan.op.value,
                        instance_id=plan.id, plan=recorded(plan, gss), created_at=now(), holder=HOLDER)
        async with self.db.session() as session:
            session.add(row)
        return row

    async def move_intent(self, intent: IntentRow, plan: Plan, gss: dict[str, Any]) -> None:
        """Record that the intent's write is sent again, conditioned on ``gss`` (its first copy was refused, so it
        cannot land): committed before the new copy is sent, as the intent was before the first."""
        intent.plan = recorded(plan, gss)
        async with self.db.session() as session:
            await session.execute(update(IntentRow).where(IntentRow.id == intent.id).values(plan=intent.plan))

    async def forget_intent(self, intent_id: int) -> None:
        """Drop an intent whose write is known not to have happened (resolution.judge said so)."""
        async with self.db.session() as session:
            await session.execute(delete(IntentRow).where(IntentRow.id == intent_id))

    async def intents(self, session: AsyncSession, ref: TemplateRef) -> list[IntentRow]:
        rows = await session.execute(select(IntentRow).where(
            IntentRow.namespace == ref.namespace, IntentRow.template == ref.template).order_by(IntentRow.id))
        return list(rows.scalars())

    async def drop_intent(self, session: AsyncSession, intent_id: int) -> None:
        await session.execute(delete(IntentRow).where(IntentRow.id == intent_id))

    # -- what the reconciler and the checker look at -----------------------------------------------------

    async def templates(self) -> list[TemplateRef]:
        """Templates that have slots or intents."""
        async with self.db.session() as session:
            slots = select(InstanceRow.namespace, InstanceRow.template)
            found = {(n, t) for n, t in (await session.execute(slots.distinct())).all()}
            found |= {(n, t) for n, t in (await session.execute(
                select(IntentRow.namespace, IntentRow.template).distinct())).all()}
        return sorted(TemplateRef(n, t) for n, t in found)


def _outbox(user: str, ref: TemplateRef, instance_id: int | None, when: datetime) -> UserSyncOutboxRow:
    return UserSyncOutboxRow(user=user, namespace=ref.namespace, template=ref.template, instance_id=instance_id,
                             created_at=when, attempts=0, last_error="")
