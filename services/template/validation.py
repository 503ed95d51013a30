"""The whole local validation of a create or an update: parse, normalise, check. Pure.

The service adds the apiserver's server-side dry run afterwards; everything
here runs without a cluster so that it is unit-tested on literal manifests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aigc_gateway.errors import Violation

from . import changes, messages, network, replay, rollout_write, rules
from .manifest import Parsed
from .normalize import normalize
from .policy import Policy


@dataclass
class Checked:
    obj: dict[str, Any] | None  # the manifest that would be written (None when it could not be read)
    violations: list[Violation] = field(default_factory=list)
    warnings: list[Violation] = field(default_factory=list)
    proposal: changes.Proposal | None = None  # for an update
    rollout: rollout_write.Settings | None = None  # for an update: the policy and threshold it rolls out with

    @property
    def ok(self) -> bool:
        return self.obj is not None and not self.violations

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest to write, of a check that is ``ok``."""
        if self.obj is None:
            raise ValueError("the manifest could not be read: nothing to write")
        return self.obj

    @property
    def change(self) -> changes.Proposal:
        """The proposed change, of an update whose manifest could be read."""
        if self.proposal is None:
            raise ValueError("not an update, or its manifest could not be read")
        return self.proposal


def check_new(parsed: Parsed, policy: Policy, namespace: str) -> Checked:
    """A manifest for CreateTemplate (``namespace`` from the request's parent; `-` or empty: the manifest's)."""
    if parsed.obj is None:
        return Checked(None, list(parsed.violations))
    given = replay.unmarked(parsed.obj, policy)  # the service's request digest: never the admin's to set
    obj, warnings = normalize(given, policy, "" if namespace == "-" else namespace, create=True)
    report = rules.check(obj, policy, rules.Mode.CREATE, "" if namespace == "-" else namespace)
    return Checked(obj, report.violations + _undescribable(obj, policy, report), warnings + report.warnings)


def check_update(current: dict[str, Any], parsed: Parsed, mask: list[str], policy: Policy,
                 asked: rollout_write.Requested | None = None) -> Checked:
    """A change of the published template ``current`` for UpdateTemplate / PreviewTemplateUpdate / ValidateTemplate
    (``asked``: the request's rollout policy and threshold; the manifest to write carries the rollout's fields)."""
    if parsed.obj is None:
        return Checked(None, list(parsed.violations))
    # The request digest an earlier write left (replay.py) is neither the admin's input nor a change to show.
    current, given = replay.unmarked(current, policy), replay.unmarked(parsed.obj, policy)
    proposal = changes.propose(current, given, mask)
    meta = current.get("metadata") or {}
    obj, warnings = normalize(proposal.desired, policy, str(meta.get("namespace", "")), create=False)
    proposal.desired = obj
    rollout = rollout_write.apply(obj, current, asked or rollout_write.Requested(), policy, changes.finish(proposal, current).restarts)
    changes.finish(proposal, current)  # again: the recorded policy is a change too
    report = rules.check(obj, policy, rules.Mode.UPDATE, str(meta.get("namespace", "")))
    for path in proposal.changed_paths:
        if path in (network.conf_path("Host"), network.conf_path("Path")):
            # Applied in place (no restart, checked on the test bed), but every instance's address moves.
            warnings.append(Violation(path, "every instance gets a new address; users' bookmarks break",
                                      "ADDRESS_CHANGED"))
    return Checked(obj, _unique(proposal.violations + report.violations + _undescribable(obj, policy, report)),
                   warnings + report.warnings, proposal, rollout)


def _undescribable(obj: dict[str, Any], policy: Policy, report: rules.Report) -> list[Violation]:
    """Never write what the service could not describe afterwards (the rules range-check every number
    the Template message carries; this is the last line should a rule be missing)."""
    if not report.ok:
        return []
    try:
        messages.describe(obj, policy, messages.Counts(), with_manifest=False)
    except messages.Undescribable as exc:
        return [Violation("", f"the gateway could not describe this template: {exc}", messages.UNDESCRIBABLE)]
    return []


def _unique(violations: list[Violation]) -> list[Violation]:
    seen: set[tuple[str, str]] = set()
    out = []
    for v in violations:
        if (v.field, v.reason) not in seen:
            seen.add((v.field, v.reason))
            out.append(v)
    return out
