"""An auth process says SERVING (gRPC health: the pod's readiness, what balancers go by) only once its owner map
has read the ownership table. Before that first read it refuses every owner ("no instance is served at this URL",
OWNERS_UNKNOWN); a restarted process that took checks then refused owners for ~0.1 s (bench/replicas.py
--victims auth, docs/chaos.md "Replicas"). The first read is held on a lock of the ``instances`` table, released
only once the read waits for it, so the start cannot have finished its read early by chance."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import asyncpg
from grpc_health.v1 import health_pb2

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.runtime import Runtime
from aigc_gateway.server import GatewayServer, load_service
from aigc_gateway.services.auth.app import AuthService
from aigc_gateway.services.auth.ownermap import InstanceKey
from tests.plugins.gateway import make_settings

KEY = InstanceKey("ns", "cpu", 1)


async def _waiting_on_lock(admin: asyncpg.Connection) -> bool:
    return bool(await admin.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' "
        "AND query ILIKE '%FROM instances%'"))


async def test_serving_only_once_the_owners_are_read(database_url: str, issuer: Any) -> None:
    now = datetime.now(UTC)
    db = Database(database_url, pool_size=1)
    async with db.session() as session:
        session.add(InstanceRow(namespace=KEY.namespace, template=KEY.template, id=KEY.id, slot="LIVE",
                                owner="alice", orphaned=False, created_at=now, updated_at=now, state_changed_at=now))
    await db.close()
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    holder, admin = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    runtime = Runtime.create(make_settings(database_url, issuer, auth={"http_listen": "", "http_workers": 0},
                                           kubernetes={"kubeconfig": "/nonexistent/kubeconfig"}))
    server = GatewayServer("auth", runtime, load_service("auth", runtime))
    service = server.parts.service_as(AuthService)

    async def start_then_look() -> tuple[str | None, bool, int]:
        await server.start()
        # What a balancer that trusts SERVING would meet from now on, seen at the moment start() returned.
        status = (await server.health.Check(health_pb2.HealthCheckRequest(), None)).status
        return service.owners.owner(KEY), service.owners.known, status

    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("LOCK TABLE instances IN ACCESS EXCLUSIVE MODE")
        starting = asyncio.create_task(start_then_look())
        while not await _waiting_on_lock(admin):  # the barrier: the owner map's first read is held
            assert not starting.done() or starting.exception() is None
            await asyncio.sleep(0.01)
        await tx.rollback()
        assert await starting == ("alice", True, health_pb2.HealthCheckResponse.SERVING)
    finally:
        await holder.close()
        await admin.close()
        await server.stop(0)
        await runtime.close()
