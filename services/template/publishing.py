"""Writing templates: ValidateTemplate, CreateTemplate, UpdateTemplate and PreviewTemplateUpdate.

Every write runs the pure validation first (all violations at once, nothing
written when there is one), then lets the apiserver judge (a server-side dry
run, or the write itself), whose refusals come back as field violations.
"""
from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from aigc_gateway import audit, upgrades
from aigc_gateway.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Violation,
)

from . import changes, manifest, rollout_preview
from .catalog import Catalog
from .cluster import TemplateCluster
from .instances import InstanceTable
from .messages import (
    Counts,
    PreviewTemplateUpdateResponse,
    TemplateChange,
    ValidateTemplateResponse,
    change,
    describe_or_flag,
    preview,
    validation,
)
from .policy import Policy
from .validation import Checked, check_new, check_update

UPDATE_ATTEMPTS = 3


def refuse(violations: list[Violation], what: str) -> InvalidArgument:
    audit.note(violations=[f"{v.field}: {v.reason}" for v in violations])
    shown = "; ".join(f"{v.field or '(manifest)'}: {v.description}" for v in violations[:3])
    more = f" (and {len(violations) - 3} more)" if len(violations) > 3 else ""
    return InvalidArgument(f"{what}: {len(violations)} problem(s): {shown}{more}", reason="INVALID_TEMPLATE",
                           violations=violations)


def pruned(sent: dict[str, Any], written: dict[str, Any]) -> list[Violation]:
    """A warning per field the apiserver dropped (unknown to the GameServerSet schema): the service keeps
    unknown fields, but the cluster only stores what its schema declares."""
    paths = changes.dropped(changes.comparable(sent), changes.comparable(written))
    return [Violation(p, "not stored: the GameServerSet schema of this cluster has no such field", "FIELD_PRUNED")
            for p in paths]


