"""The allocator invariants of docs/instance.md#the-allocator, checked on a snapshot (pure).

The snapshot is taken under the template lock, so no operation is half-way
through while it is read: anything found is a real violation (or an intent a
crash left behind, which the reconciler resolves).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from aigc_gateway import okg
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import OWNED, SlotState

from .allocator import Spec

# A disk made just before the owner's install was recorded is the owner's own (clocks of PostgreSQL and the
# apiserver differ a little); one older than this predates the owner and would be someone else's data.
PVC_CLOCK_TOLERANCE = timedelta(seconds=5)


@dataclass(frozen=True)
class SlotRecord:
    id: int
    state: SlotState
    owner: str | None
    owner_since: datetime  # `created_at`: when the current owner installed (or the slot was made)
    state_changed_at: datetime


@dataclass(frozen=True)
class Claim:
    name: str
    created: datetime | None
    deleting: bool = False
    uid: str = ""


@dataclass(frozen=True)
class Finding:
    template: str
    id: int  # -1: the template as a whole
    code: str
    description: str


@dataclass(frozen=True)
class Snapshot:
    ref: TemplateRef
    spec: Spec | None  # None: the GameServerSet does not exist
    slots: Mapping[int, SlotRecord]
    volume_claim_templates: Sequence[str]
    claims: Mapping[str, Claim]  # PVCs of this template by name
    pods: frozenset[int]  # ids that have a pod now
    pending_intents: int
    now: datetime


def check(snap: Snapshot, *, live_grace: timedelta = timedelta(minutes=2),
          release_stuck: timedelta = timedelta(minutes=15)) -> list[Finding]:
    ref, spec, slots = snap.ref, snap.spec, snap.slots
    out: list[Finding] = []

    def add(instance_id: int, code: str, description: str) -> None:
        out.append(Finding(ref.name, instance_id, code, description))

    if snap.pending_intents:
        add(-1, "INTENT_PENDING", f"{snap.pending_intents} interrupted operation(s) not yet resolved")
    owners = Counter(s.owner for s in slots.values() if s.owner)
    for owner, count in owners.items():
        if count > 1:
            ids = sorted(s.id for s in slots.values() if s.owner == owner)
            add(ids[0], "DUPLICATE_OWNER", f"{owner} owns {count} instances: ids {ids}")
    for s in slots.values():
        if (s.owner is not None) != (s.state in OWNED):
            add(s.id, "OWNER_STATE", f"slot {s.state.value} with owner {s.owner!r}")
    if spec is None:
        if slots:
            add(-1, "TEMPLATE_MISSING", f"the GameServerSet is gone but {len(slots)} slot(s) remain "
                                        "(PurgeInstances forgets them)")
        return sorted(out, key=lambda f: (f.id, f.code))

    live = spec.live()
    db_live = {s.id for s in slots.values() if s.state is SlotState.LIVE}
    for i in sorted(db_live - live):
        add(i, "LIVE_MISMATCH", f"recorded LIVE but not live in the GameServerSet (replicas {spec.replicas}, "
                                f"live {_ids(live)})")
    for i in sorted(live - db_live):
        row = slots.get(i)
        add(i, "LIVE_MISMATCH", f"live in the GameServerSet but recorded {row.state.value if row else 'nowhere'} "
                                "(`aigc-gateway doctor --repair` stops it)")
    for s in slots.values():
        if s.state is not SlotState.LIVE and s.id not in spec.reserved:
            add(s.id, "NOT_RESERVED", f"{s.state.value} but not in reserveGameServerIds")
    for i in sorted(spec.holes()):
        add(i, "HOLE", f"below the high-water mark {spec.high_water()} but neither live nor reserved")
    for i in sorted(spec.reserved - set(slots)):
        add(i, "UNTRACKED_RESERVED", "reserved in the GameServerSet but unknown to the gateway")

    for s in slots.values():
        names = [okg.claim_name(v, ref.template, s.id) for v in snap.volume_claim_templates]
        present = {n: snap.claims[n] for n in names if n in snap.claims}
        missing = [n for n in names if n not in present]
        if s.state is SlotState.FREE and present:
            add(s.id, "PVC_NOT_RELEASED", f"FREE but disk(s) still exist: {sorted(present)}")
        elif s.state is SlotState.RELEASING and snap.now - s.state_changed_at > release_stuck:
            add(s.id, "RELEASE_STUCK", f"uninstalled {snap.now - s.state_changed_at} ago, disk(s) left: "
                                       f"{sorted(present)}")
        elif s.state in OWNED:
            if s.state is SlotState.PAUSED:
                # A pause can land before the controller ever made the id's pod (an install batch raised R, the
                # owner paused a second later; bench/kill_storm.py): then no disk was made and none is owed (a
                # resume makes it). Owed once the id was live for the grace a live id gets; a disk lost by an
                # instance paused within its first `live_grace` is not seen here (docs/instance.md).
                due = s.state_changed_at - s.owner_since > live_grace
            else:
                due = s.id in snap.pods or snap.now - s.owner_since > live_grace
            if missing and due:
                add(s.id, "PVC_MISSING", f"{s.state.value} without disk(s) {missing}")
            for n, c in sorted(present.items()):
                if c.created is not None and c.created < s.owner_since - PVC_CLOCK_TOLERANCE:
                    add(s.id, "PVC_REUSED", f"disk {n} was made {c.created.isoformat()}, before its owner "
                                            f"{s.owner} installed at {s.owner_since.isoformat()}")
    return sorted(out, key=lambda f: (f.id, f.code))


def _ids(ids: frozenset[int]) -> str:
    shown = sorted(ids)
    return str(shown) if len(shown) <= 20 else f"{shown[:20]}… ({len(shown)})"
