"""ImportFromLogto's decisions for one template, as a pure function of what was read.

Inputs: the GameServerSet's (R, X) — live ids L are the lowest R ids not in X —, which ids still have
a PVC, the entries users hold for the template, and the ``instances`` rows already there. Output:
rows to insert and an outcome per entry. The rows keep the allocator's invariants (docs/instance.md#the-allocator):

- a claimed live id becomes LIVE(owner); a claimed reserved id PAUSED(owner);
- an unclaimed reserved id becomes FREE when none of its PVCs exist, else RELEASING (the disk is
  still there: never handed to a new owner before the instance service confirms its deletion);
- a claim on a reserved id whose disks are all gone is refused (a resume would start on an empty new
  disk): reported, and the id becomes FREE like an unclaimed one without a disk;
- an id claimed by several users (the original's race) that is running, or reserved with its disk,
  becomes a *dispute*: no row (so the allocator never hands it out, a running one keeps running and a
  reserved one stays reserved), a ``disputed_instances`` record naming the claimants, and an admin
  decides (ResolveDisputedInstance, see disputes.py);
- nothing else gets a row: a live id nobody claims, a hole (below the high-water mark, neither live
  nor reserved). Those are reported for an admin; the allocator never hands out an id without a FREE
  row, so leaving them without one is safe.

An owned row's ``since`` (its ``created_at``: when the owner installed) is the creation time of the
id's oldest disk, not the import's: the owner had the disk before the gateway knew them.

Rows already present win: an entry that agrees with them is "unchanged", one that disagrees is a
conflict, so a second run changes nothing.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from aigc_gateway import okg
from aigc_gateway.okg import SlotState

from .entries import Entry

MAX_RESERVED = 10_000  # a reserve list holding more ids than this is refused rather than expanded into rows

IMPORTED, UNCHANGED, CONFLICT, DISPUTED = "imported", "unchanged", "conflict", "disputed"
LIVE, PAUSED, RELEASING, FREE = SlotState.LIVE, SlotState.PAUSED, SlotState.RELEASING, SlotState.FREE


@dataclass(frozen=True)
class Claim:
    user: str
    entry: Entry


@dataclass(frozen=True)
class GssState:
    """What the import read of one template's GameServerSet (``problem`` set when it cannot be used)."""

    replicas: int = 0
    reserved: frozenset[int] = frozenset()
    pvc_ids: frozenset[int] = frozenset()  # ids with at least one PVC left
    problem: str = ""
    has_disks: bool = True  # the template has volumeClaimTemplates (else a paused id needs no disk)
    pvc_created: Mapping[int, datetime] = field(default_factory=dict)  # id -> its oldest PVC's creation

    def disk_gone(self, instance_id: int) -> bool:
        return self.has_disks and instance_id not in self.pvc_ids

    def live(self) -> frozenset[int]:
        return okg.live_ids(self.replicas, self.reserved)

    def holes(self) -> frozenset[int]:
        return okg.holes(self.replicas, self.reserved)


@dataclass(frozen=True)
class Row:
    id: int
    slot: str  # LIVE | PAUSED | RELEASING | FREE
    owner: str | None = None
    since: datetime | None = field(default=None, compare=False)  # the owner's install time (None: now)


@dataclass(frozen=True)
class Dispute:
    id: int
    claimants: tuple[str, ...]
    state: str  # LIVE | PAUSED: the id in the GameServerSet


@dataclass(frozen=True)
class Outcome:
    user: str
    entry: Entry
    result: str  # IMPORTED | UNCHANGED | CONFLICT | DISPUTED
    reason: str = ""


@dataclass
class TemplatePlan:
    rows: list[Row] = field(default_factory=list)  # to insert
    outcomes: list[Outcome] = field(default_factory=list)
    unclaimed: list[tuple[int, str]] = field(default_factory=list)  # (id, why no row) for the admin
    disputes: list[Dispute] = field(default_factory=list)  # new disputes to record


