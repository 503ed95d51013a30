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

The answer (the template as it was) is committed on the call's replay claim before step 2 (replay.py): a
retry of the same request after a crash answers with it and resumes steps 3-4, instead of NOT_FOUND.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aigc_gateway import audit, okg
from aigc_gateway.db.models import allocator_lock
from aigc_gateway.errors import FailedPrecondition, NotFound, Unavailable, Violation
from aigc_gateway.idempotency import IdempotencyStore, current_claim
from aigc_gateway.names import template_name

from . import changes, faults, replay
from .cluster import TemplateCluster
from .handoff import PURGE_INSTANCES, Handoff, Outcome
from .instances import InstanceTable
from .messages import Counts, DeleteTemplateResponse, Template, deletion, describe_or_flag
from .policy import Policy

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


def claim_templates(obj: dict[str, Any]) -> list[str]:
    """The names of the GameServerSet's volumeClaimTemplates."""
    def mapping(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}
    claims = mapping(mapping(obj.get("spec")).get("gameServerTemplate")).get("volumeClaimTemplates") or []
    return [n for c in claims if isinstance(c, dict) and (n := str(mapping(c.get("metadata")).get("name", "")))]


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

    async def delete(self, namespace: str, name: str, *, force: bool, etag: str) -> DeleteTemplateResponse:
        resource = template_name(namespace, name)
        claim = current_claim.get()
        effect = claim.effect if claim is not None else None
        current = await self._current(namespace, name) if effect else None
        if replay.delete_happened(effect, current):
            # The first attempt deleted and died before answering: its answer, and the rest of its cascade
            # (unless a same-named successor is there now: its objects are not this delete's to wait for).
            assert effect
            audit.note(resumed=True)
            known_ids, claims = list(effect["known_ids"]), set(effect["claims"])
            template, deleted_count = replay.deleted_template(effect), int(effect["deleted_count"])
            successor = current is not None and not (current.get("metadata") or {}).get("deletionTimestamp")
            if successor:
                return deletion(template, deleted_count, [], [], [])
        else:
            # Under the allocator lock from the count of instances to the delete of the GameServerSet: an install
            # either finished before (and is counted) or runs after (and finds no template). Released before
            # the hand-off, as PurgeInstances takes the same lock.
            async with self.table.db.lock(allocator_lock(namespace, name)):
                known_ids, claims, template, deleted_count = await self._check_and_delete(namespace, name, force,
                                                                                          etag)
        deleted_claims = await self._clear(namespace, name, claims)
        cleaned_users: list[str] = []
        warnings: list[Violation] = []
        # Without rows in the `instances` table there is no ownership or user data to clean up.
        for outcome in (await self._hand_off(resource)) if known_ids else []:
            if outcome.ok:
                if not cleaned_users and outcome.users:
                    cleaned_users = sorted(set(outcome.users))
            else:
                warnings.append(Violation(
                    outcome.step, f"did not complete ({outcome.detail}); the template's Kubernetes objects are gone; "
                    "DeleteTemplate with force on the same name resumes this cleanup", "CLEANUP_INCOMPLETE"))
        audit.note(deleted_claims=list(deleted_claims), cleaned_users=len(cleaned_users),
                   incomplete=[w.field for w in warnings])
        return deletion(template, deleted_count, deleted_claims, cleaned_users, warnings)

    async def _check_and_delete(self, namespace: str, name: str, force: bool,
                                etag: str) -> tuple[list[int], set[str], Template | None, int]:
        """Refuse a template in use (unless forced) and delete its GameServerSet; the ids the `instances`
        table knows, the claims to delete, the template as it was (None when its GameServerSet was
        already gone) and the count of instances deleted. Call it holding the allocator lock."""
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
        template: Template | None = None
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
            template = describe_or_flag(current, self.policy, Counts(live=replicas), with_manifest=True)[0]
            count = len(set(live) | {o.id for o in owned})
            await IdempotencyStore.commit_effect_now(self.table.db, current_claim.get(),
                                replay.delete_effect(template, str(meta.get("uid", "")), known_ids, claims, count))
            await faults.reach("template.delete.after_effect")
            await self.cluster.delete(namespace, name, str(meta.get("uid", "")))
            await faults.reach("template.delete.after_delete")
            audit.note(uid=str(meta.get("uid", "")), force=force)
            return known_ids, claims, template, count
        return known_ids, claims, template, len(set(live) | {o.id for o in owned})

    async def _current(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self.cluster.get(namespace, name)
        except NotFound:
            return None

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
