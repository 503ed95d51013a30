"""The ID allocator's decisions (docs/instance.md#the-allocator), as pure functions of (R, X, slots).

OKG's state per template is R = `spec.replicas` and X = `spec.reserveGameServerIds`;
the live ids are the lowest R ids not in X. Every id below the high-water mark
that is not live must be in X ("no holes"): then each write below has exactly
one possible outcome, which :func:`plan_*` computes and checks before anything
is written, and which :func:`resolve` recognises after a crash. Several steps of one template that go in
one write are chained and checked in :mod:`.combine`.

Nothing here does I/O; the lifecycle module reads (R, X) and the slot rows,
asks for a :class:`Plan`, records it as an intent, makes the one GameServerSet
write, then applies the plan's transitions.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aigc_gateway import okg
from aigc_gateway.errors import AlreadyExists, FailedPrecondition, GatewayError, NotFound
from aigc_gateway.names import TemplateRef
from aigc_gateway.okg import OWNED, SlotState


class Op(str, Enum):
    INSTALL = "install"
    PAUSE = "pause"
    RESUME = "resume"
    UNINSTALL = "uninstall"
    RELEASE = "release"  # RELEASING -> FREE once the disks are gone
    REALIGN = "realign"  # bring the controller's live set back to the recorded one (see plan_realign)
    RESTART = "restart"  # a new pod on the same disk (no allocator write; for metrics and effects)
    ROLLOUT = "rollout"  # a rollout step's intent (rollouts.py): not an (R, X) write, resolved there


@dataclass(frozen=True)
class Slot:
    id: int
    state: SlotState
    owner: str | None = None


@dataclass(frozen=True)
class Spec:
    """(R, X) of one GameServerSet."""

    replicas: int
    reserved: frozenset[int] = frozenset()

    @classmethod
    def of(cls, replicas: int, reserved: Iterable[int] = ()) -> Spec:
        return cls(replicas, frozenset(reserved))

    def live(self) -> frozenset[int]:
        """The lowest R ids not in X: the ids the controller keeps running."""
        return okg.live_ids(self.replicas, self.reserved)

    def high_water(self) -> int:
        """H: one above the highest live or reserved id."""
        return okg.high_water(self.replicas, self.reserved)

    def holes(self) -> frozenset[int]:
        """Ids below H that are neither live nor reserved (the invariant says: none)."""
        return okg.holes(self.replicas, self.reserved)

    def next_id(self) -> int:
        """The id a `replicas + 1` write brings up: the lowest neither live nor reserved."""
        used = self.live() | self.reserved
        candidate = 0
        while candidate in used:
            candidate += 1
        return candidate


@dataclass(frozen=True)
class Transition:
    """Set slot ``id`` to ``state`` with ``owner``; ``state`` None deletes the row."""

    id: int
    state: SlotState | None
    owner: str | None = None


@dataclass(frozen=True)
class Plan:
    op: Op
    id: int
    owner: str | None  # install: the new owner; otherwise the owner before the step
    before: Spec
    after: Spec | None  # None: no GameServerSet write
    transitions: tuple[Transition, ...] = ()
    plugged: frozenset[int] = field(default_factory=frozenset)  # holes reserved by this write
    # (id, replay claim key) of the calls this plan serves: whoever applies the plan, even after a crash,
    # records each call's effect on its claim in the same transaction (services/instance/effects.py).
    claims: tuple[tuple[int, str], ...] = ()
    # A combined plan (combine.py): (id, op, owner before) of each step it carries, so that each call's
    # effect names its own operation and owner. Empty: every id is about ``op`` (and ``owner``).
    steps: tuple[tuple[int, Op, str | None], ...] = ()

    @property
    def noop(self) -> bool:
        return self.after is None and not self.transitions

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op.value, "id": self.id, "owner": self.owner,
            "before": _spec_json(self.before), "after": _spec_json(self.after) if self.after else None,
            "transitions": [[t.id, t.state.value if t.state else None, t.owner] for t in self.transitions],
            "plugged": sorted(self.plugged), "claims": [list(c) for c in self.claims],
            "steps": [[i, op.value, owner] for i, op, owner in self.steps],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            op=Op(data["op"]), id=int(data["id"]), owner=data.get("owner"),
            before=_spec_from(data["before"]), after=_spec_from(data["after"]) if data.get("after") else None,
            transitions=tuple(Transition(int(i), SlotState(s) if s else None, o) for i, s, o in data["transitions"]),
            plugged=frozenset(data.get("plugged") or ()),
            claims=tuple((int(i), str(k)) for i, k in data.get("claims") or ()),
            steps=tuple((int(i), Op(op), owner) for i, op, owner in data.get("steps") or ()),
        )

    def step_of(self, instance_id: int) -> tuple[Op, str | None]:
        """The operation (and the owner before it) this plan carries out on the id."""
        for i, op, owner in self.steps:
            if i == instance_id:
                return op, owner
        return self.op, self.owner


def _spec_json(spec: Spec) -> dict[str, Any]:
    return {"replicas": spec.replicas, "reserved": sorted(spec.reserved)}


def _spec_from(data: Mapping[str, Any]) -> Spec:
    return Spec.of(int(data["replicas"]), (int(i) for i in data["reserved"]))


class AllocatorInvariantError(GatewayError):
    """A planned write would not have the one outcome the plan relies on (a bug or outside drift)."""


def drift(ref: TemplateRef, message: str) -> FailedPrecondition:
    return FailedPrecondition(f"{ref.name}: the allocator's records disagree with the GameServerSet ({message}); "
                              "an admin should run `aigc-gateway doctor`", reason="ALLOCATOR_DRIFT",
                              metadata={"template": ref.name})


def expect(after: Spec, live: frozenset[int], ref: TemplateRef) -> None:
    if after.live() != live:
        raise AllocatorInvariantError(
            f"{ref.name}: planned write {after} would run {sorted(after.live())}, not {sorted(live)}",
            reason="ALLOCATOR_INVARIANT")


def _owned_by(slots: Mapping[int, Slot], owner: str) -> Slot | None:
    return next((s for s in slots.values() if s.owner == owner and s.state in OWNED), None)


def plan_install(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], owner: str) -> Plan:
    """One more instance for ``owner``: a FREE id un-reserved (lowest first), else the next id H.
    Holes, if any, are reserved in the same write and never handed out: their disks are unaccounted for."""
    existing = _owned_by(slots, owner)
    if existing is not None:
        raise AlreadyExists(f"{owner} already has an instance of {ref.name}", reason="INSTANCE_EXISTS",
                            metadata={"instance": ref.instance(existing.id).name})
    live = spec.live()
    holes = spec.holes()
    free = sorted(s.id for s in slots.values() if s.state is SlotState.FREE and s.id in spec.reserved)
    reserved = spec.reserved | holes
    if free:
        reserved = reserved - {free[0]}
    after = Spec(spec.replicas + 1, frozenset(reserved))
    new_live = after.live()
    added = new_live - live
    if len(added) != 1 or not live <= new_live:
        raise AllocatorInvariantError(f"{ref.name}: install from {spec} would change {sorted(live)} to "
                                      f"{sorted(new_live)}", reason="ALLOCATOR_INVARIANT")
    (new_id,) = added
    if free and new_id != free[0]:
        raise AllocatorInvariantError(f"{ref.name}: un-reserving {free[0]} would start {new_id}",
                                      reason="ALLOCATOR_INVARIANT")
    row = slots.get(new_id)
    if row is not None and row.state is not SlotState.FREE:
        raise drift(ref, f"id {new_id} is next in the GameServerSet but recorded as {row.state.value}")
    return Plan(Op.INSTALL, new_id, owner, spec, after, (Transition(new_id, SlotState.LIVE, owner),), holes)


def _slot(ref: TemplateRef, slots: Mapping[int, Slot], instance_id: int) -> Slot:
    slot = slots.get(instance_id)
    if slot is None or slot.state not in OWNED:
        raise NotFound(f"{ref.instance(instance_id).name} does not exist", reason="INSTANCE_NOT_FOUND")
    return slot


def plan_pause(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], instance_id: int) -> Plan:
    """Targeted delete of the id (reserve it, replicas - 1); the disk stays. Pausing a paused instance is a no-op."""
    slot = _slot(ref, slots, instance_id)
    if slot.state is SlotState.PAUSED:
        if instance_id not in spec.reserved:
            raise drift(ref, f"paused id {instance_id} is not reserved")
        return Plan(Op.PAUSE, instance_id, slot.owner, spec, None)
    live = spec.live()
    if instance_id not in live:
        raise drift(ref, f"id {instance_id} is recorded as running but is not live")
    holes = spec.holes()
    after = Spec(spec.replicas - 1, spec.reserved | holes | {instance_id})
    expect(after, live - {instance_id}, ref)
    return Plan(Op.PAUSE, instance_id, slot.owner, spec, after,
                (Transition(instance_id, SlotState.PAUSED, slot.owner),), holes)


def plan_resume(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], instance_id: int) -> Plan:
    """Targeted re-create (un-reserve the id, replicas + 1): with no holes the controller can only bring back
    this id, on its old disk. Resuming a running instance is a no-op."""
    slot = _slot(ref, slots, instance_id)
    live = spec.live()
    if slot.state is SlotState.LIVE:
        if instance_id not in live:
            raise drift(ref, f"id {instance_id} is recorded as running but is not live")
        return Plan(Op.RESUME, instance_id, slot.owner, spec, None)
    if instance_id not in spec.reserved:
        raise drift(ref, f"paused id {instance_id} is not reserved")
    holes = spec.holes()
    after = Spec(spec.replicas + 1, (spec.reserved | holes) - {instance_id})
    expect(after, live | {instance_id}, ref)
    return Plan(Op.RESUME, instance_id, slot.owner, spec, after,
                (Transition(instance_id, SlotState.LIVE, slot.owner),), holes)


def plan_uninstall(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], instance_id: int) -> Plan:
    """Owner removed at once (RELEASING); a running id is reserved in the same step. The id becomes FREE
    only by :func:`plan_release`, after its disks are confirmed gone. Uninstalling a RELEASING id is a no-op
    that lets the caller finish the disk deletion."""
    slot = slots.get(instance_id)
    if slot is not None and slot.state is SlotState.RELEASING:
        return Plan(Op.UNINSTALL, instance_id, None, spec, None)
    slot = _slot(ref, slots, instance_id)
    transition = (Transition(instance_id, SlotState.RELEASING, None),)
    if slot.state is SlotState.PAUSED:
        if instance_id not in spec.reserved:
            raise drift(ref, f"paused id {instance_id} is not reserved")
        return Plan(Op.UNINSTALL, instance_id, slot.owner, spec, None, transition)
    live = spec.live()
    if instance_id not in live:
        raise drift(ref, f"id {instance_id} is recorded as running but is not live")
    holes = spec.holes()
    after = Spec(spec.replicas - 1, spec.reserved | holes | {instance_id})
    expect(after, live - {instance_id}, ref)
    return Plan(Op.UNINSTALL, instance_id, slot.owner, spec, after, transition, holes)


def plan_release(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], instance_id: int) -> Plan:
    """RELEASING -> FREE. The caller must have confirmed that every disk of the id is gone."""
    slot = slots.get(instance_id)
    if slot is None or slot.state is not SlotState.RELEASING:
        return Plan(Op.RELEASE, instance_id, None, spec, None)  # already FREE, or purged: nothing to do
    if instance_id not in spec.reserved:
        raise drift(ref, f"releasing id {instance_id} is not reserved")
    return Plan(Op.RELEASE, instance_id, None, spec, None, (Transition(instance_id, SlotState.FREE, None),))


def plan_realign(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], *, replicas: bool = False) -> Plan | None:
    """Undo a live set the controller changed on its own; None when (R, X) runs exactly the LIVE ids.

    kruise-game v1.0.0 computes its implicit reserve list from the Advanced StatefulSet in its cache. A
    reconcile that runs right after its own update of that object, triggered by a pod event that arrived
    first, reads the old reserve ordinals: ids un-reserved by a resume or an install come back into X
    while R stays, so one of them stops and a new id H starts in its place (seen on the test bed under
    the two-process storm: X=[] written, X=[1] patched back, id 1 deleted, id 6 started).

    The repair keeps R and reserves every id below the new high-water mark that is not recorded LIVE:
    the controller then deletes the stray pods and, scaling back up to R, starts the lowest missing
    ids, which are the recorded ones (on their old disks). A stray id had a pod, so it has a disk:
    it becomes RELEASING (the reconciler deletes the disk and frees the id). When R itself disagrees
    with the LIVE rows, nothing here can tell which side is right: that stays drift for an admin, whose
    word is ``replicas`` (`aigc-gateway doctor --repair`): the records win there too, R included. Ids
    running for nobody (an install written but never recorded, a scale-up by hand) stop and lose their
    disks; LIVE ids not running start again on theirs; paused ones stay reserved with their disks.
    """
    wanted = frozenset(i for i, s in slots.items() if s.state is SlotState.LIVE)
    running = spec.live()
    if running == wanted or (spec.replicas != len(wanted) and not replicas):
        return None
    high = max(wanted | running | spec.reserved) + 1
    after = Spec(len(wanted), frozenset(range(high)) - wanted)
    expect(after, wanted, ref)
    strays = sorted(running - wanted)
    transitions = tuple(Transition(i, SlotState.RELEASING, None) for i in strays
                        if slots.get(i) is None or slots[i].state is SlotState.FREE)
    return Plan(Op.REALIGN, strays[0] if strays else min(wanted - running), None, spec, after, transitions)


def resolve(plan: Plan, now: Spec) -> bool:
    """Whether an interrupted plan's GameServerSet write took effect, judged from the (R, X) read now.

    Every writer resolves pending intents under the template lock before writing, so (R, X) is either
    the plan's `before` or its `after` (the controller rewrites X's notation, never its set). Anything
    else means someone outside the gateway wrote the GameServerSet; then the id's own state decides.
    """
    if plan.after is None or now == plan.after:
        return True
    if now == plan.before:
        return False
    if plan.op is Op.REALIGN:
        # The stray ids had pods, so they have disks whether or not the write landed; once they are reserved
        # (by this write, or by the controller's race striking again) they must be RELEASING, or their disks
        # stay untracked. A stray still live is planned again by the next realign.
        return {t.id for t in plan.transitions} <= now.reserved
    if plan.after.replicas != plan.before.replicas:
        # A combined plan (combine.py) moves R by one per write it carries, all up or all down: R decides it too.
        # R is written by the gateway alone (the controller's stale-cache race moves X, never R): R as planned
        # means the write landed even when the race has since put an id back into X (the live set differs
        # from the plan's; the realign that follows every resolve brings the recorded ids back).
        if now.replicas == plan.after.replicas:
            return True
        if now.replicas == plan.before.replicas:
            return False
    ids = {t.id for t in plan.transitions} or {plan.id}
    if plan.op in (Op.INSTALL, Op.RESUME):
        return ids <= now.live()
    return ids <= now.reserved and not ids & now.live()


def apply(slots: Mapping[int, Slot], transitions: Iterable[Transition]) -> dict[int, Slot]:
    """The slot map after the transitions (for simulations and checks)."""
    out = dict(slots)
    for t in transitions:
        if t.state is None:
            out.pop(t.id, None)
        else:
            out[t.id] = Slot(t.id, t.state, t.owner)
    return out
