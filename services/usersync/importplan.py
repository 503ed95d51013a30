"""ImportFromLogto's decisions for one template, as a pure function of what was read.

Inputs: the GameServerSet's (R, X) — live ids L are the lowest R ids not in X —, which ids still have
a PVC, the entries users hold for the template, and the ``instances`` rows already there. Output:
rows to insert and an outcome per entry. The rows keep the allocator's invariants (DESIGN §5):

- a claimed live id becomes LIVE(owner); a claimed reserved id PAUSED(owner);
- an unclaimed reserved id becomes FREE when none of its PVCs exist, else RELEASING (the disk is
  still there: never handed to a new owner before the instance service confirms its deletion);
- nothing else gets a row: an id claimed by two users, a live id nobody claims, a hole (below the
  high-water mark, neither live nor reserved). Those are reported for an admin; the allocator never
  hands out an id without a FREE row, so leaving them without one is safe.

Rows already present win: an entry that agrees with them is "unchanged", one that disagrees is a
conflict, so a second run changes nothing.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .entries import Entry

MAX_RESERVED = 10_000  # a reserve range larger than this is refused rather than expanded into rows

IMPORTED, UNCHANGED, CONFLICT = "imported", "unchanged", "conflict"


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

    def live(self) -> frozenset[int]:
        out: set[int] = set()
        candidate = 0
        while len(out) < self.replicas:
            if candidate not in self.reserved:
                out.add(candidate)
            candidate += 1
        return frozenset(out)


@dataclass(frozen=True)
class Row:
    id: int
    slot: str  # LIVE | PAUSED | RELEASING | FREE
    owner: str | None = None


@dataclass(frozen=True)
class Outcome:
    user: str
    entry: Entry
    result: str  # IMPORTED | UNCHANGED | CONFLICT
    reason: str = ""


@dataclass
class TemplatePlan:
    rows: list[Row] = field(default_factory=list)  # to insert
    outcomes: list[Outcome] = field(default_factory=list)
    unclaimed: list[tuple[int, str]] = field(default_factory=list)  # (id, why no row) for the admin


def plan_template(gss: GssState, claims: Iterable[Claim], existing: Mapping[int, Row]) -> TemplatePlan:
    plan = TemplatePlan()
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
    disputed: set[int] = set()
    for instance_id, group in by_id.items():
        if len(group) > 1:
            disputed.add(instance_id)
            users = ", ".join(c.user for c in group)
            plan.outcomes += [Outcome(c.user, c.entry, CONFLICT, f"id {instance_id} is claimed by several users "
                                      f"({users})") for c in group]
            continue
        (claim,) = group
        plan.outcomes.append(_decide(claim, live, gss.reserved, existing, owned_now, plan))
    claimed = set(by_id)
    for instance_id in sorted(gss.reserved - claimed):
        if instance_id not in existing:
            plan.rows.append(Row(instance_id, "RELEASING" if instance_id in gss.pvc_ids else "FREE"))
    for instance_id in sorted(live - claimed):
        if instance_id not in existing:
            plan.unclaimed.append((instance_id, f"id {instance_id} is running but no user's custom data claims it"))
    used = live | gss.reserved
    for instance_id in range(max(used) + 1 if used else 0):
        if instance_id not in used and instance_id not in existing:
            plan.unclaimed.append((instance_id, f"id {instance_id} is a hole (neither running nor reserved); the "
                                   "instance service reserves it on the template's next change"))
    return plan


def _decide(claim: Claim, live: frozenset[int], reserved: frozenset[int], existing: Mapping[int, Row],
            owned_now: dict[str | None, int], plan: TemplatePlan) -> Outcome:
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
    if instance_id in live:
        plan.rows.append(Row(instance_id, "LIVE", user))
    elif instance_id in reserved:
        plan.rows.append(Row(instance_id, "PAUSED", user))
    else:
        return Outcome(user, claim.entry, CONFLICT, f"id {instance_id} is neither running nor reserved in the "
                       "GameServerSet")
    return Outcome(user, claim.entry, IMPORTED)


def parse_reserved(values: Iterable[object] | None) -> frozenset[int]:
    """``spec.reserveGameServerIds``: ints and ``"a-b"`` range strings (kruise-game 1.x), plain ints (0.x).
    Anything else raises ValueError: guessing could hand out a reserved id."""
    ids: set[int] = set()
    for item in values or ():
        if isinstance(item, bool):
            raise ValueError(f"reserveGameServerIds holds {item!r}")
        if isinstance(item, int) and item >= 0:
            ids.add(item)
            continue
        if isinstance(item, str):
            text = item.strip()
            low, sep, high = text.partition("-")
            if text.isdecimal():
                ids.add(int(text))
                continue
            if sep and low.strip().isdecimal() and high.strip().isdecimal() and int(low) <= int(high):
                if int(high) - int(low) > MAX_RESERVED:
                    raise ValueError(f"reserveGameServerIds range {item!r} is too large")
                ids.update(range(int(low), int(high) + 1))
                continue
        raise ValueError(f"reserveGameServerIds holds {item!r}, which is neither an id nor a range")
    return frozenset(ids)
