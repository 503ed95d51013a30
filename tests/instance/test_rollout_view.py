"""The rollout step's pure readings (services/instance/rollout_view.py) and the order its writes are applied in
(rollouts._stages): what a template's rolling update looks like from its objects, the intent's JSON, and which
movers a step newly lets move (each audited once)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aigc_gateway.services.instance import rollout, rollout_view
from aigc_gateway.services.instance.rollout import MOVE, Member, View
from aigc_gateway.services.instance.rollout_view import PRIORITY_LABEL, Seen
from aigc_gateway.services.instance.rollouts import STAGES, _stages
from aigc_gateway.upgrades import Policy

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
OLD, NEW = "rev-old", "rev-new"


def pod(i: int, revision: str, priority: str | None = "0", hold: bool = False, deleting: bool = False,
        image: str = "img:1", args: list[str] | None = None) -> dict:
    labels = {"controller-revision-hash": revision}
    if priority is not None:
        labels[PRIORITY_LABEL] = priority
    if hold:
        labels[rollout.HOLD_LABEL] = "true"
    meta: dict = {"name": f"tpl-{i}", "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T12:00:00Z"
    container: dict = {"name": "engine", "image": image}
    if args:
        container["args"] = args
    return {"metadata": meta, "spec": {"containers": [container]}}


def gss(partition: int = 0, paused: bool = False, image: str = "img:2", args: list[str] | None = None) -> dict:
    container: dict = {"name": "engine", "image": image}
    if args:
        container["args"] = args
    return {"spec": {"updateStrategy": {"rollingUpdate": {"partition": partition, "paused": paused}},
                     "gameServerTemplate": {"spec": {"containers": [container]}}}}


def test_seen_reads_partition_priorities_holds_and_revisions_without_pods_being_deleted() -> None:
    pods = rollout_view.pods_by_id([pod(0, OLD, "1"), pod(1, OLD, None, hold=True), pod(2, NEW, deleting=True),
                                    {"metadata": {"name": "other-3"}}], "tpl")
    assert set(pods) == {0, 1}
    pods[1]["metadata"]["labels"][rollout_view.LIFECYCLE_LABEL] = "PreparingUpdate"
    seen = rollout_view.seen(gss(2, True), pods)
    assert seen == Seen(2, True, {0: 1}, frozenset({1}), {0: OLD, 1: OLD}, frozenset({1}))
    assert Seen.from_json(seen.to_json()) == seen


def test_a_pause_of_a_held_id_lowers_the_partition() -> None:
    assert rollout_view.lowered_partition(gss(2), pod(0, OLD, hold=True)) == 1
    assert rollout_view.lowered_partition(gss(2), pod(0, OLD)) is None  # a mover or a pod never held
    assert rollout_view.lowered_partition(gss(0), pod(0, OLD, hold=True)) is None
    assert rollout_view.lowered_partition(gss(2), None) is None


def test_in_place_is_an_image_only_difference() -> None:
    assert rollout_view.in_place(gss(), pod(0, OLD))
    assert not rollout_view.in_place(gss(args=["--listen"]), pod(0, OLD))
    assert not rollout_view.in_place(gss(), None)


def view(members: list[Member], requested: tuple[int, ...] = ()) -> View:
    return View.of(NEW, Policy.WHEN_IDLE, timedelta(hours=1), NOW, members, requested)


def test_a_plan_survives_the_intent_and_each_mover_is_audited_once() -> None:
    busy, idle = NOW - timedelta(minutes=1), None
    plan = rollout.plan(view([Member(0, True, OLD, idle), Member(1, True, OLD, busy), Member(2, False)]))
    assert rollout_view.plan_from_json(rollout_view.plan_to_json(plan)).decisions.keys() == plan.decisions.keys()
    again = rollout_view.plan_from_json(rollout_view.plan_to_json(plan))
    assert (again.partition, dict(again.priorities), again.moving, again.held) == \
        (plan.partition, dict(plan.priorities), plan.moving, plan.held)
    # The template change arrives paused: the mover is new to this step.
    assert rollout_view.newly_moving(plan, Seen(0, True, {0: 0, 1: 0})) == [0]
    # A later step that finds it let through already (MOVE, no hold, unpaused) does not audit it again...
    assert rollout_view.newly_moving(plan, Seen(1, False, {0: MOVE, 1: 0}, frozenset({1}))) == []
    # ...but one that finds it held (its owner had been back) does...
    assert rollout_view.newly_moving(plan, Seen(2, False, {0: MOVE, 1: 0}, frozenset({0, 1}))) == [0]
    # ...unlike one that finds it chosen and parked by kruise's own hold label (a pod last updated without it).
    parked = Seen(1, False, {0: MOVE, 1: 0}, frozenset({0, 1}), parked=frozenset({0}))
    assert rollout_view.newly_moving(plan, parked) == []
    assert Seen.from_json(parked.to_json()) == parked


def test_the_writes_are_applied_by_kind_in_plan_writes_order() -> None:
    busy = NOW - timedelta(minutes=1)
    # Before: 0 moving (MOVE), 1 and 2 held, partition 2. Now 0's owner is back and 2 asked.
    plan = rollout.plan(view([Member(0, True, OLD, busy), Member(1, True, OLD, busy), Member(2, True, OLD, busy)],
                             requested=(2,)))
    writes = plan.writes(2, {0: MOVE, 1: 0, 2: 0}, False, {1, 2})
    stages = _stages(writes)
    assert [w for s in STAGES for w in stages[s]] == writes
    assert [w.id for w in stages["holds"]] == [0]
    assert [w.partition for w in stages["partition_raise"]] == []  # 2 held before and after: no raise
    assert [(w.id, w.priority) for w in stages["priorities"]] == [(2, MOVE), (0, 0)]  # raised first
    assert [w.id for w in stages["release"]] == [2]
    # A template change arriving paused over an earlier partition: raise, then set and unpause.
    plan = rollout.plan(view([Member(0, True, OLD, None), Member(1, True, OLD, busy), Member(2, True, OLD, busy)]))
    stages = _stages(plan.writes(1, {0: 0, 1: 0, 2: 0}, True, set()))
    assert [(w.partition, w.paused) for w in stages["partition_raise"]] == [(2, None)]
    assert [(w.partition, w.paused) for w in stages["partition"]] == [(2, False)]
