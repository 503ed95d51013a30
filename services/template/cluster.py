"""The template service's Kubernetes adapter: GameServerSets that are templates, and what they leave behind.

All I/O goes through :class:`aigc_gateway.kube.Kube`. A GameServerSet is a
template when it is in a configured namespace (all when none are configured)
and carries the configured labels; anything else is NOT_FOUND here, so the
service can never touch a GameServerSet that is not one of its templates.
The catalog's reads (:meth:`TemplateCluster.list`, :meth:`TemplateCluster.read`)
come from the watch cache (watch.py); every other read is a live request, and
every write tells the cache what it wrote.
"""
from __future__ import annotations

import asyncio
import builtins  # TemplateCluster.list shadows the name in the class body
import logging
import re
from typing import Any

from aigc_gateway import kube, okg
from aigc_gateway.errors import GatewayError, InvalidArgument, NotFound, Violation
from aigc_gateway.informer import key_of

from .policy import Policy
from .watch import TemplateCache

log = logging.getLogger(__name__)
Obj = dict[str, Any]


# A webhook or the apiserver that cannot decode a value names the Go field: "...struct field
# ContainerPort.spec.gameServerTemplate.spec.containers.ports.containerPort of type int32".
_GO_FIELD = re.compile(r"Go struct field \w+\.(?P<path>[\w.]+) of type")


def _admission(exc: GatewayError) -> GatewayError:
    """Refusals without field causes, made as precise as the apiserver's message allows: a validating
    webhook's denial (403, an unspecific error in kube.py) is bad input, and a decoding error names its field."""
    if type(exc) is GatewayError and "denied the request" in exc.message:
        detail = exc.message.split("denied the request:", 1)[-1].strip()
        exc = InvalidArgument(f"the cluster refused the template: {detail}", reason="ADMISSION_DENIED",
                              violations=[Violation("", detail, "ADMISSION_DENIED")])
    if isinstance(exc, InvalidArgument) and len(exc.violations) == 1 and not exc.violations[0].field:
        match = _GO_FIELD.search(exc.violations[0].description)
        if match:
            only = exc.violations[0]
            exc.violations = [Violation(match["path"], only.description, only.reason)]
    return exc


# The Advanced StatefulSet `<gss>` that kruise-game makes for a GameServerSet: the one thing that creates pods
# and claims, so the delete cascade waits for it to go before it deletes the claims.
ADVANCED_STATEFULSET = kube.Kind("apps.kruise.io", "v1beta1", "statefulsets", "StatefulSet")


