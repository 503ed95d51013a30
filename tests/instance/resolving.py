"""Two replicas over one real PostgreSQL and no cluster, for the tests of an intent resolved after its writer died
(test_replay_effects_db, test_ups_db, test_downs_db): ``killed`` claims the calls and writes the intent, ``dies``
ends its lease as kill -9 would, and ``survivor``'s lifecycle resolves the intent and answers the retries."""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
from sqlalchemy import update

from aigc_gateway.config import InstanceConfig
from aigc_gateway.db import Database
from aigc_gateway.db.models import ReplicaRow
from aigc_gateway.idempotency import Claim, IdempotencyStore
from aigc_gateway.names import TemplateRef
from aigc_gateway.replicas import ReplicaRegistry, utcnow
from aigc_gateway.services.instance.allocator import Plan, Spec
from aigc_gateway.services.instance.lifecycle import Lifecycle
from aigc_gateway.services.instance.slots import SlotStore


@dataclass
class Replicas:
    database: Database
    killed: IdempotencyStore
    survivor: IdempotencyStore
    store: SlotStore
    lifecycle: Lifecycle  # the survivor's

    async def kill(self) -> None:
        await dies(self.database, self.killed)

    async def never_landed(self, ref: TemplateRef, plan: Plan, before: Spec, calls: Sequence[Claim]) -> None:
        """``plan`` recorded as the intent of ``calls`` (the survivor's claims), then resolved against ``before``:
        the write never landed, so no intent is left and every claim is still held with no effect (then given up,
        as UNAVAILABLE)."""
        await self.store.record_intent(ref, plan)
        async with self.lifecycle.locked(ref):
            await self.lifecycle.resolve_pending(ref, before)
        async with self.database.session() as session:
            assert await self.store.intents(session, ref) == []
        assert (await self.survivor.held(list(calls))) == {c.key: (True, None) for c in calls}
        for claim in calls:
            await self.survivor.finish(claim, grpc.StatusCode.UNAVAILABLE, b"")

    async def rows(self, ref: TemplateRef) -> dict[int, tuple[str, str | None]]:
        """Every slot row of ``ref``: id -> (slot, owner)."""
        async with self.database.session() as session:
            return {i: (r.slot, r.owner) for i, r in (await self.store.load(session, ref)).items()}


@asynccontextmanager
async def replicas(database: Database) -> AsyncIterator[Replicas]:
    killed = IdempotencyStore(database, ReplicaRegistry(database, 10))
    survivor = IdempotencyStore(database, ReplicaRegistry(database, 10))
    store = SlotStore(database)
    lifecycle = Lifecycle(database, store, cluster=None, cfg=InstanceConfig(), claims=survivor)  # type: ignore[arg-type]
    try:
        yield Replicas(database, killed, survivor, store, lifecycle)
    finally:
        await killed.close()
        await survivor.close()


async def dies(db: Database, claims: IdempotencyStore) -> None:
    """The replica behind ``claims`` stops renewing its lease, which is over now: its claims are anyone's."""
    assert claims.replicas._task is not None
    claims.replicas._task.cancel()
    async with db.session() as session:
        await session.execute(update(ReplicaRow).where(ReplicaRow.id == claims.replicas.id)
                              .values(expires_at=utcnow()))
