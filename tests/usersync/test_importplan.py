"""ImportFromLogto's per-template decisions (pure), checked against the allocator's invariants (docs/instance.md#the-allocator)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aigc_gateway.services.usersync.entries import Entry
from aigc_gateway.services.usersync.importplan import (
    CONFLICT,
    DISPUTED,
    IMPORTED,
    UNCHANGED,
    Claim,
    Dispute,
    GssState,
    Row,
    plan_template,
)


def claim(user: str, instance_id: int) -> Claim:
    return Claim(user, Entry("aigc-sd", "aigc", "sd", instance_id))


def results(plan) -> dict[str, tuple[str, str]]:
    return {o.user: (o.result, o.reason) for o in plan.outcomes}


def test_live_reserved_unclaimed_and_disputed_ids() -> None:
    # R=3, X={1,4,5}: live {0,2,3}; PVCs left for 1 and 5 (4's disk is gone)
    gss = GssState(replicas=3, reserved=frozenset({1, 4, 5}), pvc_ids=frozenset({0, 1, 2, 3, 5}))
    plan = plan_template(gss, [claim("alice", 0), claim("bob", 1), claim("carol", 2), claim("dave", 2),
                               claim("erin", 9)], {})
    assert sorted(plan.rows, key=lambda r: r.id) == [Row(0, "LIVE", "alice"), Row(1, "PAUSED", "bob"),
                                                     Row(4, "FREE"), Row(5, "RELEASING")]
    got = results(plan)
    assert got["alice"][0] == got["bob"][0] == IMPORTED
    assert got["carol"][0] == got["dave"][0] == DISPUTED and "claimed by several users" in got["carol"][1]
    assert got["erin"] == (CONFLICT, "id 9 is neither running nor reserved in the GameServerSet")
    assert [i for i, _ in plan.unclaimed] == [3]  # the unclaimed live id: no row (nor for disputed 2)
    assert 2 not in {r.id for r in plan.rows}  # no row: the allocator never hands it out
    assert plan.disputes == [Dispute(2, ("carol", "dave"), "LIVE")]


def test_existing_rows_win_and_a_second_run_changes_nothing() -> None:
    gss = GssState(replicas=2, reserved=frozenset({2}))
    first = plan_template(gss, [claim("alice", 0), claim("bob", 1)], {})
    existing = {r.id: r for r in first.rows}
    second = plan_template(gss, [claim("alice", 0), claim("bob", 1)], existing)
    assert second.rows == [] and {o.result for o in second.outcomes} == {UNCHANGED}
    moved = plan_template(gss, [claim("alice", 1)], {0: Row(0, "LIVE", "alice"), 1: Row(1, "LIVE", "bob")})
    assert results(moved)["alice"] == (CONFLICT, "id 1 belongs to another user in the gateway")
    other = plan_template(gss, [claim("alice", 1)], {0: Row(0, "LIVE", "alice")})
    assert "already has id 0" in results(other)["alice"][1] and not [r for r in other.rows if r.owner]
    gone = plan_template(gss, [claim("carol", 2)], {2: Row(2, "RELEASING")})
    assert results(gone)["carol"] == (CONFLICT, "id 2 is uninstalled in the gateway (RELEASING)")


def test_problem_with_the_gameserverset_makes_every_entry_a_conflict() -> None:
    plan = plan_template(GssState(problem="template aigc/sd not found"), [claim("a", 0), claim("b", 1)], {})
    assert plan.rows == [] and {o.reason for o in plan.outcomes} == {"template aigc/sd not found"}


def test_holes_are_reported_not_given_rows() -> None:
    plan = plan_template(GssState(replicas=1, reserved=frozenset({3})), [claim("a", 0)], {})
    assert [r.id for r in plan.rows] == [0, 3]
    assert [i for i, why in plan.unclaimed if "hole" in why] == [1, 2]


@given(st.integers(0, 8), st.frozensets(st.integers(0, 12), max_size=6), st.frozensets(st.integers(0, 12)),
       st.lists(st.tuples(st.sampled_from("abcdef"), st.integers(0, 14)), max_size=8, unique_by=lambda t: t[0]))
def test_imported_rows_satisfy_the_allocator_invariants(replicas, reserved, pvcs, claims) -> None:
    gss = GssState(replicas=replicas, reserved=reserved, pvc_ids=pvcs)
    plan = plan_template(gss, [claim(u, i) for u, i in claims], {})
    live = gss.live()
    rows = {r.id: r for r in plan.rows}
    assert len(rows) == len(plan.rows)
    assert {i for i, r in rows.items() if r.slot == "LIVE"} <= live
    assert {i for i, r in rows.items() if r.slot != "LIVE"} <= reserved  # PAUSED/RELEASING/FREE ⊆ X
    assert all((r.owner is not None) == (r.slot in ("LIVE", "PAUSED")) for r in rows.values())
    owners = [r.owner for r in rows.values() if r.owner]
    assert len(owners) == len(set(owners))
    assert not any(r.slot == "FREE" and i in pvcs for i, r in rows.items())  # a disk left is never FREE
    again = plan_template(gss, [claim(u, i) for u, i in claims], rows, {d.id: d.claimants for d in plan.disputes})
    assert again.rows == [] and again.disputes == []
    assert all(o.result in (UNCHANGED, CONFLICT, DISPUTED) for o in again.outcomes)
    # A disputed id gets no row, and every id with a row or a dispute is live or reserved.
    assert not {d.id for d in plan.disputes} & set(rows)
    assert {d.id for d in plan.disputes} <= live | reserved


def test_a_disputed_paused_id_keeps_its_disk_and_a_second_run_reports_the_same_dispute() -> None:
    gss = GssState(replicas=1, reserved=frozenset({1}), pvc_ids=frozenset({0, 1}))
    plan = plan_template(gss, [claim("carol", 1), claim("dave", 1)], {})
    assert plan.disputes == [Dispute(1, ("carol", "dave"), "PAUSED")] and plan.rows == []
    again = plan_template(gss, [claim("carol", 1), claim("dave", 1)], {}, {1: ("carol", "dave")})
    assert again.disputes == [] and again.rows == []  # recorded once; still no row
    assert {o.result for o in again.outcomes} == {DISPUTED}


def test_a_disputed_id_with_nothing_left_is_no_dispute() -> None:
    gss = GssState(replicas=1, reserved=frozenset({1}), pvc_ids=frozenset({0}))  # 1's disk is gone
    plan = plan_template(gss, [claim("carol", 1), claim("dave", 1)], {})
    assert plan.disputes == [] and plan.rows == [Row(1, "FREE")]
    assert all(o.result == CONFLICT and "disk is gone" in o.reason for o in plan.outcomes)


def test_a_claim_on_a_reserved_id_whose_disk_is_gone_is_reported_not_imported() -> None:
    """A resume would start on an empty new disk (and CheckConsistency would say PVC_MISSING at once)."""
    gss = GssState(replicas=1, reserved=frozenset({1, 2}), pvc_ids=frozenset({0, 2}))
    plan = plan_template(gss, [claim("bob", 1), claim("carol", 2)], {})
    got = results(plan)
    assert got["bob"][0] == CONFLICT and "disk is gone" in got["bob"][1]
    assert got["carol"] == (IMPORTED, "")
    assert sorted(plan.rows, key=lambda r: r.id) == [Row(1, "FREE"), Row(2, "PAUSED", "carol")]
    # A template without disks has nothing to lose: its paused ids are imported.
    diskless = GssState(replicas=1, reserved=frozenset({1}), has_disks=False)
    assert results(plan_template(diskless, [claim("bob", 1)], {}))["bob"] == (IMPORTED, "")


def test_an_owned_row_dates_from_its_oldest_disk() -> None:
    from datetime import UTC, datetime

    old = datetime(2024, 1, 1, tzinfo=UTC)
    gss = GssState(replicas=1, reserved=frozenset({1}), pvc_ids=frozenset({0, 1}), pvc_created={0: old, 1: old})
    plan = plan_template(gss, [claim("alice", 0), claim("bob", 1)], {})
    assert {r.id: r.since for r in plan.rows} == {0: old, 1: old}
