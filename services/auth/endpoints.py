"""The auth service's HTTP endpoints, one ASGI app: ``/auth``, ``/sign-in``, ``/sign-in-callback``, ``/sign-out``.

``/auth`` is ingress-nginx's ``auth-url``: it answers 200 (with an empty
body: Traefik never reuses a connection after a 2xx with a body), 401 or 403
and nothing else, whatever arrives (nginx turns any other answer into a 500
for the user). Which headers carry the request is decided by ``auth.proxy``,
never by which headers arrive: ``nginx`` reads ``X-Original-URL`` (set by
nginx, but its host is the client's Host header); ``traefik`` reads
``X-Forwarded-Proto/-Host/-Uri`` (Traefik overwrites client copies) and
ignores a client's ``X-Original-URL``. Either way the auth-url's own ``rh``
parameter, the host the proxy routed on (``?rh=$host``), must name the same
host (:func:`.urls.bind_routed_host`). An allowed answer carries the identity
headers and a ``Cookie`` header without the gateway's own cookies (none when
nothing else is left), which the template's ``auth-response-headers`` puts in
place of the client's (:mod:`.cookies`).

``/auth`` runs on every click on every instance: the server asks
:class:`.answers.Answers` first, which answers from the caches in the read
callback (no task, no ASGI messages) and gives a repeated check its earlier
answer; what it declines comes here as plain ASGI. The browser endpoints, a
few requests per sign-in, use Starlette's request and response classes. The
app is served by the gateway's HTTP server (:mod:`aigc_gateway.httpserver`)
on the event-loop thread.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from itsdangerous import BadData, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from aigc_gateway import audit
from aigc_gateway.config import Settings
from aigc_gateway.errors import GatewayError
from aigc_gateway.httpserver import HTTPServer
from aigc_gateway.sessions import AmbiguousCookie, SessionCookieAuthenticator, hash_session_id, single_cookie

from .answers import (
    NO_STORE,
    REFUSED,
    TEXT,
    Answers,
    answer_for,
    credentials_of,
    method_of,
    request_url,
    wanted_headers,
)
from .checker import AccessChecker, Credentials
from .cookies import SIGNIN_SUFFIX, gateway_cookie_names
from .oidc import OIDCClient
from .urls import routed_host_of, safe_redirect

log = logging.getLogger(__name__)

SIGNIN_MAX_AGE = 600
MAX_FORM = 64 * 1024
_NO_STORE = {"Cache-Control": "no-store"}
Handler = Callable[[Request], Awaitable[Response]]


def public_base(settings: Settings) -> str:
    return (settings.auth.public_url or f"https://dashboard.{settings.domain}").rstrip("/")


class AuthEndpoints:
    def __init__(self, settings: Settings, checker: AccessChecker, sessions: SessionCookieAuthenticator,
                 oidc: OIDCClient | None, audit_log: audit.AuditLog):
        self.settings = settings
        self.cfg = settings.auth
        self.checker = checker
        self.sessions = sessions
        self.oidc = oidc
        self.audit_log = audit_log
        self.base = public_base(settings)
        self._behind_traefik = self.cfg.proxy == "traefik"
        self._gateway_cookies = gateway_cookie_names(self.cfg.cookie_name)
        keys = [k.get_secret_value() for k in self.cfg.session_keys]
        self._signin_state = URLSafeTimedSerializer(list(reversed(keys)), salt="aigc-gateway.sign-in.v1",
                                                    signer_kwargs={"digest_method": hashlib.sha256})
        self._csrf_key = hashlib.sha256(b"aigc-gateway.sign-out.v1" + keys[0].encode()).digest()
        self._routes: dict[str, dict[str, Handler]] = {
            "/sign-in": {"GET": self.sign_in},
            "/sign-in-callback": {"GET": self.sign_in_callback},
            "/sign-out": {"GET": self.sign_out_page, "POST": self.sign_out},
            "/healthz": {"GET": self.healthz},
        }
        self.answers = Answers(checker, sessions, cookie_name=self.cfg.cookie_name,
                               gateway_cookies=self._gateway_cookies, behind_traefik=self._behind_traefik)
        self._server: HTTPServer | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------

    async def start(self, listen: str | None = None, *, reserved: bool = False) -> int:
        """Serve on ``listen`` (default ``auth.http_listen``); ``reserved``: the worker pool holds the port
        and sibling processes listen on it too (see :mod:`.workers`)."""
        self._server = HTTPServer(self, listen or self.cfg.http_listen, shared=reserved, name="auth-http",
                                  immediate=self.answers)
        self.port = await self._server.start()
        log.info("auth HTTP endpoints on http://%s:%d", self._server.host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app."""
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/auth":  # any method: nginx sends GET (or auth-method), and must never get a 405
            await self.auth(scope, send)
            return
        methods = self._routes.get(path)
        if methods is None:
            response: Response = PlainTextResponse("not found\n", 404, headers=_NO_STORE)
        elif (handler := methods.get(scope["method"])) is None:
            response = PlainTextResponse("method not allowed\n", 405, headers={**_NO_STORE,
                                                                               "Allow": ", ".join(methods)})
        else:
            response = await handler(Request(scope, receive))
        await response(scope, receive, send)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    # -- the ingress check ----------------------------------------------

    async def auth(self, scope: dict[str, Any], send: Any) -> None:
        """``/auth`` as an ASGI app: the checks :class:`.answers.Answers` declined (they wait for a session row
        or a token's keys), and every check when the server runs without it."""
        credentials = Credentials()
        try:
            seen = wanted_headers(scope["headers"])
            credentials = credentials_of(seen, self.cfg.cookie_name)
            decision = await self.checker.check(request_url(seen, self._behind_traefik), credentials,
                                                method=method_of(seen, self._behind_traefik), bind=True,
                                                routed_host=routed_host_of(scope["query_string"]))
            status, headers, body = answer_for(decision, seen, self._gateway_cookies)
        except Exception:  # never a 500: nginx would show every user an error page
            log.exception("auth check failed")
            status = 403 if credentials.presented else 401
            headers, body = [NO_STORE, TEXT], REFUSED[status]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    # -- sign-in --------------------------------------------------------

    def _redirect_target(self, request: Request) -> str:
        rds = request.query_params.getlist("rd")
        candidate = rds[0] if len(rds) == 1 else None
        if not rds:
            redirects = request.headers.getlist("x-auth-request-redirect")
            candidate = redirects[0] if len(redirects) == 1 else None
        return safe_redirect(candidate, domain=self.settings.domain, allow_http=self.cfg.allow_http_redirects,
                             fallback=self.base + "/")

    def _session_cookie(self, value: str, max_age: int) -> dict[str, Any]:
        return {"value": value, "domain": self.settings.domain, "path": "/", "max_age": max_age,
                "httponly": True, "secure": self.cfg.cookie_secure, "samesite": "Lax"}

    async def sign_in(self, request: Request) -> Response:
        rd = self._redirect_target(request)
        if self.oidc is None:
            return _page(503, "Sign-in is not configured", "The gateway has no OIDC client configured.")
        try:
            begun = await self.oidc.begin()
        except GatewayError as exc:
            return _page(503, "Sign-in is unavailable", exc.message)
        state = self._signin_state.dumps({"s": begun.state, "n": begun.nonce, "v": begun.code_verifier, "r": rd})
        response = _redirect(302, begun.url)
        response.set_cookie(self._signin_cookie_name, state, path="/sign-in-callback", max_age=SIGNIN_MAX_AGE,
                            # Starlette's stubs list only lower-case values; it lower-cases before checking, and
                            # the cookie keeps the usual spelling (the tests read "SameSite=Lax").
                            httponly=True, secure=self.cfg.cookie_secure, samesite="Lax")  # type: ignore[arg-type]
        return response

    @property
    def _signin_cookie_name(self) -> str:
        return self.cfg.cookie_name + SIGNIN_SUFFIX

    async def sign_in_callback(self, request: Request) -> Response:
        raw = request.cookies.get(self._signin_cookie_name, "")
        try:
            pending = self._signin_state.loads(raw, max_age=SIGNIN_MAX_AGE) if raw else None
        except BadData:
            pending = None
        if not isinstance(pending, dict):
            return _page(400, "Sign-in expired", "This sign-in is too old or was started elsewhere.",
                         link=(self.base + "/sign-in", "Sign in again"))
        state = request.query_params.get("state", "")
        if not hmac.compare_digest(state.encode(), str(pending.get("s", "")).encode()):
            return _page(400, "Sign-in failed", "The sign-in state does not match; start again.",
                         link=(self.base + "/sign-in", "Sign in again"))
        query = request.query_params
        if query.get("error") or not query.get("code"):
            await self.audit_log.record("Auth.SignIn", outcome=audit.FAILURE, error_code="IDP_ERROR",
                                        details={"error": query.get("error", "no code")[:128]},
                                        actor="anonymous", actor_kind="anonymous")
            return _page(403, "Sign-in refused", "The identity provider did not sign you in.")
        try:
            assert self.oidc is not None
            user, _ = await self.oidc.finish(query["code"], pending["n"], pending["v"])
        except GatewayError as exc:
            await self.audit_log.record("Auth.SignIn", outcome=audit.FAILURE, error_code=exc.reason,
                                        details={"message": exc.message[:256]}, actor="anonymous",
                                        actor_kind="anonymous")
            return _page(401, "Sign-in failed", exc.message, link=(self.base + "/sign-in", "Try again"))
        session_id, record = await self.sessions.store.create(
            user=user.subject, email=user.email, preferred_username=user.preferred_username,
            display_name=user.display_name, roles=user.roles, ttl_seconds=self.cfg.session_ttl_seconds)
        cookie = self.sessions.cookie.issue(session_id, user.subject, int(record.expires_at.timestamp()))
        await self.audit_log.record("Auth.SignIn", f"sessions/{record.id_hash}", outcome=audit.SUCCESS,
                                    details={"email": user.email, "roles": list(user.roles)},
                                    actor=user.subject, actor_kind="user")
        target = safe_redirect(pending.get("r"), domain=self.settings.domain,
                               allow_http=self.cfg.allow_http_redirects, fallback=self.base + "/")
        response = _redirect(302, target)
        response.set_cookie(self.cfg.cookie_name, **self._session_cookie(cookie, self.cfg.session_ttl_seconds))
        response.delete_cookie(self._signin_cookie_name, path="/sign-in-callback")
        return response

    # -- sign-out -------------------------------------------------------

    def _csrf(self, session_cookie: str) -> str:
        return hmac.new(self._csrf_key, hash_session_id(session_cookie).encode(), hashlib.sha256).hexdigest()

    def _request_cookie(self, request: Request) -> str | None:
        try:
            return single_cookie("; ".join(request.headers.getlist("cookie")), self.cfg.cookie_name)
        except AmbiguousCookie:
            return None

    async def sign_out_page(self, request: Request) -> Response:
        # A GET only asks: a cross-site link or image cannot sign anybody out.
        value = self._request_cookie(request) or ""
        token = html.escape(self._csrf(value)) if value else ""
        body = (f'<form method="post" action="{html.escape(self.base)}/sign-out">'
                f'<input type="hidden" name="csrf" value="{token}">'
                '<button type="submit">Sign out</button></form>')
        return _page(200, "Sign out?", "Sign out of the AIGC gateway on this browser.", extra=body)

    async def sign_out(self, request: Request) -> Response:
        value = self._request_cookie(request)
        form = await _form(request)
        resolved = await self.sessions.resolve(value) if value else None
        if resolved is not None:
            if not hmac.compare_digest(str(form.get("csrf", "")).encode(), self._csrf(value or "").encode()):
                return _page(403, "Sign-out refused", "Use the sign-out button of the gateway.")
            claims, record = resolved
            await self.sessions.store.revoke(claims.session_id)
            await self.audit_log.record("Auth.SignOut", f"sessions/{record.id_hash}", outcome=audit.SUCCESS,
                                        actor=record.user, actor_kind="user")
        target = self.base + "/"
        if self.oidc is not None:
            try:
                target = await self.oidc.end_session_url(self.base + "/")
            except Exception as exc:  # noqa: BLE001 - the local sign-out is done either way
                log.warning("no end-session URL: %s", exc)
        response = _redirect(303, target)
        response.set_cookie(self.cfg.cookie_name, **self._session_cookie("", 0))
        return response



async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form's first values (the only form here is sign-out's one hidden field)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            return {}
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


def _redirect(status: int, location: str) -> Response:
    return Response(status_code=status, headers={**_NO_STORE, "Location": location})


def _page(status: int, title: str, message: str, *, link: tuple[str, str] | None = None,
          extra: str = "") -> Response:
    more = f'<p><a href="{html.escape(link[0])}">{html.escape(link[1])}</a></p>' if link else ""
    body = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{more}{extra}</body></html>")
    return HTMLResponse(body, status_code=status, headers=_NO_STORE)
