"""Browser sessions: the signed cookie, the server-side rows, and the cookie authenticator.

Core, not the auth service's: the session cookie is a credential on every gateway server (the
runtime installs :class:`SessionCookieAuthenticator` when ``auth.session_keys`` is set; the REST
bridge forwards the cookie as ``cookie`` metadata), so every service reads sessions; the auth service alone creates and revokes them (sign-in, sign-out,
RevokeUserSessions) through the same :class:`SessionStore`, whose cache its own revocations clear.

The cookie carries only ``{session id, user id, expiry}``, signed with
itsdangerous (HMAC-SHA256) under the configured keys: the first key signs,
every key verifies, so keys rotate by prepending a new one. Whether a session
is still valid is the row's business (``auth_sessions``): sign-out and admin
revocation mark it revoked and NOTIFY ``aigc_sessions``; every process drops
its cached copy when it hears that. Cached rows are trusted for
``LIVE_CACHE_SECONDS`` while the LISTEN connection is up and for
``BLIND_CACHE_SECONDS`` while it is not, so a revocation takes effect within
one second even then. While LISTEN is up, a row past its lifetime is read again
in the background (many at once, one query) and served meanwhile for at most
``REFRESH_GRACE_SECONDS``: the lifetime is only a safety net behind the
notifications there, and re-reading on the request path made every session's
next check wait for the database every 30 s.
"""
from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from itsdangerous import BadData, URLSafeSerializer
from sqlalchemy import delete, select, text, update

from .background import cancel_and_wait
from .config import Settings
from .db import Database, rowcount
from .db.listen import PgListener, asyncpg_dsn
from .db.models import AuthSessionRow
from .errors import Unauthenticated
from .identity import SERVICE_TOKEN_HEADER, Principal

log = logging.getLogger(__name__)

SESSION_CHANNEL = "aigc_sessions"
SESSION_METADATA = "x-aigc-session"  # the raw cookie value, as the REST bridge may forward it
LIVE_CACHE_SECONDS = 30.0
BLIND_CACHE_SECONDS = 0.5
REFRESH_GRACE_SECONDS = 10.0
REFRESH_BATCH = 100  # rows per background query: each batch holds the event loop for a few ms only
# How long the background re-read waits for more rows to come due before it queries. Rows cached at
# different times fall due one by one (1,000 active users: ~33 a second per process); read as they
# came, each was a query of its own (a pooled session, a ping, a transaction: four round trips; see
# _read for what that costs). Well inside REFRESH_GRACE_SECONDS.
REFRESH_COALESCE_SECONDS = 1.0
_SALT = "aigc-gateway.session.v1"
_MAX_VERIFIED = 50_000


class AmbiguousCookie(Exception):
    """More than one distinct session cookie: someone planted one (cookie tossing from a sibling host)."""


def cookie_values(header: str | None, name: str) -> list[str]:
    """Every value of cookie ``name`` in a Cookie header (several headers arrive joined with '; ')."""
    if not header:
        return []
    values = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            values.append(value.strip().strip('"'))
    return values


def single_cookie(header: str | None, name: str) -> str | None:
    values = set(cookie_values(header, name))
    if len(values) > 1:
        raise AmbiguousCookie(name)
    return next(iter(values), None)


def hash_session_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class CookieClaims:
    session_id: str
    user: str
    expires: int  # unix seconds
    # The row key, hashed once when the cookie value is first verified (not on every click).
    id_hash: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id_hash:
            object.__setattr__(self, "id_hash", hash_session_id(self.session_id))


