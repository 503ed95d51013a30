"""The allocator's I/O: lock, resolve, intent, one GameServerSet write, record (DESIGN §5).

Every step that changes a template's (R, X) or its slots runs as
:meth:`Lifecycle.step`:

1. take the template lock (an asyncio lock per process, then the PostgreSQL
   advisory lock `allocator:<ns>/<tpl>`, held by the step's transaction);
2. read the GameServerSet once the controller has finished the previous write;
3. resolve any intent a crash left behind, from (R, X);
4. ask the pure planner for the step's :class:`~.allocator.Plan`;
5. commit the plan as an intent, then PUT (R', X') with the resourceVersion
   read; on 409 go back to 2 after a jittered backoff;
6. in one transaction, apply the plan's slot transitions, outbox rows and
   notifications and drop the intent; then unlock.

Installs that queue up for a template while a write is in flight go
together into the next write (group commit, `replicas + k`): the controller's
time per write, not per install, bounds the rate.

Each database stage commits on its own while the lock is held (the lock's
transaction only holds the lock): the intent must be durable before the
write it announces, and SQLite allows one writing transaction at a time. A
crash anywhere leaves either nothing, or an intent that step 3 (or the
reconciler) turns into exactly the outcome the GameServerSet shows.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aigc_gateway.config import InstanceConfig
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, allocator_lock
from aigc_gateway.errors import Aborted, FailedPrecondition, GatewayError, NotFound, Unavailable
from aigc_gateway.identity import Principal
from aigc_gateway.kube import GSS

from . import access, allocator, faults, templates
from .allocator import Op, Plan, Spec
from .cluster import Cluster, backoff
from .metrics import (
    ALLOCATOR_CONFLICTS,
    ALLOCATOR_RETRIES,
    INTENTS_RESOLVED,
    LOCK_WAIT,
    OPERATIONS,
    REALIGNS,
    SETTLE_WAIT,
)
from .names import InstanceRef, TemplateRef
from .slots import SlotStore, to_slot

log = logging.getLogger(__name__)

Decide = Callable[[Spec, dict[int, InstanceRow]], Plan]
MAX_BATCH = 100  # installs per GameServerSet write


@dataclass
class _Queued:
    owner: str
    future: asyncio.Future[int]


def slots_of(rows: dict[int, InstanceRow]) -> dict[int, allocator.Slot]:
    return {i: to_slot(r) for i, r in rows.items()}


class Lifecycle:
    def __init__(self, db: Database, store: SlotStore, cluster: Cluster, cfg: InstanceConfig):
        self.db = db
        self.store = store
        self.cluster = cluster
        self.cfg = cfg
        self._local: dict[str, asyncio.Lock] = {}
        self._queued: dict[str, list[_Queued]] = {}

    @asynccontextmanager
    async def locked(self, ref: TemplateRef) -> AsyncIterator[None]:
        """Hold the template's allocator lock (across processes) for the block."""
        # The process-local lock first: coroutines of one process queue here rather than each holding a pooled
        # connection while waiting for the advisory lock (the holder needs a second one for its stages).
        started = time.perf_counter()
        local = self._local.setdefault(ref.key, asyncio.Lock())
        async with local, self.db.lock(allocator_lock(ref.namespace, ref.template)):
            LOCK_WAIT.observe(time.perf_counter() - started)
            yield

    async def rows(self, ref: TemplateRef) -> dict[int, InstanceRow]:
        async with self.db.session() as session:
            return await self.store.load(session, ref)

    async def resolve_pending(self, ref: TemplateRef, spec: Spec) -> int:
        """Apply or drop every intent of the template according to (R, X); returns how many there were.
        Call it holding the lock."""
        async with self.db.session() as session:
            intents = await self.store.intents(session, ref)
            for intent in intents:
                plan = Plan.from_json(intent.plan)
                applied = allocator.resolve(plan, spec)
                if applied:
                    await self.store.apply(session, ref, plan, owner_since=intent.created_at)
                await self.store.drop_intent(session, intent.id)
                INTENTS_RESOLVED.labels(plan.op.value, str(applied).lower()).inc()
                log.warning("resolved interrupted %s of %s id %d (from %s): %s", plan.op.value, ref.key, plan.id,
                            intent.holder, "it took effect" if applied else "it did not happen")
        return len(intents)

    async def step(self, ref: TemplateRef, op: Op, decide: Decide) -> Plan:
        """One allocator step under the template lock (see the module docstring)."""
        try:
            async with self.locked(ref):
                plan = await self._attempts(ref, decide)
        except GatewayError as exc:
            OPERATIONS.labels(op.value, exc.code.name).inc()
            raise
        OPERATIONS.labels(op.value, "OK").inc()
        faults.point(f"{op.value}.after_commit")
        return plan

    async def _attempts(self, ref: TemplateRef, decide: Decide) -> Plan:
        for attempt in range(self.cfg.conflict_retries + 1):
            if attempt:
                ALLOCATOR_RETRIES.inc()
            settle_started = time.perf_counter()
            gss = await self.cluster.settled_template(ref, self.cfg.settle_timeout_seconds)
            SETTLE_WAIT.observe(time.perf_counter() - settle_started)
            spec = templates.spec_of(ref, gss)
            await self.resolve_pending(ref, spec)
            rows = await self.rows(ref)
            realign = allocator.plan_realign(ref, spec, slots_of(rows))
            if realign is not None:
                # The controller moved the live set on its own: put it back first, then plan on the result.
                await self._write(ref, gss, realign, attempt)
                continue
            plan = decide(spec, rows)
            if plan.after is None:
                async with self.db.session() as session:
                    await self.store.apply(session, ref, plan)
                return plan
            if await self._write(ref, gss, plan, attempt):
                return plan
        raise Aborted(f"{ref.name} kept changing while the allocator wrote it; retry",
                      reason="ALLOCATOR_CONTENDED", retry_after=1.0)

    async def _write(self, ref: TemplateRef, gss: dict[str, Any], plan: Plan, attempt: int) -> bool:
        """Intent, GameServerSet write, transitions; False when a concurrent write won (read again)."""
        assert plan.after is not None
        if plan.op is Op.REALIGN:
            REALIGNS.inc()
            log.warning("%s: the controller runs %s but the records say %s; writing %s to bring them back",
                        ref.key, sorted(plan.before.live()), sorted(plan.after.live()), plan.after)
        intent = await self.store.record_intent(ref, plan)
        faults.point(f"{plan.op.value}.after_intent")
        try:
            await self.cluster.write_spec(gss, plan.after)
        except Aborted:
            # Someone (usually the controller's status patch) wrote since we read; the apiserver refused
            # our write, so the intent is void. Read again and plan again.
            ALLOCATOR_CONFLICTS.inc()
            await self.store.forget_intent(intent.id)
            await asyncio.sleep(backoff(attempt))
            return False
        except Unavailable:
            raise  # the write may or may not have landed: the intent is resolved from (R, X) next time
        except GatewayError:
            await self.store.forget_intent(intent.id)  # refused outright: it did not happen
            raise
        faults.point(f"{plan.op.value}.after_gss_write")
        async with self.db.session() as session:
            await self.store.apply(session, ref, plan, owner_since=intent.created_at)
            await self.store.drop_intent(session, intent.id)
        return True

    # -- the operations --------------------------------------------------------------------------------------

    async def install(self, ref: TemplateRef, owner: str) -> int:
        """Install for ``owner``; returns the id. Joins the template's queue; whoever gets the lock next writes
        every queued install at once. The batch runs shielded: one caller giving up cancels nobody else's."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if nobody waits
        queued = _Queued(owner, future)
        queue = self._queued.setdefault(ref.key, [])
        queue.append(queued)
        try:
            await asyncio.shield(asyncio.ensure_future(self._install_queued(ref)))
        except BaseException:
            if queued in queue:  # not taken by any batch: it must not run after we answered
                queue.remove(queued)
            raise
        return await future

    async def _install_queued(self, ref: TemplateRef) -> None:
        async with self.locked(ref):
            queue = self._queued.get(ref.key) or []
            batch, self._queued[ref.key] = queue[:MAX_BATCH], queue[MAX_BATCH:]
            if not batch:
                return  # an earlier batch took ours
            results: list[int | GatewayError] = []

            def decide(spec: Spec, rows: dict[int, InstanceRow]) -> Plan:
                plan, out = allocator.plan_install_batch(ref, spec, slots_of(rows), [q.owner for q in batch])
                results[:] = out
                return plan or Plan(Op.INSTALL, -1, None, spec, None)

            try:
                await self._attempts(ref, decide)
            except Exception as exc:  # the whole batch failed; each caller gets the error
                code = exc.code.name if isinstance(exc, GatewayError) else "INTERNAL"
                for q in batch:
                    OPERATIONS.labels(Op.INSTALL.value, code).inc()
                    if not q.future.done():
                        q.future.set_exception(exc)
                return
        faults.point("install.after_commit")
        for q, result in zip(batch, results, strict=True):
            OPERATIONS.labels(Op.INSTALL.value, result.code.name if isinstance(result, GatewayError) else "OK").inc()
            if isinstance(result, GatewayError):
                q.future.set_exception(result)
            else:
                q.future.set_result(result)

    def _guarded(self, iref: InstanceRef, principal: Principal, planner: Callable[..., Plan]) -> Decide:
        def decide(spec: Spec, rows: dict[int, InstanceRow]) -> Plan:
            access.check(principal, iref, rows.get(iref.id))
            return planner(iref.template_ref, spec, slots_of(rows), iref.id)

        return decide

    async def pause(self, iref: InstanceRef, principal: Principal) -> Plan:
        return await self.step(iref.template_ref, Op.PAUSE, self._guarded(iref, principal, allocator.plan_pause))

    async def resume(self, iref: InstanceRef, principal: Principal) -> Plan:
        return await self.step(iref.template_ref, Op.RESUME, self._guarded(iref, principal, allocator.plan_resume))

    async def uninstall(self, iref: InstanceRef, principal: Principal) -> tuple[str | None, bool]:
        """Owner removed (RELEASING), then the disks deleted. Returns the former owner and whether the id is
        FREE already (else the reconciler finishes the disk deletion)."""
        plan = await self.step(iref.template_ref, Op.UNINSTALL,
                               self._guarded(iref, principal, allocator.plan_uninstall))
        return plan.owner, await self.release(iref, self.cfg.release_wait_seconds)

    async def restart(self, iref: InstanceRef, principal: Principal) -> None:
        """A new pod on the same disk: delete the pod (uid-checked); the StatefulSet makes it again."""
        row = access.check(principal, iref, await self.store.get(iref))
        if row.slot != allocator.SlotState.LIVE.value:
            raise FailedPrecondition(f"{iref.name} is {row.slot.lower()}; only a running instance restarts",
                                     reason="NOT_RUNNING")
        await self.cluster.usable_template(iref.template_ref)
        pod = await self.cluster.pod(iref.namespace, iref.game_server)
        if pod is not None and not pod["metadata"].get("deletionTimestamp"):
            await self.cluster.delete_pod(iref.namespace, iref.game_server, pod["metadata"]["uid"])
        OPERATIONS.labels("restart", "OK").inc()

    async def release(self, iref: InstanceRef, wait: float) -> bool:
        """Delete every disk of a RELEASING id, wait up to ``wait`` seconds for them to go, then mark it FREE."""
        ref = iref.template_ref
        row = await self.store.get(iref)
        if row is None or row.slot != allocator.SlotState.RELEASING.value:
            return row is not None and row.slot == allocator.SlotState.FREE.value
        try:
            gss = await self.cluster.template(ref)
        except NotFound:
            return False  # the template is gone: PurgeInstances forgets its slots
        present = await self.cluster.claims(ref, templates.vct_names(gss))
        names = self.cluster.claim_names(ref, gss, iref.id, present)
        await self.cluster.delete_claims(iref.namespace, names)
        faults.point("uninstall.after_disk_delete")
        deadline = time.monotonic() + wait
        delay = 0.2
        while await self.cluster.existing_claims(iref.namespace, names):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        async with self.locked(ref):
            spec = templates.spec_of(ref, await self.cluster.template(ref))
            await self.resolve_pending(ref, spec)
            plan = allocator.plan_release(ref, spec, slots_of(await self.rows(ref)), iref.id)
            async with self.db.session() as session:
                await self.store.apply(session, ref, plan)
        OPERATIONS.labels(Op.RELEASE.value, "OK").inc()
        return True

    async def purge(self, ref: TemplateRef) -> list[tuple[int, str]]:
        """Forget every slot of a template whose GameServerSet is gone (or going)."""
        async with self.locked(ref):
            try:
                gss: dict[str, Any] | None = await self.cluster.kube.get(GSS, ref.namespace, ref.template)
            except NotFound:
                gss = None
            if gss is not None and not gss["metadata"].get("deletionTimestamp"):
                raise FailedPrecondition(f"template {ref.name} still exists; delete it first",
                                         reason="TEMPLATE_EXISTS", metadata={"template": ref.name})
            async with self.db.session() as session:
                owned = await self.store.purge(session, ref)
        OPERATIONS.labels("purge", "OK").inc()
        return owned

    async def tidy(self, ref: TemplateRef) -> None:
        """The reconciler's work on one template: resolve intents, realign a live set the controller moved
        (allocator.plan_realign), then push RELEASING ids towards FREE."""
        async with self.locked(ref):
            try:
                gss = await self.cluster.template(ref)
            except NotFound:
                return
            spec = templates.spec_of(ref, gss)
            await self.resolve_pending(ref, spec)
            rows = await self.rows(ref)
            if allocator.plan_realign(ref, spec, slots_of(rows)) is not None:
                # A step that plans nothing: every step realigns (after the controller settles) before it plans.
                await self._attempts(ref, lambda now, _rows: Plan(Op.REALIGN, -1, None, now, None))
                rows = await self.rows(ref)
            releasing = [i for i, r in rows.items() if r.slot == allocator.SlotState.RELEASING.value]
        for instance_id in releasing:
            await self.release(ref.instance(instance_id), wait=0)
