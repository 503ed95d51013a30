"""Releasing an id: RELEASING -> FREE once its disks are gone for good.

A disk is named by its id (``<vct>-<gss>-<id>``, :func:`aigc_gateway.okg.claim_name`), so the next owner's
disk has the same name as the last one's. A release runs without the template lock until its last check (the
answer of a DeleteInstance should not wait for it), and more than one runs for the same id: the delete's
follow-up, every replica's reconciler pass. One that read the slot RELEASING and was then slowed (an apiserver
restart: its calls waited for /readyz) could delete by name the disk of a user who had installed on the id
since, which another copy had freed in between; that user's next pause left a PAUSED instance without its disk
(``PVC_MISSING`` in full runs after ``kube-restart`` and ``kube:down``, docs/chaos.md).

So a release deletes only what it saw while the slot was still the RELEASING it started from: it reads the
pod and the disks live, then the slot again, and goes on only if the slot is unchanged (same state, same
``state_changed_at``: a FREE and a new owner in between change it), and deletes each disk by the uid it read.
A delete that lands late hits only that uid; a new owner's disk has a new one. The last check and the FREE
write run under the template lock, where no one else changes the slot.

The pod comes first: the kubernetes.io/pvc-protection finalizer holds a PVC only for a *scheduled* pod, so the
PVC of a pod still Pending without a node is gone at once, and the (Advanced) StatefulSet, which still counts
that ordinal until it has applied the reserve, makes it again for the Pending pod. Only once the pod is gone is
an absent PVC really gone (tests/instance/test_release.py).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aigc_gateway.background import Backoff
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.errors import Aborted, NotFound
from aigc_gateway.names import InstanceRef
from aigc_gateway.okg import SlotState

from . import allocator, faults, templates
from .allocator import Op
from .invariants import Claim
from .metrics import OPERATIONS
from .slots import slots_of

if TYPE_CHECKING:
    from .lifecycle import Lifecycle


def _same(now: InstanceRow | None, seen: InstanceRow) -> bool:
    return (now is not None and now.slot == SlotState.RELEASING.value
            and now.state_changed_at == seen.state_changed_at)


async def release(lc: Lifecycle, iref: InstanceRef, wait: float) -> bool:
    """Delete every disk of a RELEASING id, wait up to ``wait`` seconds for them to go, then mark it FREE.
    True when the id is FREE (by this call or another)."""
    ref = iref.template_ref
    seen = await lc.store.get(iref)
    if seen is None or seen.slot != SlotState.RELEASING.value:
        return seen is not None and seen.slot == SlotState.FREE.value
    await faults.reach("release.after_read")
    try:
        gss = await lc.cluster.template(ref)
    except NotFound:
        return False  # the template is gone: PurgeInstances forgets its slots
    # The names once (a list of the namespace's PVCs finds those of a renamed volumeClaimTemplate too); then each
    # is read by name, so a poll costs a few GETs however many disks the namespace has.
    names = lc.cluster.claim_names(ref, gss, iref.id, await lc.cluster.claims(ref, templates.vct_names(gss)))
    deadline = time.monotonic() + wait
    polls = Backoff(initial=0.2, cap=2.0, factor=1.5, jitter=0.0)
    left = await sweep(lc, iref, seen, names)
    await faults.reach("uninstall.after_disk_delete")
    while left:
        if time.monotonic() >= deadline:
            return False
        await polls.sleep()
        left = await sweep(lc, iref, seen, names)
    if left is None:
        return await _freed(lc, iref)
    async with lc.locked(ref):
        gss = await lc.cluster.template(ref)
        spec = templates.spec_of(ref, gss)
        await lc.resolve_pending(ref, spec, gss)
        # Confirmed again under the lock, with the controller done with the write that reserved the id: a
        # controller still acting on an older (R, X) runs the id's pod again, and that pod's disks with it.
        if not templates.settled(gss):
            return False
        left = await sweep(lc, iref, seen, names)
        if left is None:
            return await _freed(lc, iref)
        if left:
            return False
        plan = allocator.plan_release(ref, spec, slots_of(await lc.rows(ref)), iref.id)
        async with lc.db.session() as session:
            await lc.store.apply(session, ref, plan)
    OPERATIONS.labels(Op.RELEASE.value, "OK").inc()
    return True


async def sweep(lc: Lifecycle, iref: InstanceRef, seen: InstanceRow, names: Sequence[str]) -> list[str] | None:
    """What still holds the id's disks (its pod, its PVCs, read live), deleting each PVC not yet being deleted;
    [] when all are gone; None when the slot is no longer the RELEASING ``seen`` (then nothing was deleted)."""
    pod, *claims = await asyncio.gather(lc.cluster.pod(iref.namespace, iref.game_server),
                                        *(lc.cluster.claim(iref.namespace, n) for n in names))
    if not _same(await lc.store.get(iref), seen):
        return None  # freed (and maybe taken) since: what was read may be the next owner's
    present = [c for c in claims if isinstance(c, Claim)]
    for claim in present:
        if not claim.deleting:
            try:
                await lc.cluster.delete_claim(iref.namespace, claim.name, claim.uid)
            except Aborted:
                pass  # replaced since it was read (the uid differs): the next sweep sees the new one
    return ([f"pod {iref.game_server}"] if pod is not None else []) + sorted(c.name for c in present)


async def _freed(lc: Lifecycle, iref: InstanceRef) -> bool:
    row = await lc.store.get(iref)
    return row is not None and row.slot == SlotState.FREE.value
