"""The ``usersync_mirror`` table: which entry usersync last wrote (or imported) for each user."""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from .models import MirrorEntryRow


async def record(session: AsyncSession, user: str, items: Iterable[tuple[str, str, int | None]],
                 now: datetime) -> None:
    """Note entries written (id) or removed (None) for ``user``; later items win."""
    final: dict[tuple[str, str], int | None] = {}
    for namespace, template, instance_id in items:
        final[(namespace, template)] = instance_id
    removed = [key for key, value in final.items() if value is None]
    if removed:
        await session.execute(delete(MirrorEntryRow).where(
            MirrorEntryRow.user == user,
            or_(*(and_(MirrorEntryRow.namespace == ns, MirrorEntryRow.template == tpl) for ns, tpl in removed))))
    values = [{"user": user, "namespace": ns, "template": tpl, "instance_id": i, "written_at": now}
              for (ns, tpl), i in final.items() if i is not None]
    if not values:
        return
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(MirrorEntryRow).values(values)
    stmt = stmt.on_conflict_do_update(index_elements=["user", "namespace", "template"],
                                      set_={"instance_id": stmt.excluded.instance_id,
                                            "written_at": stmt.excluded.written_at})
    await session.execute(stmt)


async def replace_user(session: AsyncSession, user: str, entries: Iterable[tuple[str, str, int]],
                       now: datetime) -> None:
    """The user's entries are exactly ``entries`` (after a full sync of the user)."""
    await session.execute(delete(MirrorEntryRow).where(MirrorEntryRow.user == user))
    await record(session, user, entries, now)


async def forget_user(session: AsyncSession, user: str) -> None:
    await session.execute(delete(MirrorEntryRow).where(MirrorEntryRow.user == user))


async def holders(session: AsyncSession, namespace: str, template: str) -> set[str]:
    """Users usersync believes hold the template's key in Logto."""
    rows = await session.execute(select(MirrorEntryRow.user).where(MirrorEntryRow.namespace == namespace,
                                                                   MirrorEntryRow.template == template))
    return {r for (r,) in rows}


async def templates(session: AsyncSession) -> set[tuple[str, str]]:
    rows = await session.execute(select(MirrorEntryRow.namespace, MirrorEntryRow.template).distinct())
    return {(ns, tpl) for ns, tpl in rows}
