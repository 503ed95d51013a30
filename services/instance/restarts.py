"""RestartInstance: a new pod on the same disk. The pod is deleted (uid-checked) and the StatefulSet makes it
again. The pod's uid is committed on the claim first, so a retry after a crash deletes that pod (if still
there), never its successor.

A restart writes no GameServerSet, yet under the template lock it queued behind every write's wait for the
controller (bench/kill_storm.py: its lock wait was most of its time, p50 4-10 s). So it first tries without
the lock: the row (the caller's, running), then the pod, then the row again, unchanged (same owner, same
install time, still running), so the pod read belongs to this instance; only then is the effect committed
and that pod deleted by uid. A later pause, uninstall or reinstall cannot make it delete anyone else's pod:
a new owner's pod is a new pod with a new uid. A running instance without a live pod (not made yet, or going:
the StatefulSet makes a new one either way) is answered the same way with nothing to delete, as under the lock;
it took the lock, and waited behind every write queued there (bench/kill_storm.py: the late answers of a storm
run were two such restarts, 12 s on the lock). It takes the lock as before when anything else is not plain: the
row changed or is not running, or the pod runs an old revision (the rollout's consent, which runs under the
lock, issue 14).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aigc_gateway import upgrades
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import Aborted, FailedPrecondition
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.identity import Principal
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import SlotState

from . import access, effects, faults, timing
from .allocator import Op
from .metrics import OPERATIONS

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

Effect = dict[str, Any]


async def restart(lc: Lifecycle, iref: InstanceRef, principal: Principal, claim: Claim | None = None) -> Effect:
    if claim is not None and claim.effect is not None:
        await delete_pod(lc, iref, claim.effect.get("pod_uid") or "")
        return claim.effect
    with timing.step(Op.RESTART.value, iref.template_ref.key):
        with timing.phase("pod"):
            plain = await _unlocked(lc, iref, principal, claim)
        if plain is not None:
            effect, uid = plain
            await faults.reach("restart.after_effect")
            with timing.phase("write"):
                await delete_pod(lc, iref, uid)
        else:
            async with lc.locked(iref.template_ref):
                with timing.phase("pod"):
                    effect, uid = await _effect(lc, iref, principal, claim)
                await faults.reach("restart.after_effect")
                with timing.phase("write"):
                    await delete_pod(lc, iref, uid)
    await faults.reach("restart.after_pod_delete")
    OPERATIONS.labels("restart", "OK").inc()
    return effect


def _same(a: InstanceRow, b: InstanceRow | None) -> bool:
    return b is not None and (a.slot, a.owner, a.created_at) == (b.slot, b.owner, b.created_at)


async def _unlocked(lc: Lifecycle, iref: InstanceRef, principal: Principal, claim: Claim | None
                    ) -> tuple[Effect, str] | None:
    """The effect (committed on the claim) and the pod uid of a plain restart, read without the template lock;
    None when the locked path must decide (see the module docstring). Refusals (not found, not the owner) are
    the same as under the lock."""
    row = access.check(principal, iref, await lc.store.get(iref))
    if row.slot != SlotState.LIVE.value:
        return None  # the locked path refuses it, or restarts it once a resume in flight is done
    await lc.cluster.usable_template(iref.template_ref)
    pod = await lc.cluster.pod(iref.namespace, iref.game_server)
    live = pod is not None and not pod["metadata"].get("deletionTimestamp")
    if live:
        assert pod is not None
        target = upgrades.update_revision(await lc.cluster.stateful_set(iref.template_ref))
        running = upgrades.pod_revision(pod)
        if target and running and running != target and lc.consent is not None:
            return None  # an old revision: the rollout's consent moves it, under the lock
    if not _same(row, await lc.store.get(iref)):
        return None
    uid = pod["metadata"]["uid"] if live and pod is not None else ""  # no live pod: a new one is coming anyway
    effect = effects.make(Op.RESTART.value, row, pod_uid=uid)
    if lc.claims is not None:
        await IdempotencyStore.commit_effect_now(lc.db, claim, effect)
    return effect, uid


async def _effect(lc: Lifecycle, iref: InstanceRef, principal: Principal, claim: Claim | None) -> tuple[Effect, str]:
    """Under the template lock: the restart's effect (committed on the claim) and the uid of the pod to delete."""
    row = access.check(principal, iref, await lc.store.get(iref))
    if row.slot != SlotState.LIVE.value:
        raise FailedPrecondition(f"{iref.name} is {row.slot.lower()}; only a running instance restarts",
                                 reason="NOT_RUNNING")
    await lc.cluster.usable_template(iref.template_ref)
    pod = await lc.cluster.pod(iref.namespace, iref.game_server)
    uid = pod["metadata"]["uid"] if pod is not None and not pod["metadata"].get("deletionTimestamp") else ""
    # A restart of an instance on an old revision moves it to the new one (issue 14).
    if uid and pod is not None and lc.consent is not None:
        await lc.consent(iref, row, pod)
    effect = effects.make(Op.RESTART.value, row, pod_uid=uid)
    if lc.claims is not None:
        await IdempotencyStore.commit_effect_now(lc.db, claim, effect)
    return effect, uid


async def delete_pod(lc: Lifecycle, iref: InstanceRef, uid: str) -> None:
    if not uid:
        return
    try:
        await lc.cluster.delete_pod(iref.namespace, iref.game_server, uid)
    except Aborted:
        pass  # the uid precondition failed: the pod is a successor, the one chosen is gone already
