"""UpdateTemplate's part of a seamless rollout (issue 14, docs/upgrade.md, "Writes, and their order", step 1): which
policy and idle threshold an update rolls out with, and what it writes for them in the same GameServerSet write as
the admin's change. Pure.

- The policy and the threshold are the request's, else the manifest's annotations, else the template's, else the
  configured defaults (`template.rollout_policy`, `template.rollout_idle_after_seconds`). They are recorded as the
  annotations `<prefix>rollout-policy` and `<prefix>rollout-idle-after` whenever the change touches the pod template
  (the instance service's reconciler plans with what the admin chose, whatever the configuration says later) or the
  request names them; GetTemplate and PreviewTemplateUpdate show them.
- A pod-template change under WHEN_IDLE or MANUAL is written with `updateStrategy.rollingUpdate.paused: true`: no
  pod moves until the reconciler has planned who may (fact 6), while installs and resumes already start on the new
  pod template. Under IMMEDIATE (which needs allow_restart) it is written with `paused: false` and partition 0:
  every live instance rolls now, today's behaviour.

The in-place update hook every write carries is added by normalisation (normalize.py), for creates too.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aigc_gateway import idle, upgrades
from aigc_gateway.errors import invalid
from aigc_gateway.upgrades import Policy

from .policy import Policy as TemplatePolicy


@dataclass(frozen=True)
class Requested:
    """What the request asks for (None: not named)."""

    policy: Policy | None = None
    idle_after: timedelta | None = None

    @property
    def explicit(self) -> bool:
        return self.policy is not None or self.idle_after is not None


@dataclass(frozen=True)
class Settings:
    """The policy and idle threshold a change rolls out with."""

    policy: Policy
    idle_after: timedelta


def requested(policy_name: str, idle_after: timedelta | None) -> Requested:
    """The request's fields, checked: ``policy_name`` is the RolloutPolicy name (``ROLLOUT_POLICY_UNSPECIFIED`` or
    empty when not set); a threshold must be whole seconds from 0 to what an annotation may record."""
    if policy_name not in ("", "ROLLOUT_POLICY_UNSPECIFIED") and policy_name not in Policy.__members__:
        raise invalid("rollout_policy", f"must be one of {', '.join(Policy.__members__)}", "INVALID_ROLLOUT_POLICY")
    if idle_after is not None and not (timedelta(0) <= idle_after <= timedelta(seconds=idle.MAX_SECONDS)
                                       and idle_after.microseconds == 0):
        raise invalid("rollout_idle_after", f"must be whole seconds from 0 to {idle.MAX_SECONDS}, got "
                      f"{idle_after.total_seconds()} s", "INVALID_ROLLOUT_IDLE_AFTER")
    return Requested(Policy(policy_name) if policy_name in Policy.__members__ else None, idle_after)


def settings(asked: Requested, sources: Sequence[Mapping[str, Any] | None], prefix: str, default_policy: str,
             default_idle_after_seconds: float) -> Settings:
    """The request's policy and threshold, else the first of ``sources`` (annotation maps) that records a readable
    one, else the configured defaults."""
    policies = [asked.policy] + [upgrades.policy_of(notes, prefix) for notes in sources]
    thresholds = [asked.idle_after] + [upgrades.idle_after_of(notes, prefix) for notes in sources]
    policy = next((p for p in policies if p is not None), Policy(default_policy))
    idle_after = next((t for t in thresholds if t is not None), timedelta(seconds=default_idle_after_seconds))
    return Settings(policy, idle_after)


def _annotations(obj: dict[str, Any]) -> dict[str, Any] | None:
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    return notes if isinstance(notes, dict) else None


def apply(desired: dict[str, Any], current: dict[str, Any], asked: Requested, policy: TemplatePolicy,
          restarts: bool) -> Settings:
    """Write the rollout into ``desired`` (the normalised update of ``current``); ``restarts``: the change touches
    the pod template. The chosen settings."""
    prefix = policy.annotation_prefix
    was = _annotations(current)
    chosen = settings(asked, (_annotations(desired), was), prefix, policy.rollout_policy,
                      policy.rollout_idle_after_seconds)
    if restarts or asked.explicit:
        _record(desired, was, chosen, prefix)
    if restarts:
        _pause(desired, chosen.policy is not Policy.IMMEDIATE)
    return chosen


def _record(desired: dict[str, Any], was: Mapping[str, Any] | None, chosen: Settings, prefix: str) -> None:
    """The chosen settings as annotations, where the manifest does not already say them."""
    meta = desired.get("metadata")
    if not isinstance(meta, dict):
        return  # refused by the rules
    if meta.get("annotations") is None:
        meta["annotations"] = {}
    notes = meta["annotations"]
    if not isinstance(notes, dict):
        return
    for key, value, read, shown in (
            (upgrades.POLICY_KEY, chosen.policy, upgrades.policy_of, chosen.policy.value),
            (upgrades.IDLE_AFTER_KEY, chosen.idle_after, upgrades.idle_after_of,
             f"{int(chosen.idle_after.total_seconds())}s")):
        if notes.get(prefix + key) and read(notes, prefix) is None:
            continue  # unreadable as given: the rules refuse it rather than the gateway overwriting it
        if read(notes, prefix) == value:
            continue
        # The template's own spelling when it says the same ("30m" stays "30m").
        notes[prefix + key] = (was or {})[prefix + key] if read(was, prefix) == value else shown


def _pause(desired: dict[str, Any], paused: bool) -> None:
    spec = desired.get("spec")
    if not isinstance(spec, dict):
        return
    if spec.get("updateStrategy") is None:
        spec["updateStrategy"] = {}
    strategy = spec["updateStrategy"]
    if isinstance(strategy, dict) and strategy.get("rollingUpdate") is None:
        strategy["rollingUpdate"] = {}
    rolling = strategy.get("rollingUpdate") if isinstance(strategy, dict) else None
    if not isinstance(rolling, dict):
        return  # refused by the apiserver's schema
    rolling["paused"] = paused
    if not paused and rolling.get("partition"):
        rolling["partition"] = 0
