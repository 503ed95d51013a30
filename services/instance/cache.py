"""The instance service's view of the cluster: watch caches of templates, their Advanced StatefulSets (for the
update revision an instance's pod is compared with), GameServers, pods, disks and pod events, plus a hub that wakes
the WatchInstance streams of the instances a change concerns."""
from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aigc_gateway import okg, upgrades
from aigc_gateway.background import cancel_and_wait
from aigc_gateway.errors import Unavailable
from aigc_gateway.informer import Informer
from aigc_gateway.kube import ADVANCED_STATEFULSET, EVENT, GAMESERVER, GSS, OWNER_GSS_LABEL, POD, PVC, Kube
from aigc_gateway.names import InstanceRef, TemplateRef

from .status import Observed

log = logging.getLogger(__name__)

Obj = dict[str, Any]
EVENTS_KEPT = 20


@dataclass(frozen=True)
class Change:
    """Why a watcher was woken."""

    source: str  # "gameserver" | "pod" | "event" | "gateway"
    reason: str = ""
    message: str = ""


def instance_of(obj: Obj, template: str | None = None) -> InstanceRef | None:
    """The instance a GameServer or pod `<gss>-<id>` belongs to."""
    found = okg.instance_of(obj, template)
    return InstanceRef(*found) if found else None


def _event_time(event: Obj) -> str:
    return event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get(
        "creationTimestamp") or ""


