"""Logto Management API client (async httpx): token, retries, paging, per-user serialisation.

- The machine-to-machine token comes from ``POST {endpoint}/oidc/token`` (client credentials, the
  Management API resource, ``scope=all``, HTTP Basic). It is cached and refreshed shortly before it
  expires (60 s early for Logto's one-hour tokens); one refresh runs at a time however many requests
  wait for it. A 401 from the API drops the token and the request is tried once more with a fresh one.
- 429, 5xx, timeouts and connection failures are retried with exponential backoff and jitter
  (tenacity), honouring ``Retry-After``; when the attempts or the time budget run out the call fails
  with :class:`LogtoUnavailable`, which the callers treat as "try again later".
- Logto has no conditional writes, so custom-data read-modify-write must be serialised per user:
  :meth:`LogtoClient.user_lock` does it inside this process; callers hold the cross-replica
  PostgreSQL lock around it (see :mod:`.customdata`).
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_exponential_jitter

from aigc_gateway.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from aigc_gateway.locks import LocalLocks

from . import metrics

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 100  # Logto refuses larger pages
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
TOKEN_REFUSED = "LOGTO_TOKEN_REFUSED"


class LogtoUnavailable(Unavailable):
    """Logto is down, overloaded or unreachable: safe to try again later."""


class LogtoUserNotFound(NotFound):
    """The user does not exist in Logto (deleted there)."""


class LogtoRejected(InvalidArgument):
    """Logto refused the request as invalid: retrying the same request cannot help."""


class LogtoAuthError(FailedPrecondition):
    """Logto refused our M2M credentials: an operator must fix the configuration."""


class _TokenRefused(Exception):
    def __init__(self, token: str):
        super().__init__("Logto refused the access token")
        self.token = token


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class LogtoSettings:
    endpoint: str
    app_id: str
    app_secret: str
    resource: str = "https://default.logto.app/api"
    timeout: float = 10.0
    max_attempts: int = 5
    max_retry_seconds: float = 30.0  # time budget of one call's retries
    backoff_initial: float = 0.2
    backoff_max: float = 10.0
    page_size: int = MAX_PAGE_SIZE


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (now if now is not None else time.time()), 0.0)


def refresh_margin(lifetime: float) -> float:
    """How long before expiry a token is renewed: 60 s for Logto's one-hour tokens, a quarter of a short one."""
    return min(60.0, lifetime / 4)


class _WaitRetryAfter:
    """tenacity wait: the server's ``Retry-After`` when it gave one, else exponential backoff with jitter."""

    def __init__(self, fallback: wait_exponential_jitter):
        self.fallback = fallback

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            return exc.retry_after
        return self.fallback(state)


