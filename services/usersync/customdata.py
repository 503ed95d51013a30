"""Writing one user's custom data: read, change, write — the only way usersync writes Logto.

Which write (docs/usersync.md#the-format-and-how-a-key-is-removed: Logto has no conditional writes,
``PATCH .../custom-data`` is a shallow merge where ``null`` stores null):

- only entries set: ``PATCH /api/users/{id}/custom-data`` with just those keys. A merge leaves every
  other key as it is at that instant, so a concurrent change made by someone else to another key
  survives.
- any entry removed: ``PATCH /api/users/{id}`` with the whole ``customData`` read a moment before,
  minus the removed keys (and with the set ones). Only a replace removes a key; its price is that a
  change made by someone else between our read and our write is lost, so the window is kept to one
  read and one write, serialised per user (in-process lock here, the cross-replica PostgreSQL lock
  :func:`user_lock_name` held by every caller).

A write that would change nothing is not made. Every write is audited with what it set and removed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from aigc_gateway.audit import AuditLog
from aigc_gateway.context import principal_var

from .entries import Changes, apply_changes, effective
from .logto import LogtoClient

log = logging.getLogger(__name__)

AUDIT_ACTION = "UserSync.WriteCustomData"


def user_lock_name(user: str) -> str:
    """The PostgreSQL advisory lock serialising every usersync write of one user's custom data."""
    return f"usersync:user:{user}"


@dataclass
class WriteResult:
    changes: Changes = field(default_factory=dict)  # what was (or would be) changed
    before: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class CustomDataWriter:
    def __init__(self, client: LogtoClient, audit: AuditLog):
        self.client = client
        self.audit = audit

    async def apply(self, user: str, changes: Changes, *, source: str, dry_run: bool = False,
                    current: dict[str, Any] | None = None) -> WriteResult:
        """Make ``changes`` to ``user``'s custom data. ``current``: what the caller read under the same
        locks (saves one read)."""
        async with self.client.user_lock(user):
            if current is None:
                current = await self.client.get_custom_data(user)
            needed = effective(current, changes)
            result = WriteResult(needed, dict(current))
            if not needed or dry_run:
                return result
            if any(v is None for v in needed.values()):
                await self.client.replace_custom_data(user, apply_changes(current, needed))
            else:
                await self.client.merge_custom_data(user, dict(needed))
        await self._audit(user, needed, source)
        return result

    async def _audit(self, user: str, changes: Changes, source: str) -> None:
        details = {
            "source": source,
            "set": {k: v["ID"] for k, v in changes.items() if v is not None},
            "removed": sorted(k for k, v in changes.items() if v is None),
        }
        if principal_var.get() is None:  # background work: the service acts on its own behalf
            await self.audit.record(AUDIT_ACTION, f"users/{user}", details=details, actor="service:usersync",
                                    actor_kind="service")
        else:
            await self.audit.record(AUDIT_ACTION, f"users/{user}", details=details)
