"""The pure parts of replay claims (issue 20): who may run a request id, replica liveness, the effect a step
commits, and a plan carrying its calls' claims through an intent."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aigc_gateway.db.models import InstanceRow
from aigc_gateway.idempotency import RELEASED, UNKNOWN_HOLDER_STALE_AFTER, Seen, Verdict, judge
from aigc_gateway.okg import SlotState
from aigc_gateway.replicas import is_alive, renew_every
from aigc_gateway.services.instance import effects
from aigc_gateway.services.instance.allocator import Op, Plan, Spec, Transition

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=UTC)


def seen(state: str = "pending", digest: str = "d", holder: str = "r1", age: float = 0.0) -> Seen:
    return Seen(state, digest, holder, NOW - timedelta(seconds=age))


def test_no_row_runs() -> None:
    assert judge(None, "d", False, NOW) is Verdict.RUN


def test_a_finished_request_replays_whoever_ran_it() -> None:
    assert judge(seen("done"), "d", False, NOW) is Verdict.REPLAY
    assert judge(seen("done"), "d", True, NOW) is Verdict.REPLAY


def test_the_same_id_for_another_request_is_refused_even_while_running() -> None:
    assert judge(seen("pending"), "other", True, NOW) is Verdict.REUSED
    assert judge(seen("done"), "other", False, NOW) is Verdict.REUSED


def test_a_live_holder_is_waited_for_however_long_its_call_runs() -> None:
    assert judge(seen(age=3600), "d", True, NOW) is Verdict.WAIT


def test_a_dead_holder_is_taken_over_at_once() -> None:
    assert judge(seen(age=0), "d", False, NOW) is Verdict.TAKE_OVER


def test_a_released_claim_is_taken_over() -> None:
    assert judge(seen(holder=RELEASED), "d", False, NOW) is Verdict.TAKE_OVER


def test_a_claim_without_a_holder_is_waited_for_until_stale() -> None:
    young = UNKNOWN_HOLDER_STALE_AFTER.total_seconds() - 1
    assert judge(seen(holder="", age=young), "d", False, NOW) is Verdict.WAIT
    assert judge(seen(holder="", age=young + 1), "d", False, NOW) is Verdict.TAKE_OVER


def test_liveness_is_the_lease() -> None:
    assert is_alive(NOW + timedelta(seconds=1), NOW)
    assert not is_alive(NOW, NOW)
    assert not is_alive(None, NOW)
    assert is_alive((NOW + timedelta(seconds=1)).replace(tzinfo=None), NOW)  # SQLite's naive UTC
    assert renew_every(9.0) == 3.0
    assert not is_alive(NOW + timedelta(seconds=5), NOW, lock_free=True)  # its session is gone: dead at once
    assert is_alive(NOW + timedelta(seconds=5), NOW, lock_free=False)


def _row(**kw: object) -> InstanceRow:
    base = dict(namespace="ns", template="tpl", id=3, slot="RELEASING", owner=None, orphaned=False,
                created_at=NOW, updated_at=NOW, state_changed_at=NOW + timedelta(seconds=5), last_access_at=None)
    base.update(kw)
    return InstanceRow(**base)


def test_an_uninstall_effect_names_the_former_owner_and_round_trips() -> None:
    effect = effects.make("uninstall", _row(), former_owner="alice")
    assert effect["row"]["owner"] == "alice" and effect["row"]["slot"] == "RELEASING"
    back = effects.row_of(effect["row"])
    assert (back.owner, back.id, back.created_at, back.state_changed_at, back.last_access_at) == (
        "alice", 3, NOW, NOW + timedelta(seconds=5), None)
    assert effects.ref_of(effect).name == "namespaces/ns/templates/tpl/instances/3"


def test_a_plan_keeps_its_claims_through_the_intent() -> None:
    plan = Plan(Op.INSTALL, 0, "a", Spec.of(0), Spec.of(2), (Transition(0, SlotState.LIVE, "a"),
                                                             Transition(1, SlotState.LIVE, "b")),
                claims=((0, "k0"), (1, "k1")))
    assert Plan.from_json(plan.to_json()) == plan
    old = plan.to_json()
    del old["claims"]  # an intent written before plans carried claims
    assert Plan.from_json(old).claims == ()
