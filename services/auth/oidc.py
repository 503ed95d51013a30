"""The OIDC relying party of browser sign-in: authorization code + PKCE, state and nonce (Authlib).

Endpoints come from the issuer's discovery document; when that cannot be read,
Logto's fixed paths under the issuer are used (``/auth``, ``/token``, ``/me``,
``/session/end``, ``/jwks``). The ID token is checked with joserfc against the
issuer's keys (the same cached JWKS machinery as bearer tokens): signature,
``iss``, ``aud`` = our client id, ``exp``, ``iat`` and ``nonce``. Roles and
profile come from the ID token, completed from the userinfo endpoint when the
provider keeps them there (oidc-provider does unless configured otherwise).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError

from aigc_gateway.config import OIDCConfig
from aigc_gateway.errors import Unauthenticated, Unavailable
from aigc_gateway.identity import JWKSCache

log = logging.getLogger(__name__)

_LOGTO_PATHS = {"authorization_endpoint": "/auth", "token_endpoint": "/token", "userinfo_endpoint": "/me",
                "end_session_endpoint": "/session/end", "jwks_uri": "/jwks"}


@dataclass(frozen=True)
class SignInRequest:
    """What the browser must bring back to the callback (kept in a signed, short-lived cookie)."""

    url: str
    state: str
    nonce: str
    code_verifier: str


@dataclass(frozen=True)
class SignedInUser:
    subject: str
    email: str
    preferred_username: str
    display_name: str
    roles: tuple[str, ...]


class OIDCClient:
    def __init__(self, cfg: OIDCConfig, redirect_uri: str, *, http: httpx.AsyncClient | None = None):
        if not cfg.issuer or not cfg.client_id:
            raise ValueError("oidc.issuer and oidc.client_id are required for browser sign-in")
        self.cfg = cfg
        self.redirect_uri = redirect_uri
        self.http = http or httpx.AsyncClient(timeout=10.0)
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._lock = asyncio.Lock()
        self.jwks = JWKSCache(cfg, self.http)
        self._registry = jwt.JWTClaimsRegistry(
            leeway=cfg.leeway_seconds, iss={"essential": True, "value": cfg.issuer},
            aud={"essential": True, "value": cfg.client_id}, exp={"essential": True}, iat={"essential": True},
            sub={"essential": True})

    async def close(self) -> None:
        await self.http.aclose()

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata_at < 3600:
            return self._metadata
        async with self._lock:
            if self._metadata is not None and time.monotonic() - self._metadata_at < 3600:
                return self._metadata
            base = self.cfg.issuer.rstrip("/")
            try:
                response = await self.http.get(base + "/.well-known/openid-configuration")
                response.raise_for_status()
                found = response.json()
                if found.get("issuer") != self.cfg.issuer:
                    raise ValueError(f"discovery names issuer {found.get('issuer')!r}")
            except (httpx.HTTPError, ValueError) as exc:
                if self._metadata is not None:
                    return self._metadata
                log.warning("OIDC discovery failed (%s); using Logto's paths under the issuer", exc)
                found = {}
            self._metadata = {name: found.get(name) or base + path for name, path in _LOGTO_PATHS.items()}
            self._metadata_at = time.monotonic()
            return self._metadata

    def _client(self) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.cfg.client_id, client_secret=self.cfg.client_secret.get_secret_value() or None,
            scope=" ".join(self.cfg.scopes), redirect_uri=self.redirect_uri, code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self.cfg.client_secret.get_secret_value()
            else "none", timeout=10.0)

    async def begin(self) -> SignInRequest:
        meta = await self.metadata()
        state, nonce, verifier = generate_token(32), generate_token(32), generate_token(48)
        async with self._client() as client:
            url, _ = client.create_authorization_url(meta["authorization_endpoint"], state=state, nonce=nonce,
                                                     code_verifier=verifier)
        return SignInRequest(url=url, state=state, nonce=nonce, code_verifier=verifier)

    async def finish(self, code: str, expected_nonce: str, code_verifier: str) -> tuple[SignedInUser, str]:
        """Exchange the code; returns the user and the ID token (for the end-session hint, never stored)."""
        meta = await self.metadata()
        try:
            async with self._client() as client:
                token = await client.fetch_token(meta["token_endpoint"], grant_type="authorization_code", code=code,
                                                 code_verifier=code_verifier, redirect_uri=self.redirect_uri)
        except httpx.HTTPError as exc:
            raise Unavailable("the identity provider cannot be reached", reason="IDP_UNAVAILABLE") from exc
        except Exception as exc:  # noqa: BLE001 - Authlib raises OAuthError subclasses for refused codes
            raise Unauthenticated(f"the identity provider refused the sign-in: {exc}", reason="CODE_REFUSED") from exc
        id_token = token.get("id_token")
        if not id_token:
            raise Unauthenticated("the identity provider sent no ID token", reason="NO_ID_TOKEN")
        claims = await self.verify_id_token(id_token, expected_nonce)
        if self._needs_userinfo(claims) and token.get("access_token"):
            claims = {**await self._userinfo(meta, token["access_token"], claims["sub"]), **claims}
        return self._user(claims), id_token

    async def verify_id_token(self, id_token: str, expected_nonce: str) -> dict[str, Any]:
        keys = await self.jwks.keys()
        try:
            try:
                decoded = jwt.decode(id_token, keys, algorithms=list(self.cfg.algorithms))
            except JoseError:
                decoded = jwt.decode(id_token, await self.jwks.keys(force=True), algorithms=list(self.cfg.algorithms))
            self._registry.validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise Unauthenticated(f"invalid ID token: {exc}", reason="INVALID_ID_TOKEN") from None
        claims = dict(decoded.claims)
        if not expected_nonce or claims.get("nonce") != expected_nonce:
            raise Unauthenticated("the ID token's nonce does not match this sign-in", reason="NONCE_MISMATCH")
        return claims

    def _needs_userinfo(self, claims: dict[str, Any]) -> bool:
        return self.cfg.roles_claim not in claims or "email" not in claims

    async def _userinfo(self, meta: dict[str, Any], access_token: str, subject: str) -> dict[str, Any]:
        try:
            response = await self.http.get(meta["userinfo_endpoint"],
                                           headers={"Authorization": f"Bearer {access_token}"})
            response.raise_for_status()
            info: dict[str, Any] = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("userinfo failed (%s); signing in with the ID token's claims only", exc)
            return {}
        if info.get("sub") != subject:  # OIDC Core 5.3.2: must match, else ignore the response
            log.warning("userinfo answered for another subject; ignored")
            return {}
        return info

    def _user(self, claims: dict[str, Any]) -> SignedInUser:
        raw = claims.get(self.cfg.roles_claim) or ()
        roles = tuple(str(r) for r in raw) if isinstance(raw, (list, tuple)) else (str(raw),)
        return SignedInUser(
            subject=str(claims["sub"]), email=str(claims.get("email") or ""),
            preferred_username=str(claims.get("username") or claims.get("preferred_username") or ""),
            display_name=str(claims.get("name") or ""), roles=roles)

    async def end_session_url(self, post_logout_redirect_uri: str, id_token_hint: str = "") -> str:
        meta = await self.metadata()
        params = {"client_id": self.cfg.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        return str(httpx.URL(meta["end_session_endpoint"], params=params))