class Publisher:
    def __init__(self, cluster: TemplateCluster, catalog: Catalog, table: InstanceTable, policy: Policy):
        self.cluster = cluster
        self.catalog = catalog
        self.table = table
        self.policy = policy

    # -- validate ----------------------------------------------------------------

    async def validate(self, namespace: str, parsed: manifest.Parsed,
                       as_update: bool) -> ValidateTemplateResponse:
        if as_update and parsed.obj is not None:
            checked = await self._as_update(namespace, parsed)
        else:
            checked = check_new(parsed, self.policy, namespace)
        violations, warnings = list(checked.violations), list(checked.warnings)
        if checked.ok:
            refused, written = await self._dry_run(checked.manifest, update=as_update)
            violations += refused
            warnings += pruned(checked.manifest, written) if written else []
        return validation(violations, warnings, checked.obj)

    async def _as_update(self, namespace: str, parsed: manifest.Parsed) -> Checked:
        meta = (parsed.obj or {}).get("metadata")  # the caller read the manifest
        if not isinstance(meta, dict):
            meta = {}
        name = str(meta.get("name") or "")
        ns = str(meta.get("namespace") or ("" if namespace == "-" else namespace))
        if not name or not ns:
            return Checked(None, [Violation("metadata.name" if not name else "metadata.namespace",
                                            "name the template to validate the update of", "REQUIRED")])
        try:
            current = await self.cluster.get(ns, name)
        except NotFound:
            return Checked(None, [Violation("metadata.name", f"no template {ns}/{name} to update", "NOT_FOUND")])
        return check_update(current, parsed, [], self.policy)

    async def _dry_run(self, obj: dict[str, Any], *, update: bool) -> tuple[list[Violation], dict[str, Any] | None]:
        """The apiserver's refusals of ``obj`` (server-side dry run), or the object it would store."""
        try:
            if update:
                return [], await self.cluster.replace(obj, dry_run=True)
            return [], await self.cluster.create(obj, dry_run=True)
        except InvalidArgument as exc:
            return exc.violations, None
        except AlreadyExists:
            meta = obj["metadata"]
            return [Violation("metadata.name", f"a GameServerSet {meta['namespace']}/{meta['name']} already exists",
                              "ALREADY_EXISTS")], None
        except Aborted:
            return [Violation("metadata.resourceVersion", "the template changed since it was read", "CONFLICT")], None

    # -- create ------------------------------------------------------------------

    async def create(self, namespace: str, parsed: manifest.Parsed,
                     validate_only: bool) -> TemplateChange:
        checked = check_new(parsed, self.policy, namespace)
        audit.note(validate_only=validate_only, warnings=[w.reason for w in checked.warnings])
        if not checked.ok:
            raise refuse(checked.violations, "the template is not valid")
        written = await self.cluster.create(checked.manifest, dry_run=validate_only)
        warnings = checked.warnings + pruned(checked.manifest, written)
        audit.note(uid=str(written.get("metadata", {}).get("uid", "")), warnings=[w.reason for w in warnings])
        return change(describe_or_flag(written, self.policy, Counts(), with_manifest=True)[0], warnings)

    # -- update ------------------------------------------------------------------

    async def update(self, namespace: str, name: str, parsed: manifest.Parsed, mask: list[str], *,
                     allow_restart: bool, etag: str, validate_only: bool) -> TemplateChange:
        audit.note(validate_only=validate_only, allow_restart=allow_restart, update_mask=mask)
        for attempt in range(UPDATE_ATTEMPTS):
            current = await self.cluster.get(namespace, name)
            changes.check_etag(current, etag)
            checked = check_update(current, parsed, mask, self.policy)
            if not checked.ok:
                raise refuse(checked.violations, "the update is not valid")
            proposal = checked.change
            audit.note(changed_paths=proposal.changed_paths, restarts=proposal.restarts,
                       warnings=[w.reason for w in checked.warnings])
            if proposal.restarts and not allow_restart:
                raise FailedPrecondition(
                    f"this change restarts every live instance of the template ({', '.join(proposal.restart_paths)});"
                    " check PreviewTemplateUpdate and set allow_restart to accept it", reason="RESTART_NOT_ALLOWED",
                    metadata={"changed_paths": ",".join(proposal.restart_paths)})
            if not proposal.changed_paths:
                return change(await self.catalog.describe_one(current, admin=True),
                              checked.warnings + [Violation("", "nothing to change", "NO_CHANGE")])
            try:
                written = await self.cluster.replace(checked.manifest, dry_run=validate_only)
            except Aborted:
                # A concurrent write. One by the instance service or the controller (replicas, reserved ids,
                # status) is no conflict for the admin: apply the same change to the fresh object. A concurrent
                # change of anything the admin controls means this update lost the race: ABORTED.
                if attempt == UPDATE_ATTEMPTS - 1 or \
                        changes.admin_part(await self.cluster.get(namespace, name)) != changes.admin_part(current):
                    raise Aborted("the template was changed concurrently; read it again and retry",
                                  reason="CONCURRENT_UPDATE", retry_after=0.5) from None
                continue
            warnings = checked.warnings + pruned(checked.manifest, written)
            audit.note(resource_version=str(written.get("metadata", {}).get("resourceVersion", "")),
                       warnings=[w.reason for w in warnings])
            return change(await self.catalog.describe_one(written, admin=True), warnings)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- preview -----------------------------------------------------------------

    async def preview(self, namespace: str, name: str, parsed: manifest.Parsed, mask: list[str],
                      rollout_policy: str = "", idle_after: timedelta | None = None) -> PreviewTemplateUpdateResponse:
        """``rollout_policy``/``idle_after``: the request's (a RolloutPolicy name; empty or unspecified: the
        template's, else the configured default)."""
        current = await self.cluster.get(namespace, name)
        checked = check_update(current, parsed, mask, self.policy)
        violations = list(checked.violations)
        if checked.ok and checked.change.changed_paths:
            violations += (await self._dry_run(copy.deepcopy(checked.manifest), update=True))[0]
        if checked.proposal is None:
            return preview(violations)
        paths = checked.proposal.changed_paths
        chosen = rollout_preview.settings(
            rollout_policy, idle_after, (current.get("metadata") or {}).get("annotations"),
            self.policy.annotation_prefix, self.policy.rollout_policy, self.policy.rollout_idle_after_seconds)
        in_place = upgrades.in_place(paths)
        entries: list[rollout_preview.Entry] = []
        if upgrades.restarts(paths):
            entries = rollout_preview.entries(await self.table.owned(namespace, name),
                                              await self.cluster.live_ids(namespace, name), chosen,
                                              datetime.now(UTC), in_place)
        return preview(violations, paths, entries, chosen, in_place, name=(namespace, name))
