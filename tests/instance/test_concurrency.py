"""Concurrency on the test bed: a burst of installs, and a seeded random storm served by two processes."""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from aigc_gateway import okg
from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow

from ..plugins.gateway import make_settings
from ..plugins.kube import Game, gss_history, wait_for
from ..plugins.testbed import Testbed
from .conftest import SAMPLE, Client, create_template, instance_overrides

pytestmark = pytest.mark.testbed

STORM_SEED = int(os.environ.get("AIGC_STORM_SEED", "20261128"))


async def test_fifty_users_install_at_once(testbed: Testbed, game: Game, instance_settings, start_gateway,
                                           client_for, database: Database) -> None:
    await create_template(game, testbed)
    gw = await start_gateway("instance", settings=instance_settings)
    c = client_for(gw.channel("instance"))
    results = await asyncio.gather(*(c.install(f"user-{i:02d}") for i in range(50)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    ids = sorted(r.id for r in results)
    assert ids == list(range(50))
    assert len({r.owner for r in results}) == 50
    spec = (await game.get_gss(SAMPLE))["spec"]
    assert spec["replicas"] == 50 and not okg.parse_reserve(spec.get("reserveGameServerIds"))
    await game.wait_running(SAMPLE, set(range(50)), timeout=240)
    await c.wait_consistent(120)


@dataclass
class Mine:
    name: str
    state: str  # "LIVE" | "PAUSED"


async def test_seeded_storm_with_two_service_processes(testbed: Testbed, game: Game, database_url: str, issuer,
                                                       start_gateway, client_for, database: Database) -> None:
    """Random install/pause/resume/restart/uninstall across users and two templates, each call sent to one of
    two instance services (separate processes' worth of state: own Runtime, engine, caches, reconciler).
    Reproduce a failure with AIGC_STORM_SEED=<seed>."""
    rng = random.Random(STORM_SEED)
    templates = [await create_template(game, testbed), await create_template(game, testbed, name="sd-two")]
    # Each server its own settings (own ports), Runtime, engine, caches and reconciler: two processes' worth.
    gateways = [await start_gateway("instance", settings=make_settings(
        database_url, issuer, **instance_overrides(testbed, game.namespace))) for _ in range(2)]
    clients: list[Client] = [client_for(g.channel("instance")) for g in gateways]
    users = [f"storm-{i}" for i in range(10)]
    model: dict[tuple[str, str], Mine | None] = {(u, t): None for u in users for t in templates}
    log: list[str] = []

    async def act(user: str, template: str) -> None:
        c = rng.choice(clients)
        mine = model[(user, template)]
        if mine is None:
            op = rng.choice(["install", "install", "install", "pause-missing"])
        elif mine.state == "LIVE":
            op = rng.choice(["pause", "restart", "uninstall", "install-again", "resume"])
        else:
            op = rng.choice(["resume", "uninstall", "pause"])
        entry = len(log)
        log.append(f"{user}/{template}: {op} via {clients.index(c)}")
        began = time.monotonic()
        try:
            await run(c, op, user, template, mine)
        finally:
            log[entry] += f" ({time.monotonic() - began:.2f}s)"

    async def run(c: Client, op: str, user: str, template: str, mine: Mine | None) -> None:
        if op == "install":
            created = await c.install(user, template)
            model[(user, template)] = Mine(created.name, "LIVE")
        elif op == "pause-missing":
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.pause(user, f"{c.parent(template)}/instances/999")
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
        elif op == "install-again":
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await c.install(user, template)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        elif mine is None:
            raise AssertionError(f"{op} planned without an instance")
        elif op == "pause":
            await c.pause(user, mine.name)
            mine.state = "PAUSED"
        elif op == "resume":
            await c.resume(user, mine.name)
            mine.state = "LIVE"
        elif op == "restart":
            await c.restart(user, mine.name)
        elif op == "uninstall":
            await c.uninstall(user, mine.name)
            model[(user, template)] = None

    async with contextlib.AsyncExitStack() as stack:
        histories = {t: await stack.enter_async_context(gss_history(testbed.kubeconfig, game.namespace, t))
                     for t in templates}
        try:
            started = time.monotonic()
            for wave in range(7):
                pairs = rng.sample(sorted(model), 9)
                results = await asyncio.gather(*(act(u, t) for u, t in pairs), return_exceptions=True)
                failures = [(p, r) for p, r in zip(pairs, results, strict=True) if isinstance(r, BaseException)]
                assert not failures, f"seed {STORM_SEED}, wave {wave}: {failures}\n" + "\n".join(log)

            print(f"storm waves done in {time.monotonic() - started:.1f}s; slowest calls:",
                  sorted(log, key=lambda line: -float(line.rsplit("(", 1)[1].rstrip("s)")))[:5])
            c = clients[0]
            await c.wait_consistent(120)
        except AssertionError:
            print("\n".join(log))
            for template, lines in histories.items():
                print(f"history of {template}:", *lines, sep="\n  ")
            raise
    print(f"consistent after {time.monotonic() - started:.1f}s; live sets realigned: "
          f"{REGISTRY.get_sample_value('aigc_instance_allocator_realigns_total') or 0:.0f} (process total)")
    async with database.session() as session:
        rows = list((await session.execute(select(InstanceRow).where(InstanceRow.namespace == c.namespace)))
                    .scalars())
    recorded = {(r.owner, r.template): (f"{c.parent(r.template)}/instances/{r.id}", r.slot) for r in rows if r.owner}
    expected = {(u, t): (m.name, m.state) for (u, t), m in model.items() if m is not None}
    assert recorded == expected, f"seed {STORM_SEED}\n" + "\n".join(log)
    for template in templates:
        live = {int(name.rsplit("/", 1)[1]) for (u, t), (name, state) in expected.items()
                if t == template and state == "LIVE"}

        async def running(template: str = template, live: set[int] = live) -> bool:
            return await game.running_ids(template) == live and set(await game.pods(template)) == live
        await wait_for(running, 120, what=f"{template} to run exactly {sorted(live)}")
    print(f"pods match after {time.monotonic() - started:.1f}s")


@pytest.mark.parametrize("first", ["delete", "installs"])
async def test_installs_racing_a_plain_template_delete(testbed: Testbed, game: Game, database_url: str, issuer,
                                                        start_gateway, client_for, database: Database,
                                                        first: str) -> None:
    """DeleteTemplate without force and installs at once: the delete either counts the installs and is
    refused, or deletes a template no install got into; never an instance on a deleted template. Both
    orders are forced, not left to a stagger: the test holds the template's allocator lock, queues one
    side on it, then the other (PostgreSQL shows each waiting), and releases it."""
    from kubernetes_asyncio.client.exceptions import ApiException

    from aigc_gateway.api.v1 import template_pb2, template_pb2_grpc
    from aigc_gateway.db.models import allocator_lock

    from ..dblocks import lock_waiters, until_waiting

    await create_template(game, testbed)
    # The reconciler checks every template under its lock on its first pass, at start: it must be done before
    # the test queues the calls, and not come back (an hour) to take a place in the queue.
    settings = make_settings(database_url, issuer, template={"delete_wait_seconds": 90},
                             **instance_overrides(testbed, game.namespace, reconcile_interval_seconds=3600))
    gw = await start_gateway("instance", "template", settings=settings)
    c = client_for(gw.channel("instance"))
    templates = template_pb2_grpc.TemplateServiceStub(gw.channel("template"))
    lock = allocator_lock(game.namespace, SAMPLE)
    checked = {"template": c.parent()}
    await wait_for(lambda: REGISTRY.get_sample_value("aigc_instance_consistency_violations", checked) is not None,
                   60, interval=0.05, what="the reconciler's first check of the template")

    async def delete() -> template_pb2.DeleteTemplateResponse:
        return await templates.DeleteTemplate(template_pb2.DeleteTemplateRequest(name=c.parent()),
                                              metadata=c.md("admin"), timeout=120)

    async def install_all() -> list[object]:
        return await asyncio.gather(*(c.install(f"user-{i}") for i in range(6)), return_exceptions=True)

    async with database.lock(lock):  # what a third party holding the template's lock would do
        if first == "delete":
            deleting = asyncio.create_task(delete())
            await until_waiting(database, lock, 1)
            installing = asyncio.create_task(install_all())
        else:
            installing = asyncio.create_task(install_all())
            await until_waiting(database, lock, 1)
            deleting = asyncio.create_task(delete())
        await until_waiting(database, lock, 2)  # both queued, in the forced order
        assert await lock_waiters(database, lock) == 2
    installs = await installing
    deleted = await asyncio.gather(deleting, return_exceptions=True)
    deleted = deleted[0]
    installed = [r for r in installs if not isinstance(r, BaseException)]
    for r in installs:
        if isinstance(r, BaseException):
            assert isinstance(r, grpc.aio.AioRpcError), r
            assert r.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), r
    async with database.session() as session:
        rows = (await session.execute(select(InstanceRow.id, InstanceRow.slot, InstanceRow.owner).where(
            InstanceRow.namespace == game.namespace, InstanceRow.template == SAMPLE,
            InstanceRow.owner.is_not(None)))).all()
    if first == "installs":  # the delete counts what got in first and is refused; the template stays for all six
        assert isinstance(deleted, grpc.aio.AioRpcError) and deleted.code() == grpc.StatusCode.FAILED_PRECONDITION, \
            deleted
        assert len(installed) == 6, installs
        assert sorted(r.id for r in installed) == sorted(i for i, _s, _o in rows)
        assert (await game.get_gss(SAMPLE))["spec"]["replicas"] == len(installed)
        await c.wait_consistent(120)
    else:  # the delete runs first: no install gets into the deleted template
        assert isinstance(deleted, template_pb2.DeleteTemplateResponse), deleted
        assert installed == [] and rows == [], (installed, rows)
        with pytest.raises(ApiException) as gone:
            await game.get_gss(SAMPLE)
        assert gone.value.status == 404
