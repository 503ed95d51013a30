"""Group commit, the pure half: the calls queued for one template planned one after another, each on the (R, X)
and slots the previous one leaves, and checked as one GameServerSet write (docs/instance.md#the-allocator).

Two kinds of batch, never mixed: **ups** (installs and resumes, :mod:`.ups`) raise R by one per write among them,
**downs** (pauses and uninstalls, :mod:`.downs`) lower it by one. With no holes every step has one outcome given
the (R, X) before it (an install runs the next id, or the lowest FREE id it un-reserves; a resume runs exactly its
id; a pause or uninstall stops exactly its id), so the last step's (R, X) has one outcome too: the first live set
plus (or minus) the writing steps' ids. :func:`combine` checks exactly that, and that each step was planned on
what the one before it leaves, then makes the one plan: an intent carrying every call's claim and, per id, its
operation and owner before (``Plan.steps``), so whoever applies it (the writer, or after a crash the next step,
the reconciler, resolution.py) commits each call's own effect, and allocator.resolve judges it from R alone, as
a single step. The combined plan's op and id are its first step's: they name the fault points
(`<op>.after_intent`, `<op>.after_gss_write`), the intent row and the logs, so a write whose first step is a
resume stops at `resume.after_intent` with installs in it, and one whose first is an install at
`install.after_intent` with resumes in it.

A step that cannot be planned (not found, not the owner, ALREADY_EXISTS, drift) is its call's refusal and
changes nothing for the steps after it.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from aigc_gateway.errors import GatewayError
from aigc_gateway.names import TemplateRef

from . import allocator
from .allocator import AllocatorInvariantError, Op, Plan, Slot, Spec

UPS = frozenset({Op.INSTALL, Op.RESUME})
DOWNS = frozenset({Op.PAUSE, Op.UNINSTALL})

# One call's step: its plan from the (R, X) and slots the steps before it leave, or the call's refusal (raised).
Step = Callable[[Spec, Mapping[int, Slot]], Plan]


def chain(spec: Spec, slots: Mapping[int, Slot], steps: Sequence[Step]) -> list[Plan | GatewayError]:
    """Each step planned on what the planned ones before it leave; per step its plan or its refusal."""
    out: list[Plan | GatewayError] = []
    now, current = spec, dict(slots)
    for step in steps:
        try:
            plan = step(now, current)
        except GatewayError as exc:
            out.append(exc)
            continue
        out.append(plan)
        now, current = plan.after or now, allocator.apply(current, plan.transitions)
    return out


def plan_batch(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], steps: Sequence[Step]
               ) -> tuple[Plan | None, list[Plan | GatewayError]]:
    """The combined plan of the steps that could be planned (None when none could), and per step its own plan
    (what its caller is answered from) or its refusal."""
    results = chain(spec, slots, steps)
    plans = [r for r in results if isinstance(r, Plan)]
    return (combine(ref, spec, plans) if plans else None), results


def combine(ref: TemplateRef, spec: Spec, plans: Sequence[Plan]) -> Plan:
    """One GameServerSet write for steps of distinct ids, all ups or all downs, each planned on the (R, X) the
    writing step before it leaves (see the module docstring). The first plan gives the combined one its op, id
    and owner."""
    ups = all(p.op in UPS for p in plans)
    assert plans and (ups or all(p.op in DOWNS for p in plans)), [p.op for p in plans]
    ids = [p.id for p in plans]
    if len(set(ids)) != len(ids):
        raise AllocatorInvariantError(f"{ref.name}: one write for two steps of one id {ids}",
                                      reason="ALLOCATOR_INVARIANT")
    writes = [p for p in plans if p.after is not None]
    now = spec
    for p in writes:
        if p.before != now:
            raise AllocatorInvariantError(f"{ref.name}: the {p.op.value} of id {p.id} was planned on {p.before}, "
                                          f"not on {now} the steps before it leave", reason="ALLOCATOR_INVARIANT")
        assert p.after is not None
        now = p.after
    after = writes[-1].after if writes else None
    if after is not None:
        moved = {p.id for p in writes}
        allocator.expect(after, spec.live() | moved if ups else spec.live() - moved, ref)
        if after.replicas != spec.replicas + (len(writes) if ups else -len(writes)):
            raise AllocatorInvariantError(f"{ref.name}: {len(writes)} steps from {spec} would write {after}",
                                          reason="ALLOCATOR_INVARIANT")
    first = plans[0]
    return Plan(first.op, first.id, first.owner, spec, after, tuple(t for p in plans for t in p.transitions),
                frozenset().union(*(p.plugged for p in plans)), tuple(c for p in plans for c in p.claims),
                tuple((p.id, p.op, p.owner) for p in plans))


def plan_install_batch(ref: TemplateRef, spec: Spec, slots: Mapping[int, Slot], owners: Sequence[str]
                       ) -> tuple[Plan | None, list[int | GatewayError]]:
    """Installs alone in one write (`replicas + k` brings up exactly the k ids chosen): the combined plan and,
    per owner, the id or the refusal (a second install of one owner gets ALREADY_EXISTS naming the first's)."""
    plan, results = plan_batch(ref, spec, slots, [installing(ref, owner) for owner in owners])
    return plan, [r.id if isinstance(r, Plan) else r for r in results]


def installing(ref: TemplateRef, owner: str) -> Step:
    return lambda now, slots: allocator.plan_install(ref, now, slots, owner)
