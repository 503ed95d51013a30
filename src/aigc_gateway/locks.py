"""Every lock of the gateway, written once: across replicas (PostgreSQL advisory locks) and inside one
process (asyncio locks), with the embedded SQLite fallback.

Replicas share one PostgreSQL, so "one at a time" across them is an advisory lock on a key hashed
from a readable name (``allocator:ns/tpl``, ``quota:<user>``, ``usersync:reconcile``) by
:func:`lock_key`, the only place that hashing happens (tests that look at ``pg_locks`` use it too).
Three shapes cover every use:

- :func:`transaction_lock` waits and holds the lock for the yielded transaction
  (``pg_advisory_xact_lock``): the lock and the rows written under it commit together, and it is
  released at commit or rollback, even when the process dies. ``Database.lock`` is this.
  :func:`try_transaction_lock` tries once (``pg_try_advisory_xact_lock``): "do this unless another
  replica is already doing it" (a lease for one round of work).
- :class:`QueuedLocks` puts a process-local lock before the advisory one: coroutines of one process
  queue in memory rather than each holding a pooled connection while they wait in PostgreSQL (the
  holder may need a second connection for its own work).
- :class:`SessionLock` holds a lock on a connection of its own (``pg_advisory_lock``), for as long as
  the process lives: a leadership lease, or a proof of life that ends when the kernel closes a
  killed process's socket.

On SQLite (one machine, one writing process) an advisory lock is the process-local lock of that
database (:class:`LocalLocks`, held by ``Database``), a try always succeeds through it, and a
session lock is never held.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from .db.engine import Database


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name (e.g. ``allocator:ns/tpl``)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class LocalLocks:
    """Process-local asyncio locks by name, made on first use and forgotten once nobody holds or waits for
    them (names such as users are unbounded)."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    def __len__(self) -> int:
        """How many names have a lock now (held or waited for)."""
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        lock = self._locks.setdefault(name, asyncio.Lock())
        self._users[name] = self._users.get(name, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[name] -= 1
            if not self._users[name]:
                del self._users[name]
                self._locks.pop(name, None)


@asynccontextmanager
async def transaction_lock(db: Database, name: str) -> AsyncIterator[AsyncSession]:
    """Wait for the named lock across replicas and hold it for the life of the yielded transaction."""
    if db.is_sqlite:
        async with db.local_locks.hold(name), db.session() as session:
            yield session
        return
    async with db.session() as session:
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": lock_key(name)})
        yield session


@asynccontextmanager
async def try_transaction_lock(db: Database, name: str) -> AsyncIterator[AsyncSession | None]:
    """A transaction holding the named lock, or None when another session holds it now (no waiting)."""
    if db.is_sqlite:
        async with transaction_lock(db, name) as session:
            yield session
        return
    async with db.session() as session:
        acquired = (await session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                          {"k": lock_key(name)})).scalar()
        yield session if acquired else None


async def is_free(session: AsyncSession, name: str) -> bool:
    """Whether no other session holds the named lock now (PostgreSQL). Taken to find out, it stays held by
    ``session``'s transaction until that ends."""
    return bool((await session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                       {"k": lock_key(name)})).scalar_one())


class QueuedLocks:
    """Named locks across replicas that the coroutines of this process queue for in memory first."""

    def __init__(self, db: Database):
        self.db = db
        self.local = LocalLocks()

    @asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[AsyncSession]:
        async with self.local.hold(name), transaction_lock(self.db, name) as session:
            yield session


class SessionLock:
    """A session-level advisory lock on a connection of its own (not from the pool), held until
    :meth:`release` or until the connection goes (the process died, the network broke)."""

    def __init__(self, dsn: str | None, name: str):
        self.dsn = dsn  # None: not PostgreSQL, never held
        self.name = name
        self.conn: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self.conn is not None

    async def take(self, *, wait: bool) -> bool:
        """Hold the lock; True when held. A connection already holding it is pinged first: if it is gone
        the lock went with it, and is taken again. ``wait`` False gives up at once when another session holds
        it. Connection failures propagate (the caller says what it means for it)."""
        if self.conn is not None:
            try:
                await self.conn.fetchval("SELECT 1", timeout=5)
                return True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                self.conn.terminate()
                self.conn = None
        if self.dsn is None:
            return False
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            if wait:
                await conn.execute("SELECT pg_advisory_lock($1)", lock_key(self.name))
            elif not await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_key(self.name)):
                await conn.close()
                return False
        except BaseException:
            conn.terminate()
            raise
        self.conn = conn
        return True

    async def release(self) -> None:
        """Let the lock go (closing the session drops it)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            await conn.close()
