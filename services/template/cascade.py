"""DeleteTemplate: the GameServerSet, then every disk of the template, then the hand-off to the other services.

Steps, each idempotent so that a retry resumes where a failure stopped:

1. refuse (FAILED_PRECONDITION) while the template has instances or disks, unless ``force``;
2. delete the GameServerSet (background propagation, guarded by its uid; see cluster.py for why not
   foreground) and wait for it, its pods and its GameServers to go;
3. delete every claim `<vct>-<gss>-<id>` of every volumeClaimTemplate and every id the template
   may have used, and every claim labelled with the GameServerSet, then wait for them to go
   (UNAVAILABLE after `template.delete_wait_seconds`; retry to finish);
4. when the `instances` table knows the template: UserSyncService.CleanupTemplate, then
   InstanceService.PurgeInstances (see handoff.py); a step that fails is reported in the
   response's warnings, the audit event and the log, not raised.

When the GameServerSet is already gone but the `instances` table still knows the template, or
pods, GameServers or claims of it are left (a previous forced delete did not finish), a forced
delete runs steps 3-4 again.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aigc_gateway import audit, okg
from aigc_gateway.api.v1 import template_pb2
from aigc_gateway.db.models import allocator_lock
from aigc_gateway.errors import FailedPrecondition, NotFound, Unavailable, Violation
from aigc_gateway.names import template_name

from . import changes
from .cluster import TemplateCluster
from .describe import Counts, claim_templates, describe_or_flag
from .handoff import PURGE_INSTANCES, Handoff, Outcome
from .instances import InstanceTable
from .policy import Policy
from .publishing import violations_pb

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


def candidate_ids(obj: dict[str, Any], known: list[int]) -> set[int]:
    """Every id the template may have used: with no holes (docs/instance.md#the-allocator) they are below replicas + reserved."""
    spec = obj.get("spec") or {}
    replicas = spec.get("replicas")
    if not isinstance(replicas, int):
        replicas = 0
    try:
        reserved = okg.parse_reserve(spec.get("reserveGameServerIds"))
    except okg.ReserveListError:
        reserved = frozenset()
    return set(range(replicas + len(reserved))) | reserved | set(known)


def claim_names(obj: dict[str, Any], ids: set[int]) -> set[str]:
    name = (obj.get("metadata") or {}).get("name", "")
    return {okg.claim_name(vct, name, i) for vct in claim_templates(obj) for i in ids}


class Cascade:
    def __init__(self, cluster: TemplateCluster, table: InstanceTable, handoff: Handoff, policy: Policy,
                 wait_seconds: float):
        self.cluster = cluster
        self.table = table
        self.handoff = handoff
        self.policy = policy
        self.wait_seconds = wait_seconds

    async def delete(self, namespace: str, name: str, *, force: bool, etag: str) -> template_pb2.DeleteTemplateResponse:
        resource = template_name(namespace, name)
        response = template_pb2.DeleteTemplateResponse()
        # Under the allocator lock from the count of instances to the delete of the GameServerSet: an install
        # either finished before (and is counted) or runs after (and finds no template). Released before
        # the hand-off, as PurgeInstances takes the same lock.
        async with self.table.db.lock(allocator_lock(namespace, name)):
            known_ids, claims = await self._check_and_delete(namespace, name, force, etag, response)
        response.deleted_claims.extend(await self._clear(namespace, name, claims))
        # Without rows in the `instances` table there is no ownership or user data to clean up.
        for outcome in (await self._hand_off(resource)) if known_ids else []:
            if outcome.ok:
                if not response.cleaned_users and outcome.users:
                    response.cleaned_users.extend(sorted(set(outcome.users)))
            else:
                response.warnings.extend(violations_pb([Violation(
                    outcome.step, f"did not complete ({outcome.detail}); the template's Kubernetes objects are gone; "
                    "DeleteTemplate with force on the same name resumes this cleanup", "CLEANUP_INCOMPLETE")]))
        audit.note(deleted_claims=list(response.deleted_claims), cleaned_users=len(response.cleaned_users),
                   incomplete=[w.field for w in response.warnings])
        return response

    async def _check_and_delete(self, namespace: str, name: str, force: bool, etag: str,
                                response: template_pb2.DeleteTemplateResponse) -> tuple[list[int], set[str]]:
        """Refuse a template in use (unless forced) and delete its GameServerSet; the ids the `instances`
        table knows and the claims to delete. Call it holding the allocator lock."""
        resource = template_name(namespace, name)
        known_ids = await self.table.ids(namespace, name)
        owned = await self.table.owned(namespace, name)
        try:
            current: dict[str, Any] | None = await self.cluster.get(namespace, name)
        except NotFound:
            # Resume only a template of ours: a same-named GameServerSet that is not a template is left alone.
            if not force or await self.cluster.exists(namespace, name):
                raise
            left = await self.cluster.remnants(namespace, name, set())
            if not known_ids and not any(v for k, v in left.items() if k != "claims_to_delete"):
                raise
            current = None  # a forced delete that did not finish: resume it
            audit.note(resumed=True)
        live: list[int] = []
        claims: set[str] = set()
        if current is not None:
            meta = current["metadata"]
            changes.check_etag(current, etag)
            live = await self.cluster.live_ids(namespace, name)
            claims = claim_names(current, candidate_ids(current, known_ids))
            remnants = await self.cluster.remnants(namespace, name, claims)
            replicas = (current.get("spec") or {}).get("replicas") or 0
            if not force and (replicas or live or owned or remnants["claims"]):
                audit.note(live=len(live), owned=len(owned), claims=len(remnants["claims"]))
                raise FailedPrecondition(
                    f"template {resource} still has {max(replicas, len(live))} live instance(s), {len(owned)} "
                    f"owned instance(s) and {len(remnants['claims'])} disk(s); delete them first or set force "
                    "(which deletes them and their users' data)", reason="TEMPLATE_IN_USE",
                    metadata={"live": str(max(replicas, len(live))), "owned": str(len(owned)),
                              "claims": str(len(remnants["claims"]))})
            response.template.CopyFrom(describe_or_flag(current, self.policy, Counts(live=replicas),
                                                        with_manifest=True)[0])
            await self.cluster.delete(namespace, name, str(meta.get("uid", "")))
            audit.note(uid=str(meta.get("uid", "")), force=force)
        response.deleted_instance_count = len(set(live) | {o.id for o in owned})
        return known_ids, claims

    async def _clear(self, namespace: str, name: str, claims: set[str]) -> list[str]:
        """Wait for pods and GameServers to go, delete the claims, wait for everything to go."""
        deadline = time.monotonic() + self.wait_seconds
        deleted: set[str] = set()
        while True:
            remnants = await self.cluster.remnants(namespace, name, claims)
            to_delete = remnants.pop("claims_to_delete")
            log.debug("delete of %s/%s: remaining %s", namespace, name, {k: v for k, v in remnants.items() if v})
            if not any(remnants[k] for k in ("gameserverset", "statefulset", "pods", "gameservers")):
                # No pod mounts them any more, and no controller will make new ones: the disks can go.
                deleted.update(await self.cluster.delete_claims(namespace, to_delete))
            if not any(remnants.values()):
                return sorted(deleted)
            if time.monotonic() >= deadline:
                left = {k: v for k, v in remnants.items() if v}
                audit.note(remaining=left)
                log.warning("delete of %s/%s: still present after %.0fs: %s", namespace, name, self.wait_seconds, left)
                raise Unavailable(f"the template's objects are still being deleted after {self.wait_seconds:.0f}s: "
                                  f"{left}; DeleteTemplate with force resumes the delete", reason="DELETE_IN_PROGRESS",
                                  retry_after=5.0)
            await asyncio.sleep(POLL_SECONDS)

    async def _hand_off(self, resource: str) -> list[Outcome]:
        cleanup = await self.handoff.cleanup_users(resource)
        if not cleanup.ok:
            # PurgeInstances forgets the ownership rows that CleanupTemplate needs to find the users.
            return [cleanup, Outcome(PURGE_INSTANCES, False,
                                     f"not attempted because {cleanup.step} did not complete")]
        return [cleanup, await self.handoff.purge_instances(resource)]
