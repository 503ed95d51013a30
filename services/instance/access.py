"""Who may act on which instance (pure): owners on their own, admins and the gateway's services on any."""
from __future__ import annotations

from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import NotFound, PermissionDenied, invalid
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import OWNED, SlotState


def check(principal: Principal, ref: InstanceRef, row: InstanceRow | None) -> InstanceRow:
    """The row, if the caller may see and change it.

    Missing and FREE ids are NOT_FOUND for everyone. A RELEASING id has no owner any more: only admins see it.
    Someone else's instance is PERMISSION_DENIED (the id is not a secret: it is in the instance's URL).
    """
    if row is None or row.slot == SlotState.FREE.value:
        raise NotFound(f"{ref.name} does not exist", reason="INSTANCE_NOT_FOUND")
    if principal.admin:
        return row
    if SlotState(row.slot) not in OWNED:
        raise NotFound(f"{ref.name} does not exist", reason="INSTANCE_NOT_FOUND")
    if row.owner != principal.subject:
        raise PermissionDenied(f"{ref.name} belongs to another user", reason="NOT_OWNER")
    return row


def install_owner(principal: Principal, requested: str) -> str:
    """Whom an install is for: the caller, or (admins only) the user named in the request."""
    if not requested or requested == principal.subject:
        if principal.kind != "user" and not requested:
            raise invalid("owner", "a service installing an instance must name the owner")
        return principal.subject
    if not principal.admin:
        raise PermissionDenied("only admins may install for another user", reason="ADMIN_REQUIRED")
    if len(requested) > 255:
        raise invalid("owner", "must be at most 255 characters")
    return requested