class TemplateCluster:
    def __init__(self, handle: kube.KubeHandle, policy: Policy):
        self.handle = handle
        self.policy = policy
        self.cache = TemplateCache(handle.get, list(policy.namespaces), policy.label_selector)

    async def list(self, namespace: str) -> list[Obj]:
        """Every template in ``namespace`` (`-`: in every configured namespace), from the watch cache. Shared
        objects: read them, never change them."""
        if namespace != "-":
            if not self.policy.namespace_allowed(namespace):
                return []
            found = await self.cache.items([namespace if self.policy.namespaces else None])
            found = [o for o in found if key_of(o)[0] == namespace]
        else:
            found = await self.cache.items(list(self.policy.namespaces) or [None])
        return [_with_kind(o) for o in found if self.policy.is_template(o)]

    async def read(self, namespace: str, name: str) -> Obj:
        """One template from the watch cache (GetTemplate); :meth:`get` for a read that a write follows.

        A name the cache does not hold is looked up live (one GET, and only for a miss): a template just
        made around the service (kubectl, another replica) is found at once instead of NOT_FOUND until the
        watch delivers it. What the GET finds goes to the cache, which keeps the newer of it and the watch's."""
        if not namespace or not name or not self.policy.namespace_allowed(namespace):
            raise _not_found(namespace, name)
        obj = await self.cache.item(namespace, name)
        if obj is None:
            obj = await self.get(namespace, name)
            self.cache.note(obj)
        if not self.policy.is_template(obj):
            raise _not_found(namespace, name)
        return _with_kind(obj)

    async def get(self, namespace: str, name: str) -> Obj:
        if not namespace or not name or not self.policy.namespace_allowed(namespace):
            raise _not_found(namespace, name)
        try:
            obj = await (await self.handle.get()).get(kube.GSS, namespace, name)
        except NotFound:
            raise _not_found(namespace, name) from None
        if not self.policy.is_template(obj):
            raise _not_found(namespace, name)
        return _with_kind(obj)

    async def exists(self, namespace: str, name: str, kind: kube.Kind = kube.GSS) -> bool:
        try:
            await (await self.handle.get()).get(kind, namespace, name)
            return True
        except NotFound:
            return False

    async def create(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        try:
            return self._wrote(await (await self.handle.get()).create(
                kube.GSS, obj["metadata"]["namespace"], obj, dry_run=dry_run), dry_run)
        except NotFound:
            ns = obj["metadata"]["namespace"]
            raise InvalidArgument(f"namespace {ns!r} does not exist", reason="NAMESPACE_NOT_FOUND", violations=[
                Violation("metadata.namespace", f"namespace {ns!r} does not exist", "NAMESPACE_NOT_FOUND")]) from None
        except GatewayError as exc:
            raise _admission(exc) from None

    async def replace(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """PUT with the resourceVersion read: a concurrent change fails with ABORTED."""
        try:
            return self._wrote(await (await self.handle.get()).replace(
                kube.GSS, obj["metadata"]["namespace"], obj, dry_run=dry_run), dry_run)
        except GatewayError as exc:
            raise _admission(exc) from None

    def _wrote(self, obj: Obj, dry_run: bool) -> Obj:
        if not dry_run:
            self.cache.note(obj)
        return _with_kind(obj)

    # -- the delete cascade's primitives ---------------------------------------

    async def delete(self, namespace: str, name: str, uid: str) -> bool:
        """Delete the GameServerSet; ``uid`` guards against deleting a same-named successor created since it was
        read. Background propagation: with Foreground the GameServerSet lingers while the garbage collector
        deletes its StatefulSet, and the kruise-game controller, seeing the StatefulSet gone, makes a new one
        (with new pods and claims); once the GameServerSet is gone nothing re-creates them."""
        return await (await self.handle.get()).delete(kube.GSS, namespace, name, propagation="Background", uid=uid)

    async def remnants(self, namespace: str, name: str, claims: set[str]) -> dict[str, builtins.list[str]]:
        """What of the template is still in the cluster: the GameServerSet, its StatefulSet, pods, GameServers,
        claims."""
        k = await self.handle.get()
        selector = okg.owner_selector(name)
        gss, workload, pods, servers, labelled = await asyncio.gather(
            self._gss_exists(namespace, name), self.exists(namespace, name, ADVANCED_STATEFULSET),
            k.list(kube.POD, namespace, label_selector=selector),
            k.list(kube.GAMESERVER, namespace, label_selector=selector),
            k.list(kube.PVC, namespace, label_selector=selector))
        all_claims = await k.list(kube.PVC, namespace)
        found = {_name(c): c for c in labelled.get("items") or []} | {
            _name(c): c for c in all_claims.get("items") or [] if _name(c) in claims}
        return {"gameserverset": [name] if gss else [], "statefulset": [name] if workload else [], "pods": sorted(_name(p) for p in pods.get("items") or []),
                "gameservers": sorted(_name(g) for g in servers.get("items") or []),
                "claims": sorted(found),
                # Claims not yet asked to go (a claim being deleted waits for its pvc-protection finalizer).
                "claims_to_delete": sorted(n for n, c in found.items()
                                           if not (c.get("metadata") or {}).get("deletionTimestamp"))}

    async def _gss_exists(self, namespace: str, name: str) -> bool:
        """Whether the GameServerSet is there; its absence, with the revision it was seen at, goes to the cache
        (a list by name: unlike a GET, it says at which revision)."""
        listed = await (await self.handle.get()).list(kube.GSS, namespace, field_selector=f"metadata.name={name}")
        if listed.get("items"):
            return True
        self.cache.absent(namespace, name, str((listed.get("metadata") or {}).get("resourceVersion") or ""))
        return False

    async def delete_claims(self, namespace: str, names: builtins.list[str]) -> builtins.list[str]:
        """Delete the claims (they go once no pod mounts them); the names that existed."""
        k = await self.handle.get()
        deleted = await asyncio.gather(*(k.delete(kube.PVC, namespace, n) for n in names))
        return [n for n, gone in zip(names, deleted, strict=True) if gone]

    async def live_ids(self, namespace: str, name: str) -> builtins.list[int]:
        """Ids of the template's GameServers (the instances a change of the pod template restarts)."""
        k = await self.handle.get()
        servers = await k.list(kube.GAMESERVER, namespace, label_selector=okg.owner_selector(name))
        ids = (okg.instance_id(_name(gs), name) for gs in servers.get("items") or [])
        return sorted(i for i in ids if i is not None)


def _not_found(namespace: str, name: str) -> NotFound:
    return NotFound(f"template namespaces/{namespace}/templates/{name} not found", reason="NOT_FOUND")


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _with_kind(obj: Obj) -> Obj:
    # Items of a list come without apiVersion/kind; the rules and the manifest shown to admins want them.
    obj.setdefault("apiVersion", okg.API_VERSION)
    obj.setdefault("kind", okg.GSS_KIND)
    return obj
