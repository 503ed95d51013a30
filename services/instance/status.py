"""An instance's state, message and URL, derived from its slot, GameServer, pod and pod events (pure).

The dashboard shows this instead of a spinner, so the message names what is
actually happening ("Waiting for a GPU node", "Pulling image …"), taken from
the pod's conditions, its containers and the latest Kubernetes event.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aigc_gateway import okg
from aigc_gateway.okg import SlotState

from . import templates

Obj = dict[str, Any]


class State(enum.IntEnum):
    """The states an instance is shown in: the contract's ``Instance.State``, name for name and number for number
    (tests/instance/test_domain.py compares them), so messages.py sets the field from the value."""

    STATE_UNSPECIFIED = 0
    INSTALLING = 1
    STARTING = 2
    RUNNING = 3
    NOT_READY = 4
    CRASHED = 5
    PAUSING = 6
    PAUSED = 7
    RESUMING = 8
    RESTARTING = 9
    UNINSTALLING = 10

# Pod event reasons worth showing while an instance starts, with how to say them.
EVENT_MESSAGES = {
    "FailedScheduling": None,  # handled with the GPU/CPU wording below
    "Pulling": "Pulling image",
    "Pulled": "Image pulled; starting",
    "Created": "Container created; starting",
    "Started": "Engine started; waiting for it to answer",
    "FailedMount": "Waiting for the disk to attach",
    "FailedAttachVolume": "Waiting for the disk to attach",
    "BackOff": "The engine keeps crashing; backing off",
    "Unhealthy": "The engine is not answering its readiness check",
    "Killing": "Stopping the engine",
}


@dataclass(frozen=True)
class Observed:
    """What the cluster shows for one instance (any part may be missing)."""

    game_server: Obj | None = None
    pod: Obj | None = None
    events: Sequence[Obj] = ()  # the pod's events, oldest first
    claims: Mapping[str, Obj] | None = None  # PVCs by name


@dataclass(frozen=True)
class View:
    state: State
    message: str
    access_uri: str = ""
    reason: str = ""  # the Kubernetes reason behind the message, when there is one
    source: str = "gateway"  # "gameserver" | "pod" | "event" | "gateway"


def _condition(pod: Obj, kind: str) -> Obj:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {})


def _latest_event(events: Sequence[Obj]) -> Obj | None:
    return events[-1] if events else None


def access_uri(gs: Obj | None, gss: Obj | None, instance_id: int) -> str:
    """`https://<ingress host><path>` once the GameServer's network is Ready."""
    network = ((gs or {}).get("status") or {}).get("networkStatus") or {}
    addresses = network.get("externalAddresses") or []
    if network.get("currentNetworkState") != "Ready" or not addresses or not addresses[0].get("endPoint"):
        return ""
    path = "/"
    for conf in ((gss or {}).get("spec") or {}).get("network", {}).get("networkConf") or []:
        if conf.get("name") == "Path" and conf.get("value"):
            made = okg.with_id(str(conf["value"]), instance_id)
            if made is None:  # two <id>s: the OKG plugin makes no Ingress, so there is no URL
                return ""
            path = made
    return f"https://{addresses[0]['endPoint']}{path if path.startswith('/') else '/' + path}"


def _waiting(pod: Obj) -> tuple[str, str]:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return waiting.get("reason") or "", waiting.get("message") or ""
    return "", ""


def _restarts(pod: Obj) -> int:
    return sum(int(s.get("restartCount") or 0) for s in (pod.get("status") or {}).get("containerStatuses") or [])


def _last_exit(pod: Obj) -> str:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (status.get("lastState") or {}).get("terminated")
        if terminated:
            return f" (last exit code {terminated.get('exitCode')}, {terminated.get('reason') or 'terminated'})"
    return ""


def _starting(pod: Obj, events: Sequence[Obj], gpu: bool) -> View:
    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") == "False":
        detail = scheduled.get("message") or ""
        what = "Waiting for a GPU node" if gpu else "Waiting for a node with enough CPU and memory"
        return View(State.STARTING, f"{what}{': ' + detail if detail else ''}", reason=scheduled.get("reason", ""),
                    source="pod")
    reason, message = _waiting(pod)
    if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        return View(State.STARTING, f"Cannot pull the image: {message or reason}", reason=reason, source="pod")
    if reason == "CrashLoopBackOff":
        return View(State.CRASHED, f"The engine keeps crashing{_last_exit(pod)}", reason=reason, source="pod")
    event = _latest_event(events)
    shown = EVENT_MESSAGES.get(event.get("reason", "")) if event is not None else None
    if event is not None and shown:
        text = shown
        if event["reason"] == "Pulling" and event.get("message"):
            text = event["message"]  # names the image: 'Pulling image "…"'
        return View(State.STARTING, text, reason=event["reason"], source="event")
    if reason:
        return View(State.STARTING, f"Starting the container ({reason})", reason=reason, source="pod")
    return View(State.STARTING, "Starting the engine", source="pod")


