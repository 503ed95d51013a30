"""PreviewTemplateUpdate's per-instance rules (services/template/rollout_preview.py), without servers."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aigc_gateway.upgrades import Policy
from services.template.instances import Owned
from services.template.rollout_preview import Action, entries
from services.template.rollout_write import Settings

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def test_each_instance_gets_one_action() -> None:
    owned = [Owned(0, "alice", "LIVE", NOW - timedelta(minutes=1)), Owned(1, "bob", "LIVE", NOW - timedelta(hours=1)),
             Owned(2, "carol", "PAUSED", None)]
    chosen = Settings(Policy.WHEN_IDLE, timedelta(minutes=15))
    got = entries(owned, [0, 1, 4], chosen, NOW, in_place=True)
    assert [(e.id, e.owner, e.action, e.reason, e.in_place) for e in got] == [
        (0, "alice", Action.WHEN_IDLE, "busy", True), (1, "bob", Action.RESTART_NOW, "idle", True),
        (2, "carol", Action.ON_RESUME, "paused", False),
        (4, "", Action.RESTART_NOW, "idle", True)]  # a GameServer without a row: live, never accessed
    assert got[0].last_access == NOW - timedelta(minutes=1)
    manual = entries(owned, [], Settings(Policy.MANUAL, timedelta(0)), NOW, in_place=False)
    assert [(e.action, e.in_place) for e in manual] == [(Action.WHEN_ASKED, False)] * 2 + [(Action.ON_RESUME, False)]


def test_an_instance_started_within_the_threshold_counts_as_in_use_until_it_has_passed() -> None:
    """No access recorded yet (the auth service writes visits every few seconds): started 5 minutes ago is busy
    with a 15 minute threshold, started two hours ago is idle; a later access than the start counts."""
    owned = [Owned(0, "ann", "LIVE", None, NOW - timedelta(minutes=5)),
             Owned(1, "ben", "LIVE", None, NOW - timedelta(hours=2)),
             Owned(2, "cat", "LIVE", NOW - timedelta(minutes=2), NOW - timedelta(hours=2))]
    got = entries(owned, [], Settings(Policy.WHEN_IDLE, timedelta(minutes=15)), NOW, in_place=True)
    assert [(e.id, e.action, e.reason) for e in got] == [
        (0, Action.WHEN_IDLE, "busy"), (1, Action.RESTART_NOW, "idle"), (2, Action.WHEN_IDLE, "busy")]
    assert got[0].last_access is None  # what is shown is the recorded access, not the start
