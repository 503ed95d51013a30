"""The auth service's HTTP endpoints (aiohttp): ``/auth``, ``/sign-in``, ``/sign-in-callback``, ``/sign-out``.

``/auth`` is ingress-nginx's ``auth-url``: it answers 200, 401 or 403 and
nothing else, whatever arrives (nginx turns any other answer into a 500 for
the user). It trusts ``X-Original-URL`` only — the one header nginx sets
itself — and ``X-Forwarded-Proto/-Host/-Uri`` only when that is absent and
``auth.trust_forwarded_headers`` says the proxy in front sets them.
"""
from __future__ import annotations

import hashlib
import hmac
import html
import logging
from typing import Any

from aiohttp import web
from itsdangerous import BadData, URLSafeTimedSerializer

from aigc_gateway import audit
from aigc_gateway.config import Settings
from aigc_gateway.errors import GatewayError

from .checker import Checker, Credentials
from .decision import Outcome
from .oidc import OIDCClient
from .sessions import AmbiguousCookie, SessionCookieAuthenticator, hash_session_id, single_cookie
from .urls import forwarded_url, safe_redirect

log = logging.getLogger(__name__)

SIGNIN_MAX_AGE = 600
_NO_STORE = {"Cache-Control": "no-store"}


def public_base(settings: Settings) -> str:
    return (settings.auth.public_url or f"https://dashboard.{settings.domain}").rstrip("/")


def _single(headers: Any, name: str) -> str | None:
    """The header's value when it came exactly once; None when absent or duplicated."""
    values = headers.getall(name, [])
    return values[0] if len(values) == 1 else None


