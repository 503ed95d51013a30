"""Read-only view of the shared `instances` table (the instance service writes it, docs/instance.md#the-allocator):
paused counts for listings, owners for update previews, and whether a template still has instances."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.okg import SlotState

LIVE, PAUSED = SlotState.LIVE.value, SlotState.PAUSED.value


@dataclass(frozen=True)
class Owned:
    id: int
    owner: str
    slot: str
    last_access: datetime | None = None  # the last authorised access the auth service recorded
    live_since: datetime | None = None  # a running instance: when it was installed or resumed


class InstanceTable:
    def __init__(self, db: Database):
        self.db = db

    async def counts(self, namespaces: set[str] | None = None) -> dict[tuple[str, str, str], int]:
        """(namespace, template, slot) -> rows, for LIVE and PAUSED slots."""
        stmt = (select(InstanceRow.namespace, InstanceRow.template, InstanceRow.slot, func.count())
                .where(InstanceRow.slot.in_((LIVE, PAUSED)))
                .group_by(InstanceRow.namespace, InstanceRow.template, InstanceRow.slot))
        if namespaces:
            stmt = stmt.where(InstanceRow.namespace.in_(sorted(namespaces)))
        async with self.db.session() as session:
            return {(ns, tpl, slot): n for ns, tpl, slot, n in (await session.execute(stmt)).all()}

    async def owned(self, namespace: str, template: str) -> list[Owned]:
        """Every id of the template that has an owner (LIVE or PAUSED), by id."""
        stmt = (select(InstanceRow.id, InstanceRow.owner, InstanceRow.slot, InstanceRow.last_access_at,
                       InstanceRow.state_changed_at)
                .where(InstanceRow.namespace == namespace, InstanceRow.template == template,
                       InstanceRow.owner.is_not(None)).order_by(InstanceRow.id))
        async with self.db.session() as session:
            # `o is not None` as in the query, said again for the type of the column.
            return [Owned(i, o, s, _aware(a), _aware(c) if s == SlotState.LIVE.value else None)
                    for i, o, s, a, c in (await session.execute(stmt)).all() if o is not None]

    async def ids(self, namespace: str, template: str) -> list[int]:
        """Every id the table knows for the template, whatever its slot (their disks may still exist)."""
        stmt = select(InstanceRow.id).where(InstanceRow.namespace == namespace, InstanceRow.template == template)
        async with self.db.session() as session:
            return sorted((await session.execute(stmt)).scalars())


def _aware(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC datetime (SQLite hands back naive ones)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