class SessionCookie:
    """Signs and verifies cookie values; verified values are remembered (they are presented on every click)."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("no session keys")
        # itsdangerous signs with the last key of the list; our configuration signs with the first.
        self._serializer = URLSafeSerializer(list(reversed(keys)), salt=_SALT,
                                             signer_kwargs={"digest_method": hashlib.sha256})
        self._verified: dict[str, CookieClaims] = {}

    def issue(self, session_id: str, user: str, expires: int) -> str:
        return self._serializer.dumps({"s": session_id, "u": user, "e": expires})

    def read(self, value: str | None, now: float | None = None) -> CookieClaims | None:
        """The claims of a well-signed, unexpired value; None otherwise."""
        if not value or len(value) > 4096:
            return None
        claims = self._verified.get(value)
        if claims is None:
            try:
                data = self._serializer.loads(value)
            except (BadData, ValueError, TypeError):
                return None
            if not (isinstance(data, dict) and isinstance(data.get("s"), str) and isinstance(data.get("u"), str)
                    and isinstance(data.get("e"), int)):
                return None
            claims = CookieClaims(data["s"], data["u"], data["e"])
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
            self._verified[value] = claims
        if claims.expires <= (now if now is not None else time.time()):
            return None
        return claims


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
        self._epoch = 0  # counts invalidations (see _read)
        dsn = asyncpg_dsn(db.url)
        self.listener = PgListener(dsn, {SESSION_CHANNEL: self._heard}, self._clear) if dsn else None

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()

    async def close(self) -> None:
        tasks = [t for t in (self._refresher, self._reader) if t is not None]
        self._refresher = self._reader = None
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
        self._cache[row.id_hash] = (record, time.monotonic())
        return session_id, record

    def cached(self, id_hash: str) -> SessionRecord | None | Literal[False]:
        """The hot path without an await: the valid record, None for a known-invalid session, or False
        when the cache cannot answer (absent, or too old; call :meth:`get`). See the module docstring."""
        cached = self._cache.get(id_hash)
        if cached is None:
            return False
        age = time.monotonic() - cached[1]
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

    async def _refresh(self) -> None:
        """Read the rows of every session past its lifetime, :data:`REFRESH_BATCH` per query, after
        :data:`REFRESH_COALESCE_SECONDS` (the rows falling due meanwhile join the same queries)."""
        await asyncio.sleep(REFRESH_COALESCE_SECONDS)
        while self._due:
            batch = [self._due.pop() for _ in range(min(REFRESH_BATCH, len(self._due)))]
            epoch, started = self._epoch, time.monotonic()
            try:
                async with self.db.session() as session:
                    rows = await _rows(session, AuthSessionRow.id_hash.in_(batch))
            except Exception as exc:  # noqa: BLE001 - the rows run out of grace and are read on the request path
                log.warning("could not refresh %d cached sessions: %s", len(batch), exc)
                continue
            if self._epoch != epoch:
                continue  # something was revoked meanwhile: let those checks read afresh (see _read)
            found = {row.id_hash: SessionRecord.of(row) for row in rows}
            for id_hash in batch:
                if id_hash in self._cache:
                    self._cache[id_hash] = (found.get(id_hash), started)

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
                    self._cache[id_hash] = (record, started)  # ages from before the read: never trusted longer
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


class SessionCookieAuthenticator:
    """The session cookie as a gRPC credential (``cookie`` or ``x-aigc-session`` metadata)."""

    def __init__(self, settings: Settings, db: Database, store: SessionStore | None = None):
        self.cookie_name = settings.auth.cookie_name
        self.admin_role = settings.oidc.admin_role
        self.cookie = SessionCookie([k.get_secret_value() for k in settings.auth.session_keys])
        self.store = store or SessionStore(db)
        self._started = False

    async def resolve(self, value: str | None) -> tuple[CookieClaims, SessionRecord] | None:
        """The session behind a cookie value, when the value is well signed and the session valid."""
        claims = self.cookie.read(value)
        if claims is None:
            return None
        if not self._started:
            self._started = True
            self.store.start()
        record = await self.store.get(claims.session_id, id_hash=claims.id_hash)
        if record is None or record.user != claims.user:
            return None
        return claims, record

    def cached_principal(self, value: str | None) -> Principal | None | Literal[False]:
        """:meth:`principal` from the caches alone (no await, for the hot path): False when the
        session row must be read (then call :meth:`principal`). Same rules, same cache lifetimes."""
        claims = self.cookie.read(value)
        if claims is None:
            return None
        if not self._started:
            return False
        record = self.store.cached(claims.id_hash)
        if record is False:
            return False
        if record is None or record.user != claims.user:
            return None
        return record.principal(self.admin_role)

    async def principal(self, value: str | None) -> Principal | None:
        resolved = await self.resolve(value)
        return resolved[1].principal(self.admin_role) if resolved else None

    async def authenticate(self, metadata: Mapping[str, str]) -> Principal | None:
        try:
            value = metadata.get(SESSION_METADATA) or single_cookie(metadata.get("cookie"), self.cookie_name)
        except AmbiguousCookie:
            value = ""
        if value is None:
            return None
        principal = await self.principal(value)
        if principal is not None:
            return principal
        if metadata.get("authorization") or metadata.get(SERVICE_TOKEN_HEADER):
            return None  # a stale cookie beside another credential: let that one decide
        raise Unauthenticated("the session has expired or was signed out; sign in again", reason="INVALID_SESSION")

    async def close(self) -> None:
        await self.store.close()
