"""Cross-replica locks that may be skipped: "do this unless another replica is already doing it".

:meth:`aigc_gateway.db.Database.lock` waits for its lock; these try once and report. On SQLite
(one process) they fall back to the process lock and always succeed.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.db import Database
from aigc_gateway.db.engine import lock_key


@asynccontextmanager
async def try_lock(db: Database, name: str) -> AsyncIterator[AsyncSession | None]:
    """A transaction holding the named lock, or None when another session holds it now."""
    if db.is_sqlite:
        async with db.lock(name) as session:
            yield session
        return
    async with db.session() as session:
        acquired = (await session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                          {"k": lock_key(name)})).scalar()
        yield session if acquired else None
