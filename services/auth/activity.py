"""Last successful access per instance, written in batches to ``instances.last_access_at``.

A check only records the time in memory; a flush every ``flush_seconds``
writes everything touched since, in one transaction (the only column of
``instances`` the auth service writes). Idle auto-pause reads it, in minutes:
an instance's time is written again only once it has moved on by
``resolution_seconds`` (60), so a busy instance costs one row update a minute
per process instead of one per flush (10,000 busy instances and two workers
made 4,000 updates a second of a column nobody reads that finely).
"""
from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, bindparam, or_, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from aigc_gateway.background import cancel_and_wait
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow

from .ownermap import InstanceKey

log = logging.getLogger(__name__)

FLUSH_SLICE = 250
_TABLE = cast(Table, InstanceRow.__table__)  # typed as any FromClause; a declarative class's is its Table
_UPDATE_EACH = (update(_TABLE)
                .where(_TABLE.c.namespace == bindparam("ns"), _TABLE.c.template == bindparam("tpl"),
                       _TABLE.c.id == bindparam("iid"),
                       or_(_TABLE.c.last_access_at.is_(None), _TABLE.c.last_access_at < bindparam("t")))
                .values(last_access_at=bindparam("t")))
_UPDATE_ARRAYS = text(
    f"UPDATE {_TABLE.name} AS i SET last_access_at = v.t "
    "FROM unnest(CAST(:ns AS VARCHAR[]), CAST(:tpl AS VARCHAR[]), CAST(:iid AS INTEGER[]), "
    "CAST(:t AS TIMESTAMPTZ[])) AS v(ns, tpl, iid, t) "
    "WHERE i.namespace = v.ns AND i.template = v.tpl AND i.id = v.iid "
    "AND (i.last_access_at IS NULL OR i.last_access_at < v.t)")


class ActivityRecorder:
    def __init__(self, db: Database, flush_seconds: float = 5.0, resolution_seconds: float = 60.0):
        self.db = db
        self.flush_seconds = flush_seconds
        self.resolution_seconds = resolution_seconds
        self._seen: dict[InstanceKey, float] = {}
        self._written: dict[InstanceKey, float] = {}  # the last time written per instance, while recent
        self._pruned = 0.0  # when _written last dropped what is due anyway
        self._task: asyncio.Task[None] | None = None

    def touch(self, key: InstanceKey, now: float) -> None:
        """Hot path: a dictionary lookup, and a write when the stored time is due."""
        if now - self._written.get(key, 0.0) >= self.resolution_seconds:
            self._seen[key] = now

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="auth-activity")

    async def close(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
        await self.flush()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def _write(self, session: AsyncSession, rows: list[tuple[str, str, int, float]]) -> None:
        times = [datetime.fromtimestamp(t, UTC) for *_, t in rows]
        if self.db.is_sqlite:
            await session.execute(_UPDATE_EACH, [{"ns": ns, "tpl": tpl, "iid": iid, "t": t}
                                                 for (ns, tpl, iid, _), t in zip(rows, times, strict=True)])
            return
        # One statement with the slice as four arrays (asyncpg encodes them natively): with an UPDATE per row,
        # executed many, a flush cost 33-39 us of CPU a row; this way 11-13 us, most of it the transactions.
        namespaces, templates, ids, _ = zip(*rows, strict=True)
        await session.execute(_UPDATE_ARRAYS, {"ns": list(namespaces), "tpl": list(templates), "iid": list(ids),
                                               "t": times})

    async def flush(self) -> int:
        seen, self._seen = self._seen, {}
        if not seen:
            return 0
        items = list(seen.items())
        try:
            # A transaction a slice, its rows in key order: every process (HTTP workers, replicas) locks rows
            # in the same order within a transaction, so two flushes that touch the same instances wait for
            # each other instead of deadlocking. Nothing is done to all of them at once: sorting and preparing
            # 6,000 together (the dataclass keys compared in Python) held the event loop, and every check
            # waiting in it, for 43-76 ms; a slice of 250 holds it about a millisecond, and between slices
            # the checks go on (a transaction costs about a millisecond of CPU itself: larger slices cost less
            # a row, 7 us at 500 against 12 at 250, but hold the loop twice as long).
            for begin in range(0, len(items), FLUSH_SLICE):
                rows = sorted((k.namespace, k.template, k.id, t) for k, t in items[begin:begin + FLUSH_SLICE])
                async with self.db.session() as session:
                    await self._write(session, rows)
        except Exception as exc:  # noqa: BLE001 - activity is best effort; keep the newest times for next time
            log.warning("could not record instance activity: %s", exc)
            for key, t in seen.items():
                self._seen[key] = max(t, self._seen.get(key, 0.0))
            return 0
        newest = max(seen.values())
        if newest - self._pruned >= self.resolution_seconds:
            # Forget what is due anyway, once a resolution period: rebuilding the dictionary re-hashes every
            # key in Python (InstanceKey is a dataclass), which at every 5 s flush of a busy worker (thousands
            # of instances) showed in bench/auth_check.py --profile. An entry older than the horizon is due
            # whether it is kept or not, so keeping it a little longer changes nothing.
            horizon = newest - self.resolution_seconds
            self._written = {k: t for k, t in self._written.items() if t > horizon}
            self._pruned = newest
        self._written.update(seen)
        return len(items)
