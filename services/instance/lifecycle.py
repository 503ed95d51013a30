"""The allocator's I/O: lock, resolve, intent, one GameServerSet write, record (docs/instance.md#the-allocator).

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
   notifications, record each served call's effect on its replay claim
   (:mod:`.effects`), and drop the intent; then unlock.

A plan carries the replay claims of the calls it serves, so whoever applies it
(this call, or after a crash the next step or the reconciler) commits the
call's effect with it; a retry that took the claim over finds the effect after
step 3 and answers with it instead of planning again. Every answer is built
from the rows the step wrote, never from a read by name after the lock.

Installs and resumes that queue up for a template while a write is in flight
go together into the next write (group commit, :mod:`.ups`), and so do pauses
and uninstalls (:mod:`.downs`): the controller's time per write, not per call,
bounds the rate.

Each database stage commits on its own while the lock is held (the lock's
transaction only holds the lock): the intent must be durable before the
write it announces, and SQLite allows one writing transaction at a time. A
crash anywhere leaves either nothing, or an intent that step 3 (or the
reconciler) turns into exactly the outcome the GameServerSet shows.
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from aigc_gateway import okg
from aigc_gateway.background import Backoff, Tasks
from aigc_gateway.config import InstanceConfig
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, allocator_lock
from aigc_gateway.errors import Aborted, FailedPrecondition, GatewayError, NotFound
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.identity import Principal
from aigc_gateway.kube import GSS
from aigc_gateway.locks import QueuedLocks
from aigc_gateway.names import InstanceRef, TemplateRef
from aigc_gateway.okg import SlotState

from . import (
    allocator,
    effects,
    faults,
    quotas,
    releases,
    resolution,
    restarts,
    rollout_view,
    templates,
    timing,
)
from .allocator import Op, Plan, Spec
from .cluster import Cluster
from .downs import DownQueue
from .metrics import (
    ALLOCATOR_CONFLICTS,
    ALLOCATOR_RETRIES,
    INTENTS_RESOLVED,
    LOCK_WAIT,
    OPERATIONS,
    REALIGNS,
    SETTLE_WAIT,
)
from .models import IntentRow
from .slots import SlotStore, slots_of
from .ups import UpQueue

log = logging.getLogger(__name__)

Decide = Callable[[Spec, dict[int, InstanceRow]], Plan]
Effect = dict[str, Any]
# Called after the step resolved leftover intents, before it plans: True when nothing is left to plan.
Before = Callable[[], Awaitable[bool]]
# How long a release that goes on after DeleteInstance answered waits for the disks before leaving them to the
# reconciler's next pass.
FOLLOW_UP_RELEASE_SECONDS = 120.0
# A write refused only because the controller wrote the status meanwhile is sent again at once on the new
# version (templates.only_status_moved), at most this many times per attempt, before planning again.
REWRITES = 8
Consent = Callable[[InstanceRef, InstanceRow, dict[str, Any]], Awaitable[None]]


class Lifecycle:
    def __init__(self, db: Database, store: SlotStore, cluster: Cluster, cfg: InstanceConfig,
                 claims: IdempotencyStore | None = None):
        self.db = db
        self.store = store
        self.cluster = cluster
        self.cfg = cfg
        self.claims = claims
        self._locks = QueuedLocks(db)
        self._ups = UpQueue(self)
        self._downs = DownQueue(self)
        self._follow_ups = Tasks()  # work after an answer (a delete's release)
        self.quotas = quotas.Quotas(db, cfg.quotas, lambda ref: self.cluster.template(ref))
        # Called under the template lock by a restart before it deletes the pod (the rollout's consent, set by
        # app.py: lifecycle cannot import rollouts, which runs its steps under this lock).
        self.consent: Consent | None = None

    @asynccontextmanager
    async def locked(self, ref: TemplateRef) -> AsyncIterator[None]:
        """Hold the template's allocator lock (across processes) for the block."""
        # The process-local lock first: coroutines of one process queue here rather than each holding a pooled
        # connection while waiting for the advisory lock (the holder needs a second one for its stages).
        started = time.perf_counter()
        async with self._locks.hold(allocator_lock(ref.namespace, ref.template)):
            LOCK_WAIT.observe(time.perf_counter() - started)
            timing.add("lock", time.perf_counter() - started)
            yield

    async def rows(self, ref: TemplateRef) -> dict[int, InstanceRow]:
        async with self.db.session() as session:
            return await self.store.load(session, ref)

    async def resolve_pending(self, ref: TemplateRef, spec: Spec, gss: dict[str, Any] | None = None) -> int:
        """Apply or drop every intent of the template as the GameServerSet shows; returns how many there were.
        ``gss``: the object ``spec`` was read from, so that a write not seen is fenced before it is called lost
        (resolution.py); without it (R, X) alone judges. Call it holding the lock."""
        async with self.db.session() as session:
            # A rollout step's intent is not an (R, X) write: its own step finishes it (rollouts.py).
            intents = [i for i in await self.store.intents(session, ref) if i.operation != Op.ROLLOUT.value]
            for intent in intents:
                plan = Plan.from_json(intent.plan)
                if gss is None:
                    applied = allocator.resolve(plan, spec)
                else:
                    applied, gss, _ = await resolution.judge(self.cluster, ref, gss, plan, intent)
                if applied:
                    await self._commit(session, ref, plan, owner_since=intent.created_at)
                await self.store.drop_intent(session, intent.id)
                INTENTS_RESOLVED.labels(plan.op.value, str(applied).lower()).inc()
                log.warning("resolved interrupted %s of %s id %d (from %s): %s", plan.op.value, ref.key, plan.id,
                            intent.holder, "it took effect" if applied else "it did not happen")
        return len(intents)

    async def _commit(self, session: Any, ref: TemplateRef, plan: Plan, *,
                      owner_since: Any = None) -> dict[int, Effect]:
        """Apply the plan's transitions and, in the same transaction, record each served call's effect on its
        claim. Returns the effect of every id the plan is about (what the answers are built from)."""
        await self.store.apply(session, ref, plan, owner_since=owner_since)
        # Every id the plan is about, a no-op step of a combined plan (pausing a paused id, resuming a running one)
        # included.
        ids = {t.id for t in plan.transitions} | ({plan.id} if plan.id >= 0 else set()) | {i for i, _, _ in plan.steps}
        out: dict[int, Effect] = {}
        for instance_id in sorted(ids):
            row = await session.get(InstanceRow, (ref.namespace, ref.template, instance_id))
            if row is not None:
                op, former = plan.step_of(instance_id)
                out[instance_id] = effects.make(op.value, row, former_owner=former if op is Op.UNINSTALL else None)
        served = {key: out[i] for i, key in plan.claims if i in out}
        if served:
            await IdempotencyStore.record_effects(session, served)
        return out

    async def step(self, ref: TemplateRef, op: Op, decide: Decide, before: Before | None = None
                   ) -> tuple[Plan | None, dict[int, Effect]]:
        """One allocator step under the template lock (see the module docstring)."""
        try:
            with timing.step(op.value, ref.key):
                async with self.locked(ref):
                    plan, done = await self._attempts(ref, decide, before)
        except GatewayError as exc:
            OPERATIONS.labels(op.value, exc.code.name).inc()
            raise
        OPERATIONS.labels(op.value, "OK").inc()
        await faults.reach(f"{op.value}.after_commit")
        return plan, done

    async def _attempts(self, ref: TemplateRef, decide: Decide, before: Before | None = None
                        ) -> tuple[Plan | None, dict[int, Effect]]:
        # Full jitter: spreads the retries of writers that lost the same race.
        conflicts = Backoff(initial=0.02, cap=1.0, jitter=1.0)
        for attempt in range(self.cfg.conflict_retries + 1):
            if attempt:
                ALLOCATOR_RETRIES.inc()
            timing.count(attempt=True)
            settle_started = time.perf_counter()
            with timing.phase("settle"):
                gss = await self.cluster.settled_template(ref, self.cfg.settle_timeout_seconds)
            SETTLE_WAIT.observe(time.perf_counter() - settle_started)
            spec = templates.spec_of(ref, gss)
            with timing.phase("plan"):
                await self.resolve_pending(ref, spec, gss)
                if before is not None and await before():
                    return None, {}
                rows = await self.rows(ref)
            realign = allocator.plan_realign(ref, spec, slots_of(rows))
            if realign is not None:
                # The controller moved the live set on its own: put it back first, then plan on the result.
                await self._write(ref, gss, realign, conflicts)
                continue
            plan = decide(spec, rows)
            if plan.after is None:
                with timing.phase("commit"):
                    async with self.db.session() as session:
                        return plan, await self._commit(session, ref, plan)
            done = await self._write(ref, gss, plan, conflicts)
            if done is not None:
                return plan, done
        raise Aborted(f"{ref.name} kept changing while the allocator wrote it; retry",
                      reason="ALLOCATOR_CONTENDED", retry_after=1.0)

    async def _write(self, ref: TemplateRef, gss: dict[str, Any], plan: Plan, conflicts: Backoff
                     ) -> dict[int, Effect] | None:
        """Intent, GameServerSet write, transitions; None when a concurrent write won (read again)."""
        assert plan.after is not None
        if plan.op is Op.REALIGN:
            REALIGNS.inc()
            log.warning("%s: the controller runs %s but the records say %s; writing %s to bring them back",
                        ref.key, sorted(plan.before.live()), sorted(plan.after.live()), plan.after)
        with timing.phase("intent"):
            partition = await self._partition_after(ref, gss, plan)
            intent = await self.store.record_intent(ref, plan, gss)
        await faults.reach(f"{plan.op.value}.after_intent")
        for rewrites in range(REWRITES + 1):
            timing.count(write=True)
            try:
                with timing.phase("write"):
                    await self.cluster.write_spec(gss, plan.after, partition)
                break
            except Aborted:
                # Refused: someone (usually the controller's status patch) wrote since we read, or this answer was
                # the HTTP client's second copy of a write whose first copy landed. The GameServerSet says which.
                ALLOCATOR_CONFLICTS.inc()
                with timing.phase("backoff"):
                    landed, fresh = await self._refused(ref, plan, intent)
                    if landed is not None:
                        return landed
                    if rewrites < REWRITES and templates.only_status_moved(gss, fresh):
                        # Nothing the plan was made from moved: send it again on the new version, at once.
                        await self.store.move_intent(intent, plan, fresh)
                        gss = fresh
                        continue
                    await self.store.forget_intent(intent.id)
                    await conflicts.sleep()
                return None
        # Any other failure leaves the intent: landed or not, the GameServerSet says so to the next step or the
        # reconciler (resolution.py), never how our request seemed to end.
        await faults.reach(f"{plan.op.value}.after_gss_write")
        with timing.phase("commit"):
            async with self.db.session() as session:
                done = await self._commit(session, ref, plan, owner_since=intent.created_at)
                await self.store.drop_intent(session, intent.id)
        return done

    async def _refused(self, ref: TemplateRef, plan: Plan, intent: IntentRow
                       ) -> tuple[dict[int, Effect] | None, dict[str, Any]]:
        """After a 409 on the write: its transitions when the GameServerSet shows it landed anyway (else None: the
        version moved, so no copy of the write can land any more), and the GameServerSet as read now."""
        gss = await self.cluster.template(ref)
        applied, gss, _ = await resolution.judge(self.cluster, ref, gss, plan, intent)
        if not applied:
            return None, gss
        INTENTS_RESOLVED.labels(plan.op.value, "true").inc()
        log.warning("%s: the %s of id %d was answered 409 but had landed (a request sent twice); recorded",
                    ref.key, plan.op.value, plan.id)
        async with self.db.session() as session:
            done = await self._commit(session, ref, plan, owner_since=intent.created_at)
            await self.store.drop_intent(session, intent.id)
        return done, gss

    async def _partition_after(self, ref: TemplateRef, gss: dict[str, Any], plan: Plan) -> int | None:
        """A pause or uninstall of a held id (its pod carries the rollout's hold label) lowers the partition by one
        in its own write: the partition counts the held pods, and a resume or install after it must find it right
        (docs/upgrade.md, facts 4 and 5). The scale lands first, so for a moment it is one too high: fewer pods may
        move, never more. None: leave it."""
        if plan.op not in (Op.PAUSE, Op.UNINSTALL) or plan.after is None or not rollout_view.rolling(gss)[0]:
            return None
        pod = await self.cluster.pod(ref.namespace, okg.game_server_name(ref.template, plan.id))
        return rollout_view.lowered_partition(gss, pod)

    async def _claims_state(self, claims: list[Claim]) -> dict[str, tuple[bool, Effect | None]]:
        if self.claims is None or not claims:
            return {}
        return await self.claims.held(claims)

    # -- the operations --------------------------------------------------------------------------------------

    async def install(self, ref: TemplateRef, owner: str, claim: Claim | None = None,
                      roles: tuple[str, ...] | None = None) -> Effect:
        """Install for ``owner`` (whose role claims are ``roles``; None: not known here, the recorded ones apply);
        returns the effect (the new slot row). In one write with the template's other queued installs and resumes
        (:mod:`.ups`, where quotas are checked), under the owner's quota lock taken first."""
        async with self.quotas.locked(owner, roles):
            effect = await self._ups.install(ref, owner, claim, roles)
            await faults.reach("install.after_commit")
            return effect

    async def pause(self, iref: InstanceRef, principal: Principal, claim: Claim | None = None) -> Effect:
        """Pause (in one write with the template's other queued pauses and uninstalls, see :mod:`.downs`)."""
        effect = await self._downs.run(Op.PAUSE, iref, principal, claim)
        await faults.reach("pause.after_commit")
        return effect

    async def resume(self, iref: InstanceRef, principal: Principal, claim: Claim | None = None) -> Effect:
        """Un-pause, in one write with the template's other queued installs and resumes (:mod:`.ups`); refused
        (RESOURCE_EXHAUSTED, nothing written) when running it would pass a quota of its owner or of the template:
        checked after the step resolved leftover intents, under the owner's quota lock (taken first) and the
        template lock."""
        row = await self.store.get(iref)
        owner = row.owner if row is not None else None
        roles = principal.roles if principal.kind == "user" and owner == principal.subject else None
        async with self.quotas.locked(owner, roles):
            effect = await self._ups.resume(iref, principal, owner, claim, roles)
            await faults.reach("resume.after_commit")
            return effect

    async def uninstall(self, iref: InstanceRef, principal: Principal, claim: Claim | None = None
                        ) -> tuple[Effect, bool]:
        """Owner removed (RELEASING), then the disks deleted. Returns the effect (the instance as its owner had
        it) and whether the id is FREE already (else a follow-up in this process, or the reconciler, finishes
        the disk deletion)."""
        effect = await self._downs.run(Op.UNINSTALL, iref, principal, claim)
        await faults.reach("uninstall.after_commit")
        return effect, await self.finish_uninstall(iref)

    async def finish_uninstall(self, iref: InstanceRef) -> bool:
        """Wait up to `release_wait_seconds` for the id to be FREE; past that, the release goes on after the
        answer. With the default 0 a delete answers as soon as the owner is removed: the release takes a second
        turn of the template lock, which under load behind other users' steps cost more than the step itself
        (bench/kill_storm.py), and a client's retry budget should not pay for a disk deletion."""
        wait = self.cfg.release_wait_seconds
        freed = await self.release(iref, wait) if wait > 0 else False
        await faults.reach("uninstall.after_release")
        if not freed:
            self._follow_up(self.release(iref, FOLLOW_UP_RELEASE_SECONDS), f"releasing {iref.name}")
        return freed

    def _follow_up(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Run work after the answer; its failure is logged, and the reconciler's pass does it again."""
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # noqa: BLE001 - the reconciler repeats what failed here
                log.warning("%s: %s (the reconciler will finish it)", what, exc)

        self._follow_ups.spawn(run(), name=what)

    async def close(self) -> None:
        """Cancel the follow-ups still running (the reconciler of some replica finishes them) and the queued
        writes' runs (as a crash would: a written intent is resolved by whoever takes the template lock next)."""
        await self._follow_ups.cancel()
        await self._ups.queues.close()
        await self._downs.queues.close()

    async def restart(self, iref: InstanceRef, principal: Principal, claim: Claim | None = None) -> Effect:
        """A new pod on the same disk (see :mod:`.restarts`)."""
        return await restarts.restart(self, iref, principal, claim)

    async def release(self, iref: InstanceRef, wait: float) -> bool:
        """Delete every disk of a RELEASING id, wait up to ``wait`` seconds for them to go, then mark it FREE
        (see :mod:`.releases`)."""
        return await releases.release(self, iref, wait)

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

    async def tidy(self, ref: TemplateRef, *, repair: bool = False) -> None:
        """The reconciler's work on one template: resolve intents, realign a live set the controller moved
        (allocator.plan_realign), then push RELEASING ids towards FREE. ``repair`` (`doctor --repair`): realign
        a live set whose size disagrees with the records too."""
        async with self.locked(ref):
            try:
                gss = await self.cluster.template(ref)
            except NotFound:
                return
            spec = templates.spec_of(ref, gss)
            await self.resolve_pending(ref, spec, gss)
            rows = await self.rows(ref)
            if allocator.plan_realign(ref, spec, slots_of(rows), replicas=repair) is not None:
                # Every step realigns a moved live set (after the controller settles) before it plans; what only a
                # repair realigns is this step's plan.
                await self._attempts(ref, lambda now, found: allocator.plan_realign(
                    ref, now, slots_of(found), replicas=repair) or Plan(Op.REALIGN, -1, None, now, None))
                rows = await self.rows(ref)
            releasing = [i for i, r in rows.items() if r.slot == SlotState.RELEASING.value]
        for instance_id in releasing:
            await self.release(ref.instance(instance_id), wait=0)
