"""The whole life of instances on the test bed: install, pause, resume, restart, uninstall, id reuse."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, UserSyncOutboxRow

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template

pytestmark = pytest.mark.testbed

VCT = "user-data"


def claim(i: int) -> str:
    return f"{VCT}-{SAMPLE}-{i}"


async def pod_claims(game: Game, i: int) -> list[str]:
    pod = (await game.pods(SAMPLE))[i]
    return [v.persistent_volume_claim.claim_name for v in pod.spec.volumes if v.persistent_volume_claim]


async def outbox(db: Database) -> list[tuple[str, int | None]]:
    async with db.session() as session:
        rows = await session.execute(select(UserSyncOutboxRow).order_by(UserSyncOutboxRow.id))
        return [(r.user, r.instance_id) for r in rows.scalars()]


async def test_install_pause_resume_restart_uninstall(testbed: Testbed, game: Game, instance_settings, start_gateway,
                                                      client_for, database: Database) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))

    created = await c.install("alice")
    assert created.name == f"{c.parent()}/instances/0" and created.owner == "alice"
    assert created.state in (State.INSTALLING, State.STARTING)
    running = await c.wait_state("alice", created.name, State.RUNNING)
    assert running.access_uri == f"https://instances0-cpu.{testbed.domain}/"
    assert running.state_message == "Ready"
    pvc = (await game.pvcs())[claim(0)]
    assert running.disks[0].claim_name == claim(0) and running.disks[0].claim_uid == pvc.metadata.uid
    assert await pod_claims(game, 0) == [claim(0)]

    paused = await c.pause("alice", created.name)
    assert paused.state in (State.PAUSING, State.PAUSED)
    await c.wait_state("alice", created.name, State.PAUSED)
    await wait_for(lambda: _no_pod(game, 0), 30, what="pod 0 gone")
    assert (await game.pvcs())[claim(0)].metadata.uid == pvc.metadata.uid  # the disk stays
    spec = (await game.get_gss(SAMPLE))["spec"]
    assert spec["replicas"] == 0 and 0 in spec["reserveGameServerIds"]

    await c.resume("alice", created.name)
    resumed = await c.wait_state("alice", created.name, State.RUNNING)
    assert resumed.id == 0 and resumed.access_uri == running.access_uri
    assert await pod_claims(game, 0) == [claim(0)]
    assert (await game.pvcs())[claim(0)].metadata.uid == pvc.metadata.uid  # the same disk is mounted

    before = (await game.pods(SAMPLE))[0].metadata.uid
    await c.restart("alice", created.name)

    async def new_pod() -> bool:
        pod = (await game.pods(SAMPLE)).get(0)
        return pod is not None and pod.metadata.uid != before and pod.status.phase == "Running"
    await wait_for(new_pod, 60, what="a new pod for 0")
    assert await pod_claims(game, 0) == [claim(0)]
    assert (await game.pvcs())[claim(0)].metadata.uid == pvc.metadata.uid
    await c.wait_state("alice", created.name, State.RUNNING)

    bob = await c.install("bob")
    assert bob.id == 1

    gone = await c.uninstall("alice", created.name)
    assert gone.owner == "alice" and gone.state == State.UNINSTALLING
    assert claim(0) not in await game.pvcs()
    assert await _no_pod(game, 0)
    async with database.session() as session:
        row = await session.get(InstanceRow, (c.namespace, SAMPLE, 0))
    assert (row.slot, row.owner) == ("FREE", None)

    carol = await c.install("carol")
    assert carol.id == 0  # FREE: the disk is gone, so the id may go to someone else
    await c.wait_state("carol", carol.name, State.RUNNING)
    assert (await game.pvcs())[claim(0)].metadata.uid != pvc.metadata.uid  # a new, empty disk
    assert await outbox(database) == [("alice", 0), ("bob", 1), ("alice", None), ("carol", 0)]
    assert (await c.wait_consistent()).templates_checked == 1


async def _no_pod(game: Game, i: int) -> bool:
    return i not in await game.pods(SAMPLE)


async def test_an_id_is_reused_only_once_its_disk_is_confirmed_gone(testbed: Testbed, game: Game, issuer,
                                                                    database_url, start_gateway, client_for,
                                                                    database: Database) -> None:
    """A finalizer holds alice's disk: her id stays RELEASING and goes to nobody until the disk is gone."""
    from ..plugins.gateway import make_settings
    from .conftest import instance_overrides

    await create_template(game, testbed)
    settings = make_settings(database_url, issuer, **instance_overrides(testbed, game.namespace,
                                                                        release_wait_seconds=2))
    gw = await start_gateway("instance", settings=settings)
    c = client_for(gw.channel("instance"))
    alice = await c.install("alice")
    await c.wait_state("alice", alice.name, State.RUNNING)
    await game.core.patch_namespaced_persistent_volume_claim(
        claim(0), game.namespace, {"metadata": {"finalizers": ["aigc-gateway.test/hold"]}})

    gone = await c.uninstall("alice", alice.name)
    assert gone.state == State.UNINSTALLING
    async with database.session() as session:
        assert (await session.get(InstanceRow, (c.namespace, SAMPLE, 0))).slot == "RELEASING"
    bob = await c.install("bob")
    assert bob.id == 1  # not 0: its disk still exists

    await game.core.patch_namespaced_persistent_volume_claim(
        claim(0), game.namespace, {"metadata": {"finalizers": None}})

    async def freed() -> bool:
        async with database.session() as session:
            return (await session.get(InstanceRow, (c.namespace, SAMPLE, 0))).slot == "FREE"
    await wait_for(freed, 30, what="the reconciler to free id 0")
    carol = await c.install("carol")
    assert carol.id == 0
    await c.wait_consistent()
