"""Session rows and the per-process cache of them (:class:`SessionStore`), kept honest by LISTEN/NOTIFY.

Whether a session is still valid is the row's business (``auth_sessions``): sign-out and admin
revocation mark it revoked and NOTIFY ``aigc_sessions``; every process drops
its cached copy when it hears that. Cached rows are trusted for
``LIVE_CACHE_SECONDS`` while the LISTEN connection is up and for
``BLIND_CACHE_SECONDS`` while it is not, so a revocation takes effect within
one second even then. While LISTEN is up, a row past its lifetime is read again
in the background (many at once, one query) and served meanwhile for at most
``REFRESH_GRACE_SECONDS``: the lifetime is only a safety net behind the
notifications there, and re-reading on the request path made every session's
next check wait for the database every 30 s.

A row only ever changes by being revoked or deleted, so the background re-read asks which of its
sessions are still unrevoked (one short string each) and keeps the records it has: no row is decoded
again, no record or principal built again. Rows of sessions used within ``ACTIVE_SECONDS`` are read
again before their lifetime runs out (``KEEP_WARM_SECONDS`` ahead), whether or not they are presented
meanwhile: a user back after a few minutes' pause (a generation running, a page read) is not the one
whose check waits for the database.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import delete, select, text, update

from .background import cancel_and_wait
from .db import Database, rowcount
from .db.listen import PgListener, asyncpg_dsn
from .db.models import AuthSessionRow
from .identity import Principal

log = logging.getLogger(__name__)

SESSION_CHANNEL = "aigc_sessions"
LIVE_CACHE_SECONDS = 30.0
BLIND_CACHE_SECONDS = 0.5
REFRESH_GRACE_SECONDS = 10.0
REFRESH_BATCH = 100  # rows per background query: each batch holds the event loop for a few ms only
# How long the background re-read waits for more rows to come due before it queries. Rows cached at
# different times fall due one by one (1,000 active users: ~33 a second per process); read as they
# came, each was a query of its own (a pooled session, a ping, a transaction: four round trips; see
# _read for what that costs). Well inside REFRESH_GRACE_SECONDS.
REFRESH_COALESCE_SECONDS = 1.0
# Sessions presented within this long are kept warm: read again before their lifetime runs out.
ACTIVE_SECONDS = 600.0
# How often rows coming due are looked for, and so how far ahead of their lifetime they are read again.
KEEP_WARM_SECONDS = 5.0


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class SessionRecord:
    id_hash: str
    user: str
    email: str
    preferred_username: str
    display_name: str
    roles: tuple[str, ...]
    created_at: datetime
    expires_at: datetime
    revoked: bool

    @cached_property
    def expires_ts(self) -> float:
        return self.expires_at.timestamp()

    def valid(self, now: float | None = None) -> bool:
        """Unrevoked and unexpired at ``now`` (unix seconds; a float compare, it runs on every check)."""
        return not self.revoked and self.expires_ts > (now if now is not None else time.time())

    def principal(self, admin_role: str) -> Principal:
        # Built once per cached record (records are immutable and replaced, never changed, on a re-read).
        cached = self.__dict__.get("_principal")
        if cached is None or cached[0] != admin_role:
            cached = (admin_role, Principal(
                subject=self.user, kind="user", email=self.email, preferred_username=self.preferred_username,
                display_name=self.display_name, roles=self.roles, admin=admin_role in self.roles,
                claims={"session": self.id_hash[:16]}))
            self.__dict__["_principal"] = cached
        return cached[1]

    @classmethod
    def of(cls, row: Any) -> SessionRecord:
        """From an ``AuthSessionRow`` or a plain row of its table (see :func:`_rows`)."""
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        return cls(row.id_hash, row.user, row.email, row.preferred_username, row.display_name,
                   tuple(row.roles or ()), created, expires, row.revoked_at is not None)


class SessionStore:
    """Session rows with a per-process cache kept honest by LISTEN/NOTIFY (see the module docstring)."""

    def __init__(self, db: Database, *, max_cached: int = 100_000):
        self.db = db
        self.max_cached = max_cached
        self._cache: dict[str, tuple[SessionRecord | None, float]] = {}
        self._reading: dict[str, tuple[asyncio.Future[SessionRecord | None], int]] = {}  # in flight, epoch
        self._queued: dict[str, asyncio.Future[SessionRecord | None]] = {}  # for the reader's next query
        self._reader: asyncio.Task[None] | None = None
        self._due: set[str] = set()  # past their lifetime, to be read again in the background
        self._refresher: asyncio.Task[None] | None = None
        self._used: dict[str, float] = {}  # when each cached session was last presented (monotonic)
        self._stamped: deque[tuple[float, str]] = deque()  # (read at, id) as rows were cached, oldest first
        self._warmer: asyncio.Task[None] | None = None
        self._epoch = 0  # counts invalidations (see _read)
        dsn = asyncpg_dsn(db.url)
        self.listener = PgListener(dsn, {SESSION_CHANNEL: self._heard}, self._clear) if dsn else None

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
            if self._warmer is None:
                self._warmer = asyncio.get_running_loop().create_task(self._keep_warm(), name="sessions-keep-warm")

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, self._reader, self._warmer) if t is not None]
        self._refresher = self._reader = self._warmer = None
        await cancel_and_wait(tasks)
        if self.listener is not None:
            await self.listener.close()

    @property
    def cache_seconds(self) -> float:
        return LIVE_CACHE_SECONDS if self.live else BLIND_CACHE_SECONDS

    def _clear(self) -> None:
        self._epoch += 1
        self._cache.clear()

    def _heard(self, payload: str) -> None:
        self._epoch += 1
        kind, _, value = payload.partition(":")
        if kind == "s":
            self._cache.pop(value, None)
        elif kind == "u":
            for id_hash in [h for h, (rec, _) in self._cache.items() if rec is not None and rec.user == value]:
                self._cache.pop(id_hash, None)
        else:
            self._cache.clear()

    async def create(self, *, user: str, email: str = "", preferred_username: str = "", display_name: str = "",
                     roles: tuple[str, ...] = (), ttl_seconds: int) -> tuple[str, SessionRecord]:
        """A new session; returns the session id (for the cookie only) and the record."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        row = AuthSessionRow(id_hash=hash_session_id(session_id), user=user[:255], email=email[:320],
                             preferred_username=preferred_username[:255], display_name=display_name[:255],
                             roles=list(roles), created_at=now, expires_at=now + timedelta(seconds=ttl_seconds),
                             revoked_at=None)
        async with self.db.session() as session:
            session.add(row)
            # Expired rows are dead weight; a cheap, indexed sweep on the write path keeps the table small.
            # A plain DELETE, as of the table: no ORM synchronisation of the session's objects.
            await session.execute(delete(AuthSessionRow).where(
                AuthSessionRow.expires_at < now - timedelta(days=1)).execution_options(synchronize_session=False))
        record = SessionRecord.of(row)
        self._put(row.id_hash, record, time.monotonic())
        return session_id, record

    def _put(self, id_hash: str, record: SessionRecord | None, read_at: float) -> None:
        self._cache[id_hash] = (record, read_at)
        self._stamped.append((read_at, id_hash))

    def cached(self, id_hash: str) -> SessionRecord | None | Literal[False]:
        """The hot path without an await: the valid record, None for a known-invalid session, or False
        when the cache cannot answer (absent, or too old; call :meth:`get`). See the module docstring."""
        cached = self._cache.get(id_hash)
        if cached is None:
            return False
        now = time.monotonic()
        self._used[id_hash] = now
        age = now - cached[1]
        if age >= self.cache_seconds:
            if not self.live or age >= LIVE_CACHE_SECONDS + REFRESH_GRACE_SECONDS:
                return False
            self._refresh_soon(id_hash)
        record = cached[0]
        return record if record is not None and record.valid() else None

    @property
    def live(self) -> bool:
        return self.listener is not None and self.listener.live

    async def get(self, session_id: str, *, id_hash: str | None = None) -> SessionRecord | None:
        """The session, if it exists, is unrevoked and unexpired (cached; see the module docstring)."""
        id_hash = id_hash or hash_session_id(session_id)
        hit = self.cached(id_hash)
        if hit is not False:
            return hit
        record = await self._read(id_hash)
        return record if record is not None and record.valid() else None

    def _refresh_soon(self, id_hash: str) -> None:
        self._due.add(id_hash)
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="sessions-refresh")

    async def _keep_warm(self) -> None:
        """Every :data:`KEEP_WARM_SECONDS`, queue for the background re-read the rows that would pass their
        lifetime before the next look, of sessions presented within :data:`ACTIVE_SECONDS`; forget the others.
        The work is the rows coming due (a queue in the order they were cached), not the whole cache."""
        while True:
            await asyncio.sleep(KEEP_WARM_SECONDS)
            now = time.monotonic()
            horizon = now - (LIVE_CACHE_SECONDS - KEEP_WARM_SECONDS - REFRESH_COALESCE_SECONDS)
            # Blind (LISTEN down), rows live half a second and nothing is kept warm; the queue is drained all the same.
            active_since = now - ACTIVE_SECONDS if self.live else now
            while self._stamped and self._stamped[0][0] <= horizon:
                read_at, id_hash = self._stamped.popleft()
                cached = self._cache.get(id_hash)
                if cached is not None and cached[1] != read_at:
                    continue  # cached again since: its newer stamp comes due later
                if cached is not None and cached[0] is not None and self._used.get(id_hash, 0.0) >= active_since:
                    self._due.add(id_hash)
                elif cached is None or self._used.get(id_hash, 0.0) < now - ACTIVE_SECONDS:
                    self._used.pop(id_hash, None)
            if self._due and (self._refresher is None or self._refresher.done()):
                self._refresher = asyncio.get_running_loop().create_task(self._refresh(), name="sessions-refresh")

    async def _refresh(self) -> None:
        """Ask which sessions of those past (or near) their lifetime are still unrevoked, :data:`REFRESH_BATCH`
        per query, after :data:`REFRESH_COALESCE_SECONDS` (the rows falling due meanwhile join the same
        queries). A row changes only by being revoked or deleted, so the records are kept and stamped again."""
        await asyncio.sleep(REFRESH_COALESCE_SECONDS)
        while self._due:
            batch = [self._due.pop() for _ in range(min(REFRESH_BATCH, len(self._due)))]
            epoch, started = self._epoch, time.monotonic()
            try:
                async with self.db.session() as session:
                    unrevoked = set((await session.execute(select(AuthSessionRow.id_hash).where(
                        AuthSessionRow.id_hash.in_(batch), AuthSessionRow.revoked_at.is_(None)))).scalars())
            except Exception as exc:  # noqa: BLE001 - the rows run out of grace and are read on the request path
                log.warning("could not refresh %d cached sessions: %s", len(batch), exc)
                continue
            if self._epoch != epoch:
                continue  # something was revoked meanwhile: let those checks read afresh (see _read)
            for id_hash in batch:
                cached = self._cache.get(id_hash)
                if cached is not None:
                    self._put(id_hash, cached[0] if id_hash in unrevoked else None, started)

    async def _read(self, id_hash: str) -> SessionRecord | None:
        """The row, read from the database: a cold cache (a worker just started, or a session unused for
        longer than its lifetime and grace) meets many concurrent checks, of the same user and of others.

        Checks of the same session share one read. Reads of different sessions share queries: one task
        reads whatever is queued, :data:`REFRESH_BATCH` rows per query, and what is queued while a query
        runs goes into the next. Read one by one, each cold row was a query of its own on a pooled
        connection (a ping, BEGIN, the SELECT, COMMIT: four round trips, four event-loop wake-ups); concurrent
        ones overflowed the pool, whose extra connections were opened and closed again each time: 1.7 ms
        of CPU per row read one by one, 62 us per row read 200 at once (measured on the loaded bench
        machine). The wait for the database stays one query, plus at most the one in flight.

        A revocation heard while a read is in flight may have been committed after the read's snapshot:
        then the answer serves the checks that were already waiting (they raced the revocation) but is
        not cached, and later checks read again, so no stale row outlives the revocation."""
        future = self._queued.get(id_hash)  # its query has not begun: whatever happened, it reads afresh
        if future is None:
            pending = self._reading.get(id_hash)
            if pending is not None and pending[1] == self._epoch:
                future = pending[0]
            else:
                future = asyncio.get_running_loop().create_future()
                self._queued[id_hash] = future
                if self._reader is None or self._reader.done():
                    self._reader = asyncio.get_running_loop().create_task(self._read_queued(), name="sessions-read")
        return await asyncio.shield(future)

    async def _read_queued(self) -> None:
        while self._queued:
            batch = dict(itertools.islice(self._queued.items(), REFRESH_BATCH))
            for id_hash in batch:
                del self._queued[id_hash]
            epoch, started = self._epoch, time.monotonic()
            for id_hash, future in batch.items():
                self._reading[id_hash] = (future, epoch)
            try:
                async with self.db.session() as session:
                    rows = await _rows(session, AuthSessionRow.id_hash.in_(list(batch)))
                found = {row.id_hash: SessionRecord.of(row) for row in rows}
            except BaseException as exc:
                for future in batch.values():
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                        future.exception()  # marked retrieved: each waiter gets it too
                    else:  # cancelled (the store is closing): so are the checks' waits
                        future.cancel()
                if not isinstance(exc, Exception):
                    raise
                continue
            finally:
                for id_hash, future in batch.items():
                    if self._reading.get(id_hash, (None, 0))[0] is future:
                        del self._reading[id_hash]
            for id_hash, future in batch.items():
                record = found.get(id_hash)
                if self._epoch == epoch:
                    if len(self._cache) >= self.max_cached:
                        self._cache.clear()
                    self._put(id_hash, record, started)  # ages from before the read: never trusted longer
                future.set_result(record)

    async def revoke(self, session_id: str) -> bool:
        id_hash = hash_session_id(session_id)
        async with self.db.session() as session:
            result = await session.execute(update(AuthSessionRow).where(
                AuthSessionRow.id_hash == id_hash, AuthSessionRow.revoked_at.is_(None)).values(
                revoked_at=datetime.now(UTC)))
            await self._notify(session, f"s:{id_hash}")
        self._epoch += 1
        self._cache.pop(id_hash, None)
        return bool(rowcount(result))

    async def revoke_user(self, user: str) -> int:
        now = datetime.now(UTC)
        async with self.db.session() as session:
            result = await session.execute(update(AuthSessionRow).where(
                AuthSessionRow.user == user, AuthSessionRow.revoked_at.is_(None),
                AuthSessionRow.expires_at > now).values(revoked_at=now))
            await self._notify(session, f"u:{user}")
        self._heard(f"u:{user}")
        return rowcount(result)

    async def _notify(self, session: Any, payload: str) -> None:
        if self.db.is_sqlite:
            return
        await session.execute(text("SELECT pg_notify(:c, :p)"), {"c": SESSION_CHANNEL, "p": payload[:7000]})


async def _rows(session: Any, condition: Any) -> list[Any]:
    """Plain rows of ``auth_sessions``: these reads run beside live traffic in the same event loop, and
    plain rows cost a fraction of loading ORM entities (which nothing here changes)."""
    return list((await session.execute(select(AuthSessionRow.__table__).where(condition))).all())
