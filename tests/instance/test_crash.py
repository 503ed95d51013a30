"""A crash at every fault point: `aigc-gateway serve instance` exits there (AIGC_GATEWAY_FAULT), is started
again without the switch, and then the allocator is consistent, the operation took effect completely or not
at all, and the user's next call succeeds."""
from __future__ import annotations

import grpc
import pytest
from sqlalchemy import select

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow, UserSyncOutboxRow
from aigc_gateway.services.instance import faults

from ..plugins.kube import Game, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, State, create_template, wait_realigned, wait_slot

pytestmark = pytest.mark.testbed

# What the instance looks like before the operation, and the two states it may be in afterwards.
BEFORE = {"install": None, "pause": "LIVE", "resume": "PAUSED", "uninstall": "LIVE"}
AFTER = {"install": "LIVE", "pause": "PAUSED", "resume": "LIVE", "uninstall": "FREE"}
PREFIX = "namespaces/{ns}/templates/" + SAMPLE + "/instances/0"


async def slot(db: Database, ns: str) -> tuple[str | None, str | None]:
    async with db.session() as session:
        row = await session.get(InstanceRow, (ns, SAMPLE, 0))
    return (row.slot, row.owner) if row else (None, None)


async def keys(db: Database) -> list[int | None]:
    async with db.session() as session:
        rows = await session.execute(select(UserSyncOutboxRow).where(UserSyncOutboxRow.user == "alice")
                                     .order_by(UserSyncOutboxRow.id))
        return [r.instance_id for r in rows.scalars()]


@pytest.mark.parametrize("point", [p for p in faults.POINTS if p.split(".")[0] in BEFORE])
async def test_crash_at(point: str, testbed: Testbed, game: Game, service_process, client_for,
                        database: Database) -> None:
    op = point.split(".")[0]
    await create_template(game, testbed)
    service = await service_process()
    name = PREFIX.format(ns=game.namespace)

    # Bring the instance to the state the operation starts from.
    service.start()
    c = client_for(await service.ready())
    if BEFORE[op] is not None:
        await c.install("alice")
        await c.wait_state("alice", name, State.RUNNING)
    if BEFORE[op] == "PAUSED":
        await c.pause("alice", name)
        await c.wait_state("alice", name, State.PAUSED)
    await service.stop()

    # The operation, in a process that dies at the fault point.
    service.start(fault=point)
    c = client_for(await service.ready())
    call = {"install": lambda: c.install("alice"), "pause": lambda: c.pause("alice", name),
            "resume": lambda: c.resume("alice", name), "uninstall": lambda: c.uninstall("alice", name)}[op]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call()
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await service.exited() == faults.EXIT_CODE

    # Started again without the switch: the reconciler (or the next call) resolves what was left.
    service.start()
    c = client_for(await service.ready())
    await c.wait_consistent(60)
    state, owner = await slot(database, game.namespace)
    outcome = "after" if state == AFTER[op] or (op == "uninstall" and state == "RELEASING") else "before"
    assert state in (BEFORE[op], AFTER[op], "RELEASING" if op == "uninstall" else AFTER[op])
    if point.endswith(("after_gss_write", "after_commit", "after_disk_delete")):
        assert outcome == "after", f"the write was made, so the operation must have taken effect ({state})"
    if point.endswith("after_intent"):
        assert outcome == "before", f"nothing was written, so nothing may have changed ({state})"

    # All or nothing: the slot, the GameServerSet and the Logto outbox tell the same story.
    spec = (await game.get_gss(SAMPLE))["spec"]
    reserved = 0 in set(spec.get("reserveGameServerIds") or [])
    if state == "LIVE":
        assert owner == "alice" and spec["replicas"] == 1 and not reserved
    elif state == "PAUSED":
        assert owner == "alice" and spec["replicas"] == 0 and reserved
    elif state in ("RELEASING", "FREE"):
        assert owner is None and spec["replicas"] == 0 and reserved
    else:
        assert state is None and spec["replicas"] == 0
    assert await keys(database) == {None: [], "LIVE": [0], "PAUSED": [0], "RELEASING": [0, None],
                                    "FREE": [0, None]}[state]

    # The user's next call succeeds.
    if op == "install":
        if outcome == "before":
            await c.install("alice")
        await c.wait_state("alice", name, State.RUNNING)
    elif op == "uninstall":
        if outcome == "before":
            await c.uninstall("alice", name)
        else:
            async def freed() -> bool:
                return (await slot(database, game.namespace))[0] == "FREE"
            await wait_for(freed, 60, what="the reconciler to finish deleting the disk")
            assert f"user-data-{SAMPLE}-0" not in await game.pvcs()
        again = await c.install("alice")
        assert again.id == 0
    else:
        retried = await (c.pause("alice", name) if op == "pause" else c.resume("alice", name))
        assert retried.name == name
        await c.wait_state("alice", name, State.PAUSED if op == "pause" else State.RUNNING)
    await c.wait_consistent(60)


@pytest.mark.parametrize("point", ["realign.after_intent", "realign.after_gss_write"])
async def test_crash_while_realigning(point: str, testbed: Testbed, game: Game, service_process, client_for,
                                      database: Database) -> None:
    """The reconciler's repair of a live set the controller moved (allocator.plan_realign) dies half-way; the
    next process finishes it: ids 0-2 run again, the stray id's disk goes, every owner is served."""
    await create_template(game, testbed)
    service = await service_process()
    service.start()
    c = client_for(await service.ready())
    made = {u: await c.install(u) for u in ("ann", "ben", "cat")}
    await game.wait_running(SAMPLE, {0, 1, 2})
    await service.stop()
    await game.update_gss(SAMPLE, lambda s: s.update(reserveGameServerIds=[1]))  # as kruise-game's race does
    await game.wait_running(SAMPLE, {0, 2, 3})

    service.start(fault=point)  # its reconciler realigns at once, and dies there
    assert await service.exited(60) == faults.EXIT_CODE

    service.start()
    c = client_for(await service.ready())

    await wait_realigned(game, {0, 1, 2})
    await c.wait_consistent(60)
    await wait_slot(database, game.namespace, 3, "FREE")  # the stray id's disk deleted
    await c.pause("ben", made["ben"].name)
    await c.wait_state("ben", made["ben"].name, State.PAUSED)
    await c.wait_consistent(60)
