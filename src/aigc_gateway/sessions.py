"""Browser sessions: the signed cookie, the server-side rows, and the cookie authenticator.

Core, not the auth service's: the session cookie is a credential on every gateway server (the
runtime installs :class:`SessionCookieAuthenticator` when ``auth.session_keys`` is set; the REST
bridge forwards the cookie as ``cookie`` metadata), so every service reads sessions; the auth service alone creates and revokes them (sign-in, sign-out,
RevokeUserSessions) through the same :class:`SessionStore`, whose cache its own revocations clear.

The cookie carries only ``{session id, user id, expiry}``, signed with
itsdangerous (HMAC-SHA256) under the configured keys: the first key signs,
every key verifies, so keys rotate by prepending a new one. Whether a session
is still valid is the row's business (``auth_sessions``), which
:mod:`.session_store` reads and caches.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from itsdangerous import BadData, URLSafeSerializer

from .config import Settings
from .db import Database
from .errors import Unauthenticated
from .identity import SERVICE_TOKEN_HEADER, Principal
from .session_store import SESSION_CHANNEL, SessionRecord, SessionStore, hash_session_id

__all__ = ["SESSION_CHANNEL", "SESSION_METADATA", "AmbiguousCookie", "CookieClaims", "SessionCookie",
           "SessionCookieAuthenticator", "SessionRecord", "SessionStore", "cookie_values", "hash_session_id",
           "single_cookie"]

log = logging.getLogger(__name__)

SESSION_METADATA = "x-aigc-session"  # the raw cookie value, as the REST bridge may forward it
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

    def cached_session(self, value: str | None) -> tuple[CookieClaims | None, SessionRecord | None] | Literal[False]:
        """The cookie's claims (None: not a well-signed, unexpired value) and its session's record (None: no valid
        session) from the caches alone, no await (the hot path); False when the row must be read (then call
        :meth:`principal`). Same rules, same cache lifetimes as :meth:`resolve`."""
        claims = self.cookie.read(value)
        if claims is None:
            return None, None
        if not self._started:
            return False
        record = self.store.cached(claims.id_hash)
        if record is False:
            return False
        return claims, record

    def principal_of(self, claims: CookieClaims | None, record: SessionRecord | None) -> Principal | None:
        """The user behind what :meth:`cached_session` found; None when it is no valid session of theirs."""
        if claims is None or record is None or record.user != claims.user:
            return None
        return record.principal(self.admin_role)

    def cached_principal(self, value: str | None) -> Principal | None | Literal[False]:
        """:meth:`principal` from the caches alone: False when the session row must be read."""
        found = self.cached_session(value)
        return found if found is False else self.principal_of(*found)

    def unchanged(self, claims: CookieClaims | None, record: SessionRecord | None) -> bool:
        """Whether what :meth:`cached_session` found then is what it would find now: the cookie still unexpired
        and the store's cache still holding that very record (a re-read keeps the record; a revocation, an
        expiry, an eviction or a row past its lifetime does not). A look, as a check's look: it keeps the
        session warm. A value that was no valid cookie stays none."""
        if claims is None:
            return True
        return claims.expires > time.time() and self.store.cached(claims.id_hash) is record

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
