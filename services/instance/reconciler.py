"""The reconciler: one active replica (a PostgreSQL advisory lock held on a connection of its own) resolves
interrupted operations, finishes uninstalls whose disks were still going, runs each template's rollout step
(issue 14, rollouts.py), and reports drift.

Every other replica keeps trying the lease; when the leader's process dies its
connection closes, PostgreSQL drops the lock, and another replica takes over
at its next try. On SQLite there is one process: it always leads.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, stop_after_delay, wait_exponential_jitter

from aigc_gateway.background import Tasks, every
from aigc_gateway.db import Database
from aigc_gateway.db.listen import asyncpg_dsn
from aigc_gateway.locks import SessionLock
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import SlotState

from .consistency import ConsistencyChecker
from .lifecycle import Lifecycle
from .metrics import INSTALL_TO_RUNNING, RECONCILER_LEADER, VIOLATIONS
from .rollouts import Rollouts
from .slots import SlotStore, aware

log = logging.getLogger(__name__)

LEASE_NAME = "instance-reconciler"
# The full drift check lists every template's pods and disks under its lock: every tenth pass is enough,
# while tidying (intents, disk deletions) runs on every pass.
CHECK_EVERY = 10
# How long timing a fresh install's start may wait for the database (a PostgreSQL fault) before it is given up.
OBSERVE_RETRY_SECONDS = 120.0


class SlotReconciler:
    def __init__(self, db: Database, lifecycle: Lifecycle, checker: ConsistencyChecker, store: SlotStore,
                 interval: float, rollouts: Rollouts | None = None, observe_retry_seconds: float = OBSERVE_RETRY_SECONDS):
        self.lifecycle = lifecycle
        self.rollouts = rollouts
        self.checker = checker
        self.store = store
        self.interval = interval
        self.sqlite = db.is_sqlite  # one process: it always leads
        self.lease = SessionLock(asyncpg_dsn(db.url), LEASE_NAME)
        self.leading = False
        self.passes = 0
        self._seen_running: OrderedDict[tuple[Any, ...], None] = OrderedDict()
        # Timing a start reads the database in a task of its own: kept here (its errors are its own to log) and
        # one per instance at a time (a GameServer's every event while the database is away would pile them up).
        self.observing = Tasks()
        self._observed: set[InstanceRef] = set()
        self.observe_retry_seconds = observe_retry_seconds

    async def run(self) -> None:
        # Jitter (in `every`) keeps replicas that lost the lease from trying it in lockstep.
        await every(self.interval, self._round, "reconcile pass", logger=log)

    async def _round(self) -> None:
        self.leading = await self._hold_lease()
        RECONCILER_LEADER.set(1 if self.leading else 0)
        if self.leading:
            await self.pass_once()

    async def _hold_lease(self) -> bool:
        if self.sqlite:
            return True
        held_before = self.lease.held
        try:
            held = await self.lease.take(wait=False)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("reconciler lease: %s", exc)
            return False
        if held and not held_before:
            log.info("reconciler lease taken")
        return held

    async def stop(self) -> None:
        await self.observing.cancel()
        await self.lease.release()  # closing the session drops the lock
        RECONCILER_LEADER.set(0)

    async def pass_once(self) -> int:
        """Tidy every template with slots (intents, disks to delete, a live set to realign), then, every
        CHECK_EVERY passes, check every template; returns the number of violations."""
        started = time.monotonic()
        for ref in await self.store.templates():
            try:
                await self.lifecycle.tidy(ref)
                if self.rollouts is not None:  # issue 14: move instances onto the template's new revision
                    await self.rollouts.step(ref)
            except Exception as exc:  # noqa: BLE001 - one template's trouble must not stop the others
                log.warning("reconciling %s: %s", ref.key, exc)
        total = 0
        self.passes += 1
        if self.passes % CHECK_EVERY != 1:
            return 0
        for ref in await self.checker.templates(None, None):
            try:
                findings = await self.checker.check(ref)
            except Exception as exc:  # noqa: BLE001
                log.warning("checking %s: %s", ref.key, exc)
                continue
            VIOLATIONS.labels(ref.name).set(len(findings))
            total += len(findings)
            for finding in findings:
                log.warning("drift in %s id %d: %s %s", ref.key, finding.id, finding.code, finding.description)
        log.log(logging.WARNING if total else logging.DEBUG, "drift check done in %.2fs: %d violation(s)",
                time.monotonic() - started, total)
        return total

    def game_server_changed(self, ref: InstanceRef, gs: dict[str, Any]) -> None:
        """Cache listener: time the first RUNNING after an install (the leader alone, so it counts once)."""
        status = gs.get("status") or {}
        network = status.get("networkStatus") or {}
        if not self.leading or status.get("currentState") != "Ready" or network.get("currentNetworkState") != "Ready":
            return
        if ref in self._observed:
            return  # a read of this instance is under way (or retrying): it reads the row as it is then
        self._observed.add(ref)
        self.observing.spawn(self._observe_running(ref, datetime.now(UTC)), name=f"timing {ref.name}")

    async def _observe_running(self, ref: InstanceRef, seen: datetime) -> None:
        """Time an install seen running at ``seen``. The row is read with retries for a while: a database fault
        delays the figure (taken at ``seen`` all the same), and when it lasts the figure is given up, logged;
        an error never ends the task unretrieved."""
        def retrying(state: RetryCallState) -> None:
            log.info("timing the start of %s: %s; trying again", ref.name,
                     state.outcome.exception() if state.outcome else "")

        try:
            async for attempt in AsyncRetrying(stop=stop_after_delay(self.observe_retry_seconds),
                                               wait=wait_exponential_jitter(multiplier=0.2, max=5.0, jitter=0.2),
                                               before_sleep=retrying, reraise=True):
                with attempt:
                    row = await self.store.get(ref)
        except Exception as exc:  # noqa: BLE001 - a figure lost, logged; nothing else depends on it
            log.warning("timing the start of %s: the database did not answer within %.0fs (%s); not timed",
                        ref.name, self.observe_retry_seconds, exc)
            return
        finally:
            self._observed.discard(ref)
        if row is None or row.slot != SlotState.LIVE.value or aware(row.state_changed_at) != aware(row.created_at):
            return  # not a fresh install (resumed instances are not timed here)
        elapsed = (seen - aware(row.created_at)).total_seconds()
        if elapsed > 3600:
            return  # a new leader seeing old instances, not an install finishing
        key = (ref, row.created_at)
        if key in self._seen_running:
            return
        self._seen_running[key] = None
        while len(self._seen_running) > 10000:
            self._seen_running.popitem(last=False)
        INSTALL_TO_RUNNING.observe(elapsed)