class LogtoClient:
    def __init__(self, settings: LogtoSettings, *, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self.base = settings.endpoint.rstrip("/")
        self._http = httpx.AsyncClient(timeout=settings.timeout, transport=transport)
        self._token = ""
        self._renew_at = 0.0  # monotonic
        self._token_lock = asyncio.Lock()
        self._user_locks = LocalLocks()

    async def close(self) -> None:
        await self._http.aclose()

    # -- token -------------------------------------------------------------------

    def _token_valid(self) -> bool:
        return bool(self._token) and time.monotonic() < self._renew_at

    async def token(self, *, refused: str = "") -> str:
        """The cached token, fetched when missing or about to expire, or when it is ``refused`` (a 401)."""
        if self._token_valid() and self._token != refused:
            return self._token
        async with self._token_lock:
            # Whoever waited on the lock uses the token the first waiter fetched.
            if self._token_valid() and self._token != refused:
                return self._token
            response = await self._send("POST", f"{self.base}/oidc/token", what="token", auth=False, data={
                "grant_type": "client_credentials", "resource": self.settings.resource, "scope": "all"})
            try:
                body = response.json()
                token, lifetime = str(body["access_token"]), float(body.get("expires_in", 3600))
            except (KeyError, TypeError, ValueError):
                raise LogtoUnavailable("Logto answered the token request without an access token",
                                       reason="LOGTO_BAD_TOKEN_RESPONSE", retry_after=5) from None
            self._token = token
            self._renew_at = time.monotonic() + lifetime - refresh_margin(lifetime)
            return token

    # -- requests ------------------------------------------------------------------

    async def request(self, method: str, path: str, *, what: str, json: Any = None,
                      params: dict[str, Any] | None = None) -> Any:
        """An authenticated Management API call; the parsed JSON body (None when empty)."""
        response = await self._call(method, path, what=what, json=json, params=params)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LogtoUnavailable(f"Logto answered {what} with a body that is not JSON",
                                   reason="LOGTO_BAD_RESPONSE") from None

    async def _call(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._send(method, f"{self.base}{path}", what=what, **kwargs)
        except _TokenRefused as exc:
            # The token expired early or was revoked: renew once, then let a second refusal stand.
            await self.token(refused=exc.token)
        try:
            return await self._send(method, f"{self.base}{path}", what=what, **kwargs)
        except _TokenRefused:
            raise LogtoAuthError("Logto refused a freshly issued access token", reason=TOKEN_REFUSED) from None

    async def _send(self, method: str, url: str, *, what: str, auth: bool = True, **kwargs: Any) -> httpx.Response:
        s = self.settings
        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.max_attempts) | stop_before_delay(s.max_retry_seconds),
            wait=_WaitRetryAfter(wait_exponential_jitter(multiplier=s.backoff_initial, max=s.backoff_max,
                                                        jitter=s.backoff_initial)),
            retry=retry_if_exception_type(_Retryable), reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    return await self._once(method, url, what=what, auth=auth, **kwargs)
        except _Retryable as exc:
            raise LogtoUnavailable(f"Logto is unavailable ({what}): {exc}", reason="LOGTO_UNAVAILABLE",
                                   retry_after=exc.retry_after or 5.0) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _once(self, method: str, url: str, *, what: str, auth: bool, json: Any = None,
                    params: dict[str, Any] | None = None, data: dict[str, str] | None = None) -> httpx.Response:
        headers = {"Accept": "application/json"}
        basic = None
        token = ""
        if auth:
            token = await self.token()
            headers["Authorization"] = f"Bearer {token}"
        else:
            basic = httpx.BasicAuth(self.settings.app_id, self.settings.app_secret)
        try:
            response = await self._http.request(method, url, headers=headers, json=json, params=params, data=data,
                                                auth=basic)
        except (httpx.TransportError, OSError) as exc:
            metrics.LOGTO_REQUESTS.labels(what, "error").inc()
            raise _Retryable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None
        metrics.LOGTO_REQUESTS.labels(what, str(response.status_code)).inc()
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {response.status_code}", parse_retry_after(response.headers.get("Retry-After")))
        if response.status_code == 401:
            if not auth:
                raise LogtoAuthError("Logto refused the M2M credentials (check logto_app_id/logto_app_secret)",
                                     reason="LOGTO_CREDENTIALS_REFUSED")
            raise _TokenRefused(token)
        if response.status_code == 404:
            raise LogtoUserNotFound(f"Logto has no such resource ({what})", reason="LOGTO_NOT_FOUND")
        if response.status_code >= 400:
            raise LogtoRejected(f"Logto refused {what}: HTTP {response.status_code} {_describe(response)}",
                                reason="LOGTO_REJECTED")
        return response

    # -- the Management API --------------------------------------------------------

    async def list_users_page(self, page: int, page_size: int | None = None) -> tuple[list[dict[str, Any]], int]:
        """One page (from 1) and the total number of users (``Total-Number``; -1 when absent)."""
        size = min(page_size or self.settings.page_size, MAX_PAGE_SIZE)
        response = await self._call("GET", "/api/users", what="list users", params={"page": page, "page_size": size})
        try:
            users = response.json()
        except ValueError:
            users = None
        if not isinstance(users, list):
            raise LogtoUnavailable("Logto answered the user list with something other than a list",
                                   reason="LOGTO_BAD_RESPONSE")
        try:
            total = int(response.headers["Total-Number"])
        except (KeyError, ValueError):
            total = -1
        return users, total

    async def iter_users(self, page_size: int | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every user, page by page, until a short page or ``Total-Number`` says the list is done."""
        size = min(page_size or self.settings.page_size, MAX_PAGE_SIZE)
        page, seen = 1, 0
        while True:
            users, total = await self.list_users_page(page, size)
            for user in users:
                yield user
            seen += len(users)
            if len(users) < size or (total >= 0 and seen >= total):
                return
            page += 1

    async def get_user(self, user_id: str) -> dict[str, Any]:
        user: dict[str, Any] = await self.request("GET", f"/api/users/{_seg(user_id)}", what="get user")
        return user

    async def get_custom_data(self, user_id: str) -> dict[str, Any]:
        data = await self.request("GET", f"/api/users/{_seg(user_id)}/custom-data", what="get custom data")
        return data if isinstance(data, dict) else {}

    async def merge_custom_data(self, user_id: str, entries: dict[str, Any]) -> dict[str, Any]:
        """Shallow merge of top-level keys. A None value STORES null; it does not remove the key."""
        data = await self.request("PATCH", f"/api/users/{_seg(user_id)}/custom-data", what="merge custom data",
                                  json={"customData": entries})
        return data if isinstance(data, dict) else {}

    async def replace_custom_data(self, user_id: str, custom_data: dict[str, Any]) -> None:
        """Replace the whole custom data (``PATCH /api/users/{id}``): the only write that removes keys."""
        await self.request("PATCH", f"/api/users/{_seg(user_id)}", what="replace custom data",
                           json={"customData": custom_data})

    @asynccontextmanager
    async def user_lock(self, user_id: str) -> AsyncIterator[None]:
        """Serialise this process's read-modify-write of one user's custom data."""
        async with self._user_locks.hold(user_id):
            yield


def _seg(value: str) -> str:
    return quote(value, safe="")


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    if isinstance(body, dict):
        return str(body.get("code") or body.get("error") or "")[:200]
    return ""
