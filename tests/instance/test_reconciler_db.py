"""The reconciler's own background reads under a database fault (docs/chaos.md): timing an install's start
(SlotReconciler._observe_running, a task per GameServer seen Ready) with PostgreSQL away is retried and, when the
fault lasts, given up and logged by the task itself; asyncio never reports "Task exception was never retrieved".
Once the database answers, the start is timed from when the GameServer was seen Ready."""
from __future__ import annotations

import asyncio
import gc
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient
from prometheus_client import REGISTRY

from aigc_gateway.config import InstanceConfig
from aigc_gateway.db import Database
from aigc_gateway.kube import Kube
from aigc_gateway.names import TemplateRef
from aigc_gateway.services.instance import allocator, reconciler
from aigc_gateway.services.instance.allocator import Spec
from aigc_gateway.services.instance.cluster import Cluster
from aigc_gateway.services.instance.consistency import ConsistencyChecker
from aigc_gateway.services.instance.lifecycle import Lifecycle
from aigc_gateway.services.instance.reconciler import SlotReconciler
from aigc_gateway.services.instance.slots import SlotStore

from ..plugins.auth_stack import free_port

REF = TemplateRef("games", "sd-cpu")
READY: dict[str, Any] = {"status": {"currentState": "Ready", "networkStatus": {"currentNetworkState": "Ready"}}}
TIMED = "aigc_instance_install_to_running_seconds"


def leader_on(db: Database, retry_seconds: float) -> SlotReconciler:
    """The leading reconciler over ``db`` (its Kubernetes side is never reached here)."""
    store = SlotStore(db)
    cluster = Cluster(Kube(ApiClient()), [REF.namespace], {})
    lifecycle = Lifecycle(db, store, cluster, InstanceConfig())
    leader = SlotReconciler(db, lifecycle, ConsistencyChecker(lifecycle, cluster, store), store, interval=1,
                            observe_retry_seconds=retry_seconds)
    leader.leading = True
    return leader


async def test_timing_a_start_with_the_database_away_is_retried_then_logged_never_left_unretrieved(
        caplog: pytest.LogCaptureFixture) -> None:
    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    db = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gone", pool_size=1)  # nothing listens
    leader = leader_on(db, retry_seconds=0.5)
    try:
        with caplog.at_level(logging.INFO, logger=reconciler.__name__):
            for _ in range(5):  # the GameServer's events while the database is away: one read at a time
                leader.game_server_changed(REF.instance(0), READY)
            assert len(leader.observing) == 1
            await leader.observing.drain()
        gc.collect()  # asyncio reports a task's unretrieved error when the task is collected
    finally:
        loop.set_exception_handler(previous)
        await leader.lifecycle.cluster.kube.close()
        await db.close()
    assert unretrieved == []
    retried = [r for r in caplog.records if "trying again" in r.getMessage()]
    given_up = [r for r in caplog.records if "not timed" in r.getMessage()]
    assert retried and [r.levelno for r in given_up] == [logging.WARNING]
    # Seen Ready again once the read is over: a new read (not deduplicated away for ever).
    leader.game_server_changed(REF.instance(0), READY)
    assert len(leader.observing) == 1
    await leader.observing.cancel()


async def test_a_fresh_install_seen_running_is_timed(database: Database) -> None:
    plan = allocator.plan_install(REF, Spec.of(0), {}, "alice")
    installed = datetime.now(UTC) - timedelta(seconds=3)
    async with database.session() as session:
        await SlotStore(database).apply(session, REF, plan, owner_since=installed)
    leader = leader_on(database, retry_seconds=5)
    count, total = (REGISTRY.get_sample_value(f"{TIMED}_{s}") or 0.0 for s in ("count", "sum"))
    try:
        leader.game_server_changed(REF.instance(plan.id), READY)
        await leader.observing.drain()
    finally:
        await leader.lifecycle.cluster.kube.close()
    assert REGISTRY.get_sample_value(f"{TIMED}_count") == count + 1
    assert 3.0 <= (REGISTRY.get_sample_value(f"{TIMED}_sum") or 0.0) - total < 60
