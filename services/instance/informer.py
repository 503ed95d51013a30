"""Informer-style caches: list, then watch from the list's resourceVersion, re-list when the watch breaks.

One :class:`Informer` keeps every object of one kind (in one namespace, or all)
in memory and calls its listeners with each change, so reads and WatchInstance
streams never hit the apiserver. A 410 Gone (the resourceVersion expired) or a
broken connection starts a fresh list, diffed against the cache so listeners
still see every change.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aigc_gateway.background import Backoff, retry_forever
from aigc_gateway.kube import Kind, Kube

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
Listener = Callable[[str, Obj], None]  # (ADDED | MODIFIED | DELETED, object)


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return meta.get("namespace", ""), meta.get("name", "")


class Informer:
    def __init__(self, kube: Kube, kind: Kind, namespace: str | None = None, *, label_selector: str = "",
                 field_selector: str = "", watch_timeout: int = 240):
        self.kube = kube
        self.kind = kind
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.items: dict[Key, Obj] = {}
        self.synced = asyncio.Event()
        self.listeners: list[Listener] = []
        self.relists = 0
        self.backoff = Backoff(initial=1.0, cap=30.0)

    def __repr__(self) -> str:
        return f"Informer({self.kind.plural}, {self.namespace or '*'}, {self.label_selector or '-'})"

    def get(self, namespace: str, name: str) -> Obj | None:
        return self.items.get((namespace, name))

    def _emit(self, kind: str, obj: Obj) -> None:
        for listener in self.listeners:
            try:
                listener(kind, obj)
            except Exception:  # one bad listener must not stop the cache
                log.exception("listener of %r failed", self)

    async def _list(self) -> str:
        listed = await self.kube.list(self.kind, self.namespace, label_selector=self.label_selector,
                                      field_selector=self.field_selector)
        fresh = {key_of(o): o for o in listed.get("items") or []}
        old, self.items = self.items, fresh
        for k, obj in fresh.items():
            before = old.get(k)
            if before is None:
                self._emit("ADDED", obj)
            elif (before.get("metadata") or {}).get("resourceVersion") != (obj.get("metadata") or {}).get(
                    "resourceVersion"):
                self._emit("MODIFIED", obj)
        for k, obj in old.items():
            if k not in fresh:
                self._emit("DELETED", obj)
        self.relists += 1
        self.synced.set()
        return str((listed.get("metadata") or {}).get("resourceVersion") or "")

    async def run(self) -> None:
        """Keep the cache current until cancelled; the apiserver being away is normal: list again later."""
        await retry_forever(self._list_and_watch, self.backoff, repr(self), logger=log)

    async def _list_and_watch(self) -> None:
        version = await self._list()
        self.backoff.reset()  # listed: the watches that follow may run for hours before they fail
        while version:
            version = await self._watch(version)

    async def _watch(self, version: str) -> str:
        """One watch request; returns the resourceVersion to continue from, or '' to re-list."""
        async for kind, obj in self.kube.watch(self.kind, self.namespace, resource_version=version,
                                               label_selector=self.label_selector,
                                               field_selector=self.field_selector,
                                               timeout_seconds=self.watch_timeout):
            if kind == "ERROR":
                # 410 Gone: our version expired from the watch cache. Anything else: start over too.
                log.info("%r: watch error %s; re-listing", self, obj.get("code"))
                return ""
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if kind == "BOOKMARK":
                continue
            k = key_of(obj)
            if kind == "DELETED":
                self.items.pop(k, None)
            else:
                self.items[k] = obj
            self._emit(kind, obj)
        return version
