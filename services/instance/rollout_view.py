"""What one rollout step reads from the cluster and records on its intent (issue 14, docs/upgrade.md), as pure
functions of the JSON objects: the rolling-update state of a template (partition, paused, the priority and hold
label on each pod, each pod's revision), the intent's JSON form of a :class:`~.rollout.Plan`, and which movers a
step newly lets move (audited once each).

Kept apart from :mod:`.rollouts` (the I/O) so the readings are tested without a cluster, and from
:mod:`.rollout` (the decisions), which never sees a Kubernetes object.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aigc_gateway import okg, upgrades

from .rollout import HOLD_LABEL, MOVE, Action, Decision, Plan, Reason

Obj = dict[str, Any]

# The pod label OKG orders the update by; the GameServer controller copies `GameServer.spec.updatePriority` to it.
PRIORITY_LABEL = "game.kruise.io/gs-update-priority"
# kruise's lifecycle state of a pod; PreparingUpdate: chosen for an in-place update and parked by the hold hook.
LIFECYCLE_LABEL = "lifecycle.apps.kruise.io/state"
PARKED = "PreparingUpdate"
# What a change may touch for Kruise to update a pod in place (besides the image, which is the point): a container
# whose command, args or environment differ is recreated. Only the audit's `in_place` detail reads this.
_RESTARTING_KEYS = ("command", "args", "env")


@dataclass(frozen=True)
class Seen:
    """The rolling-update state of one template as read now."""

    partition: int = 0
    paused: bool = False
    priorities: Mapping[int, int] = field(default_factory=dict)  # the pod label, per pod that has a readable one
    holds: frozenset[int] = frozenset()  # pods carrying the hold label
    revisions: Mapping[int, str] = field(default_factory=dict)  # per pod not being deleted
    parked: frozenset[int] = frozenset()  # pods the controller chose and the hold hook parked (PreparingUpdate)

    def to_json(self) -> Obj:
        return {"partition": self.partition, "paused": self.paused,
                "priorities": {str(i): p for i, p in sorted(self.priorities.items())},
                "holds": sorted(self.holds), "revisions": {str(i): r for i, r in sorted(self.revisions.items())},
                "parked": sorted(self.parked)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Seen:
        return cls(int(data.get("partition") or 0), bool(data.get("paused")),
                   {int(i): int(p) for i, p in (data.get("priorities") or {}).items()},
                   frozenset(int(i) for i in data.get("holds") or ()),
                   {int(i): str(r) for i, r in (data.get("revisions") or {}).items()},
                   frozenset(int(i) for i in data.get("parked") or ()))


def rolling(gss: Mapping[str, Any]) -> tuple[int, bool]:
    """The GameServerSet's (partition, paused)."""
    strategy = (((gss.get("spec") or {}).get("updateStrategy") or {}).get("rollingUpdate") or {})
    return int(strategy.get("partition") or 0), bool(strategy.get("paused"))


def lowered_partition(gss: Mapping[str, Any], pod: Obj | None) -> int | None:
    """The partition a pause or uninstall of the id whose pod this is writes with its scale: one lower when the
    pod is held (it carries the hold label, which the rollout step writes on held pods alone); None: unchanged."""
    partition, _ = rolling(gss)
    held = str(_labels(pod or {}).get(HOLD_LABEL) or "") == "true"
    return partition - 1 if held and partition > 0 else None


def pods_by_id(pods: Iterable[Obj], template: str) -> dict[int, Obj]:
    """The template's pods by id, without the ones being deleted (a pause or a restart under way: the pod the id
    runs next is made by the controller, so its revision is not this one's)."""
    out: dict[int, Obj] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        found = okg.instance_id(str(meta.get("name") or ""), template)
        if found is not None and not meta.get("deletionTimestamp"):
            out[found] = pod
    return out


def _labels(pod: Obj) -> Mapping[str, Any]:
    return (pod.get("metadata") or {}).get("labels") or {}


def seen(gss: Mapping[str, Any], pods: Mapping[int, Obj]) -> Seen:
    partition, paused = rolling(gss)
    priorities: dict[int, int] = {}
    for i, pod in pods.items():
        value = str(_labels(pod).get(PRIORITY_LABEL) or "")
        if value.isdigit():  # a pod without the label sorts lowest: it is written if it must move
            priorities[i] = int(value)
    holds = frozenset(i for i, pod in pods.items() if str(_labels(pod).get(HOLD_LABEL) or "") == "true")
    revisions = {i: upgrades.pod_revision(pod) for i, pod in pods.items() if upgrades.pod_revision(pod)}
    parked = frozenset(i for i, pod in pods.items() if _labels(pod).get(LIFECYCLE_LABEL) == PARKED)
    return Seen(partition, paused, priorities, holds, revisions, parked)


def in_place(gss: Mapping[str, Any], pod: Obj | None) -> bool:
    """Whether the template's pod template differs from the pod only where Kruise updates in place (images,
    metadata): the same containers by name with the same command, args and environment. Read for the audit."""
    wanted = ((((gss.get("spec") or {}).get("gameServerTemplate") or {}).get("spec") or {}).get("containers") or [])
    running = ((pod or {}).get("spec") or {}).get("containers") or []
    if [c.get("name") for c in wanted] != [c.get("name") for c in running]:
        return False
    return all((a.get(k) or None) == (b.get(k) or None) for a, b in zip(wanted, running, strict=True)
               for k in _RESTARTING_KEYS)


def plan_to_json(plan: Plan) -> Obj:
    return {"partition": plan.partition, "priorities": {str(i): p for i, p in sorted(plan.priorities.items())},
            "decisions": [[d.id, d.action.value, d.reason.value, d.in_place] for _, d in sorted(plan.decisions.items())]}


def plan_from_json(data: Mapping[str, Any]) -> Plan:
    decisions = {int(i): Decision(int(i), Action(a), Reason(r), None, bool(p)) for i, a, r, p in data["decisions"]}
    return Plan(int(data["partition"]), {int(i): int(p) for i, p in data["priorities"].items()}, decisions)


def newly_moving(plan: Plan, before: Seen) -> list[int]:
    """The movers this step lets move that the state before it did not already let move (each is audited once):
    a mover was let move already when its pod had the MOVE priority, the rolling update was not paused, the
    partition was no higher than now, and the pod had no hold label or was parked (PreparingUpdate) with it: a pod
    last updated in place without the label ends in lifecycle state Updated, and kruise labels and parks such a
    pod itself when it chooses it for the next change (tests/okg/test_update_hooks.py), which the step then
    releases."""
    def was_moving(i: int) -> bool:
        return (before.priorities.get(i) == MOVE and (i not in before.holds or i in before.parked)
                and not before.paused and before.partition <= plan.partition)
    return sorted(i for i in plan.moving if not was_moving(i))
