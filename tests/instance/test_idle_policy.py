"""Idle auto-pause's pure parts (issue 15): the annotations' grammar, the template rules that refuse a bad one,
the busy rule, and the culler's decision under an injected clock (no sleeps, no servers)."""
from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from aigc_gateway import idle
from aigc_gateway.config import IdleConfig
from aigc_gateway.services.instance.idle_policy import Action, Facts, decide, timeout_of
from aigc_gateway.services.template import manifest
from aigc_gateway.services.template.policy import Policy
from aigc_gateway.services.template.validation import check_new

from ..template.samples import sample

PREFIX = "aigc.gateway.io/"
T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
CFG = IdleConfig(default_after_seconds=7200, gpu_default_after_seconds=1800, warning_seconds=600)
WARN = CFG.warning_seconds


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


# -- the annotations ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [("0", 0), ("3600", 3600), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                               ("1h30m", 5400), ("1d", 86400), (" 45m ", 2700)])
def test_durations(text: str, seconds: float) -> None:
    assert idle.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "-5", "1.5h", "30 m", "m", "2h1d", "100d"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        idle.parse_duration(text)


def test_probe_annotations_read() -> None:
    found, errors = idle.read({f"{PREFIX}idle-after": "20m", f"{PREFIX}idle-probe-path": "/queue",
                               f"{PREFIX}idle-probe-busy": "queue_running, queue_pending", "other/x": "y"}, PREFIX)
    assert errors == []
    assert found == idle.IdleAnnotations(1200.0, idle.Probe("/queue", (("queue_running",), ("queue_pending",))))


@pytest.mark.parametrize(("document", "rule", "busy"), [
    ({"queue_running": [[1, "id"]], "queue_pending": []}, "queue_running,queue_pending", True),
    ({"queue_running": [], "queue_pending": []}, "queue_running,queue_pending", False),
    ({"state": {"job_count": 2}}, "state.job_count", True),
    ({"state": {"job_count": 0}}, "state.job_count", False),
    ({"progress": 0.0, "state": {}}, "state.job_count", False),
    ({"jobs": [{"id": "a"}]}, "jobs[0].id", True),
    ({"jobs": []}, "jobs[0].id", False),
    ([], "queue_running", False),
])
def test_busy_rule(document: object, rule: str, busy: bool) -> None:
    rules = tuple(idle.parse_json_path(p) for p in rule.split(","))
    assert idle.busy(document, rules) is busy


POLICY = Policy(namespaces=("default",), gss_labels={"aigc.gateway.io/template": "true"}, domain="aigc.test")


def _check(annotations: dict[str, str]):
    obj = sample()
    obj["metadata"].setdefault("annotations", {}).update(annotations)
    return check_new(manifest.parse_text(json.dumps(obj), POLICY.max_manifest_bytes), POLICY, "default")


@pytest.mark.parametrize(("annotations", "key", "reason"), [
    ({"idle-after": "soon"}, "idle-after", "INVALID_IDLE_AFTER"),
    ({"idle-probe-path": "queue", "idle-probe-busy": "queue_running"}, "idle-probe-path", "INVALID_IDLE_PROBE_PATH"),
    ({"idle-probe-path": "/queue"}, "idle-probe-busy", "IDLE_PROBE_BUSY_REQUIRED"),
    ({"idle-probe-path": "/queue", "idle-probe-busy": "queue running"}, "idle-probe-busy", "INVALID_IDLE_PROBE_BUSY"),
    ({"idle-probe-path": "/q", "idle-probe-busy": "a", "idle-probe-port": "70000"}, "idle-probe-port",
     "INVALID_IDLE_PROBE_PORT"),
    ({"idle-probe-busy": "a"}, "idle-probe-busy", "IDLE_PROBE_PATH_REQUIRED"),
])
def test_template_rules_refuse_bad_idle_annotations(annotations: dict[str, str], key: str, reason: str) -> None:
    checked = _check({PREFIX + k: v for k, v in annotations.items()})
    assert [(v.field, v.reason) for v in checked.violations] == [(f"metadata.annotations[{PREFIX}{key}]", reason)]


def test_template_rules_accept_idle_annotations() -> None:
    checked = _check({f"{PREFIX}idle-after": "0", f"{PREFIX}idle-probe-path": "/sdapi/v1/progress?skip=1",
                      f"{PREFIX}idle-probe-busy": "state.job_count", f"{PREFIX}idle-probe-port": "7860"})
    assert checked.ok, checked.violations


# -- the timeout per template -----------------------------------------------------------------------------------

def _gss(limits: dict[str, str], annotations: dict[str, str] | None = None) -> dict:
    return {"metadata": {"annotations": annotations or {}},
            "spec": {"gameServerTemplate": {"spec": {"containers": [{"name": "e", "resources": {"limits": limits}}]}}}}


def test_gpu_and_cpu_templates_have_different_default_timeouts() -> None:
    assert timeout_of(_gss({"cpu": "2"}), PREFIX, CFG) == 7200
    assert timeout_of(_gss({"nvidia.com/gpu": "1"}), PREFIX, CFG) == 1800
    assert timeout_of(_gss({"aliyun.com/gpu-mem": "8"}), PREFIX, CFG) == 1800
    assert timeout_of(_gss({"nvidia.com/gpu": "1"}, {f"{PREFIX}idle-after": "4h"}), PREFIX, CFG) == 4 * 3600
    assert timeout_of(_gss({"cpu": "2"}, {f"{PREFIX}idle-after": "0"}), PREFIX, CFG) is None  # never
    assert timeout_of(_gss({"cpu": "2"}, {f"{PREFIX}idle-after": "junk"}), PREFIX, CFG) == 7200  # unreadable: default


