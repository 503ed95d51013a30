"""Adapters that keep the owner map current: the ownership table and Kubernetes watches.

- :class:`OwnershipFollower` reads ``instances``: a full read at start and every
  ``resync_seconds`` as a safety net, and the single rows named by NOTIFYs on
  ``aigc_instances`` (the instance service sends one per ownership change, at
  commit). While the LISTEN connection is down (or on SQLite, which has no
  NOTIFY) it re-reads everything every ``poll_seconds`` instead, so a pause
  still takes effect within a second. When it can vouch for neither (the
  database out of reach for ``stale_after`` seconds), the map is marked
  unknown and every check is refused until a full read succeeds again: a
  pause or an uninstall it cannot hear must not leave the old owner admitted.
- :class:`TemplateWatch` runs informer-style list+watch loops over
  GameServerSets (their ingress patterns) and GameServers (their reported
  endpoints) and feeds :class:`~.routes.RouteIndex`.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import select, tuple_

from aigc_gateway import okg
from aigc_gateway.background import Backoff, cancel_and_wait, wait_event
from aigc_gateway.config import Settings
from aigc_gateway.db import Database
from aigc_gateway.db.listen import PgListener, asyncpg_dsn
from aigc_gateway.db.models import INSTANCE_CHANNEL, InstanceRow
from aigc_gateway.informer import ListWatch
from aigc_gateway.kube import GAMESERVER, GSS, OWNER_GSS_LABEL, Kind, Kube, KubeHandle
from aigc_gateway.okg import OWNED, SlotState

from .ownermap import InstanceKey, OwnerMap
from .routes import RouteIndex, instance_of, route_pattern

log = logging.getLogger(__name__)



def admitted(slot: str | None, owner: str | None, orphaned: bool) -> str | None:
    """Who the ingress admits to an instance: its owner while it runs, unless the owner is orphaned (deleted
    in the identity provider: usersync's User.Deleted). A deleted user's session lives on until it expires,
    and with it the rights to resume or reinstall through the API; the instance stays closed to it."""
    return owner if owner and slot == SlotState.LIVE and not orphaned else None


class OwnershipFollower:
    def __init__(self, db: Database, owners: OwnerMap, index: RouteIndex, *, resync_seconds: float = 30.0,
                 poll_seconds: float = 0.5, stale_after: float = 5.0):
        self.db = db
        self.owners = owners
        self.index = index
        self.resync_seconds = resync_seconds
        self.poll_seconds = poll_seconds
        self.stale_after = stale_after
        self._read_at = 0.0  # time.monotonic() when the last successful full read started
        self._pending: set[InstanceKey] = set()
        self._heard_during_resync: set[InstanceKey] | None = None
        # What the map was last told per instance (the only writer of its owners and of the index's owned set
        # is this follower): (namespace, template, id) -> (slot, owner, orphaned). See resync.
        self._told: dict[tuple[str, str, int], tuple[str, str | None, bool]] = {}
        self._wake = asyncio.Event()
        self._resync_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        dsn = asyncpg_dsn(db.url)
        self.listener = PgListener(dsn, {INSTANCE_CHANNEL: self._heard}, self._resync_now.set) if dsn else None

    def _heard(self, payload: str) -> None:
        key = InstanceKey.from_payload(payload)
        if key is None:
            self._resync_now.set()
        else:
            self._pending.add(key)
            if self._heard_during_resync is not None:
                self._heard_during_resync.add(key)
            self._wake.set()

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        self._tasks = [asyncio.create_task(self._resync_loop(), name="owners-resync"),
                       asyncio.create_task(self._row_loop(), name="owners-rows"),
                       asyncio.create_task(self._freshness_loop(), name="owners-freshness")]

    def fresh(self, now: float | None = None) -> bool:
        """Whether the owner map is current: a full read started less than ``stale_after`` ago, or one made
        since the LISTEN connection started and that connection answered a ping less than ``stale_after``
        ago (a connection that hangs stops answering; one that came back missed what changed meanwhile,
        until the read its reconnection starts)."""
        now = time.monotonic() if now is None else now
        if self._read_at and now - self._read_at <= self.stale_after:
            return True
        listener = self.listener
        return (listener is not None and listener.live and self._read_at >= listener.connected_at
                and now - listener.last_alive <= self.stale_after)

    async def _freshness_loop(self) -> None:
        while True:
            self.owners.set_known(self.fresh())
            await asyncio.sleep(0.25)

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self.listener is not None:
            await self.listener.close()

    def _apply(self, key: InstanceKey, slot: str | None, owner: str | None, orphaned: bool) -> None:
        self.owners.set_owner(key, admitted(slot, owner, orphaned))
        self.index.set_owned(key, bool(owner) and slot in OWNED)
        raw = (key.namespace, key.template, key.id)
        if slot is None:  # no row
            self._told.pop(raw, None)
        else:
            self._told[raw] = (slot, owner, orphaned)

    async def resync(self) -> None:
        # A change heard while the full read runs may be newer than what the read saw, and the row loop
        # may apply it first: those rows are read again after this replace, or a pause could be undone
        # by an older snapshot until the next resync.
        self._heard_during_resync = set()
        started = time.monotonic()
        try:
            async with self.db.session() as session:
                rows = (await session.execute(select(InstanceRow.namespace, InstanceRow.template, InstanceRow.id,
                                                     InstanceRow.slot, InstanceRow.owner,
                                                     InstanceRow.orphaned))).all()
        finally:
            heard, self._heard_during_resync = self._heard_during_resync, None
        if heard:
            self._pending |= heard
            self._wake.set()
        # Only what differs from what the map was told is applied, found by comparing plain tuples: building
        # an InstanceKey per row and looking each up (dataclass hashing and equality run in Python) cost 70-200
        # ms of CPU per 10,000 rows every resync_seconds, in the process beside the HTTP workers.
        fresh = {(namespace, template, ident): (slot, owner, bool(orphaned))
                 for namespace, template, ident, slot, owner, orphaned in rows}
        told = self._told
        for raw in [raw for raw in told if raw not in fresh]:
            self._apply(InstanceKey(*raw), None, None, False)
        for raw, state in fresh.items():
            if told.get(raw) != state:
                self._apply(InstanceKey(*raw), *state)
        self._read_at = started
        self.owners.set_known(self.fresh())
        self.synced.set()

    async def _resync_loop(self) -> None:
        last = 0.0
        while True:
            live = self.listener is not None and self.listener.live
            interval = self.resync_seconds if live else self.poll_seconds
            await wait_event(self._resync_now, last + interval - time.monotonic())
            self._resync_now.clear()
            try:
                await self.resync()
            except Exception as exc:  # noqa: BLE001 - the database may be briefly away; keep the last map
                log.warning("owner map resync failed: %s", exc)
            last = time.monotonic()

    async def _row_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            keys, self._pending = self._pending, set()
            if not keys:
                continue
            try:
                async with self.db.session() as session:
                    rows = (await session.execute(
                        select(InstanceRow.namespace, InstanceRow.template, InstanceRow.id, InstanceRow.slot,
                               InstanceRow.owner, InstanceRow.orphaned).where(tuple_(InstanceRow.namespace, InstanceRow.template,
                                                               InstanceRow.id).in_(
                            [(k.namespace, k.template, k.id) for k in keys])))).all()
            except Exception as exc:  # noqa: BLE001
                log.warning("owner map update failed (%s); resyncing", exc)
                self._resync_now.set()
                continue
            found = {InstanceKey(ns, tpl, i): (slot, owner, orphaned) for ns, tpl, i, slot, owner, orphaned in rows}
            for key in keys:
                slot, owner, orphaned = found.get(key, (None, None, False))
                self._apply(key, slot, owner, bool(orphaned))


class TemplateWatch:
    """List+watch GameServerSets and GameServers into the route index (kopf/informer style)."""

    def __init__(self, settings: Settings, index: RouteIndex, *, kube: Kube | None = None):
        self.settings = settings
        self.index = index
        self.kube = KubeHandle(settings.kubernetes, kube)
        self._tasks: list[asyncio.Task[None]] = []
        self.synced = asyncio.Event()
        # Synced, or known not to sync soon (no cluster answers): what is worth waiting for at start.
        self.settled = asyncio.Event()
        self._synced_kinds: set[tuple[str, str | None]] = set()
        self._gss: dict[tuple[str, str], Any] = {}

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="auth-template-watch")]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []
        await self.kube.close()

    async def _run(self) -> None:
        backoff = Backoff(initial=1.0, cap=30.0)
        while True:
            try:
                kube = await self.kube.get()
                break
            except Exception as exc:  # noqa: BLE001 - no cluster yet: instances are unreachable, not a crash
                log.warning("auth: cannot connect to Kubernetes (%s); owner map has no routes yet", exc)
                self.settled.set()
                await backoff.sleep()
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        loops = [self._loop(kube, kind, ns) for kind in (GSS, GAMESERVER) for ns in namespaces]
        await asyncio.gather(*(loop.run() for loop in loops))

    def _selector(self, kind: Kind) -> str:
        if kind is GSS:
            return okg.label_selector(self.settings.gss_labels)
        return OWNER_GSS_LABEL  # every GameServer made by a GameServerSet carries it

    def _loop(self, kube: Kube, kind: Kind, namespace: str | None) -> ListWatch:
        """The core's list+watch loop over one kind in one namespace, feeding the route index."""

        def listed(items: list[dict[str, Any]], _version: str) -> None:
            self._replace(kind, namespace, items)
            self._synced_kinds.add((kind.plural, namespace))
            if len(self._synced_kinds) == 2 * len(list(self.settings.namespaces) or [None]):
                self.synced.set()
                self.settled.set()

        # Keep watching whatever happens; a failure marks the map settled (no cluster answers soon).
        return ListWatch(kube, kind, namespace, label_selector=self._selector(kind), name=f"auth: {kind.plural} watch",
                         on_list=listed, on_event=lambda event, obj: self._event(kind, event, obj),
                         on_error=lambda _exc: self.settled.set(), backoff=Backoff(initial=1.0, cap=1.0))

    def _replace(self, kind: Kind, namespace: str | None, items: list[dict[str, Any]]) -> None:
        if kind is GSS:
            patterns = {k: v for k, v in self._gss.items() if namespace is not None and k[0] != namespace}
            for obj in items:
                meta = obj.get("metadata") or {}
                patterns[(meta.get("namespace", ""), meta.get("name", ""))] = route_pattern(obj)
            self._gss = patterns
            self.index.replace_templates(dict(patterns))
        else:
            current = {k: v for k, v in self.index.gameservers.items()
                       if namespace is not None and k.namespace != namespace}
            for obj in items:
                key = instance_of(obj)
                if key is not None:
                    current[key] = _network_only(obj)
            self.index.replace_gameservers(current)

    def _event(self, kind: Kind, event: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        if kind is GSS:
            key = (meta.get("namespace", ""), meta.get("name", ""))
            pattern = None if event == "DELETED" else route_pattern(obj)
            if event == "DELETED":
                self._gss.pop(key, None)
            else:
                self._gss[key] = pattern
            self.index.set_template(key[0], key[1], pattern)
            return
        instance = instance_of(obj)
        if instance is not None:
            self.index.set_gameserver(instance, None if event == "DELETED" else _network_only(obj))


def _network_only(gameserver: dict[str, Any]) -> dict[str, Any]:
    """Keep only what routing needs: a GameServer object is large and there may be thousands."""
    network = (gameserver.get("status") or {}).get("networkStatus") or {}
    return {"status": {"networkStatus": {"externalAddresses": network.get("externalAddresses") or []}}}
