"""ImportFromLogto: ownership rows from the custom data the original AIGC-Gateway wrote.

1. Read every user (paged) and classify each custom-data item (:func:`.entries.parse_entry`):
   instance entries are claims; ``null`` items (the original's removed instances) are skipped and
   reported; malformed entries are conflicts; anything else is another application's data.
2. Per template claimed: under the instance service's allocator lock for the template, read the
   GameServerSet (R, X), its PVCs and the ``instances`` rows, let :func:`.importplan.plan_template`
   decide, and insert its rows (with the change notification) and its new disputes (an id several
   users claim: ``disputed_instances``, resolved by an admin, see disputes.py) — unless ``dry_run``.

Idempotent: rows already present win, so a second run reports the same entries as unchanged. A retry of
the same request after a crash is not a second run: each template's part of the report is committed on the
call's replay claim with its rows (replay.py), and the retry reports those parts as the first attempt did
(imported, not unchanged) and plans only the templates it had not reached.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from aigc_gateway import kube, okg
from aigc_gateway.audit import AuditLog
from aigc_gateway.config import Settings
from aigc_gateway.context import principal_var
from aigc_gateway.db import Database
from aigc_gateway.db.models import (
    DisputedInstanceRow,
    InstanceRow,
    allocator_lock,
    notify_instance_change,
)
from aigc_gateway.errors import NotFound
from aigc_gateway.idempotency import Claim as ReplayClaim
from aigc_gateway.idempotency import IdempotencyStore
from aigc_gateway.okg import SlotState

from . import disputes, faults, metrics, mirrorstore, replay
from .entries import NULL, Entry, Malformed, parse_entry
from .importplan import (
    CONFLICT,
    DISPUTED,
    IMPORTED,
    UNCHANGED,
    Claim,
    Dispute,
    GssState,
    Row,
    plan_template,
)
from .logto import LogtoClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportEntry:
    user: str
    key: str
    namespace: str
    template: str
    id: int  # -1: none (null entry, or no id could be read)
    reason: str = ""


@dataclass
class ImportResult:
    users_scanned: int = 0
    imported: list[ReportEntry] = field(default_factory=list)
    unchanged: list[ReportEntry] = field(default_factory=list)
    conflicts: list[ReportEntry] = field(default_factory=list)
    skipped: list[ReportEntry] = field(default_factory=list)
    slots_created: dict[str, list[int]] = field(default_factory=dict)  # "ns/tpl:SLOT" -> ids (unclaimed)
    disputes: list[tuple[str, str, Dispute]] = field(default_factory=list)  # (ns, tpl, dispute), new or known
    dry_run: bool = False


def _report(user: str, entry: Entry, reason: str = "") -> ReportEntry:
    return ReportEntry(user, entry.key, entry.namespace, entry.template, entry.id, reason)


class Importer:
    def __init__(self, db: Database, client: LogtoClient, kube_factory: Callable[[], Awaitable[kube.Kube]],
                 settings: Settings, audit: AuditLog):
        self.db = db
        self.client = client
        self.kube_factory = kube_factory
        self.settings = settings
        self.audit = audit

    async def run(self, *, dry_run: bool = False, claim: ReplayClaim | None = None) -> ImportResult:
        result = ImportResult(dry_run=dry_run)
        # "ns/tpl" -> that template's part of the report, committed with its rows (by an earlier attempt too).
        done: dict[str, dict[str, Any]] = {} if dry_run else dict(
            (replay.prior(claim, "import") or {}).get("templates") or {})
        claims: dict[tuple[str, str], list[Claim]] = defaultdict(list)
        async for user in self.client.iter_users():
            result.users_scanned += 1
            user_id = str(user.get("id") or "")
            data = user.get("customData")
            for key, value in (data.items() if isinstance(data, dict) else ()):
                parsed = parse_entry(key, value)
                if parsed == NULL:
                    result.skipped.append(ReportEntry(user_id, key, "", "", -1, "null entry: an instance the "
                                                      "original gateway removed"))
                elif isinstance(parsed, Malformed):
                    result.conflicts.append(ReportEntry(user_id, key, parsed.namespace, parsed.template, -1,
                                                        parsed.reason))
                elif isinstance(parsed, Entry):
                    claims[(parsed.namespace, parsed.template)].append(Claim(user_id, parsed))
        if claims:
            client = await self.kube_factory()
            for (namespace, template), group in sorted(claims.items()):
                await self._template(client, namespace, template, group, result, claim, done)
        for name, entries in (("imported", result.imported), ("unchanged", result.unchanged),
                              ("conflict", result.conflicts), ("skipped", result.skipped)):
            metrics.IMPORT_ENTRIES.labels(name).inc(len(entries))
        if not dry_run:
            await disputes.update_gauge(self.db)
        if not dry_run:
            await self.audit.record("UserSync.Import", "", details={
                "users_scanned": result.users_scanned, "imported": len(result.imported),
                "unchanged": len(result.unchanged), "conflicts": len(result.conflicts),
                "skipped": len(result.skipped), "slots_created": result.slots_created,
                "disputed": [f"{ns}/{tpl}/{d.id}" for ns, tpl, d in result.disputes]},
                **({} if _in_rpc() else {"actor": "service:usersync", "actor_kind": "service"}))
        return result

    async def _template(self, client: kube.Kube, namespace: str, template: str, group: list[Claim],
                        result: ImportResult, claim: ReplayClaim | None, done: dict[str, dict[str, Any]]) -> None:
        key = f"{namespace}/{template}"
        if key in done:  # imported by an earlier attempt of this request: report it as that attempt did
            _restore(result, done[key])
            return
        marks = _marks(result)
        async with self.db.lock(allocator_lock(namespace, template)) as session:
            gss = await self._read_gss(client, namespace, template)
            rows = (await session.execute(select(InstanceRow).where(
                InstanceRow.namespace == namespace, InstanceRow.template == template))).scalars()
            existing = {r.id: Row(r.id, r.slot, r.owner) for r in rows}
            known = await disputes.recorded(session, namespace, template)
            plan = plan_template(gss, group, existing, {i: d.claimants for i, d in known.items()})
            for outcome in plan.outcomes:
                entry = _report(outcome.user, outcome.entry, outcome.reason)
                # A disputed claim is reported as a conflict (nothing imported) and its id in `disputes`.
                {IMPORTED: result.imported, UNCHANGED: result.unchanged, CONFLICT: result.conflicts,
                 DISPUTED: result.conflicts}[outcome.result].append(entry)
            result.disputes += [(namespace, template, d) for d in plan.disputes]
            result.disputes += [(namespace, template, d) for i, d in sorted(known.items())
                                if any(c.entry.id == i for c in group)]
            for instance_id, why in plan.unclaimed:
                result.conflicts.append(ReportEntry("", "", namespace, template, instance_id, why))
            for row in plan.rows:
                if row.owner is None:
                    result.slots_created.setdefault(f"{namespace}/{template}:{row.slot}", []).append(row.id)
            if result.dry_run:
                return
            now = datetime.now(UTC)
            for row in plan.rows:
                # An owner's install time is their disk's age (invariants: a disk older than its owner's
                # install would be someone else's data); a LIVE row's state changed then too.
                since = min(row.since, now) if row.since else now
                session.add(InstanceRow(namespace=namespace, template=template, id=row.id, slot=row.slot,
                                        owner=row.owner, orphaned=False, created_at=since, updated_at=now,
                                        state_changed_at=since if row.slot == SlotState.LIVE.value else now,
                                        last_access_at=None))
            for dispute in plan.disputes:
                session.add(DisputedInstanceRow(namespace=namespace, template=template, id=dispute.id,
                                                claimants=list(dispute.claimants), state=dispute.state,
                                                created_at=now))
            await session.flush()
            for row in plan.rows:
                await notify_instance_change(session, namespace, template, row.id)
            for outcome in plan.outcomes:
                if outcome.result in (IMPORTED, UNCHANGED):
                    await mirrorstore.record(session, outcome.user, [(namespace, template, outcome.entry.id)], now)
            if claim is not None:
                done[key] = _part(result, marks, key)
                await IdempotencyStore.commit_effect(session, claim, {"op": "import", "templates": done})
        await faults.reach("usersync.import.after_template")

    async def read_gss(self, namespace: str, template: str) -> GssState:
        """The template's GameServerSet and disks as the import reads them (for ResolveDisputedInstance)."""
        return await self._read_gss(await self.kube_factory(), namespace, template)

    async def _read_gss(self, client: kube.Kube, namespace: str, template: str) -> GssState:
        if not okg.namespace_allowed(namespace, self.settings.namespaces):
            return GssState(problem=f"namespace {namespace} is not one the gateway manages")
        try:
            gss = await client.get(kube.GSS, namespace, template)
        except NotFound:
            return GssState(problem=f"template {namespace}/{template} not found (no such GameServerSet)")
        missing = okg.missing_labels((gss.get("metadata") or {}).get("labels"), self.settings.gss_labels)
        if missing:
            return GssState(problem=f"GameServerSet {namespace}/{template} is not a template (labels {missing} "
                                    "missing)")
        spec = gss.get("spec") or {}
        try:
            reserved = okg.parse_reserve(spec.get("reserveGameServerIds"))
        except ValueError as exc:
            return GssState(problem=str(exc))
        replicas = int(spec.get("replicas") or 0)
        claim_names = [(v.get("metadata") or {}).get("name") for v in
                       (spec.get("gameServerTemplate") or {}).get("volumeClaimTemplates") or []]
        created: dict[int, datetime] = {}
        if claim_names:
            pvcs = await client.list(kube.PVC, namespace)
            for pvc in pvcs.get("items") or []:
                meta = pvc.get("metadata") or {}
                name = meta.get("name", "")
                for claim in claim_names:
                    i = okg.claim_id(name, claim, template) if claim else None
                    if i is not None:
                        when = _timestamp(meta.get("creationTimestamp"))
                        created[i] = min(created.get(i, when), when)
        return GssState(replicas=replicas, reserved=reserved, pvc_ids=frozenset(created),
                        has_disks=bool(claim_names), pvc_created=created)


