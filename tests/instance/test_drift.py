"""Drift made outside the gateway is reported by CheckConsistency and `aigc-gateway doctor`, not papered over."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from aigc_gateway.db import Database
from aigc_gateway.db.models import AuditEventRow

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template, wait_realigned, wait_slot

pytestmark = pytest.mark.testbed


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_drift_is_reported_and_blocks_only_what_it_must(testbed: Testbed, game: Game, instance_settings,
                                                              start_gateway, client_for, service_process,
                                                              database: Database) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    alice = await c.install("alice")
    await c.wait_state("alice", alice.name, State.RUNNING)
    assert (await c.check()).consistent

    # Someone scales the template by hand: id 1 runs, owned by nobody.
    await game.update_gss(SAMPLE, lambda s: s.update(replicas=2))
    report = await c.check()
    assert not report.consistent
    assert [(v.id, v.code) for v in report.violations] == [(1, "LIVE_MISMATCH")]

    # The doctor prints the same from the command line and exits 1.
    service = await service_process()
    # In a thread: the gateway under test runs on this event loop, and may hold the template lock the doctor needs.
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "aigc_gateway.cli", "doctor", "-c",
                                                    str(service.config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert "LIVE_MISMATCH" in done.stdout and f"{c.parent()}\t1\t" in done.stdout
    assert "1 template(s) checked, 1 violation(s)" in done.stderr

    # Nobody is handed the stray id 1 (its disk is unaccounted for); the next install gets a fresh id, and
    # the stray one stays reported until an admin sorts it out.
    bob = await c.install("bob")
    assert bob.id == 2
    await c.pause("alice", alice.name)
    await c.wait_state("alice", alice.name, State.PAUSED)
    assert [(v.id, v.code) for v in (await c.check()).violations] == [(1, "LIVE_MISMATCH")]

    # The admin sorts it out: `doctor --repair` makes the GameServerSet run exactly the LIVE ids (R included), so
    # the stray id stops; its pod made a disk, which the reconciler deletes before it frees the id.
    repaired = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "aigc_gateway.cli", "doctor", "--repair",
                                                        "-c", str(service.config)],
                                       capture_output=True, text=True, timeout=120)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    await wait_slot(database, game.namespace, 1, "FREE")
    assert not [n for n in await game.pvcs() if n.endswith(f"-{SAMPLE}-1")]
    await c.wait_consistent(60)
    assert (await c.get("bob", bob.name)).state == State.RUNNING


async def test_metrics_and_audit_of_an_install(testbed: Testbed, game: Game, instance_settings, start_gateway,
                                               client_for, database: Database) -> None:
    await create_template(game, testbed)
    installs = sample("aigc_instance_operations_total", operation="install", outcome="OK")
    timed = sample("aigc_instance_install_to_running_seconds_count")
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    alice = await c.install("alice")
    await c.wait_state("alice", alice.name, State.RUNNING)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await c.pause("bob", alice.name)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert sample("aigc_instance_operations_total", operation="install", outcome="OK") == installs + 1
    for _ in range(50):
        if sample("aigc_instance_install_to_running_seconds_count") > timed:
            break
        await asyncio.sleep(0.2)
    assert sample("aigc_instance_install_to_running_seconds_count") == timed + 1
    async with database.session() as session:
        events = {(e.action, e.outcome): e for e in (await session.execute(select(AuditEventRow))).scalars()}
    created = events[("InstanceService.CreateInstance", "SUCCESS")]
    assert created.actor == "alice" and created.details["instance"] == alice.name
    denied = events[("InstanceService.PauseInstance", "DENIED")]
    assert denied.actor == "bob" and denied.resource == alice.name and denied.error_code == "PERMISSION_DENIED"


async def test_a_live_set_moved_by_the_controller_is_put_back(testbed: Testbed, game: Game, instance_settings,
                                                              start_gateway, client_for, database: Database) -> None:
    """What a stale reconcile of kruise-game does (allocator.plan_realign): R kept, a recorded-LIVE id
    reserved again, a new id started instead. The reconciler puts the recorded ids back on their disks,
    stops the stray one and deletes its disk; the owner's next call works."""
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    users = ["ann", "ben", "cat"]
    made = {u: await c.install(u) for u in users}
    assert sorted(m.id for m in made.values()) == [0, 1, 2]
    await game.wait_running(SAMPLE, {0, 1, 2})
    before = sample("aigc_instance_allocator_realigns_total")

    # As the controller did: id 1 reserved again with R kept, so it stops and id 3 starts.
    await game.update_gss(SAMPLE, lambda s: s.update(reserveGameServerIds=[1]))

    # The reconciler (every second here) writes (3, [3]): id 1 back on its disk, 3 stopped. The same
    # controller race may strike the repair too; the next pass repairs that, so wait for the end state.
    await wait_for(lambda: sample("aigc_instance_allocator_realigns_total") > before, 60, what="a realign")

    await wait_realigned(game, {0, 1, 2})
    await c.wait_consistent(60)
    await wait_slot(database, game.namespace, 3, "FREE")  # the stray id's disk deleted, then the id freed
    assert not [n for n in await game.pvcs() if n.endswith(f"-{SAMPLE}-3")]
    await c.pause("ben", made["ben"].name)  # the owner of the id that was moved is served as usual
    await c.wait_state("ben", made["ben"].name, State.PAUSED)
    bob = await c.install("bob")
    assert bob.id == 3  # the freed id is handed out again
