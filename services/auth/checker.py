"""One access check from raw inputs to a decision, shared by ``GET /auth``, ``Check`` and Envoy's ``Check``.

Credentials: the session cookie first; a ``Bearer`` JWT only when no session
cookie came (an instance's own ``Authorization: Basic`` is none of our
business and is ignored). Around :func:`.decision.decide` it records metrics,
the instance's last access (in memory, flushed in batches) and an audit event
for denied checks that presented a credential or were refused the instance
(anonymous 401s are the normal first step of signing in and are only counted).
No network I/O here: sessions and keys are cached, the owner map is in memory.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Histogram

from aigc_gateway import audit
from aigc_gateway.background import Tasks, wait_event
from aigc_gateway.errors import GatewayError
from aigc_gateway.identity import JWTAuthenticator, Principal
from aigc_gateway.sessions import SessionCookieAuthenticator

from .activity import ActivityRecorder
from .decision import Decision, Outcome, decide
from .ownermap import OwnerMap
from .urls import (
    ROUTED_HOST_MISMATCH,
    ROUTED_HOST_MISSING,
    BadURL,
    RoutedHostRefused,
    Target,
    bind_routed_host,
    parse_original_url,
)

log = logging.getLogger(__name__)

CHECKS = Counter("aigc_auth_checks_total", "Ingress access checks, by outcome.", ["outcome"])
CHECK_LATENCY = Histogram("aigc_auth_check_seconds", "Time to decide one access check.",
                          buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1))
_OUTCOME_LABEL = {Outcome.ALLOW: "allow", Outcome.UNAUTHENTICATED: "unauthenticated",
                  Outcome.FORBIDDEN: "forbidden"}
# The labelled children, resolved once: ``labels()`` costs more than the increment itself.
_CHECKS_BY_OUTCOME = {outcome: CHECKS.labels(label) for outcome, label in _OUTCOME_LABEL.items()}
# Refusals that point at an attack or a misconfigured proxy rather than at a user without access.
REFUSALS = Counter("aigc_auth_refusals_total", "Checks refused because the proxy's routed host (the auth-url's "
                   "rh=$host) was missing or differed from the request's host, by reason.", ["reason"])
ROUTED_HOST_CODES = frozenset({ROUTED_HOST_MISSING, ROUTED_HOST_MISMATCH})
_AUDIT_CODE = {Outcome.UNAUTHENTICATED: "UNAUTHENTICATED", Outcome.FORBIDDEN: "PERMISSION_DENIED"}
_ACTION = "AuthService.Check"
# How long the first denial queued waits for others to share its transaction (see AccessChecker._audit). The
# budget admits about one a second in a flood, so this is also about how many a transaction writes then.
AUDIT_GATHER_SECONDS = 5.0


class DeniedBudget:
    """Which denied checks are written to the audit log, decided before a task is started.

    :class:`~aigc_gateway.audit.AuditLog` admits ``denied_per_minute`` denied events a minute and only
    counts the rest, but asking it costs a task (and admitting one a database transaction), which a
    flood of forged cookies would turn into the main cost of the hot path. Here the same number a
    minute is admitted as a steady trickle (a token bucket: ``per_minute / 60`` a second, bursts of at
    most 10), so that a flood is sampled across the minute rather than by its first tenth of a second,
    and its writes do not arrive all at once; the rest cost two additions, and each minute's count of
    them is handed back once (the caller writes it as one aggregate event, as the audit log does)."""

    def __init__(self, per_minute: int, burst: int = 10):
        self.rate = per_minute / 60.0
        self.capacity = float(max(1, min(burst, per_minute))) if per_minute > 0 else 0.0
        self.tokens = self.capacity
        self.last = 0.0
        self.window = -1
        self.suppressed = 0

    def admit(self, now: float) -> tuple[bool, int]:
        """(whether to write this event, how many were suppressed in the minute that just ended)."""
        carried = 0
        window = int(now // 60)
        if window != self.window:
            carried, self.window, self.suppressed = self.suppressed, window, 0
        if self.last:
            self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            self.suppressed += 1
            return False, carried
        self.tokens -= 1.0
        return True, carried


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision and what its audit event names: the target read from ``url``, and the routed host when it
    was the routed host that refused."""

    decision: Decision
    target: Target | None
    url: str | None
    refused_host: str | None = None


@dataclass(frozen=True)
class Credentials:
    session_cookie: str | None = None
    bearer_token: str | None = None
    ambiguous: bool = False  # several distinct session cookies: treated as an invalid credential

    @property
    def presented(self) -> bool:
        return bool(self.session_cookie or self.bearer_token or self.ambiguous)


