"""Installs and resumes of one template go together ("ups", group commit): whoever gets the template lock next plans
every queued install and resume, each on the (R, X) and slots the previous one leaves, and makes one GameServerSet
write, R plus the number of ups that write (combine.py), so a queue of k of them costs the controller one write and
one settle instead of k (docs/instance.md#the-allocator). With no holes, R + 1 with one id un-reserved brings up
exactly that id, and R + 1 alone the next id: the steps chain as installs alone always did.

The combined plan is one intent carrying every call's claim and, per id, its operation and owner; its op is its
first step's (fault points: a write led by a resume stops at `resume.after_intent` with the installs in it). A crash
is resolved from R, as a single install is (every write in it raises R by one), and whoever applies the plan commits
each call's own effect. Each caller is answered from its own id's effect, or with its own refusal (not found, not
the owner, ALREADY_EXISTS, a quota, drift); one call's refusal does not stop the others; a resume of a running
instance is a no-op step answered with the instance as it is. Two resumes of one id never share a write (the second
waits for the next one); an install takes only a FREE id, a resume only a PAUSED one, so no two steps share an id.

Quotas (quotas.py) are checked under the template lock after the step resolved leftover intents, each queued up
against the template's running limit counting the batch's earlier ups (installs and resumes), and against its
owner's limits: each caller holds its owner's quota lock (taken before it queued), so the owner's usage elsewhere
cannot change meanwhile, and a batch carries at most one up per owner on the template (one instance per owner and
template; a second install is ALREADY_EXISTS and left to the planner).

While the template rolls (issue 14) nothing changes: an up never touches the partition (docs/upgrade.md, fact 5: it
is already right), and a pod made for an id comes up on the new revision when at least `partition` other pods are
old (fact 4): the held pods are, however many pods the write makes, since a pod made new never counts as old. So
a rolling template's ups batch as its installs always did, unlike its downs (downs.py: the partition a pause of a
held pod lowers is worked out for one).
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import Aborted, GatewayError
from aigc_gateway.idempotency import Claim
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef, TemplateRef
from aigc_gateway.okg import SlotState

from . import access, allocator, combine, queueing, timing
from .allocator import Op, Plan, Spec
from .quotas import Usage, template_limit, users_limited

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .lifecycle import Lifecycle

Effect = dict[str, Any]
MAX_BATCH = 100  # ups per GameServerSet write


@dataclass(eq=False)
class _Queued:
    op: Op  # INSTALL or RESUME
    owner: str | None  # install: the new owner; resume: the owner the caller read (whose quota lock it holds)
    future: asyncio.Future[Effect]
    claim: Claim | None = None
    roles: Sequence[str] | None = None  # the owner's role claims when the owner calls (None: the recorded ones)
    iref: InstanceRef | None = None  # resume: the instance, and who asks
    principal: Principal | None = None


class UpQueue:
    def __init__(self, lifecycle: Lifecycle):
        self.lifecycle = lifecycle
        self.queues: queueing.Queues[_Queued] = queueing.Queues("up")

    async def install(self, ref: TemplateRef, owner: str, claim: Claim | None = None,
                      roles: Sequence[str] | None = None) -> Effect:
        """Install for ``owner``; returns the effect (the new slot row). Joins the template's queue; the batch runs
        shielded: one caller giving up cancels nobody else's."""
        queued = _Queued(Op.INSTALL, owner, queueing.new_answer(), claim, roles)
        return await self.queues.join(ref.key, queued, lambda: self._run(ref))

    async def resume(self, iref: InstanceRef, principal: Principal, owner: str | None, claim: Claim | None = None,
                     roles: Sequence[str] | None = None) -> Effect:
        """Resume ``iref`` for ``principal`` (``owner``: its owner as the caller read it); returns the effect."""
        queued = _Queued(Op.RESUME, owner, queueing.new_answer(), claim, roles, iref, principal)
        return await self.queues.join(iref.template_ref.key, queued, lambda: self._run(iref.template_ref))

    def _take(self, ref: TemplateRef) -> list[_Queued]:
        """The queued ups, oldest first, but a resume of an id an earlier one resumes stays for the next batch (each
        caller's own run takes the lock in turn, so none is left behind)."""
        batch: list[_Queued] = []
        ids: set[int] = set()
        for q in self.queues.entries(ref.key):
            if len(batch) >= MAX_BATCH:
                break
            if q.iref is not None:
                if q.iref.id in ids:
                    continue
                ids.add(q.iref.id)
            batch.append(q)
        self.queues.take(ref.key, batch)
        return batch

    async def _run(self, ref: TemplateRef) -> None:
        with timing.step("up", ref.key, 0) as times:
            async with self.lifecycle.locked(ref):
                batch = self._take(ref)
                times.calls = len(batch)
                ops = {q.op.value for q in batch}
                times.op = ops.pop() if len(ops) == 1 else "up"
                if batch:
                    await queueing.write(self.lifecycle, ref, batch, lambda q, rows: _step(ref, q, rows), Op.INSTALL,
                                         lambda calls: self._admit(ref, calls))

    async def _admit(self, ref: TemplateRef, planned: list[_Queued]) -> list[_Queued]:
        """The queued ups that may go on: a resume whose instance changed owner since its caller read it (and took
        that owner's quota lock) is refused; with quotas set, each up that would pass one is refused, counting the
        batch's earlier ups on the template. What the planner answers (not found, a running instance, an owner's
        second install) is left to it."""
        quotas = self.lifecycle.quotas
        policies = await quotas.policies()  # read under the template lock: an admin's change applies now
        limited = users_limited(policies) or template_limit(policies, ref) is not None
        if not limited and all(q.op is Op.INSTALL for q in planned):
            return planned
        rows = await self.lifecycle.rows(ref)
        owners = {r.owner for r in rows.values() if r.slot in (SlotState.LIVE.value, SlotState.PAUSED.value)}
        here = sum(1 for r in rows.values() if r.slot == SlotState.LIVE.value)
        cost = await quotas.cost(ref) if limited else Usage()
        kept: list[_Queued] = []
        for q in planned:
            if q.op is Op.INSTALL:
                if not limited or q.owner in owners:
                    kept.append(q)
                    continue
                adding = cost + Usage(installed=1)
            else:
                assert q.iref is not None and q.principal is not None
                row = rows.get(q.iref.id)
                if row is None or row.slot != SlotState.PAUSED.value:
                    kept.append(q)  # missing or running: the planner answers (NOT_FOUND, or a no-op)
                    continue
                if row.owner != q.owner:
                    queueing.answer(q, Aborted(f"{q.iref.name} changed owner while resuming; retry", reason="OWNER_CHANGED",
                                       retry_after=0.1))
                    continue
                if not limited:
                    kept.append(q)
                    continue
                try:
                    access.check(q.principal, q.iref, row)  # a stranger learns nothing about the owner's quota
                except GatewayError as exc:
                    queueing.answer(q, exc)
                    continue
                adding = cost
            try:
                await quotas.check(q.op.value, ref, q.owner or "", q.roles, adding, here, policies)
            except GatewayError as exc:
                queueing.answer(q, exc)
                continue
            here += 1
            owners.add(q.owner)
            kept.append(q)
        return kept


def _step(ref: TemplateRef, q: _Queued, rows: dict[int, InstanceRow]) -> combine.Step:
    """The call's step for the chain (combine.py), its claim on its plan."""
    def step(now: Spec, slots: Any) -> Plan:
        if q.op is Op.RESUME:
            assert q.iref is not None and q.principal is not None
            access.check(q.principal, q.iref, rows.get(q.iref.id))
            plan = allocator.plan_resume(ref, now, slots, q.iref.id)
        else:
            assert q.owner is not None
            plan = allocator.plan_install(ref, now, slots, q.owner)
        return replace(plan, claims=((plan.id, q.claim.key),)) if q.claim is not None else plan

    return step

