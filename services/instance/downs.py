"""Pauses and uninstalls of one template go together (group commit), as installs and resumes do (:mod:`.ups`):
whoever gets the template lock next plans every queued one, each on the (R, X) and slots the previous one leaves,
and makes one GameServerSet write for all of them (combine.py), so a queue of k of them costs the controller one
write and one settle instead of k (docs/instance.md#the-allocator).

The combined plan is one intent: a crash before, during or after the write is resolved from R as a single
pause is (every write in it lowers R by one), and whoever applies it commits each call's effect on its claim.
Each caller is answered from its own id's effect, built from the rows the step wrote, or with its own refusal
(not the owner, not found, drift); one call's refusal does not stop the others.

Two calls about one id never share a write (the second waits for the next one), and while the template rolls
(issue 14) a write carries one pause or uninstall: the partition it lowers is worked out for one held pod.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import GatewayError
from aigc_gateway.idempotency import Claim
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef, TemplateRef

from . import access, allocator, combine, queueing, rollout_view, timing
from .allocator import Op, Plan, Spec

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

Effect = dict[str, Any]
MAX_BATCH = 100  # steps per GameServerSet write
PLANNERS: dict[Op, Callable[..., Plan]] = {Op.PAUSE: allocator.plan_pause, Op.UNINSTALL: allocator.plan_uninstall}


@dataclass(eq=False)
class _Queued:
    op: Op
    iref: InstanceRef
    principal: Principal
    future: asyncio.Future[Effect]
    claim: Claim | None = None


class DownQueue:
    def __init__(self, lifecycle: Lifecycle):
        self.lifecycle = lifecycle
        self.queues: queueing.Queues[_Queued] = queueing.Queues("down")

    async def run(self, op: Op, iref: InstanceRef, principal: Principal, claim: Claim | None = None) -> Effect:
        """Pause or uninstall ``iref`` for ``principal``; returns the effect (the instance as the step left it, or
        as a crashed first attempt left it). Joins the template's queue; the batch runs shielded: one caller
        giving up cancels nobody else's."""
        ref = iref.template_ref
        queued = _Queued(op, iref, principal, queueing.new_answer(), claim)
        return await self.queues.join(ref.key, queued, lambda: self._run(ref))

    def _take(self, ref: TemplateRef, one: bool) -> list[_Queued]:
        """The queued steps of distinct ids, oldest first (at most one when ``one``); the rest stay queued for the
        next batch (each caller's own run takes the lock in turn, so none is left behind)."""
        batch: list[_Queued] = []
        ids: set[int] = set()
        for q in self.queues.entries(ref.key):
            if len(batch) >= (1 if one else MAX_BATCH):
                break
            if q.iref.id not in ids:
                ids.add(q.iref.id)
                batch.append(q)
        self.queues.take(ref.key, batch)
        return batch

    async def _run(self, ref: TemplateRef) -> None:
        with timing.step("down", ref.key, 0) as times:
            async with self.lifecycle.locked(ref):
                try:
                    gss = await self.lifecycle.cluster.usable_template(ref)
                except GatewayError as exc:
                    for q in self._take(ref, one=False):
                        queueing.answer(q, exc)
                    return
                # Read under the template lock, which every rollout step holds: it cannot start rolling meanwhile.
                batch = self._take(ref, one=bool(rollout_view.rolling(gss)[0]))
                times.calls = len(batch)
                times.op = batch[0].op.value if len({q.op for q in batch}) == 1 else "down"
                if batch:
                    await queueing.write(self.lifecycle, ref, batch, lambda q, rows: _step(ref, q, rows), Op.PAUSE)


def _step(ref: TemplateRef, q: _Queued, rows: dict[int, InstanceRow]) -> combine.Step:
    """The call's step for the chain (combine.py), its claim on its plan."""
    def step(now: Spec, slots: Any) -> Plan:
        access.check(q.principal, q.iref, rows.get(q.iref.id))
        plan = PLANNERS[q.op](ref, now, slots, q.iref.id)
        return replace(plan, claims=((q.iref.id, q.claim.key),)) if q.claim is not None else plan

    return step