class AccessChecker:
    """Decides access checks for the ingress (``GET /auth``), Envoy and ``AuthService.Check``."""

    def __init__(self, owners: OwnerMap, sessions: SessionCookieAuthenticator | None,
                 bearer: JWTAuthenticator | None, activity: ActivityRecorder | None,
                 audit_log: audit.AuditLog | None, *, allow_admin: bool = False):
        self.owners = owners
        self.sessions = sessions
        self.bearer = bearer
        self.activity = activity
        self.audit_log = audit_log
        self.allow_admin = allow_admin
        self._background = Tasks()
        self._audit_queue: list[dict[str, Any]] = []
        self._audit_now = asyncio.Event()
        self._denied_budget = DeniedBudget(audit_log.denied_per_minute if audit_log is not None else 0)

    async def principal(self, credentials: Credentials) -> Principal | None:
        if credentials.ambiguous:
            return None
        if credentials.session_cookie:
            if self.sessions is None:
                return None
            # Almost every check finds its session in the caches: answer without creating coroutines.
            cached = self.sessions.cached_principal(credentials.session_cookie)
            if cached is not False:
                return cached
            return await self.sessions.principal(credentials.session_cookie)
        if credentials.bearer_token and self.bearer is not None and self.bearer.cfg.issuer \
                and self.bearer.cfg.audience:
            try:
                return await self.bearer.authenticate({"authorization": f"Bearer {credentials.bearer_token}"})
            except GatewayError:
                return None
        return None

    def for_caller(self, url: str, caller: Principal) -> Decision:
        """The decision for the caller of ``AuthService.Check`` itself (the dashboard asking for its user):
        the call pipeline already authenticated it, and a service principal is no user of an instance. A
        question about access, not an access: no metrics, activity or audit."""
        try:
            target: Target | None = parse_original_url(url)
        except BadURL:
            target = None
        return decide(target, caller if caller.kind == "user" else None, self.owners, allow_admin=self.allow_admin)

    async def check(self, url: str | None, credentials: Credentials, *, method: str = "",
                    routed_host: str | None = None, bind: bool = False) -> Decision:
        """``bind``: ``url`` holds a host the client may have chosen (``GET /auth``), so ``routed_host``
        (the host the proxy routed on; None when absent or ambiguous) must name the same host, or the check
        is refused with 403 whoever asks (an honest browser never sends a request whose hosts disagree)."""
        started = time.perf_counter()
        verdict = self.judge(url, await self.principal(credentials), routed_host=routed_host, bind=bind)
        self.record(verdict, credentials.presented, method, started)
        return verdict.decision

    def judge(self, url: str | None, principal: Principal | None, *, routed_host: str | None = None,
              bind: bool = False) -> Verdict:
        """The decision for ``principal`` at ``url`` (pure but for the owner map's current state)."""
        target: Target | None = None
        refused: RoutedHostRefused | None = None
        if url is not None:
            try:
                target = parse_original_url(url)
                if bind:
                    bind_routed_host(target, routed_host)
            except RoutedHostRefused as exc:
                refused = exc
            except BadURL:
                target = None
        if refused is not None:
            decision = Decision(Outcome.FORBIDDEN, f"{refused.code}: {refused}", principal, code=refused.code)
            return Verdict(decision, target, url, routed_host)
        return Verdict(decide(target, principal, self.owners, allow_admin=self.allow_admin), target, url)

    def record(self, verdict: Verdict, presented: bool, method: str, started: float) -> None:
        """What every check leaves behind, also one answered again from :mod:`.answers`: metrics, the
        instance's last access, the audit event of a denial (``presented``: a credential came)."""
        decision = verdict.decision
        CHECK_LATENCY.observe(time.perf_counter() - started)
        _CHECKS_BY_OUTCOME[decision.outcome].inc()
        if decision.allowed and decision.instance is not None and self.activity is not None:
            self.activity.touch(decision.instance, time.time())
        elif not decision.allowed:
            if decision.code in ROUTED_HOST_CODES:
                REFUSALS.labels(decision.code).inc()
            if presented or decision.outcome is Outcome.FORBIDDEN:
                self._audit_denied(decision, verdict.target, verdict.url, method, verdict.refused_host)

    def _audit_denied(self, decision: Decision, target: Target | None, url: str | None, method: str,
                      routed_host: str | None = None) -> None:
        if self.audit_log is None:
            return
        admitted, carried = self._denied_budget.admit(time.monotonic())
        if carried:  # the last window's flood, as one event (what AuditLog itself writes for suppressed ones)
            self._audit(self.audit_log.event("audit.denied_suppressed", outcome=audit.FAILURE, actor="audit",
                                             actor_kind="service", details={"counts": {_ACTION: carried}}))
        if not admitted:
            return
        principal = decision.principal
        details: dict[str, Any] = {
                   "reason": decision.reason, "code": decision.code, "status": decision.status, "method": method[:16],
                   "host": target.host if target else "", "path": target.path[:256] if target else "",
                   "url_readable": target is not None or url is None}
        if decision.code:
            details["routed_host"] = (routed_host or "")[:256]
        self._audit(self.audit_log.event(
            _ACTION, decision.instance.name if decision.instance else "", outcome=audit.DENIED,
            error_code=_AUDIT_CODE[decision.outcome], details=details,
            actor=principal.subject if principal else "anonymous",
            actor_kind=principal.kind if principal else "anonymous"))

    def _audit(self, event: dict[str, Any]) -> None:
        """Queue a denial's event: the first one queued since the last write starts the task that writes,
        after ``AUDIT_GATHER_SECONDS``, everything queued by then in one transaction. A transaction costs
        the worker's event loop about a millisecond of CPU however few rows it writes, and the budget's
        burst (after an idle minute, up to 10 denials at once) written one transaction each held the loop
        for the first ~60 ms of the burst, and one a second after it made a once-a-second cluster in the
        tail (bench/auth_check.py --timeline). :meth:`drain` writes at once. An event not yet written when
        the process is killed is lost, as one in flight always was."""
        self._audit_queue.append(event)
        if len(self._audit_queue) == 1:
            self._background.spawn(self._write_audit())

    async def _write_audit(self) -> None:
        assert self.audit_log is not None
        await wait_event(self._audit_now, AUDIT_GATHER_SECONDS)
        events, self._audit_queue = self._audit_queue, []
        await self.audit_log.write(events)

    async def drain(self) -> None:
        """Wait for the background work, writing the queued audit events now."""
        self._audit_now.set()
        try:
            await self._background.drain()
        finally:
            self._audit_now.clear()