class ClusterCache:
    def __init__(self, kube: Kube, namespaces: Iterable[str], gss_labels: Mapping[str, str]):
        scopes: list[str | None] = list(namespaces) or [None]
        self.templates = [Informer(kube, GSS, ns, label_selector=okg.label_selector(gss_labels)) for ns in scopes]
        self.game_servers = [Informer(kube, GAMESERVER, ns, label_selector=OWNER_GSS_LABEL) for ns in scopes]
        self.pods = [Informer(kube, POD, ns, label_selector=OWNER_GSS_LABEL) for ns in scopes]
        self.claims = [Informer(kube, PVC, ns) for ns in scopes]
        self.events = [Informer(kube, EVENT, ns, field_selector="involvedObject.kind=Pod") for ns in scopes]
        # Kruise writes one per GameServerSet and only its status changes during a rollout: cheap to follow. It
        # carries no label to select on, so every one of the namespace is kept (those of other workloads too).
        self.stateful_sets = [Informer(kube, ADVANCED_STATEFULSET, ns) for ns in scopes]
        self._by_pod: dict[tuple[str, str], dict[str, Obj]] = defaultdict(dict)
        self._revisions: dict[tuple[str, str], str] = {}  # (namespace, template) -> its update revision
        self._watchers: dict[InstanceRef, set[asyncio.Queue[Change]]] = defaultdict(set)
        self._tasks: list[asyncio.Task[None]] = []
        self.on_game_server: list[Any] = []  # extra listeners (the install-to-RUNNING metric)
        for informer in self.game_servers:
            informer.listeners.append(self._game_server_changed)
        for informer in self.pods:
            informer.listeners.append(self._pod_changed)
        for informer in self.events:
            informer.listeners.append(self._event_changed)
        for informer in self.stateful_sets:
            informer.listeners.append(self._stateful_set_changed)

    def all(self) -> list[Informer]:
        return [*self.templates, *self.game_servers, *self.pods, *self.claims, *self.events, *self.stateful_sets]

    def start(self) -> None:
        self._tasks = [asyncio.create_task(i.run(), name=repr(i)) for i in self.all()]

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def wait_synced(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(asyncio.gather(*(i.synced.wait() for i in self.all())), timeout)
        except TimeoutError:
            raise Unavailable("the Kubernetes watch caches are not ready yet", reason="CACHE_NOT_READY",
                              retry_after=2.0) from None

    # -- reads -------------------------------------------------------------------------------------------

    @staticmethod
    def _find(informers: list[Informer], namespace: str, name: str) -> Obj | None:
        for informer in informers:
            if informer.namespace in (None, namespace):
                found = informer.get(namespace, name)
                if found is not None:
                    return found
        return None

    def template(self, ref: TemplateRef) -> Obj | None:
        return self._find(self.templates, ref.namespace, ref.template)

    def stateful_set(self, ref: TemplateRef) -> Obj | None:
        """The template's Advanced StatefulSet (same name as its GameServerSet)."""
        return self._find(self.stateful_sets, ref.namespace, ref.template)

    def claims_of(self, ref: InstanceRef, names: Iterable[str]) -> dict[str, Obj]:
        out = {}
        for name in names:
            found = self._find(self.claims, ref.namespace, name)
            if found is not None:
                out[name] = found
        return out

    def observed(self, ref: InstanceRef, claim_names: Iterable[str] = ()) -> Observed:
        events = sorted(self._by_pod.get((ref.namespace, ref.game_server), {}).values(), key=_event_time)
        return Observed(game_server=self._find(self.game_servers, ref.namespace, ref.game_server),
                        pod=self._find(self.pods, ref.namespace, ref.game_server), events=events,
                        claims=self.claims_of(ref, claim_names))

    # -- the watch hub -----------------------------------------------------------------------------------

    def subscribe(self, ref: InstanceRef) -> asyncio.Queue[Change]:
        queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=256)
        self._watchers[ref].add(queue)
        return queue

    def unsubscribe(self, ref: InstanceRef, queue: asyncio.Queue[Change]) -> None:
        watchers = self._watchers.get(ref)
        if watchers is not None:
            watchers.discard(queue)
            if not watchers:
                del self._watchers[ref]

    def wake_all(self, change: Change) -> None:
        """Every watcher: after notifications may have been lost (a LISTEN reconnect)."""
        for ref in list(self._watchers):
            self.wake(ref, change)

    def wake(self, ref: InstanceRef, change: Change) -> None:
        for queue in self._watchers.get(ref, ()):
            if queue.full():  # a slow reader only needs to know that something changed
                continue
            queue.put_nowait(change)

    def _game_server_changed(self, kind: str, obj: Obj) -> None:
        ref = instance_of(obj)
        if ref is not None:
            self.wake(ref, Change("gameserver"))
            for listener in self.on_game_server:
                listener(ref, obj)

    def _pod_changed(self, kind: str, obj: Obj) -> None:
        ref = instance_of(obj)
        if ref is not None:
            self.wake(ref, Change("pod"))

    def _stateful_set_changed(self, kind: str, obj: Obj) -> None:
        """A new update revision changes `update_available` of every live instance of the template: wake their
        watchers (only then: the status changes with every pod that moves)."""
        meta = obj.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        revision = "" if kind == "DELETED" else upgrades.update_revision(obj)
        if self._revisions.get(key, "") == revision:
            return
        self._revisions[key] = revision
        for ref in [r for r in self._watchers if (r.namespace, r.template) == key]:
            self.wake(ref, Change("gateway"))

    def _event_changed(self, kind: str, obj: Obj) -> None:
        involved = obj.get("involvedObject") or {}
        key = (involved.get("namespace", ""), involved.get("name", ""))
        name = (obj.get("metadata") or {}).get("name", "")
        if kind == "DELETED":
            self._by_pod.get(key, {}).pop(name, None)
            if not self._by_pod.get(key):
                self._by_pod.pop(key, None)
            return
        events = self._by_pod[key]
        events[name] = obj
        if len(events) > EVENTS_KEPT:
            for old in sorted(events.values(), key=_event_time)[: len(events) - EVENTS_KEPT]:
                events.pop((old.get("metadata") or {}).get("name", ""), None)
        # Pods are `<gss>-<id>`: the id is after the last dash whatever the template's name holds.
        gss, instance_id = okg.template_of(key[1]), okg.instance_id(key[1])
        if gss and instance_id is not None:
            self.wake(InstanceRef(key[0], gss, instance_id), Change("event", obj.get("reason", ""), obj.get("message", "")))
