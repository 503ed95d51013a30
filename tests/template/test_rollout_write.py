"""What UpdateTemplate writes for a seamless rollout (services/template/rollout_write.py, issue 14): the policy and
threshold recorded as annotations, `paused` by policy, the in-place update hook in every create and update (merged
with the admin's hooks), and the rollout's own fields kept from the object read. Pure, on literal manifests."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from aigc_gateway.errors import InvalidArgument
from aigc_gateway.services.template import changes, manifest
from aigc_gateway.services.template.policy import Policy
from aigc_gateway.services.template.rollout_write import Requested, Settings, requested, settings
from aigc_gateway.services.template.validation import check_new, check_update
from aigc_gateway.upgrades import HOLD_LABEL
from aigc_gateway.upgrades import Policy as Rollout

from .samples import SAMPLES, container, sample
from .test_changes import live

POLICY = Policy(gss_labels={"aigc.gateway.io/template": "true"}, domain="aigc.test")
P = "aigc.gateway.io/"
HOOK = {"inPlaceUpdate": {"labelsHandler": {HOLD_LABEL: "true"}}}
IMAGE = "spec.gameServerTemplate.spec.containers[0].image"


def update(source: dict, asked: Requested | None = None, current: dict | None = None, mask: list[str] | None = None):
    return check_update(current or live(), manifest.parse_text(json.dumps(source), 1 << 20), mask or [], POLICY,
                        asked)


def new_image(obj: dict | None = None) -> dict:
    obj = obj or live()
    container(obj)["image"] = "registry.example/sd:v2"
    return obj


def rolling(obj: dict) -> dict:
    return obj["spec"]["updateStrategy"]["rollingUpdate"]


def notes(obj: dict) -> dict:
    return {k: v for k, v in obj["metadata"].get("annotations", {}).items() if "rollout" in k}


@pytest.mark.parametrize("asked", [Requested(), Requested(Rollout.WHEN_IDLE), Requested(Rollout.MANUAL)])
def test_a_pod_template_change_is_written_paused_with_the_policy_and_the_hook(asked: Requested) -> None:
    checked = update(new_image(), asked)
    assert checked.ok, checked.violations
    written = checked.manifest
    assert rolling(written) == {"podUpdatePolicy": "InPlaceIfPossible", "maxUnavailable": "100%", "paused": True}
    policy = (asked.policy or Rollout.WHEN_IDLE).value  # unset: the configured default
    assert notes(written) == {P + "rollout-policy": policy, P + "rollout-idle-after": "900s"}
    assert written["spec"]["lifecycle"] == HOOK
    assert container(written)["image"] == "registry.example/sd:v2"
    assert checked.rollout == Settings(Rollout(policy), timedelta(seconds=900))
    # `paused` is the rollout's, not a change the admin made; the recorded policy is.
    assert checked.change.changed_paths == [f"metadata.annotations[{P}rollout-policy]",
                                            f"metadata.annotations[{P}rollout-idle-after]", IMAGE]


def test_immediate_unpauses_and_lowers_the_partition() -> None:
    current = live()
    rolling(current).update(paused=True, partition=2)  # a WHEN_IDLE rollout in progress
    checked = update(new_image(live()), Requested(Rollout.IMMEDIATE), current)
    assert checked.ok, checked.violations
    assert rolling(checked.manifest) == {"podUpdatePolicy": "InPlaceIfPossible", "maxUnavailable": "100%",
                                         "paused": False, "partition": 0}
    assert notes(checked.manifest)[P + "rollout-policy"] == "IMMEDIATE"


def test_the_request_then_the_manifest_then_the_template_then_the_configuration_decide() -> None:
    recorded = {P + "rollout-policy": "MANUAL", P + "rollout-idle-after": "2h"}
    assert settings(Requested(Rollout.IMMEDIATE, timedelta(seconds=5)), [recorded], P, "WHEN_IDLE", 900) == \
        Settings(Rollout.IMMEDIATE, timedelta(seconds=5))
    assert settings(Requested(), [{}, recorded], P, "WHEN_IDLE", 900) == Settings(Rollout.MANUAL, timedelta(hours=2))
    assert settings(Requested(), [{P + "rollout-policy": "IMMEDIATE"}, recorded], P, "WHEN_IDLE", 900) == \
        Settings(Rollout.IMMEDIATE, timedelta(hours=2))
    assert settings(Requested(), [None, {}], P, "WHEN_IDLE", 900) == Settings(Rollout.WHEN_IDLE, timedelta(seconds=900))
    # 0 is a threshold (idle once the recording's lag has passed), not "unset".
    assert settings(Requested(), [{P + "rollout-idle-after": "0"}], P, "WHEN_IDLE", 900).idle_after == timedelta(0)
    assert settings(Requested(idle_after=timedelta(0)), [recorded], P, "WHEN_IDLE", 900).idle_after == timedelta(0)

    # The template's recording survives a whole-manifest update that leaves it out, in its own spelling.
    current = live()
    current["metadata"]["annotations"] = dict(recorded)
    checked = update(new_image(), current=current)
    assert notes(checked.manifest) == recorded and checked.rollout == Settings(Rollout.MANUAL, timedelta(hours=2))
    assert checked.change.changed_paths == [IMAGE]
    # The request's threshold replaces it.
    checked = update(new_image(), Requested(idle_after=timedelta(minutes=30)), current)
    assert notes(checked.manifest) == {P + "rollout-policy": "MANUAL", P + "rollout-idle-after": "1800s"}


def test_a_change_outside_the_pod_template_records_the_policy_only_when_asked() -> None:
    source = live()
    source["metadata"]["annotations"] = {P + "display-name": "SD"}
    checked = update(source)
    assert checked.ok and not notes(checked.manifest) and "paused" not in rolling(checked.manifest)
    checked = update(source, Requested(Rollout.MANUAL))
    assert notes(checked.manifest) == {P + "rollout-policy": "MANUAL", P + "rollout-idle-after": "900s"}
    assert "paused" not in rolling(checked.manifest)


def test_an_unreadable_recorded_setting_is_refused_not_overwritten() -> None:
    source = new_image()
    source["metadata"]["annotations"] = {P + "rollout-policy": "SOMETIMES"}
    checked = update(source)
    assert [(v.field, v.reason) for v in checked.violations] == [
        (f"metadata.annotations[{P}rollout-policy]", "INVALID_ROLLOUT_POLICY")]


def test_the_rollouts_own_fields_are_kept_from_the_object_read() -> None:
    current = live()
    rolling(current).update(paused=True, partition=3)  # the reconciler's
    # An admin's manifest without them (the sample): kept, and no change.
    checked = update(live(), current=current)
    assert checked.ok and rolling(checked.manifest)["partition"] == 3 and rolling(checked.manifest)["paused"] is True
    assert checked.change.changed_paths == []
    # The same values are fine; others are refused with the path.
    same = live()
    rolling(same).update(paused=True, partition=3)
    assert update(same, current=current).ok
    other = live()
    rolling(other).update(partition=0)
    assert [(v.field, v.reason) for v in update(other, current=current).violations] == [
        ("spec.updateStrategy.rollingUpdate.partition", "ROLLOUT_FIELD")]
    # Not the admin's: the etag does not move when the reconciler writes them.
    assert changes.etag(current) == changes.etag(live())


def test_the_hook_is_merged_into_the_admins_hooks() -> None:
    obj = sample()
    obj["spec"]["lifecycle"] = {"preDelete": {"labelsHandler": {"example.com/backup": "true"}},
                                "inPlaceUpdate": {"labelsHandler": {"example.com/drain": "true"}, "markPodNotReady": True}}
    checked = check_new(manifest.parse_text(json.dumps(obj), 1 << 20), POLICY, "default")
    assert checked.ok, checked.violations
    assert checked.manifest["spec"]["lifecycle"] == {
        "preDelete": {"labelsHandler": {"example.com/backup": "true"}},
        "inPlaceUpdate": {"labelsHandler": {"example.com/drain": "true", HOLD_LABEL: "true"}, "markPodNotReady": True}}
    assert "UPDATE_HOLD_HOOK_ADDED" in [w.reason for w in checked.warnings]
    # Absent, or null: added.
    for lifecycle in (None, {"inPlaceUpdate": None}):
        obj = sample()
        obj["spec"]["lifecycle"] = lifecycle
        assert check_new(manifest.parse_text(json.dumps(obj), 1 << 20), POLICY, "default").manifest["spec"][
            "lifecycle"] == HOOK
    # The admin cannot switch it off: the gateway's label says "true".
    obj = sample()
    obj["spec"]["lifecycle"] = {"inPlaceUpdate": {"labelsHandler": {HOLD_LABEL: "no"}}}
    assert check_new(manifest.parse_text(json.dumps(obj), 1 << 20), POLICY, "default").manifest["spec"][
        "lifecycle"] == HOOK


@pytest.mark.parametrize("lifecycle,path", [
    ("hold", "spec.lifecycle"),
    ({"inPlaceUpdate": ["x"]}, "spec.lifecycle.inPlaceUpdate"),
    ({"inPlaceUpdate": {"labelsHandler": "x"}}, "spec.lifecycle.inPlaceUpdate.labelsHandler"),
])
def test_a_hook_that_cannot_take_the_label_is_refused_on_create_and_update(lifecycle, path: str) -> None:
    obj = sample()
    obj["spec"]["lifecycle"] = lifecycle
    created = check_new(manifest.parse_text(json.dumps(obj), 1 << 20), POLICY, "default")
    assert [(v.field, v.reason) for v in created.violations] == [(path, "INVALID_LIFECYCLE")]
    source = live()
    source["spec"]["lifecycle"] = lifecycle
    assert [(v.field, v.reason) for v in update(source).violations] == [(path, "INVALID_LIFECYCLE")]


def test_an_update_adds_the_hook_to_a_template_published_without_it() -> None:
    current = live()
    del current["spec"]["lifecycle"]
    checked = update(new_image(live()), current=current)
    assert checked.manifest["spec"]["lifecycle"] == HOOK
    assert f"spec.lifecycle.inPlaceUpdate.labelsHandler[{HOLD_LABEL}]" in checked.change.changed_paths


def test_request_values_are_checked() -> None:
    assert requested("ROLLOUT_POLICY_UNSPECIFIED", None) == Requested()
    assert requested("MANUAL", timedelta(0)) == Requested(Rollout.MANUAL, timedelta(0))
    for policy, idle_after, field in (("7", None, "rollout_policy"), ("", timedelta(seconds=-1), "rollout_idle_after"),
                                      ("", timedelta(seconds=1.5), "rollout_idle_after"),
                                      ("", timedelta(days=91), "rollout_idle_after")):
        with pytest.raises(InvalidArgument) as err:
            requested(policy, idle_after)
        assert [v.field for v in err.value.violations] == [field]


@pytest.mark.parametrize("name", SAMPLES)
def test_the_samples_roll_in_place_with_the_hook_and_no_unavailability_bound(name: str) -> None:
    """What the samples (and the chart's templates generated from them) ship: in place where possible, every pod
    may be unavailable at once (partition and priorities decide who moves, fact 7 of docs/upgrade.md), and the
    hold hook, so that publishing them adds nothing."""
    obj = sample(name)
    assert rolling(obj) == {"podUpdatePolicy": "InPlaceIfPossible", "maxUnavailable": "100%"}
    assert obj["spec"]["lifecycle"] == HOOK
    checked = check_new(manifest.parse_text(json.dumps(obj), 1 << 20), POLICY, "default")
    assert "UPDATE_HOLD_HOOK_ADDED" not in [w.reason for w in checked.warnings]
