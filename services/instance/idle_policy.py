"""The idle culler's decisions (issue 15), as pure functions of one instance's facts and the time.

An instance's last activity is the latest of: when its slot last changed (install, resume; a restart keeps
the slot but counts through ``kept_at``), the auth check's last recorded access (``instances.last_access_at``,
batched by the auth service), and ``kept_at`` (KeepInstanceAlive, a busy probe's answer, a restart). A
resume moves the slot's time, so an instance is never culled again by activity older than its resume.

Once it has been idle for its timeout minus the warning lead, the owner is warned: the pause is announced
for ``max(deadline, now + warning)``, so the owner always gets the whole lead time even from a culler that
was down. The announcement remembers the activity time it was computed from; newer activity withdraws it.
The pause comes only after an announcement whose time has passed, decided again under the template lock
from rows read there (:mod:`.idle`), so a resume, a keep-alive or an access that wins the lock first wins.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aigc_gateway import idle
from aigc_gateway.config import IdleConfig
from aigc_gateway.okg import SlotState

from . import templates


class Action(enum.Enum):
    NONE = "none"
    PROBE = "probe"  # due for a warning or the pause: ask the busy probe first (when the template has one)
    WARN = "warn"
    CANCEL = "cancel"  # withdraw an announcement (activity since, paused, exempt, no timeout any more)
    PAUSE = "pause"


@dataclass(frozen=True)
class Facts:
    slot: str
    slot_since: datetime  # instances.state_changed_at
    last_access: datetime | None = None  # instances.last_access_at
    kept_at: datetime | None = None  # instance_idle.kept_at
    scheduled_pause: datetime | None = None  # instance_idle.scheduled_pause_at
    warned_activity: datetime | None = None  # instance_idle.warned_activity_at
    timeout: float | None = None  # seconds; None: never paused
    exempt: bool = False
    has_probe: bool = False
    probed_idle: bool = False  # the probe was asked this round and did not say busy

    @property
    def last_activity(self) -> datetime:
        return max(t for t in (self.slot_since, self.last_access, self.kept_at) if t is not None)

    @property
    def announced(self) -> bool:
        """An announcement that still holds: made from the activity seen now."""
        return self.scheduled_pause is not None and self.warned_activity == self.last_activity


@dataclass(frozen=True)
class Decision:
    action: Action
    pause_at: datetime | None = None


def timeout_of(gss: Mapping[str, Any] | None, prefix: str, cfg: IdleConfig) -> float | None:
    """The template's idle timeout in seconds (annotation, else the CPU/GPU default); None: never."""
    gss = dict(gss or {})
    notes = (gss.get("metadata") or {}).get("annotations") or {}
    after = idle.read(notes, prefix)[0].after_seconds
    if after is None:
        after = cfg.gpu_default_after_seconds if templates.needs_gpu(gss) else cfg.default_after_seconds
    return after or None


def decide(facts: Facts, now: datetime, warning_seconds: float) -> Decision:
    """What to do with one instance now (see the module docstring)."""
    outstanding = facts.scheduled_pause is not None
    if facts.slot != SlotState.LIVE.value or facts.exempt or facts.timeout is None:
        return Decision(Action.CANCEL if outstanding else Action.NONE)
    if outstanding and not facts.announced:
        return Decision(Action.CANCEL)  # activity since the announcement (an access, a keep-alive, a resume)
    deadline = facts.last_activity + timedelta(seconds=facts.timeout)
    lead = timedelta(seconds=warning_seconds)
    if now < deadline - lead:
        # Not due: an announcement made under a shorter timeout (the template's was raised since) is withdrawn.
        return Decision(Action.CANCEL if outstanding else Action.NONE)
    if facts.has_probe and not facts.probed_idle:
        return Decision(Action.PROBE)
    if not facts.announced:
        return Decision(Action.WARN, max(deadline, now + lead))
    assert facts.scheduled_pause is not None
    if now >= facts.scheduled_pause:
        return Decision(Action.PAUSE, facts.scheduled_pause)
    return Decision(Action.NONE, facts.scheduled_pause)
