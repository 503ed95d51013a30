"""The seamless template upgrade's decisions (issue 14, docs/upgrade.md), as pure functions of one view.

OpenKruiseGame rolls a template change through the GameServerSet's `updateStrategy.rollingUpdate`
(tests/okg/test_update_facts.py pins the rule on the test bed): at most `replicas - partition` pods are on
the update revision, those already there first, then the old ones by `GameServer.spec.updatePriority`
(highest first, ties highest ordinal first); a pod created for an id (install, resume) gets the OLD
revision when fewer than `partition` of the other pods are old.

So the gateway chooses who moves with priorities and how many with the partition: every live instance on
the old revision is either a **mover** (priority :data:`MOVE`) or **held** (priority :data:`HOLD`), and
the partition is the number held. Then exactly the movers roll (in place when the change allows it), a
held one never does, and a new or resumed id, whose pod is not counted, comes up on the new revision
because at least `partition` other pods (the held ones) are old.

Nothing here does I/O. The reconciler reads the view under the template lock, asks :func:`plan` for a
:class:`Plan`, :func:`check` verifies it, and it is recorded as an intent before :meth:`Plan.writes` are
applied in order (each intermediate state is as safe as the two ends: see :meth:`Plan.writes`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum

from aigc_gateway.errors import GatewayError
from aigc_gateway.upgrades import HOLD_LABEL as HOLD_LABEL  # the template service writes the hook it names
from aigc_gateway.upgrades import Policy  # shared with the template service's preview

# Priorities are never negative: the pod label OKG orders by cannot hold "-5" (not a valid label value; the
# apiserver refuses it and the pod keeps its old label). A held pod has the GameServer's default, so a
# GameServer made again after a pause or a recreation (which resets it to 0) starts held.
HOLD = 0
MOVE = 1


class Action(str, Enum):
    CURRENT = "CURRENT"  # already on the target revision
    MOVE = "MOVE"  # rolls now
    HOLD = "HOLD"  # stays on its revision for now
    ON_RESUME = "ON_RESUME"  # paused: its pod is made on the target revision when resumed
    ON_START = "ON_START"  # live without a pod yet (installing, resuming): made on the target revision


class Reason(str, Enum):
    CURRENT = "current"
    IMMEDIATE = "immediate"  # the policy
    REQUESTED = "requested"  # the owner or an admin asked (UpdateInstance, or a restart)
    IDLE = "idle"  # no activity for the idle threshold
    BUSY = "busy"  # activity within the idle threshold
    MANUAL = "manual"  # policy MANUAL and nobody asked
    PAUSED = "paused"
    STARTING = "starting"


@dataclass(frozen=True)
class Member:
    """One owned id of the template as the reconciler sees it under the lock."""

    id: int
    live: bool  # slot LIVE (else PAUSED)
    revision: str | None = None  # its pod's `controller-revision-hash`; None: no pod
    last_activity: datetime | None = None  # last authorised access (or busy probe); None: never


@dataclass(frozen=True)
class View:
    target: str  # the update revision
    policy: Policy
    idle_after: timedelta
    now: datetime
    members: tuple[Member, ...]
    requested: frozenset[int] = frozenset()  # ids whose owner or an admin said "update now"
    in_place: bool = True  # the change is image/metadata only (InPlaceIfPossible keeps the pod)
    # How late a recorded activity may be: the auth service writes `last_access_at` every 5 s and moves an
    # instance's time on only by whole minutes, so a busy instance can look a minute older than it is.
    activity_lag: timedelta = timedelta(0)

    @classmethod
    def of(cls, target: str, policy: Policy, idle_after: timedelta, now: datetime, members: Iterable[Member],
           requested: Iterable[int] = (), in_place: bool = True, activity_lag: timedelta = timedelta(0)) -> View:
        return cls(target, policy, idle_after, now, tuple(sorted(members, key=lambda m: m.id)),
                   frozenset(requested), in_place, activity_lag)


@dataclass(frozen=True)
class Decision:
    id: int
    action: Action
    reason: Reason
    last_activity: datetime | None = None
    in_place: bool = True  # for MOVE: the pod is kept; else made again (same id, disk and URL)


@dataclass(frozen=True)
class Plan:
    partition: int
    priorities: Mapping[int, int]  # per live id with a pod
    decisions: Mapping[int, Decision] = field(default_factory=dict)

    def ids(self, action: Action) -> frozenset[int]:
        return frozenset(i for i, d in self.decisions.items() if d.action is action)

    @property
    def moving(self) -> frozenset[int]:
        return self.ids(Action.MOVE)

    @property
    def held(self) -> frozenset[int]:
        return self.ids(Action.HOLD)

    def writes(self, partition_now: int, priorities_now: Mapping[int, int], paused_now: bool = False,
               holds_now: Iterable[int] = ()) -> list[Write]:
        """The writes from what the cluster has to this plan, in a safe order.

        0. the hold label (:data:`HOLD_LABEL`) put on every held pod that lacks it;
        1. the partition raised to max(now, planned): fewer pods may be new, never more;
        2. the priorities that change, raised ones first;
        3. the partition set to the plan's, and the rolling update unpaused;
        4. the hold label taken off the movers.

        The hold label is the guarantee: the template's in-place update hook parks a labelled pod in
        PreparingUpdate even when the controller chooses it (tests/okg/test_update_hooks.py), so a held pod
        cannot roll in place whatever the partition and priorities say, and the gateway alone writes that
        label. The partition and priorities keep the controller from choosing held pods at all (their
        GameServers stay Ready rather than PreUpdate).

        A template change arrives paused (the template service writes it with `paused: true`, so nothing
        rolls before a plan exists, while new pods already start on it): then nothing moves until (3),
        whatever the partition and priorities left by an earlier rollout.

        With the same pods old under both plans, at most ``old - max(held now, held planned)`` old pods may move
        at any step, and from (2) on at least as many movers of the new plan rank above every pod held by
        both (raising first keeps the movers of the new plan and of the old one ranked up until the lowering
        writes; lowering first would let a held pod tie with the rest and, higher ordinal first, be chosen:
        the property test found that order unsafe). A pod the old plan let move and this one holds (its owner
        came back before it rolled) may still roll before (1) lands: nothing the gateway writes closes that
        window, it only keeps it one write short.

        Whoever applies the writes confirms every priority on its pod's label before the last write: the
        GameServer controller can write back a stale `updatePriority` moments after ours (seen on the test
        bed), and a mover left at HOLD would tie with the held pods once the partition is lowered.
        """
        holds = frozenset(holds_now)
        out: list[Write] = [Write(id=i, hold=True) for i in sorted(self.held - holds)]
        high = max(partition_now, self.partition)
        if high != partition_now:
            out.append(Write(partition=high))
        changes = sorted(((-p, i) for i, p in self.priorities.items() if priorities_now.get(i, HOLD) != p))
        out.extend(Write(id=i, priority=-p) for p, i in changes)
        if self.partition != high or paused_now:
            out.append(Write(partition=self.partition, paused=False if paused_now else None))
        out.extend(Write(id=i, hold=False) for i in sorted(holds & self.moving))
        return out


@dataclass(frozen=True)
class Write:
    """One write: the GameServerSet's partition (and `paused`), one GameServer's updatePriority, or the hold
    label on one pod."""

    partition: int | None = None
    paused: bool | None = None
    id: int | None = None
    priority: int | None = None
    hold: bool | None = None


class RolloutInvariantError(GatewayError):
    """A rollout plan would let a held instance roll, or leave a new one on the old revision (a bug)."""


def idle(member: Member, view: View) -> bool:
    """No recorded activity for the threshold (plus the recording's lag). Never accessed counts as idle."""
    if member.last_activity is None:
        return True
    return view.now - member.last_activity >= view.idle_after + view.activity_lag


def decide(member: Member, view: View) -> Decision:
    if not member.live:
        return Decision(member.id, Action.ON_RESUME, Reason.PAUSED, member.last_activity)
    if member.revision is None:
        return Decision(member.id, Action.ON_START, Reason.STARTING, member.last_activity)
    if member.revision == view.target:
        return Decision(member.id, Action.CURRENT, Reason.CURRENT, member.last_activity)
    if view.policy is Policy.IMMEDIATE:
        reason: Reason | None = Reason.IMMEDIATE
    elif member.id in view.requested:
        reason = Reason.REQUESTED
    elif view.policy is Policy.WHEN_IDLE and idle(member, view):
        reason = Reason.IDLE
    else:
        reason = None
    if reason is None:
        held = Reason.BUSY if view.policy is Policy.WHEN_IDLE else Reason.MANUAL
        return Decision(member.id, Action.HOLD, held, member.last_activity)
    return Decision(member.id, Action.MOVE, reason, member.last_activity, view.in_place)


def plan(view: View) -> Plan:
    """Partition = the number held; priorities MOVE for movers, HOLD for the rest (see the module docstring)."""
    decisions = {m.id: decide(m, view) for m in view.members}
    priorities = {m.id: MOVE if decisions[m.id].action is Action.MOVE else HOLD
                  for m in view.members if m.live and m.revision is not None}
    out = Plan(sum(1 for d in decisions.values() if d.action is Action.HOLD), priorities, decisions)
    check(out, view)
    return out


def check(out: Plan, view: View) -> None:
    """The plan's invariants; RolloutInvariantError names the first one broken."""
    def fail(message: str) -> None:
        raise RolloutInvariantError(f"rollout to {view.target}: {message}", reason="ROLLOUT_INVARIANT")

    members = {m.id: m for m in view.members}
    if set(out.decisions) != set(members):
        fail(f"decisions for {sorted(out.decisions)}, members {sorted(members)}")
    with_pods = {i for i, m in members.items() if m.live and m.revision is not None}
    if set(out.priorities) != with_pods:
        fail(f"priorities for {sorted(out.priorities)}, pods {sorted(with_pods)}")
    if any(p < 0 for p in out.priorities.values()):
        fail("a negative priority (OKG reads only the digits)")
    held, moving = out.held, out.moving
    if out.partition != len(held):
        fail(f"partition {out.partition} for {len(held)} held")
    old = {i for i in with_pods if members[i].revision != view.target}
    if held | moving != old:
        fail(f"old pods {sorted(old)} but held {sorted(held)} and moving {sorted(moving)}")
    if moving and held and min(out.priorities[i] for i in moving) <= max(out.priorities[i] for i in held):
        fail("a held pod ranks with a mover")
    for i in moving:
        d, m = out.decisions[i], members[i]
        allowed = (view.policy is Policy.IMMEDIATE or i in view.requested
                   or (view.policy is Policy.WHEN_IDLE and idle(m, view)))
        if not allowed:
            fail(f"id {i} would roll while busy ({d.reason.value})")
    # A pod made now for a starting or resumed id is new when at least `partition` other pods are old.
    if out.partition > len(old):
        fail(f"partition {out.partition} above the {len(old)} old pods: a new pod would start old")
