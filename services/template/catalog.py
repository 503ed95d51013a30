"""Reading templates: ListTemplates and GetTemplate, with instance counts. Any signed-in user.

A template the service cannot describe (see messages.flagged) never fails a read: admins see it
flagged UNDESCRIBABLE (so they can fix or delete it), other users do not see it at all.
"""
from __future__ import annotations

from typing import Any

from aigc_gateway import paging
from aigc_gateway.errors import NotFound, invalid

from .cluster import TemplateCluster
from .instances import LIVE, PAUSED, InstanceTable
from .messages import Counts, ListTemplatesResponse, Template, describe, describe_or_flag, sort_key, template_list
from .policy import Policy

DEFAULT_PAGE, MAX_PAGE = 50, 100
DESCRIBABLE_KEPT = 4096  # verdicts remembered (one per object version); forgotten all at once beyond


class Catalog:
    def __init__(self, cluster: TemplateCluster, table: InstanceTable, policy: Policy):
        self.cluster = cluster
        self.table = table
        self.policy = policy
        # (uid, resourceVersion) -> whether describe() succeeds: a user's list filters every template, and the
        # objects come from the watch cache, so most are the same version as on the previous call.
        self._verdicts: dict[tuple[str, str], bool] = {}

    def counts_for(self, obj: dict[str, Any], counts: dict[tuple[str, str, str], int]) -> Counts:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        replicas = (obj.get("spec") or {}).get("replicas")
        # Live: the GameServerSet's replicas are the running instances (the instance service keeps LIVE rows
        # equal to them); fall back on the rows for a GameServerSet without replicas.
        live = replicas if isinstance(replicas, int) else counts.get((*key, LIVE), 0)
        return Counts(live=live, paused=counts.get((*key, PAUSED), 0))

    async def describe_one(self, obj: dict[str, Any], *, admin: bool) -> Template:
        meta = obj.get("metadata") or {}
        counts = await self.table.counts({str(meta.get("namespace", ""))})
        template, ok = describe_or_flag(obj, self.policy, self.counts_for(obj, counts), with_manifest=admin)
        if not ok and not admin:
            raise NotFound(f"template {template.name} not found", reason="NOT_FOUND")
        return template

    def _shown(self, objects: list[dict[str, Any]], admin: bool) -> list[dict[str, Any]]:
        """Admins see every template; other users only those the service can describe."""
        if admin:
            return objects
        return [o for o in objects if self._describable(o)]

    def _describable(self, obj: dict[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        version = (str(meta.get("uid", "")), str(meta.get("resourceVersion", "")))
        known = self._verdicts.get(version) if all(version) else None
        if known is not None:
            return known
        try:
            describe(obj, self.policy, Counts(), with_manifest=False)
            verdict = True
        except Exception:  # noqa: BLE001 - logged where admins read it (describe_or_flag), not per user list
            verdict = False
        if all(version):
            if len(self._verdicts) >= DESCRIBABLE_KEPT:
                self._verdicts.clear()
            self._verdicts[version] = verdict
        return verdict

    async def get(self, namespace: str, name: str, *, admin: bool) -> Template:
        return await self.describe_one(await self.cluster.read(namespace, name), admin=admin)

    async def list(self, parent: str, namespace: str, page_size: int, page_token: str, *,
                   admin: bool) -> ListTemplatesResponse:
        size = paging.clamp(page_size, DEFAULT_PAGE, MAX_PAGE)
        bound_to = paging.fingerprint("templates", parent, admin)
        after = _position(paging.decode(page_token, bound_to)) if page_token else None
        objects = sorted(self._shown(await self.cluster.list(namespace), admin), key=lambda o: sort_key(o, self.policy))
        total = len(objects)
        if after is not None:
            # Keyset paging: templates added or removed meanwhile never shift the next page.
            objects = [o for o in objects if sort_key(o, self.policy) > after]
        page = objects[:size]
        counts = await self.table.counts({str((o.get("metadata") or {}).get("namespace", "")) for o in page})
        return template_list(
            [describe_or_flag(o, self.policy, self.counts_for(o, counts), with_manifest=admin)[0] for o in page], total,
            paging.encode(list(sort_key(page[-1], self.policy)), bound_to) if len(objects) > size else "")


def _position(value: Any) -> tuple[int, str, str]:
    if (isinstance(value, list) and len(value) == 3 and isinstance(value[0], int)
            and isinstance(value[1], str) and isinstance(value[2], str)):
        return value[0], value[1], value[2]
    raise invalid("page_token", "not a page token this server issued")
