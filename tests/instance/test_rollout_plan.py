"""The rollout planner (services/instance/rollout.py): unit cases, and properties against a model of the
controller's update rule as pinned in tests/okg/test_update_facts.py."""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aigc_gateway.services.instance import rollout
from aigc_gateway.services.instance.rollout import (
    HOLD,
    MOVE,
    Action,
    Member,
    Policy,
    Reason,
    RolloutInvariantError,
    View,
    Write,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
IDLE_AFTER = timedelta(minutes=10)
OLD, NEW = "tpl-old", "tpl-new"


def view(members: list[Member], policy: Policy = Policy.WHEN_IDLE, requested: tuple[int, ...] = (),
         target: str = NEW, in_place: bool = True) -> View:
    return View.of(target, policy, IDLE_AFTER, NOW, members, requested, in_place)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


# -- the controller's rule (kruise v1.8 sortPodsToUpdate / isCurrentRevisionNeeded, OKG's orderPriority) ----

@dataclass
class Pod:
    new: bool  # on the update revision
    label: int | None  # game.kruise.io/gs-update-priority; None until the GameServer controller copies it
    hold: bool = False  # the in-place update hook's label: chosen, it is parked instead of updated


class Workload:
    """One Advanced StatefulSet as the tests pin it: every live id has a pod, replicas = len(pods)."""

    def __init__(self, pods: dict[int, Pod], partition: int = 0, paused: bool = False):
        self.pods, self.partition, self.paused = pods, partition, paused

    def chosen(self) -> list[int]:
        """The pods the controller keeps on (or moves to) the update revision, in its order."""
        quota = len(self.pods) - self.partition
        if quota <= 0 or self.paused:
            return []
        desc = sorted(self.pods, reverse=True)
        updated = [i for i in desc if self.pods[i].new]
        waiting = [i for i in desc if not self.pods[i].new]
        # A pod without the label sorts first (level -1); then the label's value, highest first; the stable
        # sort keeps equal ones in descending ordinal order.
        waiting.sort(key=lambda i: (self.pods[i].label is not None, -(self.pods[i].label or 0)))
        return (updated + waiting)[:quota]

    def roll(self) -> set[int]:
        """Update every chosen old pod without the hold label (in-place updates finishing at once); the ids
        that moved."""
        moved = {i for i in self.chosen() if not self.pods[i].new and not self.pods[i].hold}
        for i in moved:
            self.pods[i].new = True
        return moved

    def create(self, i: int) -> Pod:
        """A pod made for id i (install or resume): old when fewer than `partition` OTHER pods are old."""
        others_old = sum(1 for j, p in self.pods.items() if j != i and not p.new)
        pod = Pod(new=not others_old < self.partition, label=None)
        self.pods[i] = pod
        return pod

    def apply(self, write: Write) -> None:
        if write.partition is not None:
            self.partition = write.partition
            if write.paused is not None:
                self.paused = write.paused
        elif write.hold is not None:
            assert write.id is not None
            self.pods[write.id].hold = write.hold
        else:
            assert write.id is not None
            self.pods[write.id].label = write.priority


def workload(v: View, priorities: dict[int, int] | None = None, partition: int = 0) -> Workload:
    pods = {m.id: Pod(m.revision == v.target, (priorities or {}).get(m.id, HOLD))
            for m in v.members if m.live and m.revision is not None}
    return Workload(pods, partition)


# -- unit cases ------------------------------------------------------------------------------------------

def test_the_five_instances_of_the_issue() -> None:
    members = [
        Member(0, True, OLD, ago(0.1)),  # busy
        Member(1, True, OLD, ago(60)),  # idle past the threshold
        Member(2, False, None, ago(600)),  # paused
        Member(3, True, OLD, ago(1)),  # busy, but its owner called UpdateInstance
        Member(4, True, None, None),  # installed during the rollout: no pod yet
    ]
    out = rollout.plan(view(members, requested=(3,)))
    assert {i: (d.action, d.reason) for i, d in out.decisions.items()} == {
        0: (Action.HOLD, Reason.BUSY), 1: (Action.MOVE, Reason.IDLE), 2: (Action.ON_RESUME, Reason.PAUSED),
        3: (Action.MOVE, Reason.REQUESTED), 4: (Action.ON_START, Reason.STARTING)}
    assert out.partition == 1
    assert out.priorities == {0: HOLD, 1: MOVE, 3: MOVE}
    assert out.decisions[0].last_activity == ago(0.1)  # what PreviewTemplateUpdate shows for "when idle"

    w = workload(view(members), out.priorities, out.partition)
    assert w.roll() == {1, 3}
    assert w.create(4).new and w.create(2).new  # the new install and the resume come up new
    assert w.roll() == set() and not w.pods[0].new  # and the busy one is still old


def test_the_threshold_is_inclusive_and_never_accessed_is_idle() -> None:
    out = rollout.plan(view([Member(0, True, OLD, NOW - IDLE_AFTER), Member(1, True, OLD, None),
                             Member(2, True, OLD, NOW - IDLE_AFTER + timedelta(seconds=1))]))
    assert (out.moving, out.held, out.partition) == ({0, 1}, {2}, 1)


def test_the_recording_lag_is_added_to_the_threshold() -> None:
    members = [Member(0, True, OLD, NOW - IDLE_AFTER), Member(1, True, OLD, NOW - IDLE_AFTER - timedelta(minutes=2))]
    v = View.of(NEW, Policy.WHEN_IDLE, IDLE_AFTER, NOW, members, activity_lag=timedelta(seconds=65))
    out = rollout.plan(v)
    assert (out.held, out.moving) == ({0}, {1})


def test_immediate_moves_every_live_instance_and_manual_only_the_requested() -> None:
    members = [Member(0, True, OLD, ago(0)), Member(1, True, OLD, ago(60)), Member(2, True, NEW, ago(0))]
    out = rollout.plan(view(members, Policy.IMMEDIATE))
    assert (out.moving, out.partition) == ({0, 1}, 0)
    assert {d.reason for i, d in out.decisions.items() if i in out.moving} == {Reason.IMMEDIATE}
    out = rollout.plan(view(members, Policy.MANUAL, requested=(0,)))
    assert (out.moving, out.held, out.partition) == ({0}, {1}, 1)
    assert out.decisions[1].reason is Reason.MANUAL  # idle is not enough under MANUAL
    assert out.decisions[2].action is Action.CURRENT


def test_a_second_update_supersedes_the_first() -> None:
    # Pods still on the first change's revision are as old as the original ones for the second.
    members = [Member(0, True, OLD, ago(0)), Member(1, True, "tpl-first", ago(0)),
               Member(2, True, "tpl-first", ago(60)), Member(3, True, "tpl-second", ago(0))]
    out = rollout.plan(view(members, target="tpl-second"))
    assert (out.held, out.moving, out.partition) == ({0, 1}, {2}, 2)


def test_a_recreating_change_is_reported_as_such() -> None:
    out = rollout.plan(view([Member(0, True, OLD, None)], in_place=False))
    assert out.decisions[0].action is Action.MOVE and out.decisions[0].in_place is False


def test_writes_raise_the_partition_first_and_lower_it_last() -> None:
    members = [Member(0, True, OLD, ago(0)), Member(1, True, OLD, ago(60)), Member(2, True, OLD, ago(0))]
    # Before: 1 held (0), 1 and 2 moving. Now 2 is busy again and 1 idle: hold 0 and 2.
    out = rollout.plan(view(members))
    assert out.writes(1, {0: HOLD, 1: MOVE, 2: MOVE}, holds_now={0}) == [
        Write(id=2, hold=True), Write(partition=2), Write(id=2, priority=HOLD)]
    # The other way: everything held, now 1 may move: its hold label goes last.
    assert out.writes(3, {0: HOLD, 1: HOLD, 2: HOLD}, holds_now={0, 1, 2}) == [
        Write(id=1, priority=MOVE), Write(partition=2), Write(id=1, hold=False)]
    assert out.writes(2, out.priorities, holds_now={0, 2}) == []
    assert out.writes(2, out.priorities, paused_now=True, holds_now={0, 2}) == [Write(partition=2, paused=False)]


def test_swapping_a_mover_and_a_held_instance_raises_before_it_lowers() -> None:
    # Found by the write-order property: lowering 5 first leaves 2, 5 and 7 all at HOLD with one pod allowed
    # to move, and the controller takes the highest ordinal: 7, busy under both plans.
    first = rollout.plan(view([Member(2, True, OLD, ago(0)), Member(5, True, OLD, None),
                               Member(7, True, OLD, ago(0))]))
    v = view([Member(2, True, OLD, None), Member(5, True, OLD, ago(0)), Member(7, True, OLD, ago(0))])
    second = rollout.plan(v)
    writes = second.writes(first.partition, first.priorities, holds_now=first.held)
    assert writes == [Write(id=5, hold=True), Write(id=2, priority=MOVE), Write(id=5, priority=HOLD),
                      Write(id=2, hold=False)]
    w = workload(v, dict(first.priorities), first.partition)
    for write in writes:
        w.apply(write)
        assert 7 not in w.chosen()
    w.apply(Write(id=5, priority=HOLD))
    w.apply(Write(id=2, priority=HOLD))  # the unsafe order's intermediate state
    assert w.chosen() == [7]


@pytest.mark.parametrize("tamper, message", [
    (lambda p: replace(p, partition=p.partition - 1), "partition"),
    (lambda p: replace(p, priorities={**p.priorities, 0: MOVE}), "ranks with a mover"),
    (lambda p: replace(p, priorities={**p.priorities, 1: -5}), "negative"),
    (lambda p: replace(p, decisions={**p.decisions, 0: rollout.Decision(0, Action.MOVE, Reason.IDLE)},
                       partition=0), "while busy"),
])
def test_check_refuses_a_plan_that_would_roll_a_busy_instance(tamper, message: str) -> None:
    v = view([Member(0, True, OLD, ago(0)), Member(1, True, OLD, ago(60))])
    good = rollout.plan(v)
    with pytest.raises(RolloutInvariantError, match=message):
        rollout.check(tamper(good), v)


# -- properties against the model -------------------------------------------------------------------------

REVISIONS = st.sampled_from([OLD, "tpl-first", NEW])
# Activity around the threshold: busy (0, 5 minutes ago), idle (10, 30), never.
ACTIVITY = st.sampled_from([None, ago(0), ago(5), ago(10), ago(30)])
POLICIES = st.sampled_from([Policy.WHEN_IDLE, Policy.WHEN_IDLE, Policy.MANUAL, Policy.IMMEDIATE])


@st.composite
def views(draw: st.DrawFn) -> View:
    ids = draw(st.sets(st.integers(0, 12), max_size=9))
    members = []
    for i in sorted(ids):
        live = draw(st.booleans()) or draw(st.booleans())
        revision = draw(st.one_of(st.none(), REVISIONS)) if live else None
        activity = draw(ACTIVITY)
        members.append(Member(i, live, revision, activity))
    requested = draw(st.sets(st.sampled_from(sorted(ids)), max_size=3)) if ids else set()
    return view(members, draw(POLICIES), tuple(requested))


def with_activity(v: View, draw: st.DrawFn) -> View:
    """The same pods a moment later: activity and requests may have changed, revisions not."""
    members = [replace(m, last_activity=draw(ACTIVITY)) for m in v.members]
    ids = [m.id for m in members]
    requested = draw(st.sets(st.sampled_from(ids), max_size=3)) if ids else set()
    policy = draw(st.one_of(st.just(v.policy), POLICIES))
    return View.of(v.target, policy, v.idle_after, v.now, members, requested)


@settings(max_examples=300, deadline=None)
@given(views())
def test_exactly_the_movers_roll_and_new_pods_start_new(v: View) -> None:
    out = rollout.plan(v)
    w = workload(v, out.priorities, out.partition)
    assert w.roll() == out.moving
    # Ids without a pod (starting, or resumed now) come up on the target, before or after the movers roll.
    for d in out.decisions.values():
        if d.action in (Action.ON_START, Action.ON_RESUME):
            assert w.create(d.id).new, d
    assert w.roll() == set()
    assert {i for i, p in w.pods.items() if not p.new} == out.held


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_no_write_order_step_lets_a_pod_roll_that_both_plans_hold(data: st.DataObject) -> None:
    before = data.draw(views())
    after = with_activity(before, data.draw)
    first, second = rollout.plan(before), rollout.plan(after)
    both = first.held & second.held
    w = workload(before, dict(first.priorities), first.partition)
    assert not set(w.chosen()) & both
    for write in second.writes(first.partition, first.priorities, holds_now=first.held):
        w.apply(write)
        assert not set(w.chosen()) & both, write
        # A pod made at this step for a new id still starts on the target.
        probe = max([*w.pods, *(m.id for m in after.members)], default=-1) + 1
        assert w.create(probe).new
        del w.pods[probe]
    assert w.partition == second.partition
    assert {i: p.label for i, p in w.pods.items()} == dict(second.priorities)
    assert w.roll() == second.moving


@settings(max_examples=300, deadline=None)
@given(views(), st.integers(0, 12), st.dictionaries(st.integers(0, 12), st.sampled_from([HOLD, MOVE])))
def test_a_paused_template_change_rolls_nothing_before_the_plan_is_in_place(
        v: View, partition: int, leftover: dict[int, int]) -> None:
    """Whatever partition and priorities an earlier rollout left, the writes of a plan made after a paused
    template change let no held pod roll at any step, and then exactly the movers."""
    out = rollout.plan(v)
    w = workload(v, leftover, partition)
    w.paused = True
    start = {i: w.pods[i].label for i in w.pods}
    for write in out.writes(partition, start, paused_now=True, holds_now=()):
        assert not set(w.chosen()) & out.held
        w.apply(write)
    assert not w.paused and w.roll() == out.moving


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_with_the_hold_labels_no_held_pod_rolls_whatever_the_controller_puts_back(data: st.DataObject) -> None:
    """The GameServer controller can put back an updatePriority moments after the gateway wrote it; the
    partition may be stale. With the hold labels written, the pods that roll are movers, whatever the
    priorities and partition end up as."""
    v = data.draw(views())
    out = rollout.plan(v)
    w = workload(v, {}, 0)
    for write in out.writes(0, {}, holds_now=()):
        w.apply(write)
    for i in w.pods:  # any priority put back, any partition
        w.pods[i].label = data.draw(st.sampled_from([None, HOLD, MOVE]))
    w.partition = data.draw(st.integers(0, len(w.pods)))
    assert w.roll() <= out.moving
