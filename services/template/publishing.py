"""Writing templates: ValidateTemplate, CreateTemplate, UpdateTemplate and PreviewTemplateUpdate.

Every write runs the pure validation first (all violations at once, nothing
written when there is one), then lets the apiserver judge (a server-side dry
run, or the write itself), whose refusals come back as field violations.
"""
from __future__ import annotations

import copy
from datetime import UTC, datetime
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
from aigc_gateway.idempotency import Claim, IdempotencyStore, current_claim
from aigc_gateway.upgrades import Policy

from . import changes, faults, manifest, replay, rollout_preview, rollout_write
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
from .policy import Policy as TemplatePolicy
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
    def __init__(self, cluster: TemplateCluster, catalog: Catalog, table: InstanceTable, policy: TemplatePolicy):
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
        claim = None if validate_only else current_claim.get()
        try:  # the write carries the call's digest: a retry after a crash finds what it made (replay.py)
            written = await self.cluster.create(replay.mark(checked.manifest, self.policy, claim), dry_run=validate_only)
        except AlreadyExists:
            earlier = await replay.written_by(self.cluster, checked.manifest, self.policy, claim)
            if earlier is None:
                raise
            written = earlier
        await faults.reach("template.create.after_write")
        warnings = checked.warnings + pruned(checked.manifest, written)
        audit.note(uid=str(written.get("metadata", {}).get("uid", "")), warnings=[w.reason for w in warnings])
        return change(describe_or_flag(written, self.policy, Counts(), with_manifest=True)[0], warnings)

    # -- update ------------------------------------------------------------------

    async def update(self, namespace: str, name: str, parsed: manifest.Parsed, mask: list[str], *,
                     allow_restart: bool, etag: str, validate_only: bool,
                     asked: rollout_write.Requested | None = None) -> TemplateChange:
        """``asked``: the request's rollout policy and threshold (docs/upgrade.md). A pod-template change under
        WHEN_IDLE or MANUAL is written paused, for the instance service's rollout to move each instance when it
        may; under IMMEDIATE it restarts every live instance now and needs ``allow_restart``."""
        asked = asked or rollout_write.Requested()
        audit.note(validate_only=validate_only, allow_restart=allow_restart, update_mask=mask)
        claim = None if validate_only else current_claim.get()
        for attempt in range(UPDATE_ATTEMPTS):
            current = await self.cluster.get(namespace, name)
            if claim is not None and replay.carries(current, self.policy, claim):  # an earlier attempt wrote it, died
                return await self._updated_before(current, parsed, mask, asked, claim)
            changes.check_etag(current, etag)
            checked = check_update(current, parsed, mask, self.policy, asked)
            if not checked.ok:
                raise refuse(checked.violations, "the update is not valid")
            proposal, rollout = checked.change, checked.rollout
            audit.note(changed_paths=proposal.changed_paths, restarts=proposal.restarts,
                       warnings=[w.reason for w in checked.warnings])
            if rollout is not None and proposal.restarts:
                audit.note(rollout_policy=rollout.policy.value,
                           rollout_idle_after_seconds=int(rollout.idle_after.total_seconds()))
            if proposal.restarts and rollout is not None and rollout.policy is Policy.IMMEDIATE and \
                    not allow_restart:
                why = (f"under the rollout policy IMMEDIATE this change restarts every live instance of the template "
                       f"now ({', '.join(proposal.restart_paths)}); check PreviewTemplateUpdate and set allow_restart "
                       "to accept it, or roll it out WHEN_IDLE or MANUAL")
                raise FailedPrecondition(why, reason="RESTART_NOT_ALLOWED",
                                         violations=[Violation("allow_restart", why, "RESTART_NOT_ALLOWED")],
                                         metadata={"changed_paths": ",".join(proposal.restart_paths)})
            if not proposal.changed_paths:
                return change(await self.catalog.describe_one(current, admin=True),
                              checked.warnings + [Violation("", "nothing to change", "NO_CHANGE")])
            if claim is not None:  # the answer's warnings, which a retry could not work out again (replay.py)
                await IdempotencyStore.commit_effect_now(self.table.db, claim, replay.update_effect(checked.warnings))
            try:
                written = await self.cluster.replace(replay.mark(checked.manifest, self.policy, claim),
                                                     dry_run=validate_only)
            except Aborted:
                # A concurrent write. One by the instance service or the controller (replicas, reserved ids,
                # status) is no conflict for the admin: apply the same change to the fresh object. A concurrent
                # change of anything the admin controls means this update lost the race: ABORTED.
                if attempt == UPDATE_ATTEMPTS - 1 or \
                        changes.admin_part(await self.cluster.get(namespace, name)) != changes.admin_part(current):
                    raise Aborted("the template was changed concurrently; read it again and retry",
                                  reason="CONCURRENT_UPDATE", retry_after=0.5) from None
                continue
            await faults.reach("template.update.after_write")
            warnings = checked.warnings + pruned(checked.manifest, written)
            audit.note(resource_version=str(written.get("metadata", {}).get("resourceVersion", "")),
                       warnings=[w.reason for w in warnings])
            return change(await self.catalog.describe_one(written, admin=True), warnings)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _updated_before(self, current: dict[str, Any], parsed: manifest.Parsed, mask: list[str],
                              asked: rollout_write.Requested, claim: Claim) -> TemplateChange:
        """The answer of an update an earlier attempt of this call wrote: the template as it is, with the
        warnings that attempt recorded (and the fields the cluster did not store)."""
        audit.note(resumed=True)
        checked = check_update(current, parsed, mask, self.policy, asked)
        warnings = replay.update_warnings(claim.effect)
        shown = (checked.warnings if warnings is None else warnings) + \
            (pruned(checked.manifest, current) if checked.obj is not None else [])
        return change(await self.catalog.describe_one(current, admin=True), shown)

    # -- preview -----------------------------------------------------------------

    async def preview(self, namespace: str, name: str, parsed: manifest.Parsed, mask: list[str],
                      asked: rollout_write.Requested | None = None) -> PreviewTemplateUpdateResponse:
        """``asked``: the request's policy and threshold (unset: the manifest's, the template's, else the configured
        defaults), chosen as UpdateTemplate chooses them."""
        for attempt in range(UPDATE_ATTEMPTS):
            current = await self.cluster.get(namespace, name)
            checked = check_update(current, parsed, mask, self.policy, asked or rollout_write.Requested())
            violations = list(checked.violations)
            if checked.ok and checked.change.changed_paths:
                refused = (await self._dry_run(copy.deepcopy(checked.manifest), update=True))[0]
                # The controller's status writes race the dry run's resourceVersion: that is no finding, read again.
                if any(v.reason == "CONFLICT" for v in refused) and attempt < UPDATE_ATTEMPTS - 1:
                    continue
                violations += refused
            break
        if checked.proposal is None or checked.rollout is None:
            return preview(violations)
        paths = checked.proposal.changed_paths
        chosen = checked.rollout
        in_place = upgrades.in_place(paths)
        entries: list[rollout_preview.Entry] = []
        if upgrades.restarts(paths):
            entries = rollout_preview.entries(await self.table.owned(namespace, name),
                                              await self.cluster.live_ids(namespace, name), chosen,
                                              datetime.now(UTC), in_place)
        return preview(violations, paths, entries, chosen, in_place, name=(namespace, name))
