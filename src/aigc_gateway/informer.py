"""The one list+watch loop of the gateway (client-go's informer, kopf's one watch loop), and the cache on it.

Every service that follows Kubernetes objects does the same thing: list them, watch from the list's
resourceVersion, list again when the watch ends with an error (410 Gone: the version left the
apiserver's watch cache; anything else alike), and back off when the apiserver is away. Written
once here, in :class:`ListWatch`, whose owner says what a list and an event mean to it (auth's
route index, the template catalog's versioned cache) through ``on_list``/``on_event``/``on_error``;
:class:`Informer` is the common case, every object of a kind in memory with listeners told of each
change (the instance service's caches), a fresh list diffed against the cache so listeners still
see every change across a re-list.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from .background import Backoff, retry_forever
from .errors import NotFound
from .kube import Kind, Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
Listener = Callable[[str, Obj], None]  # (ADDED | MODIFIED | DELETED, object)
KubeSource = Kube | Callable[[], Awaitable[Kube]]  # a client, or how to get one (KubeHandle.get)


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def version_of(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class ListWatch:
    """List, then watch from the list's resourceVersion, until cancelled (:meth:`run`).

    ``on_list(items, version)`` gets each full list, ``on_event(type, obj)`` each ADDED, MODIFIED or
    DELETED after it (bookmarks only move the version on), ``on_error(exc)`` each failure before the
    loop backs off and lists again. ``absent_kind_retry``: a kind the apiserver does not serve (a CRD not
    installed yet) lists as empty and is looked for again after that many seconds, instead of failing."""

    def __init__(self, kube: KubeSource, kind: Kind, namespace: str | None = None, *, label_selector: str = "",
                 field_selector: str = "", watch_timeout: int = 240, name: str = "",
                 on_list: Callable[[list[Obj], str], None] | None = None,
                 on_event: Callable[[str, Obj], None] | None = None,
                 on_error: Callable[[Exception], None] | None = None,
                 backoff: Backoff | None = None, absent_kind_retry: float | None = None):
        self.kube = kube
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.name = name or f"{kind.plural} in {namespace or '*'} ({label_selector or field_selector or '-'})"
        self._on_list = on_list
        self._on_event = on_event
        self._on_error = on_error
        self.backoff = backoff or Backoff(initial=1.0, cap=30.0)
        self.absent_kind_retry = absent_kind_retry
        self.synced = asyncio.Event()  # set by the first list
        self.lists = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"

    def listed(self, items: list[Obj], version: str) -> None:
        if self._on_list is not None:
            self._on_list(items, version)

    def changed(self, event: str, obj: Obj) -> None:
        if self._on_event is not None:
            self._on_event(event, obj)

    async def client(self) -> Kube:
        return self.kube if isinstance(self.kube, Kube) else await self.kube()

    async def run(self) -> NoReturn:
        """Keep following the objects until cancelled; the apiserver being away is normal: list again later."""
        await retry_forever(self._list_and_watch, self.backoff, repr(self), on_error=self._on_error, logger=log)

    async def _list_and_watch(self) -> None:
        version = await self.list_once()
        self.backoff.reset()  # listed: the watches that follow may run for hours before they fail
        if not version and self.absent_kind_retry is not None:
            await asyncio.sleep(self.absent_kind_retry)
            return
        while version:
            version = await self.watch_once(version)

    async def list_once(self) -> str:
        """One list, handed to ``on_list``; the resourceVersion to watch from ('' for a kind not served)."""
        kube = await self.client()
        try:
            listed = await kube.list(self.kind, self.namespace, label_selector=self.label_selector,
                                     field_selector=self.field_selector)
        except NotFound:
            if self.absent_kind_retry is None:
                raise
            listed = {}
        version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
        self.lists += 1
        self.listed(listed.get("items") or [], version)
        self.synced.set()
        return version

    async def watch_once(self, version: str) -> str:
        """One watch request from ``version``; the resourceVersion to go on from, or '' to list again."""
        kube = await self.client()
        async for event, obj in kube.watch(self.kind, self.namespace, resource_version=version,
                                           label_selector=self.label_selector, field_selector=self.field_selector,
                                           timeout_seconds=self.watch_timeout):
            if event == "ERROR":  # 410 Gone (our version left the watch cache) or anything else: list again
                log.info("%r: watch error %s; listing again", self, obj.get("code") or obj.get("message"))
                return ""
            version = version_of(obj) or version
            if event != "BOOKMARK":
                self.changed(event, obj)
        return version


class Informer(ListWatch):
    """Every object of one kind (in one namespace, or all) in memory, and listeners told of each change, so
    reads and streams never hit the apiserver."""

    def __init__(self, kube: KubeSource, kind: Kind, namespace: str | None = None, *, label_selector: str = "",
                 field_selector: str = "", watch_timeout: int = 240):
        super().__init__(kube, kind, namespace, label_selector=label_selector, field_selector=field_selector,
                         watch_timeout=watch_timeout)
        self.items: dict[Key, Obj] = {}
        self.listeners: list[Listener] = []

    @property
    def relists(self) -> int:
        return self.lists

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.items.get((namespace, name))

    def _emit(self, event: str, obj: Obj) -> None:
        for listener in self.listeners:
            try:
                listener(event, obj)
            except Exception:  # one bad listener must not stop the cache
                log.exception("listener of %r failed", self)

    def listed(self, items: list[Obj], version: str) -> None:
        fresh = {key_of(o): o for o in items}
        old, self.items = self.items, fresh
        for k, obj in fresh.items():
            before = old.get(k)
            if before is None:
                self._emit("ADDED", obj)
            elif version_of(before) != version_of(obj):
                self._emit("MODIFIED", obj)
        for k, obj in old.items():
            if k not in fresh:
                self._emit("DELETED", obj)

    def changed(self, event: str, obj: Obj) -> None:
        k = key_of(obj)
        if event == "DELETED":
            self.items.pop(k, None)
        else:
            self.items[k] = obj
        self._emit(event, obj)
