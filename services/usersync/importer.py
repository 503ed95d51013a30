"""ImportFromLogto: ownership rows from the custom data the original AIGC-Gateway wrote.

1. Read every user (paged) and classify each custom-data item (:func:`.entries.parse_entry`):
   instance entries are claims; ``null`` items (the original's removed instances) are skipped and
   reported; malformed entries are conflicts; anything else is another application's data.
2. Per template claimed: under the instance service's allocator lock for the template, read the
   GameServerSet (R, X), its PVCs and the ``instances`` rows, let :func:`.importplan.plan_template`
   decide, and insert its rows (with the change notification) — unless ``dry_run``.

Idempotent: rows already present win, so a second run reports the same entries as unchanged.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select

from aigc_gateway import kube
from aigc_gateway.audit import AuditLog
from aigc_gateway.config import Settings
from aigc_gateway.context import principal_var
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, allocator_lock, notify_instance_change
from aigc_gateway.errors import NotFound

from . import metrics, mirrorstore
from .entries import NULL, Entry, Malformed, parse_entry
from .importplan import CONFLICT, IMPORTED, UNCHANGED, Claim, GssState, Row, parse_reserved, plan_template
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

    async def run(self, *, dry_run: bool = False) -> ImportResult:
        result = ImportResult(dry_run=dry_run)
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
                await self._template(client, namespace, template, group, result)
        for name, entries in (("imported", result.imported), ("unchanged", result.unchanged),
                              ("conflict", result.conflicts), ("skipped", result.skipped)):
            metrics.IMPORT_ENTRIES.labels(name).inc(len(entries))
        if not dry_run:
            await self.audit.record("UserSync.Import", "", details={
                "users_scanned": result.users_scanned, "imported": len(result.imported),
                "unchanged": len(result.unchanged), "conflicts": len(result.conflicts),
                "skipped": len(result.skipped), "slots_created": result.slots_created},
                **({} if _in_rpc() else {"actor": "service:usersync", "actor_kind": "service"}))
        return result

    async def _template(self, client: kube.Kube, namespace: str, template: str, group: list[Claim],
                        result: ImportResult) -> None:
        async with self.db.lock(allocator_lock(namespace, template)) as session:
            gss = await self._read_gss(client, namespace, template)
            rows = (await session.execute(select(InstanceRow).where(
                InstanceRow.namespace == namespace, InstanceRow.template == template))).scalars()
            existing = {r.id: Row(r.id, r.slot, r.owner) for r in rows}
            plan = plan_template(gss, group, existing)
            for outcome in plan.outcomes:
                entry = _report(outcome.user, outcome.entry, outcome.reason)
                {IMPORTED: result.imported, UNCHANGED: result.unchanged, CONFLICT: result.conflicts}[
                    outcome.result].append(entry)
            for instance_id, why in plan.unclaimed:
                result.conflicts.append(ReportEntry("", "", namespace, template, instance_id, why))
            for row in plan.rows:
                if row.owner is None:
                    result.slots_created.setdefault(f"{namespace}/{template}:{row.slot}", []).append(row.id)
            if result.dry_run:
                return
            now = datetime.now(timezone.utc)
            for row in plan.rows:
                session.add(InstanceRow(namespace=namespace, template=template, id=row.id, slot=row.slot,
                                        owner=row.owner, orphaned=False, created_at=now, updated_at=now,
                                        state_changed_at=now, last_access_at=None))
            await session.flush()
            for row in plan.rows:
                await notify_instance_change(session, namespace, template, row.id)
            for outcome in plan.outcomes:
                if outcome.result in (IMPORTED, UNCHANGED):
                    await mirrorstore.record(session, outcome.user, [(namespace, template, outcome.entry.id)], now)

    async def _read_gss(self, client: kube.Kube, namespace: str, template: str) -> GssState:
        if self.settings.namespaces and namespace not in self.settings.namespaces:
            return GssState(problem=f"namespace {namespace} is not one the gateway manages")
        try:
            gss = await client.get(kube.GSS, namespace, template)
        except NotFound:
            return GssState(problem=f"template {namespace}/{template} not found (no such GameServerSet)")
        labels = (gss.get("metadata") or {}).get("labels") or {}
        missing = {k: v for k, v in self.settings.gss_labels.items() if labels.get(k) != v}
        if missing:
            return GssState(problem=f"GameServerSet {namespace}/{template} is not a template (labels {missing} "
                                    "missing)")
        spec = gss.get("spec") or {}
        try:
            reserved = parse_reserved(spec.get("reserveGameServerIds"))
        except ValueError as exc:
            return GssState(problem=str(exc))
        replicas = int(spec.get("replicas") or 0)
        claim_names = [(v.get("metadata") or {}).get("name") for v in
                       (spec.get("gameServerTemplate") or {}).get("volumeClaimTemplates") or []]
        pvc_ids: set[int] = set()
        if claim_names:
            pvcs = await client.list(kube.PVC, namespace)
            names = {(p.get("metadata") or {}).get("name", "") for p in pvcs.get("items") or []}
            for name in names:
                for claim in claim_names:
                    prefix = f"{claim}-{template}-"
                    if claim and name.startswith(prefix) and name[len(prefix):].isdecimal():
                        pvc_ids.add(int(name[len(prefix):]))
        return GssState(replicas=replicas, reserved=reserved, pvc_ids=frozenset(pvc_ids))



def _in_rpc() -> bool:
    return principal_var.get() is not None
