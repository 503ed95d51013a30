"""What ``GET /auth`` reads from a request and answers, and the answers given again without being decided again.

Reading: which headers carry the checked request is decided by ``auth.proxy``, never by which headers
arrive (:func:`request_url`); the credentials are the session cookie, else a ``Bearer`` token
(:func:`credentials_of`). Answering: 200 with the identity headers and a ``Cookie`` header without the
gateway's own cookies, or 401/403 with a body that never says what runs at the URL (:func:`answer_for`).

**Answered again** (:class:`Answers`, the HTTP server's immediate answer, :mod:`aigc_gateway.http1`).
Most checks are the inputs of an earlier one again: a browser on its instance sends the same Cookie
header, the same few URLs and the proxy the same routed host, click after click. Such a check gets the
answer it got then, by a dictionary lookup on the exact bytes of the inputs that decide it (the query
string, which holds ``rh``, and every value of the headers :func:`request_url` and
:func:`credentials_of` read, in order), while nothing that answer was read from has changed:

- the owner map's ``generation`` is the one it was decided at (any change of a route, an owner or whether
  owners are known moves it, so a pause is refused at the next check as before);
- the session: the cookie's claims unexpired and the session store's cache holding the very record it was
  decided with (:meth:`~aigc_gateway.sessions.SessionCookieAuthenticator.unchanged`; a revocation, an
  expiry, an eviction or a row past its lifetime makes that false, and the look keeps the session warm as
  a check's look does).

An answer given again still leaves what a check leaves (:meth:`.checker.AccessChecker.record`): metrics,
the instance's last access, the audit event of a denial. What cannot be answered without waiting (a
session row to read, a ``Bearer`` token to verify) is declined: the server then runs the ASGI app, whose
check waits, and the next check finds the row cached. At most ``limit`` answers are kept (0: none), the
oldest dropped first, and none whose inputs exceed :data:`MAX_REMEMBERED_INPUT`, so a flood of distinct or
outsized inputs costs a miss each and bounded memory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from aigc_gateway.http1 import Answer, Headers
from aigc_gateway.session_store import SessionRecord
from aigc_gateway.sessions import AmbiguousCookie, CookieClaims, SessionCookieAuthenticator, single_cookie

from .checker import AccessChecker, Credentials, Verdict
from .cookies import without_gateway_cookies
from .decision import Decision, Outcome
from .urls import forwarded_url, routed_host_of

log = logging.getLogger(__name__)

NO_STORE = (b"cache-control", b"no-store")
TEXT = (b"content-type", b"text/plain; charset=utf-8")
# A refusal's body never says what runs at the URL: Traefik's forwardAuth hands it to the client as is, and
# "you do not own this instance" / "the instance is not running" / "no instance is served at this URL" told
# anyone that about another user's URL. Only a refusal code about the request itself or the service
# (ROUTED_HOST_MISMATCH, ROUTED_HOST_MISSING, OWNERS_UNKNOWN) is shown; the reason is in the audit event.
REFUSED = {401: b"sign in first\n", 403: b"forbidden\n"}
# The headers /auth reads, by their lower-case names as ASGI gives them; the methods are for the audit only.
_METHODS = {b"x-original-method", b"x-forwarded-method"}
_DECIDING = {b"x-original-url", b"cookie", b"authorization", b"x-forwarded-host", b"x-forwarded-uri",
             b"x-forwarded-proto"}
WANTED = _DECIDING | _METHODS
ANSWERS = Counter("aigc_auth_answers_total", "GET /auth checks by how they were answered: again (an earlier "
                  "answer given again), decided (in the read callback), declined (left to the app: a session "
                  "row or a token to wait for).", ["way"])
_AGAIN, _DECIDED, _DECLINED = (ANSWERS.labels(way) for way in ("again", "decided", "declined"))
DEFAULT_LIMIT = 10_000
# Inputs longer than this (the deciding headers' values together) are decided each time and never remembered:
# a head may be 256 KiB, and remembering its cookies 10,000 times over would be a memory flood for the asking.
# A browser's session cookie and URL take well under 1 KiB; at most LIMIT x (key + answer) ~ 80 MB a worker.
MAX_REMEMBERED_INPUT = 4096


def _single(values: list[str]) -> str | None:
    """The header's value when it came exactly once; None when absent or duplicated."""
    return values[0] if len(values) == 1 else None


def _decode(value: bytes) -> str:
    # UTF-8, with undecodable bytes kept (they make the URL unreadable later).
    return value.decode("utf-8", "surrogateescape")


def wanted_headers(headers: list[tuple[bytes, bytes]]) -> dict[bytes, list[str]]:
    """The headers /auth reads, by lower-case name, every value kept in order."""
    seen: dict[bytes, list[str]] = {}
    for name, value in headers:
        if name in WANTED:
            seen.setdefault(name, []).append(_decode(value))
    return seen


def request_url(seen: dict[bytes, list[str]], behind_traefik: bool) -> str | None:
    """The URL of the request being checked, from the headers the configured proxy sets (pure).

    ``seen``: the request's headers by lower-case name, every value kept. None when the proxy's
    headers are missing or duplicated (which copy did the proxy route? Neither is trusted)."""
    if not behind_traefik:
        return _single(seen.get(b"x-original-url", []))
    host, uri = _single(seen.get(b"x-forwarded-host", [])), _single(seen.get(b"x-forwarded-uri", []))
    protos = seen.get(b"x-forwarded-proto", [])
    if host is None or uri is None or len(protos) > 1:
        return None
    return forwarded_url(protos[0] if protos else "", host, uri)


