"""Which gateway processes are alive: a heartbeat row with a lease per process (issue 20).

A replay claim (:mod:`aigc_gateway.idempotency`) records the replica that runs the call. A retry of the
same request finds the claim pending and asks here whether its holder still lives: a replica renews
``expires_at = now + lease`` every ``lease / 3`` seconds, so a killed one is known dead within the lease
and its claims are taken over at once, while a live one (however slow its call) keeps its claims.

Why a heartbeat row rather than a PostgreSQL advisory lock held by the replica's session: it works the
same on the embedded SQLite default (which has no advisory locks, and where several processes may share
the file); its detection time is the configured lease, where a dead session's lock is freed only when
PostgreSQL notices the connection is gone (immediately for a killed process on a live host, but after
TCP keepalive — two hours by default — for a host that vanished, or never behind a transaction-mode
pooler); and it needs no connection pinned for the life of the process. The price is a clock
assumption: hosts' clocks agree to well within the lease (NTP).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update

from .background import cancel_and_wait
from .db import Database
from .db.models import ReplicaRow

log = logging.getLogger(__name__)

FORGET_AFTER = timedelta(hours=1)  # rows of replicas dead this long are deleted
HOUSEKEEPING_EVERY = 600  # renewals (a lease of 10 s: every 33 minutes)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def is_alive(expires_at: datetime | None, now: datetime) -> bool:
    """A replica is alive until its lease runs out; one with no row (never seen, or forgotten) is dead."""
    return expires_at is not None and aware(expires_at) > now


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

    async def _renew(self) -> None:
        now = utcnow()
        async with self.db.session() as session:
            renewed = await session.execute(update(ReplicaRow).where(ReplicaRow.id == self.id)
                                            .values(expires_at=now + self.lease))
            if not renewed.rowcount:
                session.add(ReplicaRow(id=self.id, host=socket.gethostname()[:255], pid=os.getpid(),
                                       started_at=now, expires_at=now + self.lease))

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
            expires = (await session.execute(select(ReplicaRow.expires_at)
                                             .where(ReplicaRow.id == replica))).scalar_one_or_none()
        return is_alive(expires, utcnow())

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