def _marks(result: ImportResult) -> tuple[int, int, int, int]:
    return len(result.imported), len(result.unchanged), len(result.conflicts), len(result.disputes)


def _part(result: ImportResult, marks: tuple[int, int, int, int], key: str) -> dict[str, Any]:
    """What one template added to the report since ``marks``, as JSON."""
    def entries(items: list[ReportEntry]) -> list[list[Any]]:
        return [[e.user, e.key, e.namespace, e.template, e.id, e.reason] for e in items]
    return {"imported": entries(result.imported[marks[0]:]), "unchanged": entries(result.unchanged[marks[1]:]),
            "conflicts": entries(result.conflicts[marks[2]:]),
            "disputes": [[ns, tpl, d.id, list(d.claimants), d.state] for ns, tpl, d in result.disputes[marks[3]:]],
            "slots_created": {k: v for k, v in result.slots_created.items() if k.startswith(key + ":")}}


def _restore(result: ImportResult, part: dict[str, Any]) -> None:
    result.imported += [ReportEntry(*e) for e in part["imported"]]
    result.unchanged += [ReportEntry(*e) for e in part["unchanged"]]
    result.conflicts += [ReportEntry(*e) for e in part["conflicts"]]
    result.disputes += [(ns, tpl, Dispute(i, tuple(c), state)) for ns, tpl, i, c, state in part["disputes"]]
    result.slots_created.update(part["slots_created"])


def _timestamp(value: object) -> datetime:
    """A PVC's creationTimestamp; now when unreadable (then the id's owner dates from the import)."""
    try:
        moment = datetime.fromisoformat(str(value))  # Python 3.11 reads the trailing Z
    except ValueError:
        return datetime.now(UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _in_rpc() -> bool:
    return principal_var.get() is not None