def plan_template(gss: GssState, claims: Iterable[Claim], existing: Mapping[int, Row],
                  disputed: Mapping[int, Iterable[str]] | None = None) -> TemplatePlan:
    """``disputed``: the template's disputes already recorded (id -> claimants)."""
    plan = TemplatePlan()
    disputed = {i: tuple(sorted(users)) for i, users in (disputed or {}).items()}
    claims = sorted(claims, key=lambda c: (c.entry.id, c.user))
    if gss.problem:
        plan.outcomes = [Outcome(c.user, c.entry, CONFLICT, gss.problem) for c in claims]
        return plan
    if len(gss.reserved) > MAX_RESERVED:
        plan.outcomes = [Outcome(c.user, c.entry, CONFLICT, f"reserveGameServerIds holds more than {MAX_RESERVED} "
                                 "ids") for c in claims]
        return plan
    live = gss.live()
    by_id: dict[int, list[Claim]] = defaultdict(list)
    for claim in claims:
        by_id[claim.entry.id].append(claim)
    owned_now = {row.owner: row.id for row in existing.values() if row.owner}
    no_disk: set[int] = set()  # reserved ids whose claims were refused because their disks are gone
    for instance_id, group in by_id.items():
        if instance_id in disputed and instance_id not in existing:
            users = ", ".join(disputed[instance_id])
            plan.outcomes += [Outcome(c.user, c.entry, DISPUTED, f"id {instance_id} is disputed ({users}): kept "
                                      "out of allocation until an admin resolves it") for c in group]
            continue
        if len(group) > 1 and instance_id not in existing:
            users = ", ".join(c.user for c in group)
            state = _dispute_state(gss, live, instance_id)
            if state:
                plan.disputes.append(Dispute(instance_id, tuple(c.user for c in group), state))
                plan.outcomes += [Outcome(c.user, c.entry, DISPUTED, f"id {instance_id} is claimed by several "
                                          f"users ({users}): kept out of allocation until an admin resolves it "
                                          "(ResolveDisputedInstance)") for c in group]
                continue
            if instance_id in gss.reserved:
                no_disk.add(instance_id)
            plan.outcomes += [Outcome(c.user, c.entry, CONFLICT, f"id {instance_id} is claimed by several users "
                                      f"({users}) but is {_absent(gss, instance_id)}") for c in group]
            continue
        for claim in group:
            outcome = _decide(claim, live, gss, existing, owned_now, plan)
            if outcome.result == CONFLICT and instance_id in gss.reserved and gss.disk_gone(instance_id):
                no_disk.add(instance_id)
            plan.outcomes.append(outcome)
    claimed = set(by_id) - no_disk
    for instance_id in sorted(gss.reserved - claimed):
        if instance_id not in existing and instance_id not in disputed:
            plan.rows.append(Row(instance_id, (RELEASING if instance_id in gss.pvc_ids else FREE).value))
    for instance_id in sorted(live - claimed):
        if instance_id not in existing and instance_id not in disputed:
            plan.unclaimed.append((instance_id, f"id {instance_id} is running but no user's custom data claims it"))
    for instance_id in sorted(gss.holes()):
        if instance_id not in existing:
            plan.unclaimed.append((instance_id, (f"id {instance_id} is a hole (neither running nor reserved); the "
                                                 "instance service reserves it on the template's next change")))
    return plan


def _dispute_state(gss: GssState, live: frozenset[int], instance_id: int) -> str:
    """LIVE or PAUSED when an id claimed by several users holds something to dispute; "" when not."""
    if instance_id in live:
        return LIVE.value
    if instance_id in gss.reserved and not gss.disk_gone(instance_id):
        return PAUSED.value
    return ""


def _absent(gss: GssState, instance_id: int) -> str:
    if instance_id in gss.reserved:
        return "reserved and its disk is gone (nothing to give to either)"
    return "neither running nor reserved in the GameServerSet"


def _decide(claim: Claim, live: frozenset[int], gss: GssState, existing: Mapping[int, Row],
            owned_now: dict[str, int], plan: TemplatePlan) -> Outcome:
    instance_id, user = claim.entry.id, claim.user
    row = existing.get(instance_id)
    if row is not None:
        if row.owner == user:
            return Outcome(user, claim.entry, UNCHANGED)
        if row.owner:
            return Outcome(user, claim.entry, CONFLICT, f"id {instance_id} belongs to another user in the gateway")
        return Outcome(user, claim.entry, CONFLICT, f"id {instance_id} is uninstalled in the gateway ({row.slot})")
    if user in owned_now:
        return Outcome(user, claim.entry, CONFLICT,
                       f"the user already has id {owned_now[user]} of this template in the gateway")
    since = gss.pvc_created.get(instance_id)
    if instance_id in live:
        plan.rows.append(Row(instance_id, LIVE.value, user, since))
    elif instance_id in gss.reserved and gss.disk_gone(instance_id):
        return Outcome(user, claim.entry, CONFLICT, f"id {instance_id} is paused but its disk is gone: a resume "
                       "would start on an empty new disk")
    elif instance_id in gss.reserved:
        plan.rows.append(Row(instance_id, PAUSED.value, user, since))
    else:
        return Outcome(user, claim.entry, CONFLICT, f"id {instance_id} is neither running nor reserved in the "
                       "GameServerSet")
    return Outcome(user, claim.entry, IMPORTED)

