"""A crash at every fault point of the rollout step (issue 14, services/instance/rollouts.py): the reconciler of
`aigc-gateway serve instance` dies there (AIGC_GATEWAY_FAULT), the service is started again without the switch, and
its next pass finishes the step: the idle instance moves (in place, same pod), the busy one stays held on its pod,
the intent is gone (CheckConsistency clean) and the move is audited once."""
from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from sqlalchemy import func, select

from aigc_gateway.api.v1 import instance_pb2
from aigc_gateway.db import Database
from aigc_gateway.db.models import AuditEventRow
from aigc_gateway.services.instance import faults

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template
from .rolling import HOOK, NEW, pod_state, rolling_update, started_long_ago, update_revision, write_change

pytestmark = pytest.mark.testbed


async def audited(db: Database) -> int:
    async with db.session() as session:
        return int((await session.execute(select(func.count()).select_from(AuditEventRow).where(
            AuditEventRow.action == "InstanceService.RolloutInstance"))).scalar_one())


@pytest.mark.parametrize("point", [p for p in faults.POINTS if p.startswith("rollout.")])
async def test_crash_in_the_rollout_step_at(point: str, testbed: Testbed, game: Game, service_process, client_for,
                                            database: Database) -> None:
    await create_template(game, testbed, lifecycle=HOOK)
    service = await service_process()
    service.start()
    c = client_for(await service.ready())
    ann, ben = await c.install("ann"), await c.install("ben")
    for user, instance in (("ann", ann), ("ben", ben)):
        await c.wait_state(user, instance.name, State.RUNNING)
    await c.stub.KeepInstanceAlive(instance_pb2.KeepInstanceAliveRequest(name=ben.name), metadata=c.md("ben"))
    await started_long_ago(database, game.namespace, "ann")  # and never used: idle
    before = await pod_state(game)
    old = before[0][1]
    await service.stop()

    await write_change(game, "WHEN_IDLE", "1h")
    service.start(fault=point)  # its reconciler plans at once, and dies there
    assert await service.exited(60) == faults.EXIT_CODE

    service.start()
    c = client_for(await service.ready())

    async def finished() -> dict | None:
        pods, rolling, new = await pod_state(game), await rolling_update(game), await update_revision(game)
        ok = new != old and pods[0][1] == new and rolling.get("partition") == 1 and rolling.get("paused") is False
        return pods if ok else None
    pods = await wait_for(finished, 60, what="ann moved, ben held, the rolling update unpaused")
    new = pods[0][1]
    assert pods == {0: (before[0][0], new, False), 1: (before[1][0], old, True)}
    await c.wait_consistent(60)  # no rollout intent left
    assert await audited(database) == 1
    await game.act_as_kubelet(SAMPLE, 0, NEW)
    assert (await c.wait_state("ann", ann.name, State.RUNNING)).revision == new
    assert (await c.get("ben", ben.name)).revision == old


async def test_doctor_repair_finishes_an_interrupted_rollout_step(testbed: Testbed, game: Game, service_process,
                                                                  client_for, database: Database) -> None:
    """`aigc-gateway doctor --repair` does what the reconciler does: with the service down after a crash between
    the priorities and the partition, it finishes the step and then finds nothing wrong."""
    await create_template(game, testbed, lifecycle=HOOK)
    service = await service_process()
    service.start()
    c = client_for(await service.ready())
    ann = await c.install("ann")
    await c.wait_state("ann", ann.name, State.RUNNING)
    await started_long_ago(database, game.namespace, "ann")  # and never used: idle
    before = await pod_state(game)
    await service.stop()
    await write_change(game, "WHEN_IDLE", "1h")
    service.start(fault="rollout.after_priorities")
    assert await service.exited(60) == faults.EXIT_CODE
    assert (await rolling_update(game)).get("paused") is True  # stopped before the partition write

    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "aigc_gateway.cli", "doctor", "--repair",
                                                    "-c", str(service.config)], capture_output=True, text=True,
                                   timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 template(s) checked, 0 violation(s)" in done.stderr
    rolling, pods = await rolling_update(game), await pod_state(game)
    assert (rolling.get("partition"), rolling.get("paused")) == (0, False)
    assert await audited(database) == 1

    async def moved() -> bool:
        return (await pod_state(game))[0][1] == await update_revision(game)
    await wait_for(moved, 60, what="ann's pod on the new revision")
    assert (await pod_state(game))[0][0] == before[0][0] == pods[0][0]
