"""The rollout step (issue 14, docs/upgrade.md "Design"): the I/O that moves one template's instances onto its
new revision, and UpdateInstance's request.

A step runs under the template's allocator lock (:meth:`.lifecycle.Lifecycle.locked`), once the controller
has settled the GameServerSet: it finishes a rollout intent a crash left, reads the pods live (never from a
watch cache), the slots, the activity (:func:`aigc_gateway.upgrades.last_activity`: the last access, the
idle culler's keep-alive or busy probe, and when a running instance was installed or resumed) and the pending
requests, asks :func:`.rollout.plan`, records the plan as an intent (op
``rollout``, with the state read), then applies :meth:`.rollout.Plan.writes` in their order, with a fault
point after each kind of write, confirms every priority on its pod's label (the controller can put a
priority back: fact 2) before the partition is lowered, audits each instance it lets move, and drops the
intent. A left intent is finished the same way: the writes from the state read now to the recorded plan
(idempotent, same order), then its audit, then the intent dropped; the next step plans afresh.

Recreating changes (not image/metadata only) get no pre-delete hook: the hold label would also park the pause
and uninstall of a held id (fact 8). The partition and the priorities, confirmed on the pod labels, keep them
from rolling; the hold label is written anyway (it parks nothing there).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from aigc_gateway import upgrades
from aigc_gateway.audit import AuditLog
from aigc_gateway.background import Backoff
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import FailedPrecondition, GatewayError, NotFound, Unavailable
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef, TemplateRef
from aigc_gateway.okg import SlotState
from aigc_gateway.upgrades import Policy

from . import access, effects, faults, rollout, rollout_view, templates
from .allocator import Op
from .idle_models import IdleStateRow
from .lifecycle import Lifecycle
from .metrics import ROLLOUT_INSTANCES, ROLLOUT_PENDING
from .models import IntentRow
from .rollout import HOLD_LABEL, Action, Member, Plan, View, Write
from .rollout_models import RolloutRequestRow
from .rollout_view import Seen
from .slots import HOLDER

log = logging.getLogger(__name__)

ACTOR = "service:rollout"
AUDIT_ACTION = "InstanceService.RolloutInstance"
Clock = Callable[[], datetime]
# Plan.writes' kinds in their order; the fault point after each is `rollout.after_<kind>`.
STAGES = ("holds", "partition_raise", "priorities", "partition", "release")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Rollouts:
    def __init__(self, lifecycle: Lifecycle, prefix: str, policy: str, idle_after_seconds: float,
                 audit: AuditLog | None = None, clock: Clock = utcnow):
        self.lifecycle = lifecycle
        self.db = lifecycle.db
        self.cluster = lifecycle.cluster
        self.prefix = prefix
        self.policy = Policy(policy)
        self.idle_after = timedelta(seconds=idle_after_seconds)
        self.audit = audit
        self.clock = clock
        self._shown: dict[str, set[tuple[Any, tuple[str, str]]]] = {}  # gauge label sets per template

    # -- the step ----------------------------------------------------------------------------------------

    async def step(self, ref: TemplateRef) -> Plan | None:
        """One rollout step for the template under its lock; the plan applied (None: nothing to do)."""
        async with self.lifecycle.locked(ref):
            try:
                return await self.step_locked(ref)
            except NotFound:
                return None  # the template is gone: PurgeInstances forgets its slots

    async def step_locked(self, ref: TemplateRef) -> Plan | None:
        """The step, for a caller holding the template lock (UpdateInstance, a restart's consent)."""
        gss = await self.cluster.settled_template(ref, self.lifecycle.cfg.settle_timeout_seconds)
        await self.lifecycle.resolve_pending(ref, templates.spec_of(ref, gss), gss)
        if await self._finish_left(ref):
            gss = await self.cluster.settled_template(ref, self.lifecycle.cfg.settle_timeout_seconds)
        found = await self._view(ref, gss)
        if found is None:
            return None
        view, seen, pods = found
        plan = rollout.plan(view)
        self._gauges(ref, view, plan, seen)
        writes = plan.writes(seen.partition, seen.priorities, seen.paused, seen.holds)
        if not writes:
            return None
        data = {"target": view.target, "plan": rollout_view.plan_to_json(plan), "seen": seen.to_json(),
                "in_place": {str(i): rollout_view.in_place(gss, pods.get(i)) for i in sorted(plan.moving)}}
        intent = await self._record(ref, data)
        await faults.reach("rollout.after_intent")
        await self._apply(ref, plan, writes)
        await self._commit(ref, intent, data)
        await faults.reach("rollout.after_commit")
        return plan

    async def _view(self, ref: TemplateRef, gss: dict[str, Any]) -> tuple[View, Seen, dict[int, Any]] | None:
        """What the plan is made from; None when there is nothing to roll (or the revision is not known yet)."""
        asts = await self.cluster.stateful_set(ref)
        status = (asts or {}).get("status") or {}
        target = upgrades.update_revision(asts)
        if not target or status.get("observedGeneration") != ((asts or {}).get("metadata") or {}).get("generation"):
            return None  # the controller has not computed the template's revision yet: the next pass plans
        pods = rollout_view.pods_by_id(await self.cluster.pods(ref), ref.template)
        seen = rollout_view.seen(gss, pods)
        async with self.db.session() as session:
            rows = await self.lifecycle.store.load(session, ref)
            kept = {r.id: r.kept_at for r in (await session.execute(select(IdleStateRow).where(
                IdleStateRow.namespace == ref.namespace, IdleStateRow.template == ref.template))).scalars()}
            requests = list((await session.execute(select(RolloutRequestRow).where(
                RolloutRequestRow.namespace == ref.namespace, RolloutRequestRow.template == ref.template))).scalars())
            # A request is carried out once the pod is on the update revision; one for an instance no longer
            # running, or since owned by someone else, is void.
            done = [q.id for q in requests if (row := rows.get(q.id)) is None or row.slot != SlotState.LIVE.value
                    or row.owner != q.owner or seen.revisions.get(q.id) == target]
            if done:
                await session.execute(delete(RolloutRequestRow).where(
                    RolloutRequestRow.namespace == ref.namespace, RolloutRequestRow.template == ref.template,
                    RolloutRequestRow.id.in_(done)))
        members = [Member(r.id, r.slot == SlotState.LIVE.value,
                          seen.revisions.get(r.id) if r.slot == SlotState.LIVE.value else None,
                          upgrades.last_activity(
                              r.last_access_at, kept=kept.get(r.id),
                              live_since=r.state_changed_at if r.slot == SlotState.LIVE.value else None))
                   for r in rows.values() if r.slot in (SlotState.LIVE.value, SlotState.PAUSED.value)]
        # A running pod of an id without an owned slot (a disputed id, one being released) counts as a busy
        # instance: held like one, so it neither ties with the held pods nor rolls unasked.
        owned = {m.id for m in members}
        now = self.clock()
        members += [Member(i, True, revision, now) for i, revision in seen.revisions.items() if i not in owned]
        live_pods = [m for m in members if m.live and m.revision is not None]
        # Nothing to roll: every pod on the update revision, nothing paused, and the partition at 0 (left higher,
        # say by a held pod made again, a pod made now for an id would start on an old revision: fact 4).
        if not seen.paused and not seen.partition and all(m.revision == target for m in live_pods):
            self._gauges(ref, None, None, seen)
            return None
        annotations = (gss.get("metadata") or {}).get("annotations")
        idle_after = upgrades.idle_after_of(annotations, self.prefix)  # 0 is a threshold (idle at once), not unset
        view = View.of(target, upgrades.policy_of(annotations, self.prefix) or self.policy,
                       self.idle_after if idle_after is None else idle_after, now, members,
                       (q.id for q in requests if q.id not in done), activity_lag=upgrades.ACTIVITY_LAG)
        return view, seen, pods

    # -- applying the writes -----------------------------------------------------------------------------

    async def _apply(self, ref: TemplateRef, plan: Plan, writes: list[Write]) -> None:
        """The writes in their order, a fault point after each kind (reached even when a kind has none)."""
        stages = _stages(writes)
        for stage in STAGES:
            for w in stages[stage]:
                if w.hold is not None and w.id is not None:
                    await self.cluster.set_pod_label(ref, w.id, HOLD_LABEL, "true" if w.hold else None)
                elif w.priority is not None and w.id is not None:
                    await self.cluster.set_priority(ref, w.id, w.priority)
                elif w.partition is not None:
                    await self.cluster.set_rolling(ref, w.partition, w.paused)
            if stage == "priorities":
                await self._confirm(ref, plan)
            await faults.reach(f"rollout.after_{stage}")

    async def _confirm(self, ref: TemplateRef, plan: Plan) -> None:
        """Every planned priority on its pod's label before the partition is lowered: the GameServer controller
        can write back the value it read moments after ours (fact 2), so a priority is written again until its
        label shows it. UNAVAILABLE after the settle timeout (the intent is finished by the next step)."""
        deadline = time.monotonic() + max(self.lifecycle.cfg.settle_timeout_seconds, 1.0)
        polls = Backoff(initial=0.1, cap=1.0, factor=1.5, jitter=0.2)
        while True:
            labels = rollout_view.seen({}, rollout_view.pods_by_id(await self.cluster.pods(ref), ref.template))
            off = [i for i, p in plan.priorities.items() if i in labels.revisions and labels.priorities.get(i) != p]
            if not off:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(f"{ref.name}: the update priorities of ids {sorted(off)} did not reach their "
                                  "pods", reason="CONTROLLER_LAGGING", retry_after=5.0)
            for i in off:
                if await self.cluster.priority(ref, i) not in (None, plan.priorities[i]):
                    await self.cluster.set_priority(ref, i, plan.priorities[i])
            await polls.sleep()

    # -- the intent --------------------------------------------------------------------------------------

    async def _record(self, ref: TemplateRef, data: dict[str, Any]) -> IntentRow:
        row = IntentRow(namespace=ref.namespace, template=ref.template, operation=Op.ROLLOUT.value, instance_id=-1,
                        plan=data, created_at=utcnow(), holder=HOLDER)
        async with self.db.session() as session:
            session.add(row)
        return row

    async def _finish_left(self, ref: TemplateRef) -> bool:
        """Finish every rollout intent a crash left: the writes from the state now to its plan, then its audit.
        True when there was one."""
        async with self.db.session() as session:
            left = list((await session.execute(select(IntentRow).where(
                IntentRow.namespace == ref.namespace, IntentRow.template == ref.template,
                IntentRow.operation == Op.ROLLOUT.value).order_by(IntentRow.id))).scalars())
        for intent in left:
            plan = rollout_view.plan_from_json(intent.plan["plan"])
            gss = await self.cluster.template(ref)
            now = rollout_view.seen(gss, rollout_view.pods_by_id(await self.cluster.pods(ref), ref.template))
            log.warning("finishing the interrupted rollout step of %s (from %s)", ref.key, intent.holder)
            await self._apply(ref, plan, plan.writes(now.partition, now.priorities, now.paused, now.holds))
            await self._commit(ref, intent, intent.plan)
        return bool(left)

    async def _commit(self, ref: TemplateRef, intent: IntentRow, data: dict[str, Any]) -> None:
        """The step's audit (each instance it newly lets move), then the intent dropped. A crash in between
        audits again when the intent is finished: at least once, never lost."""
        plan = rollout_view.plan_from_json(data["plan"])
        before = Seen.from_json(data["seen"])
        async with self.db.session() as session:
            owners = {r.id: r.owner for r in (await self.lifecycle.store.load(session, ref)).values()}
        for i in rollout_view.newly_moving(plan, before):
            decision = plan.decisions[i]
            details = {"from_revision": before.revisions.get(i, ""), "to_revision": data["target"],
                       "reason": decision.reason.value, "in_place": bool((data.get("in_place") or {}).get(str(i))),
                       "owner": owners.get(i) or ""}
            log.info("rollout: %s moves to %s (%s)", ref.instance(i).name, data["target"], decision.reason.value)
            if self.audit is not None:
                await self.audit.record(AUDIT_ACTION, ref.instance(i).name, actor=ACTOR, actor_kind="service",
                                        details=details)
        async with self.db.session() as session:
            await session.execute(delete(IntentRow).where(IntentRow.id == intent.id))

    # -- metrics -----------------------------------------------------------------------------------------

    def _gauges(self, ref: TemplateRef, view: View | None, plan: Plan | None, seen: Seen) -> None:
        shown: set[tuple[Any, tuple[str, str]]] = set()
        per_revision: dict[str, int] = {}
        for revision in seen.revisions.values():
            per_revision[revision] = per_revision.get(revision, 0) + 1
        for revision, count in per_revision.items():
            ROLLOUT_INSTANCES.labels(ref.name, revision).set(count)
            shown.add((ROLLOUT_INSTANCES, (ref.name, revision)))
        if plan is not None:
            pending: dict[str, int] = {}
            for d in plan.decisions.values():
                if d.action in (Action.HOLD, Action.ON_RESUME):
                    pending[d.reason.value] = pending.get(d.reason.value, 0) + 1
            for reason, count in pending.items():
                ROLLOUT_PENDING.labels(ref.name, reason).set(count)
                shown.add((ROLLOUT_PENDING, (ref.name, reason)))
        for gauge, labels in self._shown.get(ref.key, set()) - shown:
            gauge.remove(*labels)
        self._shown[ref.key] = shown

    # -- UpdateInstance and a restart's consent ----------------------------------------------------------

    async def request(self, iref: InstanceRef, principal: Principal, claim: Claim | None = None) -> None:
        """UpdateInstance: the id becomes a mover (a request row, kept until its pod is on the update revision)
        and the template's step runs at once. A paused instance is left as it is: it resumes on the update
        revision anyway. A replay after the request was committed only runs the step again."""
        async with self.lifecycle.locked(iref.template_ref):
            row = access.check(principal, iref, await self.lifecycle.store.get(iref))
            if claim is None or claim.effect is None:
                if row.slot not in (SlotState.LIVE.value, SlotState.PAUSED.value):
                    raise FailedPrecondition(f"{iref.name} is {row.slot.lower()}; only an installed instance "
                                             "is updated", reason="NOT_INSTALLED")
                async with self.db.session() as session:
                    if row.slot == SlotState.LIVE.value:
                        await _put_request(session, iref, row.owner or "", principal.subject)
                    await IdempotencyStore.commit_effect(session, claim, effects.make("upgrade", row))
            if row.slot == SlotState.LIVE.value:
                await self.step_locked(iref.template_ref)

    async def consent(self, iref: InstanceRef, row: InstanceRow, pod: dict[str, Any]) -> None:
        """A restart of an instance on an old revision (under the template lock, before its pod is deleted):
        the id becomes a mover first, so the pod made next starts on the update revision (fact 4)."""
        asts = await self.cluster.stateful_set(iref.template_ref)
        target, running = upgrades.update_revision(asts), upgrades.pod_revision(pod)
        if not target or not running or running == target:
            return
        async with self.db.session() as session:
            await _put_request(session, iref, row.owner or "", "restart")
        try:
            await self.step_locked(iref.template_ref)
        except GatewayError as exc:  # the restart goes on; the reconciler's next step moves it
            log.warning("rollout before restarting %s: %s", iref.name, exc)


async def _put_request(session: Any, iref: InstanceRef, owner: str, by: str) -> None:
    await session.merge(RolloutRequestRow(namespace=iref.namespace, template=iref.template, id=iref.id, owner=owner,
                                          requested_at=utcnow(), requested_by=by[:255]))


def _stages(writes: list[Write]) -> dict[str, list[Write]]:
    """Plan.writes sorted by kind, keeping their order: hold labels on, the partition raised, the priorities, the
    partition set (and unpaused), hold labels off. The first partition write is the raise when a priority or a
    second partition write follows it."""
    out: dict[str, list[Write]] = {s: [] for s in STAGES}
    partitions = [n for n, w in enumerate(writes) if w.partition is not None]
    priorities = [n for n, w in enumerate(writes) if w.priority is not None]
    for n, w in enumerate(writes):
        if w.hold is True:
            out["holds"].append(w)
        elif w.hold is False:
            out["release"].append(w)
        elif w.priority is not None:
            out["priorities"].append(w)
        elif n == partitions[0] and (len(partitions) == 2 or (priorities and n < priorities[0])):
            out["partition_raise"].append(w)
        else:
            out["partition"].append(w)
    return out
