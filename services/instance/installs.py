"""Installs of one template go together (group commit): whoever gets the template lock next writes every
queued install in one GameServerSet write (`replicas + k`), so the controller's time per write, not per
install, bounds the rate (docs/instance.md#the-allocator).

Each queued install carries its call's replay claim: a retry whose first attempt's install was applied
(before a crash) gets that effect instead of a second instance, and a call whose claim a retry took over
stops before it plans.
"""
from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import GatewayError
from aigc_gateway.idempotency import Claim
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import SlotState

from . import allocator, faults, queueing, timing
from .allocator import Op, Plan, Spec
from .effects import taken_over
from .metrics import OPERATIONS
from .quotas import Usage, template_limit, users_limited
from .slots import slots_of

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

Effect = dict[str, Any]
MAX_BATCH = 100  # installs per GameServerSet write


@dataclass
class _Queued:
    owner: str
    future: asyncio.Future[Effect]
    claim: Claim | None = None
    roles: tuple[str, ...] | None = None


class InstallQueue:
    def __init__(self, lifecycle: Lifecycle):
        self.lifecycle = lifecycle
        self._queued: dict[str, list[_Queued]] = {}

    async def install(self, ref: TemplateRef, owner: str, claim: Claim | None = None,
                      roles: tuple[str, ...] | None = None) -> Effect:
        """Install for ``owner``; returns the effect (the new slot row). Joins the template's queue; whoever gets
        the lock next writes every queued install at once. The batch runs shielded: one caller giving up cancels
        nobody else's."""
        queued = _Queued(owner, queueing.new_answer(), claim, roles)
        return await queueing.join(self._queued.setdefault(ref.key, []), queued, lambda: self._run(ref))

    async def _run(self, ref: TemplateRef) -> None:
        with timing.step(Op.INSTALL.value, ref.key, 0) as times:
            await self._batch(ref, times)

    async def _batch(self, ref: TemplateRef, times: timing.StepTimes) -> None:
        async with self.lifecycle.locked(ref):
            queue = self._queued.get(ref.key) or []
            batch, self._queued[ref.key] = queue[:MAX_BATCH], queue[MAX_BATCH:]
            times.calls = len(batch)
            if not batch:
                return  # an earlier batch took ours
            results: list[int | GatewayError] = []
            planned: list[_Queued] = []

            async def before() -> bool:
                # A retry whose first attempt's install was applied (by the resolve just done, or earlier)
                # answers with it; a call whose claim a retry took over stops here.
                state = await self.lifecycle._claims_state([q.claim for q in batch if q.claim is not None])
                planned[:] = []
                for q in batch:
                    held, effect = state.get(q.claim.key, (True, None)) if q.claim else (True, None)
                    if effect is not None:
                        if not q.future.done():
                            q.future.set_result(effect)
                    elif not held:
                        if not q.future.done():
                            q.future.set_exception(taken_over())
                    else:
                        planned.append(q)
                await self._check_quotas(ref, planned)
                return not planned

            def decide(spec: Spec, rows: dict[int, InstanceRow]) -> Plan:
                plan, out = allocator.plan_install_batch(ref, spec, slots_of(rows), [q.owner for q in planned])
                results[:] = out
                if plan is None:
                    return Plan(Op.INSTALL, -1, None, spec, None)
                claims = tuple((r, q.claim.key) for q, r in zip(planned, out, strict=True)
                               if q.claim is not None and isinstance(r, int))
                return dataclasses.replace(plan, claims=claims)

            try:
                _, done = await self.lifecycle._attempts(ref, decide, before)
            except Exception as exc:  # the whole batch failed; each caller gets the error
                code = exc.code.name if isinstance(exc, GatewayError) else "INTERNAL"
                for q in batch:
                    OPERATIONS.labels(Op.INSTALL.value, code).inc()
                    if not q.future.done():
                        q.future.set_exception(exc)
                return
        await faults.reach("install.after_commit")
        for q, result in zip(planned, results, strict=True):
            OPERATIONS.labels(Op.INSTALL.value, result.code.name if isinstance(result, GatewayError) else "OK").inc()
            if q.future.done():
                continue
            if isinstance(result, GatewayError):
                q.future.set_exception(result)
            else:
                q.future.set_result(done[result])


    async def _check_quotas(self, ref: TemplateRef, planned: list[_Queued]) -> None:
        """Refuse (and drop from ``planned``) each queued install that would pass a quota, counting the batch's
        earlier installs on the template. Each caller holds its owner's quota lock (Lifecycle.install), so the
        owner's usage elsewhere cannot change meanwhile; an owner who has an instance here already is left to the
        planner (ALREADY_EXISTS)."""
        quotas = self.lifecycle.quotas
        policies = await quotas.policies()  # read under the template lock: an admin's change applies now
        if not users_limited(policies) and template_limit(policies, ref) is None:
            return
        rows = (await self.lifecycle.rows(ref)).values()
        owners = {r.owner for r in rows if r.slot in (SlotState.LIVE.value, SlotState.PAUSED.value)}
        here = sum(1 for r in rows if r.slot == SlotState.LIVE.value)
        cost = await quotas.cost(ref)
        kept: list[_Queued] = []
        for q in planned:
            if q.future.done():
                continue  # refused on an earlier attempt of this batch
            if q.owner not in owners:
                try:
                    await quotas.check("install", ref, q.owner, q.roles, cost + Usage(installed=1), here,
                                       policies)
                except GatewayError as exc:
                    OPERATIONS.labels(Op.INSTALL.value, exc.code.name).inc()
                    if not q.future.done():
                        q.future.set_exception(exc)
                    continue
                here += 1
                owners.add(q.owner)
            kept.append(q)
        planned[:] = kept