# -- the decision, under an injected clock ----------------------------------------------------------------------

def live(**kw: object) -> Facts:
    return Facts(**{"slot": "LIVE", "slot_since": T0, "timeout": 1800.0, **kw})  # type: ignore[arg-type]


def run(facts: Facts, now: datetime) -> tuple[Action, Facts]:
    """One culler step and the state it leaves (what idle.Culler writes for that action)."""
    decision = decide(facts, now, WARN)
    if decision.action is Action.WARN:
        facts = dataclasses.replace(facts, scheduled_pause=decision.pause_at, warned_activity=facts.last_activity)
    elif decision.action in (Action.CANCEL, Action.PAUSE):
        facts = dataclasses.replace(facts, scheduled_pause=None, warned_activity=None,
                                    slot="PAUSED" if decision.action is Action.PAUSE else facts.slot)
    return decision.action, facts


def test_an_idle_instance_is_warned_then_paused() -> None:
    facts = live()
    assert run(facts, at(19))[0] is Action.NONE  # 30 min timeout, 10 min warning: nothing before minute 20
    action, facts = run(facts, at(20))
    assert action is Action.WARN and facts.scheduled_pause == at(30)
    assert run(facts, at(25))[0] is Action.NONE  # announced, not yet due
    action, facts = run(facts, at(30))
    assert action is Action.PAUSE and facts.slot == "PAUSED"
    assert run(facts, at(90))[0] is Action.NONE  # paused stays paused: nothing more


def test_the_warning_always_gives_the_whole_lead_time() -> None:
    action, facts = run(live(), at(45))  # a culler that was down: idle past the deadline already
    assert action is Action.WARN and facts.scheduled_pause == at(55)
    assert run(facts, at(54))[0] is Action.NONE
    assert run(facts, at(55))[0] is Action.PAUSE


def test_accesses_keep_an_instance_running_and_withdraw_a_warning() -> None:
    facts = live(last_access=at(15))
    assert run(facts, at(30))[0] is Action.NONE  # deadline 45, warning from 35
    action, facts = run(facts, at(35))
    assert action is Action.WARN and facts.scheduled_pause == at(45)
    facts = dataclasses.replace(facts, last_access=at(40))  # the owner came back
    action, facts = run(facts, at(41))
    assert action is Action.CANCEL and facts.scheduled_pause is None
    assert run(facts, at(59))[0] is Action.NONE  # deadline 70 now
    assert run(facts, at(60))[0] is Action.WARN


def test_a_busy_probe_is_asked_before_warning_and_its_answer_is_activity() -> None:
    facts = live(has_probe=True)
    assert run(facts, at(10))[0] is Action.NONE  # not due: no probe traffic
    assert run(facts, at(20))[0] is Action.PROBE  # due: ask the engine first
    busy = dataclasses.replace(facts, kept_at=at(20))  # it said busy: the culler records activity
    assert run(busy, at(29))[0] is Action.NONE and run(busy, at(40))[0] is Action.PROBE
    idle_now = dataclasses.replace(facts, probed_idle=True)
    assert run(idle_now, at(20))[0] is Action.WARN


def test_keep_alive_resets_the_clock() -> None:
    action, facts = run(live(), at(21))
    assert action is Action.WARN
    facts = dataclasses.replace(facts, kept_at=at(29))  # KeepInstanceAlive a minute before the pause
    action, facts = run(facts, at(30))
    assert action is Action.CANCEL
    assert run(facts, at(48))[0] is Action.NONE and run(facts, at(49))[0] is Action.WARN  # 29 + 30 - 10


def test_a_resume_is_not_culled_by_stale_activity() -> None:
    # Idle for days before a pause; the announcement from before the pause is still in the table.
    stale = live(slot_since=at(-3000), last_access=at(-2900), scheduled_pause=at(-2000), warned_activity=at(-2900))
    resumed = dataclasses.replace(stale, slot="LIVE", slot_since=at(0))  # the resume moves the slot's time
    action, facts = run(resumed, at(0))
    assert action is Action.CANCEL  # the old announcement is withdrawn, never acted on
    assert run(facts, at(1))[0] is Action.NONE and run(facts, at(19))[0] is Action.NONE
    assert run(facts, at(20))[0] is Action.WARN


def test_an_exempt_user_is_never_paused() -> None:
    facts = live(exempt=True)
    for minute in (20, 30, 600, 6000):
        assert run(facts, at(minute))[0] is Action.NONE
    announced = live(scheduled_pause=at(30), warned_activity=T0, exempt=True)  # exempted after a warning
    assert run(announced, at(31))[0] is Action.CANCEL


def test_never_and_paused_instances() -> None:
    assert run(live(timeout=None), at(10_000))[0] is Action.NONE
    assert run(live(slot="PAUSED"), at(10_000))[0] is Action.NONE
    assert run(live(slot="PAUSED", scheduled_pause=at(30), warned_activity=T0), at(31))[0] is Action.CANCEL


def test_a_longer_timeout_set_after_the_warning_withdraws_it() -> None:
    action, facts = run(live(), at(20))
    assert action is Action.WARN
    action, facts = run(dataclasses.replace(facts, timeout=7200.0), at(21))  # the admin set idle-after 2h
    assert action is Action.CANCEL
    assert run(facts, at(109))[0] is Action.NONE and run(facts, at(110))[0] is Action.WARN
    shorter = run(live(), at(20))[1]  # a shorter timeout keeps the time the owner was promised
    assert run(dataclasses.replace(shorter, timeout=60.0), at(25)) == (Action.NONE, dataclasses.replace(
        shorter, timeout=60.0))
    assert run(dataclasses.replace(shorter, timeout=60.0), at(30))[0] is Action.PAUSE
