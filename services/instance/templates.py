"""What the instance service reads from a template's GameServerSet (pure functions on the JSON object).

Whether a template (see :func:`aigc_gateway.okg.is_template`) can host instances (ReserveIds), its (R, X), whether the
controller has caught up with the last write, its disks and accelerator, and
the object to send for a planned write.
"""
from __future__ import annotations

from typing import Any

from aigc_gateway import okg
from aigc_gateway.accelerator import accelerator_of
from aigc_gateway.errors import FailedPrecondition, NotFound
from aigc_gateway.names import TemplateRef

from .allocator import Spec

Obj = dict[str, Any]



def not_found(ref: TemplateRef) -> NotFound:
    return NotFound(f"template {ref.name} does not exist", reason="TEMPLATE_NOT_FOUND",
                    metadata={"template": ref.name})


def check_usable(ref: TemplateRef, gss: Obj) -> None:
    """FAILED_PRECONDITION unless instances can be allocated exactly on this GameServerSet."""
    spec = gss.get("spec") or {}
    strategy = (spec.get("scaleStrategy") or {}).get("scaleDownStrategyType") or "General"
    if strategy != okg.RESERVE_IDS:
        raise FailedPrecondition(
            f"template {ref.name} uses scaleDownStrategyType {strategy}; instances need ReserveIds so that a "
            "paused or uninstalled id stays reserved", reason="NOT_RESERVE_IDS", metadata={"template": ref.name})
    if (gss.get("metadata") or {}).get("deletionTimestamp"):
        raise FailedPrecondition(f"template {ref.name} is being deleted", reason="TEMPLATE_DELETING",
                                 metadata={"template": ref.name})


def spec_of(ref: TemplateRef, gss: Obj) -> Spec:
    spec = gss.get("spec") or {}
    try:
        reserved = okg.parse_reserve(spec.get("reserveGameServerIds"))
    except okg.ReserveListError as exc:
        raise FailedPrecondition(f"template {ref.name}: {exc}", reason="RESERVE_LIST_INVALID",
                                 metadata={"template": ref.name}) from None
    return Spec(int(spec.get("replicas") or 0), reserved)


def settled(gss: Obj) -> bool:
    """Whether the controller has applied the current (R, X) and finished reconciling it.

    kruise-game rewrites `spec.reserveGameServerIds` with a merge patch computed from the object it read at
    the start of a reconcile; a write of ours landing in between would be overwritten. A reconcile that
    finds nothing to scale ends by recording `status.observedGeneration`, and the annotation shows the
    reserve list it applied: when both match the spec, no reconcile of an older spec is still running.
    """
    meta = gss.get("metadata") or {}
    status = gss.get("status") or {}
    if status.get("observedGeneration") != meta.get("generation"):
        return False
    try:
        applied = okg.parse_reserve(
            [p for p in ((meta.get("annotations") or {}).get(okg.RESERVE_ANNOTATION) or "").split(",") if p.strip()])
        wanted = okg.parse_reserve((gss.get("spec") or {}).get("reserveGameServerIds"))
    except okg.ReserveListError:
        return False
    return applied == wanted and status.get("replicas", 0) == (gss.get("spec") or {}).get("replicas", 0)


def only_status_moved(read: Obj, fresh: Obj) -> bool:
    """Whether a write of (R, X) refused (409) for ``read`` may be sent again on ``fresh`` as it is, without planning
    again: the same object (uid), the same spec (generation and body), the same fence, still settled; what moved
    is the controller's status, or metadata the write, built from ``fresh``, carries along.

    After it settles the controller still writes the status as the pods come up (currentReplicas, updatedReplicas,
    readyReplicas: three or four versions within a second or two of a write), and every one of them refuses a write
    conditioned on the version read before it (bench/kill_storm.py: a third of the template lock's time went to
    steps planned again after such a 409)."""
    rm, fm = read.get("metadata") or {}, fresh.get("metadata") or {}
    fence = okg.FENCE_ANNOTATION
    return (rm.get("uid") == fm.get("uid") and rm.get("generation") == fm.get("generation")
            and read.get("spec") == fresh.get("spec") and not fm.get("deletionTimestamp")
            and (rm.get("annotations") or {}).get(fence) == (fm.get("annotations") or {}).get(fence)
            and settled(fresh))


def with_spec(gss: Obj, after: Spec) -> Obj:
    """The object to PUT: the one read (its resourceVersion included) with (R, X) replaced, X as ints."""
    return okg.with_scale(gss, after.replicas, after.reserved)


def volume_claim_templates(gss: Obj) -> list[Obj]:
    return list(((gss.get("spec") or {}).get("gameServerTemplate") or {}).get("volumeClaimTemplates") or [])


def vct_names(gss: Obj) -> list[str]:
    return [v["metadata"]["name"] for v in volume_claim_templates(gss) if (v.get("metadata") or {}).get("name")]


def _int32(number: int) -> int:
    # The Accelerator message's counts are int32: a larger one (a GameServerSet written around the template
    # service's rules, e.g. aliyun.com/gpu-mem 3221225472 for "3Gi") reads as none rather than failing every
    # read of the template's instances with INTERNAL.
    return number if 0 <= number <= 2**31 - 1 else 0


def accelerator(gss: Obj) -> dict[str, Any]:
    """Fields of the `Accelerator` message (common.proto), by the one reading of aigc_gateway.accelerator."""
    acc = accelerator_of(gss)
    return {"type": acc.kind.value, "cpu": acc.cpu, "memory": acc.memory, "gpu_count": _int32(acc.gpu_count),
            "gpu_memory_gib": _int32(acc.gpu_memory_gib), "eci": acc.eci, "eci_instance_type": acc.eci_instance_type}


def needs_gpu(gss: Obj) -> bool:
    return accelerator_of(gss).needs_gpu
