"""Who waits for a named PostgreSQL advisory lock (:meth:`Database.lock`): lets a test hold a lock and
know, without sleeping, that the call it started is now blocked on it (its interleaving forced)."""
from __future__ import annotations

from sqlalchemy import text

from aigc_gateway.db import Database
from aigc_gateway.locks import lock_key

from .plugins.kube import wait_for


async def lock_waiters(db: Database, name: str) -> int:
    """Sessions of this database waiting (not holding) the advisory lock ``name``."""
    key = lock_key(name) & 0xFFFFFFFFFFFFFFFF  # a bigint key is split into classid (high) and objid (low)
    async with db.session() as session:
        return (await session.execute(text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objsubid = 1"
            " AND classid::bigint = :hi AND objid::bigint = :lo"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
            {"hi": key >> 32, "lo": key & 0xFFFFFFFF})).scalar_one()


async def until_waiting(db: Database, name: str, count: int = 1, timeout: float = 60) -> None:
    """Until ``count`` sessions wait for the lock ``name``."""
    async def waiting() -> bool:
        return await lock_waiters(db, name) >= count
    await wait_for(waiting, timeout, interval=0.05, what=f"{count} waiter(s) for the lock {name}")