class AuthEndpoints:
    def __init__(self, settings: Settings, checker: Checker, sessions: SessionCookieAuthenticator,
                 oidc: OIDCClient | None, audit_log: audit.AuditLog):
        self.settings = settings
        self.cfg = settings.auth
        self.checker = checker
        self.sessions = sessions
        self.oidc = oidc
        self.audit_log = audit_log
        self.base = public_base(settings)
        keys = [k.get_secret_value() for k in self.cfg.session_keys]
        self._signin_state = URLSafeTimedSerializer(list(reversed(keys)), salt="aigc-gateway.sign-in.v1",
                                                    signer_kwargs={"digest_method": hashlib.sha256})
        self._csrf_key = hashlib.sha256(b"aigc-gateway.sign-out.v1" + keys[0].encode()).digest()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------

    def app(self) -> web.Application:
        # nginx sends at most its own large_client_header_buffers (8k) of URL; room to spare, so that
        # an odd request is answered by us (401/403) and not by the HTTP parser (400, a 500 to the user).
        app = web.Application(client_max_size=64 * 1024,
                              handler_args={"max_line_size": 32768, "max_field_size": 32768})
        app.router.add_get("/auth", self.auth, allow_head=True)
        app.router.add_get("/sign-in", self.sign_in)
        app.router.add_get("/sign-in-callback", self.sign_in_callback)
        app.router.add_get("/sign-out", self.sign_out_page)
        app.router.add_post("/sign-out", self.sign_out)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def start(self, listen: str | None = None, *, reuse_port: bool = False) -> int:
        """``reuse_port``: share the port with the sibling worker processes (see :mod:`.workers`)."""
        host, _, port = (listen or self.cfg.http_listen).rpartition(":")
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]") or "0.0.0.0", int(port), reuse_address=True,
                           reuse_port=reuse_port or None)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("auth HTTP endpoints on http://%s:%d", host or "0.0.0.0", self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    # -- the ingress check ----------------------------------------------

    def _original_url(self, headers: Any) -> str | None:
        values = headers.getall("X-Original-URL", ())
        if values:
            return values[0] if len(values) == 1 else None  # duplicated: which one did nginx route?
        if not self.cfg.trust_forwarded_headers:
            return None
        host, uri = _single(headers, "X-Forwarded-Host"), _single(headers, "X-Forwarded-Uri")
        if host is None or uri is None or len(headers.getall("X-Forwarded-Proto", [])) > 1:
            return None
        return forwarded_url(headers.get("X-Forwarded-Proto", ""), host, uri)

    def _credentials(self, headers: Any) -> Credentials:
        cookie_header = "; ".join(headers.getall("Cookie", []))
        try:
            value = single_cookie(cookie_header, self.cfg.cookie_name)
        except AmbiguousCookie:
            return Credentials(ambiguous=True)
        bearer = None
        if not value:
            authorization = _single(headers, "Authorization") or ""
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        return Credentials(session_cookie=value or None, bearer_token=bearer)

    async def auth(self, request: web.Request) -> web.Response:
        credentials = Credentials()
        try:
            credentials = self._credentials(request.headers)
            decision = await self.checker.check(self._original_url(request.headers), credentials,
                                                method=request.headers.get("X-Original-Method", ""))
        except Exception:  # never a 500: nginx would show every user an error page
            log.exception("auth check failed")
            status = 403 if credentials.presented else 401
            return web.Response(status=status, text="cannot decide now\n", headers=_NO_STORE)
        if decision.outcome is Outcome.ALLOW:
            p = decision.principal
            assert p is not None
            return web.Response(status=200, text="ok\n", headers={
                **_NO_STORE, "X-Auth-Request-User": _header_safe(p.subject),
                "X-Auth-Request-Email": _header_safe(p.email),
                "X-Auth-Request-Preferred-Username": _header_safe(p.preferred_username)})
        return web.Response(status=decision.status, text=decision.reason + "\n", headers=_NO_STORE)

    # -- sign-in --------------------------------------------------------

    def _redirect_target(self, request: web.Request) -> str:
        rds = request.query.getall("rd", [])
        candidate = rds[0] if len(rds) == 1 else None
        if not rds:
            candidate = _single(request.headers, "X-Auth-Request-Redirect")
        return safe_redirect(candidate, domain=self.settings.domain, allow_http=self.cfg.allow_http_redirects,
                             fallback=self.base + "/")

    def _session_cookie(self, value: str, max_age: int) -> dict[str, Any]:
        return {"value": value, "domain": self.settings.domain, "path": "/", "max_age": max_age,
                "httponly": True, "secure": self.cfg.cookie_secure, "samesite": "Lax"}

    async def sign_in(self, request: web.Request) -> web.Response:
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
                            httponly=True, secure=self.cfg.cookie_secure, samesite="Lax")
        return response

    @property
    def _signin_cookie_name(self) -> str:
        return self.cfg.cookie_name + "_signin"

    async def sign_in_callback(self, request: web.Request) -> web.Response:
        raw = request.cookies.get(self._signin_cookie_name, "")
        try:
            pending = self._signin_state.loads(raw, max_age=SIGNIN_MAX_AGE) if raw else None
        except BadData:
            pending = None
        if not isinstance(pending, dict):
            return _page(400, "Sign-in expired", "This sign-in is too old or was started elsewhere.",
                         link=(self.base + "/sign-in", "Sign in again"))
        state = request.query.get("state", "")
        if not hmac.compare_digest(state.encode(), str(pending.get("s", "")).encode()):
            return _page(400, "Sign-in failed", "The sign-in state does not match; start again.",
                         link=(self.base + "/sign-in", "Sign in again"))
        if request.query.get("error") or not request.query.get("code"):
            await self.audit_log.record("Auth.SignIn", outcome=audit.FAILURE, error_code="IDP_ERROR",
                                        details={"error": request.query.get("error", "no code")[:128]},
                                        actor="anonymous", actor_kind="anonymous")
            return _page(403, "Sign-in refused", "The identity provider did not sign you in.")
        try:
            assert self.oidc is not None
            user, _ = await self.oidc.finish(request.query["code"], pending["n"], pending["v"])
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
        response.del_cookie(self._signin_cookie_name, path="/sign-in-callback")
        return response

    # -- sign-out -------------------------------------------------------

    def _csrf(self, session_cookie: str) -> str:
        return hmac.new(self._csrf_key, hash_session_id(session_cookie).encode(), hashlib.sha256).hexdigest()

    def _request_cookie(self, request: web.Request) -> str | None:
        try:
            return single_cookie("; ".join(request.headers.getall("Cookie", [])), self.cfg.cookie_name)
        except AmbiguousCookie:
            return None

    async def sign_out_page(self, request: web.Request) -> web.Response:
        # A GET only asks: a cross-site link or image cannot sign anybody out.
        value = self._request_cookie(request) or ""
        token = html.escape(self._csrf(value)) if value else ""
        body = (f'<form method="post" action="{html.escape(self.base)}/sign-out">'
                f'<input type="hidden" name="csrf" value="{token}">'
                '<button type="submit">Sign out</button></form>')
        return _page(200, "Sign out?", "Sign out of the AIGC gateway on this browser.", extra=body)

    async def sign_out(self, request: web.Request) -> web.Response:
        value = self._request_cookie(request)
        form = await request.post()
        resolved = await self.sessions.resolve(value) if value else None
        if resolved is not None:
            if not hmac.compare_digest(str(form.get("csrf", "")), self._csrf(value or "")):
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


def _redirect(status: int, location: str) -> web.Response:
    return web.Response(status=status, headers={**_NO_STORE, "Location": location})


def _header_safe(value: str) -> str:
    if value.isprintable():  # the usual case, checked in C (CR and LF are not printable)
        return value[:512]
    return "".join(c for c in value if c.isprintable() and c not in "\r\n")[:512]


def _page(status: int, title: str, message: str, *, link: tuple[str, str] | None = None,
          extra: str = "") -> web.Response:
    more = f'<p><a href="{html.escape(link[0])}">{html.escape(link[1])}</a></p>' if link else ""
    body = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{more}{extra}</body></html>")
    return web.Response(status=status, text=body, content_type="text/html", headers=_NO_STORE)