def _k8s_time(value: str) -> datetime:
    """A Kubernetes RFC 3339 time (``2026-11-28T19:00:00Z``) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def derive(slot: SlotState, changed_since_install: bool, gss: Obj | None, seen: Observed,
           instance_id: int, live_since: datetime | None = None) -> View:
    """The state shown for an instance. ``changed_since_install``: it was paused or resumed before, so a missing
    pod means RESUMING rather than INSTALLING. ``live_since``: when the slot last became LIVE; a pod whose
    deletion started before then is the paused engine still stopping (a resume), not a restart."""
    pod, gs = seen.pod, seen.game_server
    pod_meta = (pod or {}).get("metadata") or {}
    if slot is SlotState.RELEASING:
        if pod is not None:
            return View(State.UNINSTALLING, "Stopping the engine before deleting the disk", source="pod")
        return View(State.UNINSTALLING, "Deleting the disk")
    if slot is SlotState.PAUSED:
        if pod is not None:
            return View(State.PAUSING, "Stopping the engine; the disk is kept", source="pod")
        return View(State.PAUSED, "Paused; the disk is kept")
    if slot is not SlotState.LIVE:
        return View(State.STATE_UNSPECIFIED, "")
    if pod is None:
        if changed_since_install:
            return View(State.RESUMING, "Resuming on the kept disk")
        return View(State.INSTALLING, "Creating the instance")
    if pod_meta.get("deletionTimestamp"):
        # deletionTimestamp is when the grace period ends, not when the delete was asked for.
        stopping_since = _k8s_time(pod_meta["deletionTimestamp"]) - timedelta(
            seconds=int(pod_meta.get("deletionGracePeriodSeconds") or 0))
        if changed_since_install and live_since is not None and stopping_since <= live_since:
            return View(State.RESUMING, "Resuming: waiting for the paused engine to stop", source="pod")
        return View(State.RESTARTING, "Restarting: stopping the old pod", source="pod")
    phase = (pod.get("status") or {}).get("phase") or "Pending"
    gs_state = ((gs or {}).get("status") or {}).get("currentState") or ""
    gpu = templates.needs_gpu(gss) if gss else False
    if phase in ("Failed", "Succeeded") or gs_state == "Crash":
        return View(State.CRASHED, f"The engine stopped{_last_exit(pod)}", reason=phase, source="pod")
    if phase == "Pending":
        return _starting(pod, seen.events, gpu)
    reason, _ = _waiting(pod)
    if reason == "CrashLoopBackOff":
        return View(State.CRASHED, f"The engine keeps crashing{_last_exit(pod)}", reason=reason, source="pod")
    # A pod parked by the rollout's hold hook (GameServer PreUpdate, issue 14) is still Ready: it reads as running
    # below. One being updated in place is NotReady until its container runs the new image.
    if gs_state == "Updating" and _condition(pod, "Ready").get("status") != "True":
        return View(State.RESTARTING, "Updating to the template's new revision", reason="Updating",
                    source="gameserver")
    if _condition(pod, "Ready").get("status") == "True":
        uri = access_uri(gs, gss, instance_id)
        if uri:
            return View(State.RUNNING, "Ready", uri, source="gameserver")
        return View(State.STARTING, "Engine ready; waiting for the network", source="gameserver")
    if _restarts(pod) or _was_ready(pod):
        return View(State.NOT_READY, f"The engine is not answering its readiness check{_last_exit(pod)}",
                    reason="NotReady", source="pod")
    return View(State.STARTING, "Engine started; waiting for it to answer", source="pod")


def _was_ready(pod: Obj) -> bool:
    """Ready is False now but changed after the container started: it was True in between, so the engine was
    up and stopped answering (rather than still starting). RFC 3339 UTC times compare as strings."""
    changed = _condition(pod, "Ready").get("lastTransitionTime") or ""
    started = ""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        started = ((status.get("state") or {}).get("running") or {}).get("startedAt") or started
    return bool(changed and started and changed > started)
