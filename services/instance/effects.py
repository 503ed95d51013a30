"""What an instance operation did, as JSON on its replay claim (pure; issue 20).

An operation's answer is built from the slot row its step wrote (or read) under the template lock, never
from a read by name afterwards: by then the id may belong to someone else. The same snapshot is committed
on the call's claim in the transaction that commits the step (``idempotency.record_effect``), so a retry
after a crash answers with what the first attempt did.

``{"op": <install|pause|resume|uninstall|restart>, "row": <the slot row>}``, plus ``pod_uid`` for a restart
(the pod it deletes). For an uninstall the row is the instance as its owner had it: ``owner`` is the
former owner, the slot RELEASING.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from aigc_gateway.db.models import InstanceRow
from aigc_gateway.idempotency import taken_over as taken_over  # one definition, in the core (re-exported)
from aigc_gateway.names import InstanceRef

_TIMES = ("created_at", "updated_at", "state_changed_at", "last_access_at")


def snapshot(row: InstanceRow, *, owner: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"namespace": row.namespace, "template": row.template, "id": row.id, "slot": row.slot,
                            "owner": owner if owner is not None else row.owner, "orphaned": bool(row.orphaned)}
    for name in _TIMES:
        value = getattr(row, name)
        data[name] = value.isoformat() if value is not None else None
    return data


def row_of(data: dict[str, Any]) -> InstanceRow:
    """A detached InstanceRow carrying the snapshot (never added to a session)."""
    times = {name: datetime.fromisoformat(data[name]) if data.get(name) else None for name in _TIMES}
    return InstanceRow(namespace=data["namespace"], template=data["template"], id=int(data["id"]), slot=data["slot"],
                       owner=data.get("owner"), orphaned=bool(data.get("orphaned")), **times)


def make(op: str, row: InstanceRow, *, former_owner: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"op": op, "row": snapshot(row, owner=former_owner), **extra}


def ref_of(effect: dict[str, Any]) -> InstanceRef:
    row = effect["row"]
    return InstanceRef(row["namespace"], row["template"], int(row["id"]))
