"""What the RPCs of idle auto-pause do (issue 15): keep an instance alive, the users exempt, and the announced
pause shown on an instance (``Instance.scheduled_pause_time``, and the WatchInstance events it makes).

Writes go through the culler (:mod:`.idle`) under the template lock, or are the exemptions' own table.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, tuple_

from aigc_gateway import paging
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import AlreadyExists, FailedPrecondition, NotFound, invalid
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import SlotState

from . import access
from .idle import Culler, utcnow
from .idle_models import IdleExemptionRow, IdleStateRow
from .slots import aware

EXEMPTIONS = "idleExemptions/"
# The reasons WatchInstance gives when an announcement appears or is withdrawn (source "gateway").
SCHEDULED, CANCELLED = "IdlePauseScheduled", "IdlePauseCancelled"


async def keep_alive(culler: Culler, principal: Principal, ref: InstanceRef) -> None:
    """Reset the idle clock (owner, or an admin): a running instance only."""
    async with culler.db.session() as session:
        row = await session.get(InstanceRow, (ref.namespace, ref.template, ref.id))
    row = access.check(principal, ref, row)
    if row.slot != SlotState.LIVE.value:
        raise FailedPrecondition(f"{ref.name} is not running; resume it instead", reason="INSTANCE_NOT_RUNNING",
                                 metadata={"instance": ref.name})
    await culler.keep(ref)


async def scheduled(db: Database, rows: Iterable[InstanceRow]) -> dict[InstanceRef, datetime]:
    """The announced pause of each running instance that has one still holding (see idle_policy.Facts)."""
    live = {(r.namespace, r.template, r.id): r for r in rows if r.slot == SlotState.LIVE.value}
    if not live:
        return {}
    async with db.session() as session:
        found = (await session.execute(select(IdleStateRow).where(
            tuple_(IdleStateRow.namespace, IdleStateRow.template, IdleStateRow.id).in_(list(live)),
            IdleStateRow.scheduled_pause_at.is_not(None)))).scalars()
        out = {}
        for state in found:
            row = live[(state.namespace, state.template, state.id)]
            activity = max(aware(t) for t in (row.state_changed_at, row.last_access_at, state.kept_at) if t)
            pause_at = state.scheduled_pause_at  # the query keeps only rows that have one; checked for the type
            if pause_at is not None and state.warned_activity_at is not None \
                    and aware(state.warned_activity_at) == activity:
                out[InstanceRef(state.namespace, state.template, state.id)] = aware(pause_at)
    return out


# -- exemptions ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Exemption:
    user: str
    reason: str
    created_at: datetime
    created_by: str


def exemption_user(name: str, field: str = "name") -> str:
    if not name.startswith(EXEMPTIONS) or not name[len(EXEMPTIONS):]:
        raise invalid(field, f"must be {EXEMPTIONS}{{user}}, got {name!r}")
    user = name[len(EXEMPTIONS):]
    if len(user) > 255 or "/" in user:
        raise invalid(field, "the user must be one OIDC subject of at most 255 characters")
    return user


def _exemption(row: IdleExemptionRow) -> Exemption:
    return Exemption(row.user, row.reason, aware(row.created_at), row.created_by)


async def create_exemption(db: Database, principal: Principal, name: str, reason: str) -> Exemption:
    user = exemption_user(name, "idle_exemption.name")
    if len(reason) > 1024:
        raise invalid("idle_exemption.reason", "must be at most 1024 characters")
    async with db.session() as session:
        if await session.get(IdleExemptionRow, user) is not None:
            raise AlreadyExists(f"{user} is exempt already", reason="EXEMPTION_EXISTS",
                                metadata={"idle_exemption": name})
        row = IdleExemptionRow(user=user, reason=reason, created_at=utcnow(), created_by=principal.subject)
        session.add(row)
    return _exemption(row)


async def list_exemptions(db: Database, page_size: int, page_token: str) -> tuple[list[Exemption], str]:
    size = paging.clamp(page_size, default=100, maximum=500)
    bound = paging.fingerprint("idleExemptions")
    stmt = select(IdleExemptionRow).order_by(IdleExemptionRow.user).limit(size + 1)
    if page_token:
        stmt = stmt.where(IdleExemptionRow.user > str(paging.decode(page_token, bound)))
    async with db.session() as session:
        rows = list((await session.execute(stmt)).scalars())
    token = paging.encode(rows[size - 1].user, bound) if len(rows) > size else ""
    return [_exemption(r) for r in rows[:size]], token


async def delete_exemption(db: Database, name: str) -> str:
    user = exemption_user(name)
    async with db.session() as session:
        row = await session.get(IdleExemptionRow, user)
        if row is None:
            raise NotFound(f"{name} does not exist", reason="EXEMPTION_NOT_FOUND", metadata={"idle_exemption": name})
        await session.delete(row)
    return user
