"""PreviewTemplateUpdate's per-instance answer (issue 14, docs/upgrade.md): what a change of the pod template would
do to each instance under the template's rollout policy. Pure.

The rules are the rollout planner's (services/instance/rollout.py, `decide`), seen before the change: every live
instance is on the old revision, so it restarts now (IMMEDIATE, or idle under WHEN_IDLE), when idle (busy under
WHEN_IDLE, with its last access), or when asked (MANUAL); a paused one gets the new revision when it resumes. Both
read the policy, the threshold and "idle" from :mod:`aigc_gateway.upgrades`, so they cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from aigc_gateway import upgrades
from aigc_gateway.okg import SlotState
from aigc_gateway.upgrades import Policy

from .instances import Owned
from .rollout_write import Settings  # chosen as UpdateTemplate chooses (rollout_write.settings)


class Action(str, Enum):
    RESTART_NOW = "RESTART_NOW"
    WHEN_IDLE = "WHEN_IDLE"
    ON_RESUME = "ON_RESUME"
    WHEN_ASKED = "WHEN_ASKED"


@dataclass(frozen=True)
class Entry:
    id: int
    owner: str
    action: Action
    reason: str  # "immediate" | "idle" | "busy" | "manual" | "paused"
    last_access: datetime | None
    in_place: bool  # the restart keeps the pod (False for ON_RESUME: the pod is made anew anyway)


def entries(owned: Iterable[Owned], live_ids: Iterable[int], chosen: Settings, now: datetime,
            in_place: bool) -> list[Entry]:
    """One entry per instance a pod-template change concerns, by id: every owned id (LIVE or PAUSED) and every id
    with a GameServer (an id live in the cluster without a row yet counts as live, never accessed)."""
    rows = {o.id: o for o in owned}
    live = set(live_ids) | {i for i, o in rows.items() if o.slot == SlotState.LIVE.value}
    out = []
    for i in sorted(live | set(rows)):
        row = rows.get(i)
        owner, last = (row.owner, row.last_access) if row is not None else ("", None)
        if i not in live:
            out.append(Entry(i, owner, Action.ON_RESUME, "paused", last, False))
        elif chosen.policy is Policy.IMMEDIATE:
            out.append(Entry(i, owner, Action.RESTART_NOW, "immediate", last, in_place))
        elif chosen.policy is Policy.MANUAL:
            out.append(Entry(i, owner, Action.WHEN_ASKED, "manual", last, in_place))
        elif upgrades.idle(upgrades.last_activity(last, live_since=row.live_since if row else None), now,
                           chosen.idle_after):
            out.append(Entry(i, owner, Action.RESTART_NOW, "idle", last, in_place))
        else:
            out.append(Entry(i, owner, Action.WHEN_IDLE, "busy", last, in_place))
    return out
