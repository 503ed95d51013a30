"""The instance service's Kubernetes I/O: templates, the GameServerSet write, disks and pods.

Everything goes through the core :class:`~aigc_gateway.kube.Kube`; the
decisions are in :mod:`.allocator` and :mod:`.templates`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from aigc_gateway import okg
from aigc_gateway.errors import NotFound, Unavailable
from aigc_gateway.kube import ADVANCED_STATEFULSET, GAMESERVER, GSS, OWNER_GSS_LABEL, POD, PVC, Kube
from aigc_gateway.names import TemplateRef

from . import templates
from .allocator import Spec
from .invariants import Claim

log = logging.getLogger(__name__)

Obj = dict[str, Any]


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _claim(obj: Obj) -> Claim:
    meta = obj.get("metadata") or {}
    return Claim(meta.get("name", ""), _parse_time(meta.get("creationTimestamp")), bool(meta.get("deletionTimestamp")),
                 meta.get("uid", ""))


class Cluster:
    def __init__(self, kube: Kube, namespaces: Sequence[str], gss_labels: Mapping[str, str]):
        self.kube = kube
        self.namespaces = list(namespaces)
        self.gss_labels = dict(gss_labels)

    # -- templates ---------------------------------------------------------------------------------------

    async def template(self, ref: TemplateRef) -> Obj:
        """The template's GameServerSet; NOT_FOUND when it is missing or is not a template of this gateway."""
        if not okg.namespace_allowed(ref.namespace, self.namespaces):
            raise templates.not_found(ref)
        try:
            gss = await self.kube.get(GSS, ref.namespace, ref.template)
        except NotFound:
            raise templates.not_found(ref) from None
        if not okg.is_template(gss, self.namespaces, self.gss_labels):
            raise templates.not_found(ref)
        return gss

    async def usable_template(self, ref: TemplateRef) -> Obj:
        gss = await self.template(ref)
        templates.check_usable(ref, gss)
        return gss

    async def settled_template(self, ref: TemplateRef, timeout: float) -> Obj:
        """The GameServerSet once the controller has finished with the last write (see templates.settled).

        Read it; if the controller is still busy, watch that one object from the version read and take the
        first settled version it shows (no polling delay on top of the controller's own time)."""
        deadline = time.monotonic() + timeout
        while True:
            gss = await self.usable_template(ref)
            if templates.settled(gss):
                return gss
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"the OpenKruiseGame controller has not caught up with {ref.name} within "
                                  f"{timeout:.0f}s (is kruise-game running?)", reason="CONTROLLER_LAGGING",
                                  retry_after=5.0)
            try:
                async with asyncio.timeout(remaining):
                    found = await self._watch_until_settled(ref, gss)
            except TimeoutError:
                continue  # the loop reads once more and reports the lag
            if found is not None:
                templates.check_usable(ref, found)
                return found

    async def _watch_until_settled(self, ref: TemplateRef, gss: Obj) -> Obj | None:
        """The first settled version after ``gss``; None when the watch ends first (the caller reads again)."""
        async for kind, obj in self.kube.watch(
                GSS, ref.namespace, resource_version=gss["metadata"]["resourceVersion"],
                field_selector=f"metadata.name={ref.template}", timeout_seconds=60):
            if kind == "DELETED":
                raise templates.not_found(ref)
            if kind in ("ADDED", "MODIFIED") and templates.settled(obj):
                return obj
            if kind == "ERROR":
                return None
        return None

    async def write_spec(self, gss: Obj, after: Spec, partition: int | None = None) -> Obj:
        """PUT (R, X) with the resourceVersion read: a concurrent change fails with Aborted (409). ``partition``:
        the rolling update's partition set in the same write (a pause or uninstall of a held id, issue 14)."""
        body = templates.with_spec(gss, after)
        if partition is not None:
            body["spec"].setdefault("updateStrategy", {}).setdefault("rollingUpdate", {})["partition"] = partition
        return await self.kube.replace(GSS, gss["metadata"]["namespace"], body)

    async def fence(self, gss: Obj, marker: str) -> Obj:
        """Move the GameServerSet past the resourceVersion of ``gss`` (an annotation, patched conditionally on that
        version: Aborted when it has moved already), so that no write conditioned on that version can land any more
        (resolution.py). A merge patch: the HTTP client sends it once (it repeats only PUT, DELETE and reads)."""
        meta = gss["metadata"]
        return await self.kube.patch(GSS, meta["namespace"], meta["name"], {"metadata": {
            "resourceVersion": meta["resourceVersion"], "annotations": {okg.FENCE_ANNOTATION: marker}}})

    async def list_templates(self) -> list[Obj]:
        out: list[Obj] = []
        scoped: list[str | None] = list(self.namespaces) or [None]  # None: every namespace
        for ns in scoped:
            listed = await self.kube.list(GSS, ns, label_selector=okg.label_selector(self.gss_labels))
            out.extend(g for g in listed.get("items") or [] if okg.is_template(g, self.namespaces, self.gss_labels))
        return out

    # -- disks -------------------------------------------------------------------------------------------

    async def claims(self, ref: TemplateRef, vcts: Sequence[str]) -> dict[str, Claim]:
        """PVCs of this template's ids: named `<vct>-<gss>-<id>`, or carrying the StatefulSet's owner-gss label
        (a disk of a volumeClaimTemplate an upgrade renamed or removed). A name alone that merely ends like
        ours may belong to another template (`x-<gss>` makes the same suffix) and is left alone."""
        listed = await self.kube.list(PVC, ref.namespace)
        out: dict[str, Claim] = {}
        for item in listed.get("items") or []:
            meta = item.get("metadata") or {}
            name = meta.get("name", "")
            labelled = (meta.get("labels") or {}).get(OWNER_GSS_LABEL) == ref.template
            named = any(okg.claim_id(name, v, ref.template) is not None for v in vcts)
            if labelled or named:
                out[name] = _claim(item)
        return out

    def claim_names(self, ref: TemplateRef, gss: Obj | None, instance_id: int,
                    present: Iterable[str] = ()) -> list[str]:
        """Every disk name of the id: one per volumeClaimTemplate, plus any of ``present`` (from :meth:`claims`)
        with the id's suffix."""
        names = {okg.claim_name(v, ref.template, instance_id) for v in (templates.vct_names(gss) if gss else [])}
        suffix = f"-{ref.template}-{instance_id}"
        names |= {n for n in present if n.endswith(suffix)}
        return sorted(names)

    async def claim(self, namespace: str, name: str) -> Claim | None:
        """One PVC read live (never from a watch cache); None when it is gone."""
        try:
            return _claim(await self.kube.get(PVC, namespace, name))
        except NotFound:
            return None

    async def delete_claim(self, namespace: str, name: str, uid: str) -> None:
        """Delete that PVC, not a same-named successor (Aborted when the uid differs); one gone is fine."""
        await self.kube.delete(PVC, namespace, name, uid=uid, missing_ok=True)

    # -- pods --------------------------------------------------------------------------------------------

    async def pod(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self.kube.get(POD, namespace, name)
        except NotFound:
            return None

    async def delete_pod(self, namespace: str, name: str, uid: str) -> bool:
        return await self.kube.delete(POD, namespace, name, uid=uid, missing_ok=True)

    async def pods(self, ref: TemplateRef) -> list[Obj]:
        """The template's pods, read live (the rollout plans on them, never on a watch cache)."""
        listed = await self.kube.list(POD, ref.namespace, label_selector=okg.owner_selector(ref.template))
        return list(listed.get("items") or [])

    # -- the rolling update (issue 14, services/instance/rollouts.py) --------------------------------------

    async def stateful_set(self, ref: TemplateRef) -> Obj | None:
        """The template's Advanced StatefulSet (its status has the update revision), read live."""
        try:
            return await self.kube.get(ADVANCED_STATEFULSET, ref.namespace, ref.template)
        except NotFound:
            return None

    async def set_rolling(self, ref: TemplateRef, partition: int, paused: bool | None) -> None:
        """The GameServerSet's partition (and `paused`), in a merge patch of the update strategy alone: the
        controller's own writes (the reserve list, the status) never touch it."""
        rolling: Obj = {"partition": partition}
        if paused is not None:
            rolling["paused"] = paused
        await self.kube.patch(GSS, ref.namespace, ref.template, {"spec": {"updateStrategy": {"rollingUpdate": rolling}}})

    async def set_priority(self, ref: TemplateRef, instance_id: int, priority: int) -> None:
        """`GameServer.spec.updatePriority` (the controller copies it to the pod label); a GameServer gone is fine."""
        try:
            await self.kube.patch(GAMESERVER, ref.namespace, okg.game_server_name(ref.template, instance_id),
                                  {"spec": {"updatePriority": priority}})
        except NotFound:
            pass

    async def priority(self, ref: TemplateRef, instance_id: int) -> int | None:
        try:
            gs = await self.kube.get(GAMESERVER, ref.namespace, okg.game_server_name(ref.template, instance_id))
        except NotFound:
            return None
        value = (gs.get("spec") or {}).get("updatePriority")
        return int(value) if value is not None else 0

    async def set_pod_label(self, ref: TemplateRef, instance_id: int, label: str, value: str | None) -> None:
        """One label on the id's pod (None removes it); a pod gone is fine."""
        try:
            await self.kube.patch(POD, ref.namespace, okg.game_server_name(ref.template, instance_id),
                                  {"metadata": {"labels": {label: value}}})
        except NotFound:
            pass

    async def pod_ids(self, ref: TemplateRef) -> frozenset[int]:
        listed = await self.kube.list(POD, ref.namespace, label_selector=okg.owner_selector(ref.template))
        ids = (okg.instance_id(item["metadata"]["name"], ref.template) for item in listed.get("items") or [])
        return frozenset(i for i in ids if i is not None)

    async def observe(self, namespace: str, name: str, claim_names: Iterable[str]) -> tuple[Obj | None, Obj | None,
                                                                                           dict[str, Obj]]:
        """(GameServer, pod, PVCs by name) read directly: for answers given before the watch caches are ready."""
        async def get(kind: Any, obj_name: str) -> Obj | None:
            try:
                return await self.kube.get(kind, namespace, obj_name)
            except NotFound:
                return None

        names = list(claim_names)
        gs, pod, *claims = await asyncio.gather(get(GAMESERVER, name), get(POD, name), *(get(PVC, n) for n in names))
        return gs, pod, {n: c for n, c in zip(names, claims, strict=True) if c is not None}
