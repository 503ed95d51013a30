"""A template upgrade's vocabulary, shared by the template service (UpdateTemplate, PreviewTemplateUpdate) and the
instance service (the rollout planner, per-instance revisions): the rollout policies, the annotations that record a
template's policy and idle threshold, what "idle" means, whether a change can be made in place, and which revision a
pod runs. Pure; docs/upgrade.md has the design and the OpenKruiseGame facts behind it. Services never import each
other, so what both must agree on lives here.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from .idle import parse_duration

# After the configured `template.annotation_prefix` (`aigc.gateway.io/` by default).
POLICY_KEY = "rollout-policy"
IDLE_AFTER_KEY = "rollout-idle-after"
# The pod label of every template's in-place update hook (`spec.lifecycle.inPlaceUpdate.labelsHandler`, fact 8 of
# docs/upgrade.md): the template service writes the hook, the instance service's reconciler puts the label on the
# pods it holds. Fixed, not under the configured prefix: a prefix change must not release held pods.
HOLD_LABEL = "aigc.gateway.io/update-hold"
# The pod label Kruise's Advanced StatefulSet writes: the revision the pod was made (or updated in place) from.
REVISION_LABEL = "controller-revision-hash"
# How late a recorded activity may be: the auth service writes `last_access_at` every 5 s and moves an instance's
# time on only by whole minutes, so a busy instance can look a minute older than it is.
ACTIVITY_LAG = timedelta(seconds=65)

# Under `spec.gameServerTemplate`, what Kruise updates in place (InPlaceIfPossible keeps the pod, node, IP and
# disk; tests/okg/test_update_facts.py): a container's image, and the pod template's labels and annotations. Any
# other change there recreates the pod on its disk.
_TEMPLATE = "spec.gameServerTemplate"
_IN_PLACE_PREFIXES = (f"{_TEMPLATE}.metadata.labels", f"{_TEMPLATE}.metadata.annotations")
_IMAGE = re.compile(re.escape(_TEMPLATE) + r"\.spec\.containers\[\d+\]\.image$")


class Policy(str, Enum):
    WHEN_IDLE = "WHEN_IDLE"  # idle and consenting instances now, busy ones when idle, paused ones on resume
    IMMEDIATE = "IMMEDIATE"  # every live instance now (needs allow_restart)
    MANUAL = "MANUAL"  # only new, resumed and explicitly updated instances


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith((prefix + ".", prefix + "["))


def restarts(changed_paths: Iterable[str]) -> bool:
    """The change touches the pod template: live pods move to a new revision."""
    return any(_under(p, _TEMPLATE) for p in changed_paths)


def in_place(changed_paths: Iterable[str]) -> bool:
    """Every pod-template change is a container image or a pod label or annotation, so Kruise updates the pods in
    place. Paths are the template service's (``spec.gameServerTemplate.spec.containers[0].image``); a changed
    container list length shows as the list itself and is not in place."""
    for path in changed_paths:
        if not _under(path, _TEMPLATE) or any(_under(path, p) for p in _IN_PLACE_PREFIXES):
            continue
        if _IMAGE.match(path):
            continue
        return False
    return True


def policy_of(annotations: Mapping[str, Any] | None, prefix: str) -> Policy | None:
    """The template's recorded policy; None when not recorded (or unreadable)."""
    value = (annotations or {}).get(prefix + POLICY_KEY)
    try:
        return Policy(str(value).strip().upper()) if value else None
    except ValueError:
        return None


def idle_after_of(annotations: Mapping[str, Any] | None, prefix: str) -> timedelta | None:
    """The template's recorded idle threshold; None when not recorded (or unreadable)."""
    value = (annotations or {}).get(prefix + IDLE_AFTER_KEY)
    try:
        return timedelta(seconds=parse_duration(str(value))) if value else None
    except ValueError:
        return None


def annotation_errors(annotations: Mapping[str, Any] | None, prefix: str) -> list[tuple[str, str, str]]:
    """(annotation key, what is wrong, reason) for each recorded rollout setting that does not parse; the template
    service refuses such a template, so :func:`policy_of` and :func:`idle_after_of` never meet one it wrote."""
    notes, out = annotations or {}, []
    if notes.get(prefix + POLICY_KEY) and policy_of(notes, prefix) is None:
        out.append((prefix + POLICY_KEY, f"must be one of {', '.join(p.value for p in Policy)}, got "
                    f"{notes[prefix + POLICY_KEY]!r}", "INVALID_ROLLOUT_POLICY"))
    if notes.get(prefix + IDLE_AFTER_KEY):
        try:
            parse_duration(str(notes[prefix + IDLE_AFTER_KEY]))
        except ValueError as exc:
            out.append((prefix + IDLE_AFTER_KEY, str(exc), "INVALID_ROLLOUT_IDLE_AFTER"))
    return out


def last_activity(last_access: datetime | None, *, live_since: datetime | None = None,
                  kept: datetime | None = None) -> datetime | None:
    """The activity a rollout counts (the instance service's step and the template service's preview alike): the
    last access the auth service recorded, a keep-alive or busy probe of the idle culler (``kept``), and, for a
    running instance, when it was installed or resumed (``live_since``). The last one matters because the auth
    service writes a visit only every few seconds: without it, an instance opened a second ago whose visit is not
    written yet would read as never used, so idle, and move under its owner. None: nothing recorded."""
    found = [t.replace(tzinfo=UTC) if t.tzinfo is None else t for t in (last_access, live_since, kept) if t]
    return max(found) if found else None


def idle(last_activity: datetime | None, now: datetime, idle_after: timedelta,
         lag: timedelta = ACTIVITY_LAG) -> bool:
    """No recorded activity for the threshold plus the recording's lag. Never accessed counts as idle."""
    return last_activity is None or now - last_activity >= idle_after + lag


def pod_revision(pod: Mapping[str, Any] | None) -> str:
    """The revision a pod runs (its `controller-revision-hash` label); empty without a pod or label."""
    return str((((pod or {}).get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL) or "")


def update_revision(stateful_set: Mapping[str, Any] | None) -> str:
    """The template's current revision: its Advanced StatefulSet's `status.updateRevision` (the GameServerSet's
    status only counts). Empty while unknown."""
    return str(((stateful_set or {}).get("status") or {}).get("updateRevision") or "")


def revision(pod: Mapping[str, Any] | None, stateful_set: Mapping[str, Any] | None,
             live: bool) -> tuple[str, bool]:
    """An instance's (revision, update_available): its pod's revision and whether it is older than the template's;
    without a pod (paused, starting) the revision its next pod gets, and nothing to update. A pod being deleted
    (pause, restart) is still what runs."""
    current = update_revision(stateful_set)
    running = pod_revision(pod)
    if pod is None or not running:
        return current, False
    return running, bool(live and current and running != current)
