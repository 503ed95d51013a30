"""The shared template-upgrade vocabulary (aigc_gateway.upgrades): in-place classification, recorded policy and
threshold, "idle", and an instance's revision (pure)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aigc_gateway import upgrades
from aigc_gateway.upgrades import Policy

T = "spec.gameServerTemplate"
P = "aigc.gateway.io/"
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_only_images_and_pod_metadata_are_in_place() -> None:
    assert upgrades.in_place([f"{T}.spec.containers[0].image", f"{T}.spec.containers[1].image"])
    assert upgrades.in_place([f"{T}.metadata.labels[app]", f"{T}.metadata.annotations[a.io/b]", "metadata.labels[x]"])
    assert not upgrades.in_place([f"{T}.spec.containers[0].image", f"{T}.spec.containers[0].resources.limits[cpu]"])
    assert not upgrades.in_place([f"{T}.spec.containers"])  # a container added or removed
    assert not upgrades.in_place([f"{T}.spec.initContainers[0].image"])
    assert not upgrades.in_place([f"{T}.spec.containers[0].image.x"])
    assert upgrades.restarts([f"{T}.metadata.labels[app]"]) and not upgrades.restarts(["spec.network.networkConf"])


def test_recorded_policy_and_threshold() -> None:
    notes = {P + "rollout-policy": "manual", P + "rollout-idle-after": "30m"}
    assert upgrades.policy_of(notes, P) is Policy.MANUAL
    assert upgrades.idle_after_of(notes, P) == timedelta(minutes=30)
    assert upgrades.policy_of({P + "rollout-policy": "SOMETIMES"}, P) is None
    assert upgrades.idle_after_of({P + "rollout-idle-after": "soon"}, P) is None
    assert upgrades.policy_of(None, P) is None and upgrades.idle_after_of({}, P) is None


def test_idle_counts_the_recording_lag_and_never_accessed_is_idle() -> None:
    after = timedelta(minutes=15)
    assert upgrades.idle(None, NOW, after)
    assert upgrades.idle(NOW - after - upgrades.ACTIVITY_LAG, NOW, after)
    assert not upgrades.idle(NOW - after - upgrades.ACTIVITY_LAG + timedelta(seconds=1), NOW, after)


def test_revision_of_an_instance() -> None:
    sts = {"status": {"updateRevision": "gss-new", "currentRevision": "gss-old"}}

    def pod(rev: str) -> dict[str, object]:
        return {"metadata": {"labels": {"controller-revision-hash": rev}}}

    assert upgrades.revision(pod("gss-old"), sts, live=True) == ("gss-old", True)
    assert upgrades.revision(pod("gss-new"), sts, live=True) == ("gss-new", False)
    assert upgrades.revision(None, sts, live=False) == ("gss-new", False)  # paused: resumes on the new one
    assert upgrades.revision(pod("gss-old"), None, live=True) == ("gss-old", False)  # not known yet: say nothing
    assert upgrades.revision(pod("gss-old"), sts, live=False) == ("gss-old", False)  # pausing


def test_unreadable_recorded_settings_are_named() -> None:
    assert upgrades.annotation_errors({P + "rollout-policy": "when_idle", P + "rollout-idle-after": "1h30m"}, P) == []
    assert [(k, r) for k, _, r in upgrades.annotation_errors(
        {P + "rollout-policy": "SOMETIMES", P + "rollout-idle-after": "soon"}, P)] == [
        (P + "rollout-policy", "INVALID_ROLLOUT_POLICY"), (P + "rollout-idle-after", "INVALID_ROLLOUT_IDLE_AFTER")]
