"""Who is calling: bearer JWTs from the OIDC issuer, and the gateway's own services.

Authenticators look at a call's metadata and return a :class:`Principal`, or
None when the credential they understand is absent. A credential that is
present but bad raises :class:`~aigc_gateway.errors.Unauthenticated`: a bad
token is never silently treated as "anonymous". The session cookie
authenticator is added by the auth service.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .config import OIDCConfig
from .context import principal_var
from .errors import PermissionDenied, Unauthenticated, Unavailable

log = logging.getLogger(__name__)

SERVICE_TOKEN_HEADER = "x-aigc-service-token"
SERVICE_NAME_HEADER = "x-aigc-service-name"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    kind: str = "user"  # "user" | "service"
    email: str = ""
    preferred_username: str = ""
    display_name: str = ""
    roles: tuple[str, ...] = ()
    admin: bool = False
    claims: Mapping[str, object] = field(default_factory=dict, compare=False, repr=False)


class Authenticator(Protocol):
    async def authenticate(self, metadata: Mapping[str, str]) -> Principal | None: ...


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    value = metadata.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if not value:
        return None
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the authorization header must be `Bearer <token>`", reason="MALFORMED_AUTHORIZATION")
    return token.strip()


class JWKSCache:
    """The issuer's signing keys, fetched on first use, refreshed after a TTL or on an unknown key id."""

    def __init__(self, cfg: OIDCConfig, client: httpx.AsyncClient | None = None):
        self.cfg = cfg
        self._client = client
        self._keys: KeySet | None = None
        self._fetched = 0.0
        self._lock = asyncio.Lock()
        self._min_refresh = 10.0  # an unknown kid cannot make us hammer the issuer

    async def _jwks_uri(self, client: httpx.AsyncClient) -> str:
        if self.cfg.jwks_uri:
            return self.cfg.jwks_uri
        discovery = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
        response = await client.get(discovery)
        response.raise_for_status()
        return str(response.json()["jwks_uri"])

    async def keys(self, *, force: bool = False) -> KeySet:
        now = time.monotonic()
        current = self._keys
        stale = current is None or now - self._fetched > self.cfg.jwks_cache_seconds
        if current is not None and not stale and not (force and now - self._fetched > self._min_refresh):
            return current
        async with self._lock:
            if self._keys is not None and time.monotonic() - self._fetched < self._min_refresh:
                return self._keys
            client = self._client or httpx.AsyncClient(timeout=5.0)
            try:
                response = await client.get(await self._jwks_uri(client))
                response.raise_for_status()
                self._keys = KeySet.import_key_set(response.json())
                self._fetched = time.monotonic()
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                if self._keys is None:
                    raise Unavailable("cannot fetch the identity provider's signing keys", retry_after=5) from exc
                log.warning("JWKS refresh failed, keeping the cached keys: %s", exc)
            finally:
                if self._client is None:
                    await client.aclose()
            return self._keys


class JWTAuthenticator:
    """Bearer JWTs signed by the configured issuer (`iss`, `aud`, `exp`, `nbf` checked)."""

    def __init__(self, cfg: OIDCConfig, jwks: JWKSCache | None = None):
        self.cfg = cfg
        self.jwks = jwks or JWKSCache(cfg)
        self._registry = jwt.JWTClaimsRegistry(
            leeway=cfg.leeway_seconds,
            iss={"essential": True, "value": cfg.issuer},
            aud={"essential": True, "values": cfg.audience} if cfg.audience else {"essential": True},
            exp={"essential": True},
            sub={"essential": True},
        )

    async def authenticate(self, metadata: Mapping[str, str]) -> Principal | None:
        token = bearer_token(metadata)
        if token is None:
            return None
        if not self.cfg.issuer or not self.cfg.audience:
            raise Unauthenticated("bearer tokens are not accepted: no OIDC issuer and audience configured",
                                  reason="BEARER_DISABLED")
        claims = await self.verify(token)
        return principal_from_claims(claims, self.cfg)

    async def verify(self, token: str) -> dict[str, object]:
        keys = await self.jwks.keys()
        try:
            decoded = self._decode(token, keys)
        except JoseError as exc:
            # A key rotation at the issuer shows up as an unknown kid: refresh once and retry.
            if "key" not in str(exc).lower():
                raise Unauthenticated(f"invalid bearer token: {exc.description or exc.error}",
                                      reason="INVALID_TOKEN") from None
            keys = await self.jwks.keys(force=True)
            try:
                decoded = self._decode(token, keys)
            except JoseError as again:
                raise Unauthenticated(f"invalid bearer token: {again.description or again.error}",
                                      reason="INVALID_TOKEN") from None
        except ValueError as exc:
            raise Unauthenticated(f"invalid bearer token: {exc}", reason="INVALID_TOKEN") from None
        try:
            self._registry.validate(decoded.claims)
        except JoseError as exc:
            raise Unauthenticated(f"invalid bearer token: {exc.description or exc.error}",
                                  reason="INVALID_TOKEN") from None
        return dict(decoded.claims)

    def _decode(self, token: str, keys: KeySet) -> jwt.Token:
        return jwt.decode(token, keys, algorithms=list(self.cfg.algorithms))


def principal_from_claims(claims: Mapping[str, object], cfg: OIDCConfig) -> Principal:
    raw_roles = claims.get(cfg.roles_claim) or ()
    roles = tuple(str(r) for r in raw_roles) if isinstance(raw_roles, (list, tuple)) else (str(raw_roles),)
    return Principal(
        subject=str(claims["sub"]),
        kind="user",
        email=str(claims.get("email") or ""),
        preferred_username=str(claims.get("username") or claims.get("preferred_username") or ""),
        display_name=str(claims.get("name") or ""),
        roles=roles,
        admin=cfg.admin_role in roles,
        claims=dict(claims),
    )


class ServiceTokenAuthenticator:
    """The gateway's own services and background work: a shared secret from configuration."""

    def __init__(self, token: str):
        self._token = token.encode()

    async def authenticate(self, metadata: Mapping[str, str]) -> Principal | None:
        presented = metadata.get(SERVICE_TOKEN_HEADER)
        if presented is None:
            return None
        if not self._token or not hmac.compare_digest(presented.encode(), self._token):
            raise Unauthenticated("invalid service credential", reason="INVALID_SERVICE_TOKEN")
        name = metadata.get(SERVICE_NAME_HEADER) or "gateway"
        return Principal(subject=f"service:{name}", kind="service", admin=True)


class ChainAuthenticator:
    """Tries each authenticator in turn; the first that recognises a credential decides."""

    def __init__(self, authenticators: Sequence[Authenticator]):
        self.authenticators = list(authenticators)

    def add(self, authenticator: Authenticator) -> None:
        self.authenticators.insert(0, authenticator)

    async def authenticate(self, metadata: Mapping[str, str]) -> Principal | None:
        for authenticator in self.authenticators:
            principal = await authenticator.authenticate(metadata)
            if principal is not None:
                return principal
        return None


def require_principal() -> Principal:
    principal = principal_var.get()
    if principal is None:
        raise Unauthenticated("sign in first", reason="UNAUTHENTICATED")
    return principal


def require_admin() -> Principal:
    """The caller, who must be an admin (or one of the gateway's services)."""
    principal = require_principal()
    if not principal.admin:
        raise PermissionDenied("this operation needs the admin role", reason="ADMIN_REQUIRED")
    return principal
