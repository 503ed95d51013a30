"""A contract double of the Logto Management API, as docs/usersync.md#the-logto-double-tests-and-development states it — the one double the tests allow.

What it does, and nothing more:

- ``POST /oidc/token``: ``grant_type=client_credentials``, ``resource`` (the configured resource indicator),
  ``scope=all``, HTTP Basic with the M2M app id/secret; opaque bearer tokens that expire after ``token_ttl``
  seconds (3600 like Logto by default; tests make it short).
- ``GET /api/users?page=&page_size=`` (page from 1, size 1..100, default 20, header ``Total-Number``);
  ``GET /api/users/{id}``; ``GET /api/users/{id}/custom-data``;
  ``PATCH /api/users/{id}/custom-data`` with ``{"customData": {...}}``: a **shallow merge** of top-level keys where
  ``null`` stores null (it does not delete); ``PATCH /api/users/{id}`` with ``customData``: **replaces** it.
  ``POST /api/users`` and ``DELETE /api/users/{id}`` exist so a development stack can make and delete users.
- every ``/api`` call without a valid, unexpired token: 401.
- test controls: :meth:`fail_next` (e.g. 429 with ``Retry-After``), :meth:`go_down` (``"refuse"``: the port is
  closed, connection refused; ``"503"``: every request answers 503) and :meth:`come_up`, the request log, the
  history of custom-data writes, and webhook deliveries signed like Logto's (``logto-signature-sha-256`` = hex
  HMAC-SHA256 of the raw body with the signing key): :meth:`webhook`.

Run it alone for the development stack: ``python -m tests.doubles.logto --port 3001``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import copy
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import ClientSession, web

DEFAULT_RESOURCE = "https://default.logto.app/api"
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    # Logto's RequestError body: {"code": ..., "message": ...}.
    return web.json_response({"code": code, "message": message}, status=status, headers=headers)


@dataclass
class Write:
    """One custom-data write as Logto stored it."""

    user: str
    kind: str  # "merge" (PATCH .../custom-data) or "replace" (PATCH /api/users/{id})
    body: dict[str, Any]
    result: dict[str, Any]


@dataclass
class Failure:
    status: int
    retry_after: str | None
    path_prefix: str


@dataclass
class LogtoDouble:
    app_id: str = "m2m-gateway"
    app_secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    resource: str = DEFAULT_RESOURCE
    token_ttl: float = 3600.0
    signing_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    webhook_url: str = ""  # when set, DELETE/POST /api/users send User.Deleted/User.Created here

    def __post_init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.token_requests = 0
        self.requests: list[tuple[str, str, int]] = []  # (method, path_qs, status)
        self.writes: list[Write] = []
        self.mode = "up"  # "up" | "refuse" | "503"
        self._failures: list[Failure] = []
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post("/oidc/token", self._token)
        app.router.add_get("/api/users", self._list_users)
        app.router.add_post("/api/users", self._create_user)
        app.router.add_get("/api/users/{id}", self._get_user)
        app.router.add_patch("/api/users/{id}", self._patch_user)
        app.router.add_delete("/api/users/{id}", self._delete_user)
        app.router.add_get("/api/users/{id}/custom-data", self._get_custom_data)
        app.router.add_patch("/api/users/{id}/custom-data", self._patch_custom_data)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self.host = host
        await self._bind(port)
        return self.url

    async def _bind(self, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[-1][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def go_down(self, mode: str = "refuse") -> None:
        """``refuse``: close the port and every open connection (connection refused); ``503``: answer 503."""
        if mode not in ("refuse", "503"):
            raise ValueError(mode)
        self.mode = mode
        if mode == "refuse":
            await self.stop()

    async def come_up(self) -> None:
        if self._runner is None:
            await self._bind(self.port)
        self.mode = "up"

    def fail_next(self, count: int = 1, status: int = 429, retry_after: str | None = "1",
                  path_prefix: str = "/api/") -> None:
        """The next ``count`` requests under ``path_prefix`` answer ``status`` (with ``Retry-After`` if given)."""
        self._failures.extend(Failure(status, retry_after, path_prefix) for _ in range(count))

    def expire_tokens(self) -> None:
        self.tokens.clear()

    # -- users (test setup) -------------------------------------------------------

    def add_user(self, user_id: str | None = None, *, username: str | None = None,
                 custom_data: dict[str, Any] | None = None, email: str | None = None) -> str:
        user_id = user_id or secrets.token_hex(6)
        now = _now_ms() + len(self.users)  # distinct createdAt so the listing order is stable
        self.users[user_id] = {
            "id": user_id, "username": username or user_id, "primaryEmail": email, "primaryPhone": None,
            "name": username or user_id, "avatar": None, "customData": copy.deepcopy(custom_data or {}),
            "identities": {}, "profile": {}, "applicationId": None, "isSuspended": False, "hasPassword": False,
            "lastSignInAt": None, "createdAt": now, "updatedAt": now,
        }
        return user_id

    def custom_data(self, user_id: str) -> dict[str, Any]:
        return copy.deepcopy(self.users[user_id]["customData"])

    # -- webhooks ---------------------------------------------------------------------

    def sign(self, body: bytes, key: str | None = None) -> str:
        return hmac.new((key or self.signing_key).encode(), body, hashlib.sha256).hexdigest()

    def webhook(self, event: str, user_id: str, *, created_at: datetime | None = None,
                key: str | None = None, user: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
        """A signed delivery of a data-hook event, shaped like Logto's (``hookId``, ``event``, ``createdAt``,
        the Management API context and ``data``): returns the raw body and the headers."""
        created = (created_at or datetime.now(UTC)).astimezone(UTC)
        record = user or self.users.get(user_id) or {"id": user_id}
        payload = {
            "hookId": "hook-usersync", "event": event,
            "createdAt": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "userAgent": "logto-double", "path": f"/users/{user_id}", "method": "DELETE" if event.endswith(
                "Deleted") else "PATCH", "status": 204 if event.endswith("Deleted") else 200,
            "matchedRoute": "/users/:userId", "params": {"userId": user_id},
            "data": {k: v for k, v in record.items() if k != "hasPassword"},
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        return body, {"content-type": "application/json", "user-agent": "Logto (https://logto.io/)",
                      "logto-signature-sha-256": self.sign(body, key)}

    async def _send_webhook(self, event: str, user: dict[str, Any]) -> None:
        if not self.webhook_url:
            return
        body, headers = self.webhook(event, user["id"], user=user)
        try:
            async with ClientSession() as session:
                async with session.post(self.webhook_url, data=body, headers=headers) as response:
                    await response.read()
        except OSError as exc:  # Logto logs a failed hook and carries on
            print(f"logto double: webhook {event} to {self.webhook_url} failed: {exc}", file=sys.stderr)

    # -- HTTP -------------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await self._dispatch(request, handler)
        self.requests.append((request.method, request.path_qs, response.status))
        return response

    async def _dispatch(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.mode == "503":
            return _error(503, "unavailable", "service unavailable")
        for index, failure in enumerate(self._failures):
            if request.path.startswith(failure.path_prefix):
                del self._failures[index]
                headers = {"Retry-After": failure.retry_after} if failure.retry_after is not None else None
                return _error(failure.status, "request.general", "injected failure", headers)
        if request.path.startswith("/api/"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            expiry = self.tokens.get(token) if scheme.lower() == "bearer" else None
            if expiry is None or expiry <= time.monotonic():
                self.tokens.pop(token, None)
                return _error(401, "auth.unauthorized", "Unauthorized: missing or expired access token",
                              {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except (ValueError, TypeError) as exc:
            return _error(400, "guard.invalid_input", f"the request could not be validated: {exc}")

    async def _token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
        try:
            client_id, _, client_secret = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            client_id = client_secret = ""
        if scheme.lower() != "basic" or not (hmac.compare_digest(client_id, self.app_id)
                                             and hmac.compare_digest(client_secret, self.app_secret)):
            return web.json_response({"error": "invalid_client", "error_description": "client authentication failed"},
                                     status=401)
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if form.get("resource") != self.resource:
            return web.json_response({"error": "invalid_target", "error_description": "resource indicator is missing, "
                                      "or unknown"}, status=400)
        if form.get("scope") != "all":
            return web.json_response({"error": "invalid_scope", "error_description": "requested scope is not "
                                      "allowed"}, status=400)
        token = secrets.token_urlsafe(32)
        self.tokens[token] = time.monotonic() + self.token_ttl
        return web.json_response({"access_token": token, "expires_in": int(self.token_ttl) or 1,
                                  "token_type": "Bearer", "scope": "all"})

    def _user(self, request: web.Request) -> dict[str, Any] | web.Response:
        user_id = request.match_info["id"]
        user = self.users.get(user_id)
        if user is None:
            return _error(404, "entity.not_exists_with_id", f"The entity with id `{user_id}` does not exist.")
        return user

    async def _list_users(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        try:
            page = int(query.get("page", "1"))
            size = int(query.get("page_size", str(DEFAULT_PAGE_SIZE)))
        except ValueError:
            page = size = 0
        if page < 1 or not 1 <= size <= MAX_PAGE_SIZE:
            return _error(400, "guard.invalid_pagination", "the pagination value is not valid")
        ordered = sorted(self.users.values(), key=lambda u: (-u["createdAt"], u["id"]))  # newest first, like Logto
        chunk = ordered[(page - 1) * size: page * size]
        return web.json_response(copy.deepcopy(chunk), headers={"Total-Number": str(len(ordered))})

    async def _create_user(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("body must be an object")
        user_id = self.add_user(username=body.get("username"), email=body.get("primaryEmail"),
                                custom_data=body.get("customData"))
        if body.get("name"):
            self.users[user_id]["name"] = body["name"]
        await self._send_webhook("User.Created", self.users[user_id])
        return web.json_response(copy.deepcopy(self.users[user_id]))

    async def _get_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return user if isinstance(user, web.Response) else web.json_response(copy.deepcopy(user))

    async def _delete_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        del self.users[user["id"]]
        await self._send_webhook("User.Deleted", user)
        return web.Response(status=204)

    async def _get_custom_data(self, request: web.Request) -> web.Response:
        user = self._user(request)
        return user if isinstance(user, web.Response) else web.json_response(copy.deepcopy(user["customData"]))

    async def _patch_custom_data(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        body = await request.json()
        if not isinstance(body, dict) or not isinstance(body.get("customData"), dict):
            return _error(400, "guard.invalid_input", "customData must be an object")
        # Shallow merge of top-level keys: a null value is stored as null, it does not delete the key.
        user["customData"] = {**user["customData"], **copy.deepcopy(body["customData"])}
        user["updatedAt"] = _now_ms()
        self.writes.append(Write(user["id"], "merge", copy.deepcopy(body), copy.deepcopy(user["customData"])))
        return web.json_response(copy.deepcopy(user["customData"]))

    async def _patch_user(self, request: web.Request) -> web.Response:
        user = self._user(request)
        if isinstance(user, web.Response):
            return user
        body = await request.json()
        if not isinstance(body, dict):
            return _error(400, "guard.invalid_input", "body must be an object")
        if "customData" in body:
            if not isinstance(body["customData"], dict):
                return _error(400, "guard.invalid_input", "customData must be an object")
            user["customData"] = copy.deepcopy(body["customData"])  # replaces the whole object
            self.writes.append(Write(user["id"], "replace", copy.deepcopy(body), copy.deepcopy(user["customData"])))
        for key in ("username", "name", "avatar", "primaryEmail", "primaryPhone"):
            if key in body:
                user[key] = body[key]
        user["updatedAt"] = _now_ms()
        return web.json_response(copy.deepcopy(user))


async def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.doubles.logto", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3001)
    parser.add_argument("--app-id", default=os.environ.get("LOGTO_DOUBLE_APP_ID", "m2m-gateway"))
    parser.add_argument("--app-secret", default=os.environ.get("LOGTO_DOUBLE_APP_SECRET", ""),
                        help="M2M secret (default: $LOGTO_DOUBLE_APP_SECRET, else a random one printed at start)")
    parser.add_argument("--signing-key", default=os.environ.get("LOGTO_DOUBLE_SIGNING_KEY", ""),
                        help="webhook signing key (default: $LOGTO_DOUBLE_SIGNING_KEY, else random, printed)")
    parser.add_argument("--webhook-url", default="", help="where User.Created/User.Deleted are sent")
    parser.add_argument("--token-ttl", type=float, default=3600.0)
    parser.add_argument("--seed", default="", help="JSON file: a list of {id, username, customData}")
    args = parser.parse_args(argv)
    double = LogtoDouble(app_id=args.app_id, token_ttl=args.token_ttl, webhook_url=args.webhook_url)
    generated = []
    if args.app_secret:
        double.app_secret = args.app_secret
    else:
        generated.append(f"app secret {double.app_secret}")
    if args.signing_key:
        double.signing_key = args.signing_key
    else:
        generated.append(f"signing key {double.signing_key}")
    if args.seed:
        with open(args.seed) as handle:
            for user in json.load(handle):
                double.add_user(user.get("id"), username=user.get("username"), custom_data=user.get("customData"))
    await double.start(args.host, args.port)
    print(f"logto double on {double.url} (app id {double.app_id}"
          f"{'; generated ' + ', '.join(generated) if generated else ''})", file=sys.stderr, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await double.stop()


if __name__ == "__main__":
    try:
        asyncio.run(_main(sys.argv[1:]))
    except KeyboardInterrupt:
        pass