def credentials_of(seen: dict[bytes, list[str]], cookie_name: str) -> Credentials:
    try:
        value = single_cookie("; ".join(seen.get(b"cookie", ())), cookie_name)
    except AmbiguousCookie:
        return Credentials(ambiguous=True)
    bearer = None
    if not value:
        authorization = _single(seen.get(b"authorization", [])) or ""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            bearer = token.strip()
    return Credentials(session_cookie=value or None, bearer_token=bearer)


def method_of(seen: dict[bytes, list[str]], behind_traefik: bool) -> str:
    return (seen.get(b"x-forwarded-method" if behind_traefik else b"x-original-method") or [""])[0]


def header_safe(value: str) -> str:
    if value.isprintable():  # the usual case, checked in C (CR and LF are not printable)
        return value[:512]
    return "".join(c for c in value if c.isprintable() and c not in "\r\n")[:512]


def answer_for(decision: Decision, seen: dict[bytes, list[str]],
             gateway_cookies: frozenset[str]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body of the answer to ``decision`` (pure)."""
    if decision.outcome is Outcome.ALLOW:
        p = decision.principal
        assert p is not None
        headers = [NO_STORE, TEXT, (b"x-auth-request-user", header_safe(p.subject).encode()),
                   (b"x-auth-request-email", header_safe(p.email).encode()),
                   (b"x-auth-request-preferred-username", header_safe(p.preferred_username).encode())]
        # The Cookie the pod gets in place of the client's (cookies.py): none at all when only ours came.
        kept = without_gateway_cookies(seen.get(b"cookie", ()), gateway_cookies)
        if kept:
            headers.append((b"cookie", kept.encode("utf-8", "surrogateescape")))
        return 200, headers, b""
    return decision.status, [NO_STORE, TEXT], \
        f"{decision.code}\n".encode() if decision.code else REFUSED[decision.status]


@dataclass(slots=True)
class _Remembered:
    answer: Answer
    verdict: Verdict
    presented: bool
    generation: int
    claims: CookieClaims | None
    record: SessionRecord | None


class Answers:
    """``/auth`` answered from the caches, in the HTTP server's read callback (see the module docstring)."""

    def __init__(self, checker: AccessChecker, sessions: SessionCookieAuthenticator, *,
                 cookie_name: str, gateway_cookies: frozenset[str], behind_traefik: bool,
                 limit: int = DEFAULT_LIMIT):
        self.checker = checker
        self.owners = checker.owners  # the map the checker decides on: its generation dates the answers
        self.sessions = sessions
        self.cookie_name = cookie_name
        self.gateway_cookies = gateway_cookies
        self.behind_traefik = behind_traefik
        self.limit = limit
        self._method = b"x-forwarded-method" if behind_traefik else b"x-original-method"
        self._remembered: dict[tuple[bytes, ...], _Remembered] = {}

    def __call__(self, scope: dict[str, Any]) -> Answer | None:
        """The HTTP server's immediate answer: None for any other path, or when the check must wait."""
        if scope["path"] != "/auth":
            return None
        started = time.perf_counter()
        query = scope["query_string"]
        parts = [query]
        size = len(query)
        method = b""
        for name, value in scope["headers"]:
            if name in _DECIDING:
                parts += (name, value)
                size += len(value)
            elif name == self._method and not method:
                method = value
        key = tuple(parts)
        found = self._remembered.get(key)
        if found is not None and found.generation == self.owners.generation \
                and self.sessions.unchanged(found.claims, found.record):
            _AGAIN.inc()
            self.checker.record(found.verdict, found.presented, _decode(method), started)
            return found.answer
        return self._decide(scope, key if size <= MAX_REMEMBERED_INPUT else None, started)

    def _decide(self, scope: dict[str, Any], key: tuple[bytes, ...] | None, started: float) -> Answer | None:
        seen = wanted_headers(scope["headers"])
        credentials = credentials_of(seen, self.cookie_name)
        claims: CookieClaims | None = None
        record: SessionRecord | None = None
        if credentials.session_cookie:
            found = self.sessions.cached_session(credentials.session_cookie)
            if found is False:
                _DECLINED.inc()
                return None  # the row must be read: the app's check waits for it
            claims, record = found
        elif credentials.bearer_token:
            _DECLINED.inc()
            return None  # a token to verify (keys may have to be fetched): the app's check
        _DECIDED.inc()
        generation = self.owners.generation
        principal = None if credentials.ambiguous else self.sessions.principal_of(claims, record)
        verdict = self.checker.judge(request_url(seen, self.behind_traefik), principal,
                                     routed_host=routed_host_of(scope["query_string"]), bind=True)
        status, headers, body = answer_for(verdict.decision, seen, self.gateway_cookies)
        answer = (status, Headers.of(headers), body)
        remembered = self._remembered
        if key is not None and self.limit > 0:
            if len(remembered) >= self.limit and key not in remembered:
                del remembered[next(iter(remembered))]
            remembered[key] = _Remembered(answer, verdict, credentials.presented, generation, claims, record)
        self.checker.record(verdict, credentials.presented, method_of(seen, self.behind_traefik), started)
        return answer
