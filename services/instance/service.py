"""The instance service's parts, wired once per process, and the reads that combine them.

Built by ``server.build``; started with the gRPC server (Kubernetes client,
watch caches, the PostgreSQL change listener and the reconciler) and stopped
with it.
"""
from __future__ import annotations

import asyncio
import builtins  # InstanceService.list shadows the name in the class body
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import ColumnElement, func, select, tuple_

from aigc_gateway import paging
from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.background import Backoff, cancel_and_wait
from aigc_gateway.db.listen import PgListener, asyncpg_dsn
from aigc_gateway.db.models import INSTANCE_CHANNEL, InstanceRow
from aigc_gateway.errors import NotFound, PermissionDenied, Unavailable
from aigc_gateway.identity import Principal
from aigc_gateway.kube import Kube
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import SlotState, claim_name
from aigc_gateway.runtime import Runtime

from . import access, effects, faults, idle_api, status, templates
from .cache import Change, ClusterCache
from .cluster import Cluster
from .consistency import Checker
from .idle import Culler
from .lifecycle import Lifecycle
from .reconciler import Reconciler
from .slots import SlotStore, aware

log = logging.getLogger(__name__)

REFRESH_SECONDS = 5.0  # watchers re-read their row this often even without a notification (SQLite has none)


class InstanceService:
    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.settings = runtime.settings
        self.cfg = runtime.settings.instance
        self.store = SlotStore(runtime.db)
        self.kube: Kube | None = None
        self.cluster: Cluster | None = None
        self.lifecycle: Lifecycle | None = None
        self.cache: ClusterCache | None = None
        self.checker: Checker | None = None
        self.reconciler: Reconciler | None = None
        self.culler: Culler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._listener: PgListener | None = None

    async def start(self) -> None:
        faults.armed()
        dsn = asyncpg_dsn(self.runtime.db.url)
        if dsn:  # PostgreSQL; on SQLite watchers re-read their row every REFRESH_SECONDS instead
            self._listener = PgListener(dsn, {INSTANCE_CHANNEL: self._heard})
            self._listener.start()
        try:
            await self._connect()
        except Exception as exc:  # noqa: BLE001 - no usable kubeconfig yet: serve UNAVAILABLE, keep trying
            log.warning("cannot set up the Kubernetes client (%s); retrying in the background", exc)
            self._tasks.append(asyncio.create_task(self._connect_later(), name="instance-kube-connect"))

    async def _connect_later(self) -> None:
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            await backoff.sleep()
            try:
                await self._connect()
                return
            except Exception as exc:  # noqa: BLE001
                log.warning("cannot set up the Kubernetes client: %s", exc)

    async def _connect(self) -> None:
        self.kube = await Kube.connect(self.settings.kubernetes)
        self.cluster = Cluster(self.kube, self.settings.namespaces, self.settings.gss_labels)
        self.lifecycle = Lifecycle(self.runtime.db, self.store, self.cluster, self.cfg, self.runtime.idempotency)
        self.cache = ClusterCache(self.kube, self.settings.namespaces, self.settings.gss_labels)
        self.checker = Checker(self.lifecycle, self.cluster, self.store)
        self.reconciler = Reconciler(self.runtime.db, self.lifecycle, self.checker, self.store,
                                     self.cfg.reconcile_interval_seconds)
        self.cache.on_game_server.append(self.reconciler.game_server_changed)
        self.cache.start()
        self._tasks.append(asyncio.create_task(self.reconciler.run(), name="instance-reconciler"))
        # Idle auto-pause runs on every replica: each decision is taken under the template lock (see idle.py).
        self.culler = Culler(self.runtime.db, self.lifecycle, self.cache, self.cfg.idle,
                             self.settings.template.annotation_prefix, self.runtime.audit_log("instance"))
        if self.cfg.idle.enabled:
            self._tasks.append(asyncio.create_task(self.culler.run(), name="instance-idle-culler"))

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._listener is not None:
            await self._listener.close()
        if self.reconciler is not None:
            await self.reconciler.stop()
        if self.culler is not None:
            await self.culler.close()
        if self.cache is not None:
            await self.cache.stop()
        if self.kube is not None:
            await self.kube.close()

    def _heard(self, payload: str) -> None:
        """A slot changed in any replica (pg_notify 'ns/tpl/id' on `aigc_instances`): wake its watchers."""
        namespace, _, rest = payload.partition("/")
        template, _, instance_id = rest.rpartition("/")
        if self.cache is not None and instance_id.isdigit():
            self.cache.wake(InstanceRef(namespace, template, int(instance_id)), Change("gateway"))

    # -- reads -------------------------------------------------------------------------------------------

    def parts(self) -> tuple[Lifecycle, ClusterCache, Checker]:
        if self.lifecycle is None or self.cache is None or self.checker is None:
            raise Unavailable("the instance service is starting", reason="STARTING", retry_after=1.0)
        return self.lifecycle, self.cache, self.checker

    async def describe(self, ref: InstanceRef, row: InstanceRow | None = None, *,
                       former_owner: str = "") -> instance_pb2.Instance:
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
        message = status.to_proto(ref, row, view, gss, seen.claims)
        await self.announced([(row, message)])
        if row.slot == SlotState.FREE.value:
            message.state = instance_pb2.Instance.UNINSTALLING
            message.state_message, message.owner = "Uninstalled; the disk is deleted", former_owner
        return message

    async def answer(self, effect: dict[str, Any], *, freed: bool = False) -> instance_pb2.Instance:
        """The answer to a mutating call, from the row its step wrote or read under the lock (its effect):
        the owner is the one the call acted for, whoever has the id now. An uninstall answers with the instance
        as its owner had it, UNINSTALLING, without looking at the cluster (the id may be someone else's)."""
        ref = effects.ref_of(effect)
        row = effects.row_of(effect["row"])
        if effect["op"] != "uninstall":
            return await self.describe(ref, row)
        message = ("Uninstalled; the disk is deleted" if freed else "Uninstalling; the disk is being deleted")
        return status.to_proto(ref, row, status.View(instance_pb2.Instance.UNINSTALLING, message), None, None)

    @staticmethod
    def view(row: InstanceRow, gss: dict[str, Any] | None, seen: status.Observed, ref: InstanceRef) -> status.View:
        changed = aware(row.state_changed_at) > aware(row.created_at)
        return status.derive(SlotState(row.slot), changed, gss, seen, ref.id, live_since=aware(row.state_changed_at))

    async def list(self, principal: Principal, namespace: str | None, template: str | None, owner: str,
                   state: int, page_size: int, page_token: str) -> instance_pb2.ListInstancesResponse:
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
        async with self.runtime.db.session() as session:
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
        return instance_pb2.ListInstancesResponse(instances=[m for _, m in page], next_page_token=token,
                                                  total_size=total)

    async def announced(self, pairs: Sequence[tuple[InstanceRow, instance_pb2.Instance]]) -> None:
        """Set scheduled_pause_time on the messages of running instances whose pause for idleness is announced."""
        when = await idle_api.scheduled(self.runtime.db, [row for row, _ in pairs])
        for row, message in pairs:
            at = when.get(_ref(row))
            if at is not None:
                message.scheduled_pause_time.FromDatetime(at)

    def _cached(self, ref: InstanceRef, row: InstanceRow) -> instance_pb2.Instance:
        _, cache, _ = self.parts()
        gss = cache.template(ref.template_ref)
        names = [claim_name(v, ref.template, ref.id) for v in templates.vct_names(gss or {})]
        seen = cache.observed(ref, names)
        return status.to_proto(ref, row, self.view(row, gss, seen, ref), gss, seen.claims)

    async def watch(self, principal: Principal, ref: InstanceRef) -> AsyncIterator[instance_pb2.InstanceEvent]:
        """The current state, then every change, until the caller cancels or the instance is gone."""
        _, cache, _ = self.parts()
        access.check(principal, ref, await self.store.get(ref))
        queue = cache.subscribe(ref)
        try:
            await cache.wait_synced(self.cfg.cache_sync_timeout_seconds)
            change = Change("gateway")
            last: tuple[Any, ...] | None = None
            while True:
                row = await self.store.get(ref)
                if row is None or row.slot == SlotState.FREE.value:
                    if last is not None:
                        yield _event(ref, None, Change("gateway", "Uninstalled", "Uninstalled; the disk is deleted"))
                    return
                if not principal.admin and row.owner not in (None, principal.subject):
                    return  # the id has a new owner: this stream is over
                message = self._cached(ref, row)
                await self.announced([(row, message)])
                pause = message.scheduled_pause_time.ToSeconds() if message.HasField("scheduled_pause_time") else 0
                if pause != (last[4] if last is not None else 0) and (pause or row.slot == SlotState.LIVE.value):
                    change = Change("gateway", idle_api.SCHEDULED if pause else idle_api.CANCELLED)
                key = (message.state, message.state_message, message.access_uri, row.slot, pause)
                if key != last or change.source in ("event", "gateway") and change.reason:
                    yield _event(ref, message, change)
                    last = key
                try:
                    async with asyncio.timeout(REFRESH_SECONDS):  # not wait_for: see aigc_gateway.background
                        change = await queue.get()
                except TimeoutError:
                    change = Change("gateway")
        finally:
            cache.unsubscribe(ref, queue)


def _ref(row: InstanceRow) -> InstanceRef:
    return InstanceRef(row.namespace, row.template, row.id)


def _event(ref: InstanceRef, message: instance_pb2.Instance | None, change: Change) -> instance_pb2.InstanceEvent:
    now = Timestamp()
    now.FromDatetime(datetime.now(UTC))
    instance = message or instance_pb2.Instance(name=ref.name, template=ref.template_ref.name, id=ref.id,
                                                state=instance_pb2.Instance.UNINSTALLING,
                                                state_message=change.message)
    text = change.message if change.source == "event" and change.message else instance.state_message
    return instance_pb2.InstanceEvent(instance=instance, time=now, source=change.source, reason=change.reason,
                                      message=text)
