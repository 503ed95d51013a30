"""The rollout step on the test bed (issue 14, docs/upgrade.md): a template change written paused with the
WHEN_IDLE policy moves the idle instance and the one whose owner asks, holds the busy one on its pod (same UID,
old revision, the hold label), and a paused instance resumed or a new install starts on the new revision. The
reconciler runs the step every second; the test acts as the kubelet to finish an in-place update (kwok never
restarts a container)."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.db.models import AuditEventRow

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template
from .rolling import HOOK, NEW, NEWER, pod_state, rolling_update, started_long_ago, update_revision, write_change

pytestmark = pytest.mark.testbed


async def rollout_audit(db: Database) -> dict[str, dict]:
    """The RolloutInstance events by instance id."""
    async with db.session() as session:
        rows = (await session.execute(select(AuditEventRow).where(
            AuditEventRow.action == "InstanceService.RolloutInstance"))).scalars()
        return {r.resource.rsplit("/", 1)[1]: dict(r.details, actor=r.actor) for r in rows}


async def test_busy_instance_is_held_while_idle_and_asked_ones_move_and_new_pods_start_new(
        testbed: Testbed, game: Game, instance_settings, start_gateway, client_for, database: Database) -> None:
    await create_template(game, testbed, lifecycle=HOOK)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    made = {u: await c.install(u) for u in ("ann", "ben", "cat", "dan")}
    assert [m.id for m in made.values()] == [0, 1, 2, 3]
    for user, instance in made.items():
        await c.wait_state(user, instance.name, State.RUNNING)
    before = await pod_state(game)
    old = before[0][1]
    # ben and cat are busy (kept alive now, the threshold is an hour); ann was installed two hours ago and never
    # used; dan is paused.
    await started_long_ago(database, game.namespace, "ann")
    for user in ("ben", "cat"):
        await c.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=made[user].name),
                                       metadata=c.md(user))
    await c.pause("dan", made["dan"].name)
    await c.wait_state("dan", made["dan"].name, State.PAUSED)

    await write_change(game, "WHEN_IDLE", "1h")

    async def moved_on() -> str | None:
        current = await update_revision(game)
        return current if current and current != old else None
    new = await wait_for(moved_on, 60, what="the template's new update revision")

    async def first_step() -> dict | None:
        pods, rolling = await pod_state(game), await rolling_update(game)
        ok = pods[0][1] == new and pods[1][2] and pods[2][2] and rolling.get("partition") == 2 \
            and rolling.get("paused") is False
        return pods if ok else None
    pods = await wait_for(first_step, 60, what="ann moving, ben and cat held (partition 2, unpaused)")
    assert pods == {0: (before[0][0], new, False), 1: (before[1][0], old, True), 2: (before[2][0], old, True)}
    await game.act_as_kubelet(SAMPLE, 0, NEW)
    ann = await c.wait_state("ann", made["ann"].name, State.RUNNING)
    assert (ann.revision, ann.update_available) == (new, False)
    ben = await c.get("ben", made["ben"].name)
    assert (ben.state, ben.revision, ben.update_available) == (State.RUNNING, old, True)

    # cat asks: moved in place (same pod) while ben stays.
    asked = await c.stub.UpdateInstance(instance_pb2.UpdateInstanceRequest(name=made["cat"].name),
                                        metadata=c.md("cat"))
    assert asked.name == made["cat"].name

    async def cat_moved() -> bool:
        return (await pod_state(game))[2][1] == new
    await wait_for(cat_moved, 60, what="cat's pod on the new revision")
    await game.act_as_kubelet(SAMPLE, 2, NEW)
    cat = await c.wait_state("cat", made["cat"].name, State.RUNNING)
    assert (cat.revision, cat.update_available) == (new, False)
    assert (await pod_state(game))[2][0] == before[2][0]

    # dan resumes on the new revision; a new install starts on it.
    await c.resume("dan", made["dan"].name)
    dan = await c.wait_state("dan", made["dan"].name, State.RUNNING)
    eve = await c.install("eve")
    assert eve.id == 4
    eve = await c.wait_state("eve", eve.name, State.RUNNING)
    assert (dan.revision, eve.revision) == (new, new)
    pods = await pod_state(game)
    assert (pods[3][1], pods[4][1]) == (new, new)

    # ben never moved: the same pod on the old revision, held, and its GameServer Ready (never chosen, so never
    # parked in PreUpdate); the partition counts him alone.
    assert pods[1] == (before[1][0], old, True)
    assert (await rolling_update(game))["partition"] == 1
    assert (await game.game_servers(SAMPLE))[1]["status"]["currentState"] == "Ready"
    ben = await c.get("ben", made["ben"].name)
    assert (ben.state, ben.revision, ben.update_available) == (State.RUNNING, old, True)

    audit = await wait_for(lambda: _audited(database, {"0", "2"}), 30, what="the rollout's audit events")
    assert {i: (e["reason"], e["from_revision"], e["to_revision"], e["in_place"], e["actor"])
            for i, e in audit.items()} == {"0": ("idle", old, new, True, "service:rollout"),
                                           "2": ("requested", old, new, True, "service:rollout")}
    await c.wait_consistent(60)

    # A second change supersedes the first: the idle ones (ann, dan, eve; the last two never used since they
    # started, two hours ago) move on to it from wherever they are, ben stays on the first revision and cat (busy,
    # her request carried out) on the second, both held.
    for user in ("dan", "eve"):
        await started_long_ago(database, game.namespace, user)
    await write_change(game, "WHEN_IDLE", "1h", image=NEWER)

    async def superseded() -> str | None:
        third = await update_revision(game)
        pods, rolling = await pod_state(game), await rolling_update(game)
        ok = third not in (old, new) and {i: p[1] for i, p in pods.items()} == \
            {0: third, 1: old, 2: new, 3: third, 4: third} and rolling.get("partition") == 2
        return third if ok else None
    third = await wait_for(superseded, 60, what="ann, dan and eve on the third revision, ben and cat held")
    pods = await pod_state(game)
    assert pods[0][0] == before[0][0] and pods[1] == (before[1][0], old, True) and pods[2] == (before[2][0], new, True)
    for i, user in ((0, "ann"), (3, "dan"), (4, "eve")):
        await game.act_as_kubelet(SAMPLE, i, NEWER)
        done = await c.wait_state(user, (await c.get(user, f"{c.parent()}/instances/{i}")).name, State.RUNNING)
        assert (done.revision, done.update_available) == (third, False)
    await c.wait_consistent(60)
    # One audit event per move: ann's second one too, although kruise parked her pod with the hold label itself
    # (a pod updated without the label is relabelled on the next change) and the step released it.
    assert await audit_counts(database) == {"0": 2, "2": 1, "3": 1, "4": 1}


async def audit_counts(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = (await session.execute(select(AuditEventRow.resource).where(
            AuditEventRow.action == "InstanceService.RolloutInstance"))).scalars()
        out: dict[str, int] = {}
        for resource in rows:
            out[resource.rsplit("/", 1)[1]] = out.get(resource.rsplit("/", 1)[1], 0) + 1
        return out


async def _audited(db: Database, ids: set[str]) -> dict[str, dict] | None:
    found = await rollout_audit(db)
    return found if set(found) >= ids else None


async def test_a_restart_of_an_old_instance_moves_it_and_an_uninstall_of_a_held_one_lowers_the_partition(
        testbed: Testbed, game: Game, instance_settings, start_gateway, client_for, database: Database) -> None:
    """MANUAL holds every instance; a restart counts as consent (the new pod starts new, in place or not), and an
    uninstall of a held id takes it out of the partition in its own GameServerSet write."""
    await create_template(game, testbed, lifecycle=HOOK)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    made = {u: await c.install(u) for u in ("ann", "ben", "cat")}
    for user, instance in made.items():
        await c.wait_state(user, instance.name, State.RUNNING)
    before = await pod_state(game)
    old = before[0][1]
    await write_change(game, "MANUAL")

    async def held() -> dict | None:
        pods, rolling = await pod_state(game), await rolling_update(game)
        ok = all(p[2] for p in pods.values()) and rolling.get("partition") == 3 and rolling.get("paused") is False
        return pods if ok else None
    await wait_for(held, 60, what="every pod held (partition 3, unpaused)")
    new = await update_revision(game)
    assert new != old

    await c.restart("ben", made["ben"].name)
    ben = await c.wait_state("ben", made["ben"].name, State.RUNNING)
    pods = await pod_state(game)
    assert pods[1][0] != before[1][0] and (ben.revision, ben.update_available) == (new, False)
    assert (pods[0][:2], pods[2][:2]) == ((before[0][0], old), (before[2][0], old))
    await wait_for(lambda: _partition_is(game, 2), 30, what="partition 2 after ben moved")

    await c.uninstall("cat", made["cat"].name)
    assert (await rolling_update(game))["partition"] == 1  # in the uninstall's own write
    audit = await wait_for(lambda: _audited(database, {"1"}), 30, what="ben's move audited")
    assert audit["1"]["reason"] == "requested"
    await c.wait_consistent(60)

    # The metrics of the last step: one pod per revision, ann pending as MANUAL (the service runs in this process).
    async def gauges() -> bool:
        def value(metric: str, **labels: str) -> float | None:
            return REGISTRY.get_sample_value(metric, {"template": c.parent(), **labels})
        return (value("aigc_instance_rollout_instances", revision=old), value("aigc_instance_rollout_instances",
                revision=new), value("aigc_instance_rollout_pending", reason="manual")) == (1, 1, 1)
    await wait_for(gauges, 30, what="the rollout gauges")


async def _partition_is(game: Game, partition: int) -> bool:
    return (await rolling_update(game)).get("partition") == partition
