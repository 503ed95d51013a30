"""The async engine and sessions.

PostgreSQL (asyncpg) is what production and the tests use; an embedded SQLite
file (aiosqlite) is the zero-setup default for one machine. The differences
that matter to callers are hidden here and in :mod:`aigc_gateway.locks`:
:meth:`Database.lock` is a PostgreSQL advisory lock held for a transaction, or a
process-wide asyncio lock on SQLite (where only one process may write anyway).
"""
from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import CursorResult, Result, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from ..locks import LocalLocks, transaction_lock


def rowcount(result: Result[Any]) -> int:
    """How many rows an UPDATE or DELETE matched. ``session.execute`` is typed to return a ``Result``; for such
    a statement it is a ``CursorResult``, the one kind that counts rows."""
    assert isinstance(result, CursorResult), type(result)
    return result.rowcount


# What asyncpg raises for a server that went away or is not accepting connections yet: the connection
# exception class (SQLSTATE 08, a connection closed under a query included), and the shutdowns and start-up of
# the operator intervention class (57P01-57P03, 57P05; not 57014, a cancelled statement).
_LOST = (ConnectionError, socket.gaierror, asyncpg.PostgresConnectionError, asyncpg.AdminShutdownError,
         asyncpg.CrashShutdownError, asyncpg.CannotConnectNowError, asyncpg.IdleSessionTimeoutError)


def unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the database could not be reached or went away during the call (a restart, a
    failover, the network): the same call may well succeed on a retry. Connecting raises the socket's error
    unwrapped (the pool's pre-ping reconnects), a query on a dropped connection raises it wrapped by SQLAlchemy,
    so the causes are followed too. A constraint, a syntax error or a bug is not: those stay INTERNAL."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, _LOST):
            return True
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else (current.__cause__ or current.__context__)
    return False


class Database:
    """One engine per process; sessions are short-lived and per unit of work."""

    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
        if self.is_sqlite:
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self.local_locks = LocalLocks()  # the advisory locks of SQLite (see aigc_gateway.locks)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def lock(self, name: str) -> AsyncIterator[AsyncSession]:
        """Hold the named lock across replicas for the life of the yielded transaction
        (:func:`aigc_gateway.locks.transaction_lock`)."""
        async with transaction_lock(self, name) as session:
            yield session

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; foreign keys are off by default in SQLite.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()
