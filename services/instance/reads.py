"""The instance service's reads: an instance, a page of them, a watch, and the answer to a change, from its
slot row (PostgreSQL) and the watch caches (the cluster read directly while they fill). The state is derived
by status.py and the messages are built by messages.py; server.py maps the RPCs onto these.
"""
from __future__ import annotations

import asyncio
import builtins  # InstanceReads.list shadows the name in the class body
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from sqlalchemy import ColumnElement, func, select, tuple_

from aigc_gateway import paging, upgrades
from aigc_gateway.config import InstanceConfig
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import NotFound, PermissionDenied
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import SlotState, claim_name

from . import access, effects, idle_api, messages, status, templates
from .cache import Change, ClusterCache
from .consistency import ConsistencyChecker
from .lifecycle import Lifecycle
from .slots import SlotStore, aware
from .watchfeed import WatchFeed

# Watchers re-read their row this often even without a notification: SQLite has none, and while the PostgreSQL
# LISTEN connection is down notifications are lost. While it listens (``listening()``), a commit's pg_notify and
# the watch caches wake a watcher, and a LISTEN reconnect wakes every one; the re-read is only a backstop then.
REFRESH_SECONDS = 5.0
REFRESH_LISTENING_SECONDS = 60.0


class InstanceReads:
    def __init__(self, db: Database, store: SlotStore, cfg: InstanceConfig,
                 parts: Callable[[], tuple[Lifecycle, ClusterCache, ConsistencyChecker]],
                 listening: Callable[[], bool] = lambda: False):
        self.db = db
        self.store = store
        self.cfg = cfg
        self.parts = parts  # the started service's parts, or UNAVAILABLE while it starts (see app.py)
        self.listening = listening  # PostgreSQL notifications reach this process now
        self.feed = WatchFeed(db)

    async def describe(self, ref: InstanceRef, row: InstanceRow | None = None, *,
                       former_owner: str = "") -> messages.Instance:
        """The Instance message, from the watch caches (or direct reads while they fill)."""
        lifecycle, cache, _ = self.parts()
        row = row or await self.store.get(ref)
        if row is None:
            raise NotFound(f"{ref.name} does not exist", reason="INSTANCE_NOT_FOUND")
        ready = all(i.synced.is_set() for i in cache.all())
        gss = cache.template(ref.template_ref) if ready else None
        if gss is None:
            try:
                gss = await lifecycle.cluster.template(ref.template_ref)
            except NotFound:
                gss = None
        names = [claim_name(v, ref.template, ref.id) for v in templates.vct_names(gss or {})]
        if ready:
            seen = cache.observed(ref, names)
        else:
            gs, pod, claims = await lifecycle.cluster.observe(ref.namespace, ref.game_server, names)
            seen = status.Observed(gs, pod, (), claims)
        view = self.view(row, gss, seen, ref)
        message = messages.to_proto(ref, row, view, gss, seen.claims)
        # While the caches fill the update revision is unknown: the pod's revision is shown, no update offered.
        messages.revision(message, *upgrades.revision(
            seen.pod, cache.stateful_set(ref.template_ref) if ready else None, row.slot == SlotState.LIVE.value))
        await self.announced([(row, message)])
        if row.slot == SlotState.FREE.value:
            messages.uninstalled(message, former_owner)
        return message

    async def answer(self, effect: dict[str, Any], *, freed: bool = False) -> messages.Instance:
        """The answer to a mutating call, from the row its step wrote or read under the lock (its effect):
        the owner is the one the call acted for, whoever has the id now. An uninstall answers with the instance
        as its owner had it, UNINSTALLING, without looking at the cluster (the id may be someone else's)."""
        ref = effects.ref_of(effect)
        row = effects.row_of(effect["row"])
        if effect["op"] != "uninstall":
            return await self.describe(ref, row)
        message = ("Uninstalled; the disk is deleted" if freed else "Uninstalling; the disk is being deleted")
        return messages.to_proto(ref, row, status.View(status.State.UNINSTALLING, message), None, None)

    @staticmethod
    def view(row: InstanceRow, gss: dict[str, Any] | None, seen: status.Observed, ref: InstanceRef) -> status.View:
        changed = aware(row.state_changed_at) > aware(row.created_at)
        return status.derive(SlotState(row.slot), changed, gss, seen, ref.id, live_since=aware(row.state_changed_at))

    async def list(self, principal: Principal, namespace: str | None, template: str | None, owner: str,
                   state: int, page_size: int, page_token: str) -> messages.ListInstancesResponse:
        _, cache, _ = self.parts()
        if owner == "me":
            owner = principal.subject
        if not principal.admin:
            if owner and owner != principal.subject:
                raise PermissionDenied("only admins list other users' instances", reason="ADMIN_REQUIRED")
            owner = principal.subject
        size = paging.clamp(page_size, default=100, maximum=500)
        bound = paging.fingerprint(namespace, template, owner, state, principal.admin)
        stmt = select(InstanceRow).order_by(InstanceRow.namespace, InstanceRow.template, InstanceRow.id)
        count = select(func.count()).select_from(InstanceRow)
        visible = [SlotState.LIVE.value, SlotState.PAUSED.value] + ([] if owner else [SlotState.RELEASING.value])
        conditions: builtins.list[ColumnElement[bool]] = [InstanceRow.slot.in_(visible)]
        if namespace:
            conditions.append(InstanceRow.namespace == namespace)
        if template:
            conditions.append(InstanceRow.template == template)
        if owner:
            conditions.append(InstanceRow.owner == owner)
        stmt, count = stmt.where(*conditions), count.where(*conditions)
        if page_token:
            position = paging.decode(page_token, bound)
            stmt = stmt.where(tuple_(InstanceRow.namespace, InstanceRow.template, InstanceRow.id) > tuple(position))
        if not state:
            stmt = stmt.limit(size + 1)
        await cache.wait_synced(self.cfg.cache_sync_timeout_seconds)
        async with self.db.session() as session:
            rows = list((await session.execute(stmt)).scalars())
            if state:
                # The state lives in the cluster, not in a column: filter (and count) in memory.
                every = list((await session.execute(select(InstanceRow).where(*conditions))).scalars())
                total = sum(1 for r in every if self._cached(_ref(r), r).state == state)
            else:
                total = int((await session.execute(count)).scalar_one())
        matching = [(r, m) for r in rows for m in [self._cached(_ref(r), r)] if not state or m.state == state]
        page = matching[:size]
        await self.announced(page)
        token = paging.encode([page[-1][0].namespace, page[-1][0].template, page[-1][0].id], bound) \
            if len(matching) > size else ""
        return messages.instance_list([m for _, m in page], token, total)

    async def announced(self, pairs: Sequence[tuple[InstanceRow, messages.Instance]]) -> None:
        """Set scheduled_pause_time on the messages of running instances whose pause for idleness is announced."""
        when = await idle_api.scheduled(self.db, [row for row, _ in pairs])
        for row, message in pairs:
            at = when.get(_ref(row))
            if at is not None:
                messages.announce(message, at)

    def _cached(self, ref: InstanceRef, row: InstanceRow) -> messages.Instance:
        _, cache, _ = self.parts()
        gss = cache.template(ref.template_ref)
        names = [claim_name(v, ref.template, ref.id) for v in templates.vct_names(gss or {})]
        seen = cache.observed(ref, names)
        message = messages.to_proto(ref, row, self.view(row, gss, seen, ref), gss, seen.claims)
        messages.revision(message, *upgrades.revision(seen.pod, cache.stateful_set(ref.template_ref),
                                                      row.slot == SlotState.LIVE.value))
        return message

    async def watch(self, principal: Principal, ref: InstanceRef) -> AsyncIterator[messages.InstanceEvent]:
        """The current state, then every change, until the caller cancels or the instance is gone."""
        _, cache, _ = self.parts()
        access.check(principal, ref, (await self.feed.get(ref))[0])  # many streams open at once: one query
        queue = cache.subscribe(ref)
        try:
            await cache.wait_synced(self.cfg.cache_sync_timeout_seconds)
            change = Change("gateway")
            last: tuple[Any, ...] | None = None
            while True:
                row, pause_at = await self.feed.get(ref)
                if row is None or row.slot == SlotState.FREE.value:
                    if last is not None:
                        yield messages.event(ref, None, "gateway", "Uninstalled", "Uninstalled; the disk is deleted")
                    return
                if not principal.admin and row.owner not in (None, principal.subject):
                    return  # the id has a new owner: this stream is over
                message = self._cached(ref, row)
                if pause_at is not None:
                    messages.announce(message, pause_at)
                pause = messages.scheduled_pause(message)
                if pause != (last[4] if last is not None else 0) and (pause or row.slot == SlotState.LIVE.value):
                    change = Change("gateway", idle_api.SCHEDULED if pause else idle_api.CANCELLED)
                key = (message.state, message.state_message, message.access_uri, row.slot, pause, message.revision,
                       message.update_available)
                if key != last or change.source in ("event", "gateway") and change.reason:
                    yield messages.event(ref, message, change.source, change.reason, change.message)
                    last = key
                try:
                    refresh = REFRESH_LISTENING_SECONDS if self.listening() else REFRESH_SECONDS
                    async with asyncio.timeout(refresh):  # not wait_for: see aigc_gateway.background
                        change = await queue.get()
                except TimeoutError:
                    change = Change("gateway")
        finally:
            cache.unsubscribe(ref, queue)


def _ref(row: InstanceRow) -> InstanceRef:
    return InstanceRef(row.namespace, row.template, row.id)
