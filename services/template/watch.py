"""The template catalog's watch-backed cache of GameServerSets: ListTemplates and GetTemplate read memory.

A live LIST of GameServerSets is a quorum read through the apiserver to etcd: 0.1-0.9 s on the test bed
(bench/list_templates.py), most of ListTemplates' time. Here one list+watch per configured namespace
(the core's :class:`aigc_gateway.informer.ListWatch`: list, watch from the list's resourceVersion, list
again when the watch ends or breaks) keeps the templates in memory. It starts on the first read (that read
waits for the first list), so the server starts without a cluster.

Read-your-writes in this process: a write's result (:meth:`TemplateCache.note`) and a confirmed
absence (:meth:`TemplateCache.absent`) are applied at once, and every change is applied only when its
resourceVersion is newer than what is known of that name, so a watch event or a list that was in
flight before the write never brings back an older state. Other replicas' writes arrive through the
watch (GetTemplate of a name the cache lacks reads it live: cluster.read). Writers (publishing, the delete cascade) read the apiserver itself, never this cache.

A scope that has not listed yet, or whose last list or watch failed, is not served: the reader gets the
failure (UNAVAILABLE, the cluster is not reachable) while the loop retries in the background.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aigc_gateway import kube
from aigc_gateway.background import cancel_and_wait
from aigc_gateway.errors import GatewayError, Unavailable
from aigc_gateway.informer import ListWatch, key_of, version_of

log = logging.getLogger(__name__)
Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

# How long the first read waits for the first list (it is a live LIST; later reads wait for nothing).
FIRST_SYNC_SECONDS = 10.0
# Without the GameServerSet kind there is nothing to watch: look again this often.
NO_KIND_RELIST_SECONDS = 5.0


def _version(value: Any) -> int | None:
    """etcd's revision behind a resourceVersion; None when it is not a number (then the newest arrival wins)."""
    try:
        return int(str(value))
    except ValueError:
        return None


def _newer(candidate: int | None, known: int | None) -> bool:
    return candidate is None or known is None or candidate > known


@dataclass
class _Scope:
    namespace: str | None
    items: dict[Key, Obj] = field(default_factory=dict)
    # The revision of what is known of each name: the object's, or the one at which it was seen absent.
    versions: dict[Key, int | None] = field(default_factory=dict)
    synced: bool = False
    error: GatewayError | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # synced or failed at least once

    def apply(self, key: Key, obj: Obj | None, version: int | None) -> None:
        if key in self.versions and not _newer(version, self.versions[key]):
            return
        self.versions[key] = version
        if obj is None:
            self.items.pop(key, None)
        else:
            self.items[key] = obj

    def replace(self, items: list[Obj], list_version: int | None) -> None:
        """A fresh list; what this process learnt after it (a write, an absence) is kept."""
        later = {k: v for k, v in self.versions.items()
                 if v is not None and list_version is not None and v > list_version}
        old_items = self.items
        self.items = {key_of(o): o for o in items}
        self.versions = {k: _version((o.get("metadata") or {}).get("resourceVersion")) for k, o in self.items.items()}
        for k, v in later.items():
            self.versions[k] = v
            if k in old_items:
                self.items[k] = old_items[k]
            else:
                self.items.pop(k, None)


class TemplateCache:
    def __init__(self, connect: Callable[[], Awaitable[kube.Kube]], namespaces: list[str], label_selector: str,
                 *, watch_timeout: int = 240):
        self.connect = connect
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        scoped: list[str | None] = list(namespaces) or [None]  # None: one scope over every namespace
        self.scopes = {ns: _Scope(ns) for ns in scoped}
        self._tasks: list[asyncio.Task[None]] = []
        self.loops = [self._loop(scope) for scope in self.scopes.values()]

    @property
    def lists(self) -> int:
        """How many LISTs the loops made (for the bench and tests)."""
        return sum(loop.lists for loop in self.loops)

    def _scope_of(self, namespace: str) -> _Scope | None:
        return self.scopes.get(namespace) or self.scopes.get(None)

    def _start(self) -> None:
        if not self._tasks:
            self._tasks = [asyncio.create_task(loop.run(), name=f"template-cache-{loop.namespace or '*'}")
                           for loop in self.loops]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def items(self, namespaces: list[str | None]) -> list[Obj]:
        """The cached GameServerSets of these scopes (None: every namespace); Unavailable while a scope cannot
        list."""
        self._start()
        scopes = [self.scopes[ns] for ns in namespaces]
        pending = [s for s in scopes if not s.settled.is_set()]
        if pending:
            try:
                await asyncio.wait_for(asyncio.gather(*(s.settled.wait() for s in pending)), FIRST_SYNC_SECONDS)
            except TimeoutError:
                pass
        for scope in scopes:
            if not scope.synced:
                raise scope.error or Unavailable(
                    f"the Kubernetes cluster is not reachable: no list of templates after {FIRST_SYNC_SECONDS:.0f}s",
                    reason="KUBERNETES_UNAVAILABLE", retry_after=2.0)
        return [o for s in scopes for o in s.items.values()]

    async def item(self, namespace: str, name: str) -> Obj | None:
        scope = self._scope_of(namespace)
        if scope is None:
            return None
        await self.items([scope.namespace])
        return scope.items.get((namespace, name))

    def note(self, obj: Obj) -> None:
        """This process wrote ``obj`` (the apiserver's answer to a create or an update) or read it live."""
        scope = self._scope_of(key_of(obj)[0])
        if scope is not None:
            scope.apply(key_of(obj), obj, _version((obj.get("metadata") or {}).get("resourceVersion")))

    def absent(self, namespace: str, name: str, list_version: str) -> None:
        """No GameServerSet ``name`` existed at revision ``list_version`` (a consistent read said so)."""
        scope = self._scope_of(namespace)
        if scope is not None:
            scope.apply((namespace, name), None, _version(list_version))

    def _loop(self, scope: _Scope) -> ListWatch:
        """The core's list+watch loop over one scope, feeding it."""

        def listed(items: list[Obj], version: str) -> None:
            scope.replace(items, _version(version))
            scope.synced, scope.error = True, None
            scope.settled.set()

        def changed(event: str, obj: Obj) -> None:
            scope.apply(key_of(obj), None if event == "DELETED" else obj, _version(version_of(obj)))

        def failed(exc: Exception) -> None:  # the cluster being away is normal: serve UNAVAILABLE, retry
            scope.synced = False
            scope.error = exc if isinstance(exc, GatewayError) else Unavailable(
                f"the Kubernetes cluster is not reachable: {exc}", reason="KUBERNETES_UNAVAILABLE", retry_after=2.0)
            scope.settled.set()

        # No GameServerSet kind (OpenKruiseGame not installed yet) lists as no templates.
        return ListWatch(self.connect, kube.GSS, scope.namespace, label_selector=self.label_selector,
                         watch_timeout=self.watch_timeout, name=f"template cache ({scope.namespace or '*'})",
                         on_list=listed, on_event=changed, on_error=failed, absent_kind_retry=NO_KIND_RELIST_SECONDS)
