"""Which gateway processes are alive: a heartbeat row with a lease per process, and on PostgreSQL an
advisory lock held by the process's own session (issue 20).

A replay claim (:mod:`aigc_gateway.idempotency`) records the replica that runs the call. A retry of the
same request finds the claim pending and asks here whether its holder still lives: a replica renews
``expires_at = now + lease`` every ``lease / 3`` seconds, so a dead one is known dead within the lease
and its claims are taken over, while a live one (however slow its call) keeps its claims.

The lease is the bound, and the only signal on the embedded SQLite default (no advisory locks; several
processes may share the file). It alone would make every retry after a kill wait most of a lease, so on
PostgreSQL each replica also holds ``pg_advisory_lock(replica:<id>)`` on a connection of its own: the
server frees it the moment the process's connection drops (a killed process's socket is closed by its
kernel), and a retry that can take that lock knows the holder is gone at once. The lock alone would not
do: a host that vanishes leaves its connection open until TCP keepalive gives up (two hours by default),
and a pooler in transaction mode cannot hold it; the lease bounds those. A replica whose lock connection
broke while it lives may be taken over early; the claim's fence (``attempt``, checked under the allocator
lock before anything is written) keeps its call from changing anything twice. Hosts' clocks are assumed
to agree to well within the lease (NTP).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import delete, select, update

from .background import cancel_and_wait
from .db import Database, rowcount
from .db.listen import asyncpg_dsn
from .db.models import ReplicaRow
from .locks import SessionLock, is_free

log = logging.getLogger(__name__)

FORGET_AFTER = timedelta(hours=1)  # rows of replicas dead this long are deleted
HOUSEKEEPING_EVERY = 600  # renewals (a lease of 10 s: every 33 minutes)


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def is_alive(expires_at: datetime | None, now: datetime, lock_free: bool | None = None) -> bool:
    """A replica is alive until its lease runs out, or its session lock is free (``lock_free`` True: it held
    one and its session is gone; None: no lock to look at); one with no row (never seen, or forgotten) is
    dead."""
    return expires_at is not None and aware(expires_at) > now and lock_free is not True


def lock_name(replica: str) -> str:
    return f"replica:{replica}"


def renew_every(lease: float) -> float:
    """Renew three times per lease: two renewals may fail (a slow database) before the lease runs out."""
    return lease / 3


class ReplicaRegistry:
    """This process's heartbeat, and the liveness of the others."""

    def __init__(self, db: Database, lease_seconds: float):
        self.db = db
        self.lease = timedelta(seconds=lease_seconds)
        self.id = f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Lock()
        self.session_lock = SessionLock(asyncpg_dsn(db.url), lock_name(self.id))
        # Work to do now and then while the process lives (e.g. pruning old replay outcomes).
        self.housekeeping: list[Callable[[], Awaitable[object]]] = []

    async def ensure_started(self) -> str:
        """Register this process (once) and start its heartbeat; returns the replica id claims record."""
        if self._task is None:
            async with self._started:
                if self._task is None:
                    await self._renew()
                    self._task = asyncio.create_task(self._beat(), name="replica-heartbeat")
        return self.id

    async def _hold_session_lock(self) -> bool:
        """Hold this replica's advisory lock on a connection of its own (PostgreSQL); False if not held."""
        try:
            return await self.session_lock.take(wait=True)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("cannot hold this replica's session lock (the lease alone tells it is alive): %s", exc)
            return False

    async def _renew(self) -> None:
        locked = await self._hold_session_lock()
        now = utcnow()
        async with self.db.session() as session:
            renewed = await session.execute(update(ReplicaRow).where(ReplicaRow.id == self.id)
                                            .values(expires_at=now + self.lease, session_lock=locked))
            if not rowcount(renewed):
                session.add(ReplicaRow(id=self.id, host=socket.gethostname()[:255], pid=os.getpid(),
                                       started_at=now, expires_at=now + self.lease, session_lock=locked))

    async def _beat(self) -> None:
        every = renew_every(self.lease.total_seconds())
        rounds = 0
        while True:
            await asyncio.sleep(every)
            try:
                await self._renew()
                rounds += 1
                if rounds % HOUSEKEEPING_EVERY == 1:
                    await self._forget_dead()
                    for chore in self.housekeeping:
                        await chore()
            except Exception as exc:  # noqa: BLE001 - the database may be away for a while; keep beating
                log.warning("replica heartbeat failed: %s", exc)

    async def _forget_dead(self) -> None:
        async with self.db.session() as session:
            await session.execute(delete(ReplicaRow).where(ReplicaRow.expires_at < utcnow() - FORGET_AFTER))

    async def alive(self, replica: str) -> bool:
        if replica == self.id:
            return True
        async with self.db.session() as session:
            row = (await session.execute(select(ReplicaRow.expires_at, ReplicaRow.session_lock)
                                         .where(ReplicaRow.id == replica))).first()
            if row is None or not is_alive(row.expires_at, utcnow()):
                return False
            if not row.session_lock or self.db.is_sqlite:
                return True
            # Free means its session is gone; taken inside this transaction, it is released at its end.
            free = await is_free(session, lock_name(replica))
        return is_alive(row.expires_at, utcnow(), lock_free=free)

    async def close(self) -> None:
        """Stop beating and leave: a clean stop frees this replica's unfinished claims at once."""
        if self._task is None:
            return
        await cancel_and_wait([self._task])
        self._task = None
        try:
            async with self.db.session() as session:
                await session.execute(delete(ReplicaRow).where(ReplicaRow.id == self.id))
        except Exception as exc:  # noqa: BLE001 - the lease runs out on its own
            log.warning("cannot remove this replica's heartbeat row: %s", exc)
        await self.session_lock.release()
