"""The access decision of ``GET /auth`` and ``Check`` (pure).

Three answers only, because the ingress turns anything else into a 500:
200 for the owner of a running instance at that URL (or an admin, when
configured), 401 without valid credentials (the ingress then sends the
browser to sign in), 403 for valid credentials that do not own it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from aigc_gateway.identity import Principal

from .ownermap import Conflict, InstanceKey, OwnerMap
from .urls import Target


class Outcome(enum.Enum):
    ALLOW = 200
    UNAUTHENTICATED = 401
    FORBIDDEN = 403


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str
    principal: Principal | None = None
    instance: InstanceKey | None = None
    code: str = ""  # a machine-readable refusal reason (audit, metrics), e.g. ROUTED_HOST_MISMATCH

    @property
    def status(self) -> int:
        return self.outcome.value

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


def decide(target: Target | None, principal: Principal | None, owners: OwnerMap, *,
           allow_admin: bool = False) -> Decision:
    """``target`` None means the URL could not be read safely (see :mod:`.urls`)."""
    if principal is None:
        return Decision(Outcome.UNAUTHENTICATED, "sign in first")
    if target is None:
        return Decision(Outcome.FORBIDDEN, "not a valid instance URL", principal)
    if not owners.known:  # fail closed: whoever owns it now is not known here
        return Decision(Outcome.FORBIDDEN, "ownership cannot be confirmed now", principal, code="OWNERS_UNKNOWN")
    found = owners.lookup(target.host, target.path)
    if isinstance(found, Conflict):
        return Decision(Outcome.FORBIDDEN, "more than one instance claims this URL", principal)
    if found is None:
        return Decision(Outcome.FORBIDDEN, "no instance is served at this URL", principal)
    owner = owners.owner(found)
    if owner is not None and principal.kind == "user" and owner == principal.subject:
        return Decision(Outcome.ALLOW, "owner", principal, found)
    if allow_admin and principal.admin and principal.kind == "user":
        return Decision(Outcome.ALLOW, "admin", principal, found)
    if owner is None:
        return Decision(Outcome.FORBIDDEN, "the instance is not running", principal, found)
    return Decision(Outcome.FORBIDDEN, "you do not own this instance", principal, found)
