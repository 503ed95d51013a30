"""CheckConsistency's I/O: a snapshot of PostgreSQL, the GameServerSet, its pods and disks, under the lock.

Ids usersync's import found claimed by several users (``disputed_instances``, see docs/usersync.md)
have no slot on purpose: they are reported as DISPUTED, not as the drift their missing row looks like.
"""
from __future__ import annotations

from sqlalchemy import select

from aigc_gateway.db.models import DisputedInstanceRow
from aigc_gateway.errors import FailedPrecondition, NotFound
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import SlotState

from . import invariants, templates
from .cluster import Cluster
from .invariants import Finding, Snapshot
from .lifecycle import Lifecycle
from .slots import SlotStore, now, to_record

MISSING_ROW = ("LIVE_MISMATCH", "UNTRACKED_RESERVED")  # what a disputed id's absent slot looks like


class ConsistencyChecker:
    def __init__(self, lifecycle: Lifecycle, cluster: Cluster, store: SlotStore):
        self.lifecycle = lifecycle
        self.cluster = cluster
        self.store = store

    async def templates(self, namespace: str | None, template: str | None) -> list[TemplateRef]:
        """The templates a `namespaces/{ns|-}/templates/{tpl|-}` parent covers: in the cluster or in the database."""
        if namespace and template:
            return [TemplateRef(namespace, template)]
        found = {TemplateRef(g["metadata"]["namespace"], g["metadata"]["name"])
                 for g in await self.cluster.list_templates()}
        found |= set(await self.store.templates())
        return sorted(r for r in found if (namespace in (None, r.namespace)) and (template in (None, r.template)))

    async def snapshot(self, ref: TemplateRef) -> Snapshot | Finding:
        async with self.lifecycle.locked(ref):
            try:
                gss = await self.cluster.template(ref)
            except NotFound:
                gss = None
            try:
                spec = templates.spec_of(ref, gss) if gss is not None else None
            except FailedPrecondition as exc:
                return Finding(ref.name, -1, "RESERVE_LIST_INVALID", exc.message)
            async with self.lifecycle.db.session() as session:
                rows = await self.store.load(session, ref)
                intents = await self.store.intents(session, ref)
            claims = await self.cluster.claims(ref, templates.vct_names(gss) if gss else [])
            pods = await self.cluster.pod_ids(ref)
        return Snapshot(ref, spec, {i: to_record(r) for i, r in rows.items()},
                        templates.vct_names(gss) if gss else [], claims, pods, len(intents), now())

    async def check(self, ref: TemplateRef) -> list[Finding]:
        snap = await self.snapshot(ref)
        if isinstance(snap, Finding):
            return [snap]
        return await self._disputes(ref, invariants.check(snap))

    async def _disputes(self, ref: TemplateRef, findings: list[Finding]) -> list[Finding]:
        async with self.lifecycle.db.session() as session:
            disputed = {r.id: r for r in (await session.execute(select(DisputedInstanceRow).where(
                DisputedInstanceRow.namespace == ref.namespace, DisputedInstanceRow.template == ref.template)))
                .scalars()}
        if not disputed:
            return findings
        kept = [f for f in findings if not (f.id in disputed and f.code in MISSING_ROW)]
        kept += [Finding(ref.name, i, "DISPUTED", f"{r.state} id claimed by {', '.join(r.claimants)} in the original "
                         "gateway's data; out of allocation until an admin calls "
                         "UserSyncService.ResolveDisputedInstance") for i, r in disputed.items()]
        return sorted(kept, key=lambda f: (f.id, f.code))

    async def over_quota(self, refs: list[TemplateRef]) -> list[tuple[str, str]]:
        """Users owning instances of ``refs``, and those templates, above a quota limit (information, see
        quotas.Quotas.over)."""
        owners: set[str] = set()
        running: dict[TemplateRef, int] = {}
        async with self.lifecycle.db.session() as session:
            for ref in refs:
                rows = await self.store.load(session, ref)
                owners |= {r.owner for r in rows.values() if r.owner}
                running[ref] = sum(1 for r in rows.values() if r.slot == SlotState.LIVE.value)
        return await self.lifecycle.quotas.over(owners, running)
