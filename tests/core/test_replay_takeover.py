"""Replay claims on PostgreSQL with two replicas' registries (issue 20): a dead replica's claim is taken
over at once, a live one's never; the first attempt's committed effect comes with the takeover; a holder
that lost its claim cannot overwrite the outcome."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import update

from aigc_gateway.db import Database
from aigc_gateway.db.models import ReplicaRow
from aigc_gateway.errors import Aborted
from aigc_gateway.idempotency import IdempotencyStore
from aigc_gateway.replicas import ReplicaRegistry, utcnow

pytestmark = pytest.mark.postgres

REQUEST = b"request"


def store(db: Database) -> IdempotencyStore:
    return IdempotencyStore(db, ReplicaRegistry(db, lease_seconds=10))


async def kill(db: Database, replica: ReplicaRegistry) -> None:
    """What a SIGKILL leaves: the heartbeat stops, the row's lease runs out."""
    assert replica._task is not None
    replica._task.cancel()
    async with db.session() as session:
        await session.execute(update(ReplicaRow).where(ReplicaRow.id == replica.id)
                              .values(expires_at=utcnow() - timedelta(seconds=1)))


async def test_a_live_holder_keeps_its_claim_and_a_dead_ones_is_taken_over(database: Database) -> None:
    first, second = store(database), store(database)
    try:
        claim, stored = await first.claim("I.M", "alice", "r-1", REQUEST)
        assert stored is None and claim.holder == first.replicas.id
        with pytest.raises(Aborted) as err:
            await second.claim("I.M", "alice", "r-1", REQUEST)
        assert err.value.reason == "REQUEST_IN_PROGRESS"

        async with database.session() as session:  # the first attempt commits its effect with its work
            assert await IdempotencyStore.record_effect(session, claim, {"op": "install", "id": 4})
        await kill(database, first.replicas)
        taken, stored = await second.claim("I.M", "alice", "r-1", REQUEST)
        assert stored is None and taken.holder == second.replicas.id and taken.attempt == 1
        assert taken.effect == {"op": "install", "id": 4}

        await first.finish(claim, grpc.StatusCode.OK, b"stale")  # fenced: the claim is no longer its
        assert (await second.held([taken]))[taken.key] == (True, {"op": "install", "id": 4})
        await second.finish(taken, grpc.StatusCode.OK, b"answer")
        _, stored = await first.claim("I.M", "alice", "r-1", REQUEST)
        assert stored is not None and stored.payload == b"answer"
    finally:
        await first.close()
        await second.close()


async def test_a_killed_replicas_session_lock_tells_at_once(database: Database) -> None:
    """On PostgreSQL the holder's own session lock goes with its connection: no waiting for the lease."""
    first, second = store(database), store(database)
    try:
        await first.claim("I.M", "alice", "r-5", REQUEST)
        assert await second.replicas.alive(first.replicas.id)  # lease valid, lock held
        assert first.replicas._task is not None and first.replicas.session_lock.conn is not None
        first.replicas._task.cancel()
        first.replicas.session_lock.conn.terminate()  # what the kernel does to a killed process's socket
        for _ in range(50):  # the server notices the closed socket (not a timing bar: it is immediate)
            if not await second.replicas.alive(first.replicas.id):
                break
            await asyncio.sleep(0.05)
        taken, stored = await second.claim("I.M", "alice", "r-5", REQUEST)  # lease still valid
        assert stored is None and taken.attempt == 1
    finally:
        await first.close()
        await second.close()


async def test_a_retryable_end_after_an_effect_lets_the_retry_answer_with_it(database: Database) -> None:
    one, two = store(database), store(database)
    try:
        claim, _ = await one.claim("I.D", "alice", "r-2", REQUEST)
        async with database.session() as session:
            await IdempotencyStore.record_effect(session, claim, {"op": "uninstall"})
        await one.finish(claim, grpc.StatusCode.UNAVAILABLE, b"")
        taken, stored = await two.claim("I.D", "alice", "r-2", REQUEST)  # holder alive, but it let go
        assert stored is None and taken.effect == {"op": "uninstall"}

        plain, _ = await one.claim("I.D", "alice", "r-3", REQUEST)
        await one.finish(plain, grpc.StatusCode.UNAVAILABLE, b"")  # nothing committed yet: run again
        again, stored = await two.claim("I.D", "alice", "r-3", REQUEST)
        assert stored is None and again.attempt == 1 and again.effect is None
    finally:
        await one.close()
        await two.close()


async def test_the_embedded_sqlite_default_takes_over_a_dead_replicas_claim(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same heartbeat table on SQLite: a second process on the file (or this one after a restart) takes
    over what a killed one left pending."""
    import asyncio

    from aigc_gateway.db.migrate import upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.sqlite3'}"
    await asyncio.to_thread(upgrade, url)
    db = Database(url)
    first, second = store(db), store(db)
    try:
        claim, _ = await first.claim("I.M", "alice", "r-9", REQUEST)
        with pytest.raises(Aborted):
            await second.claim("I.M", "alice", "r-9", REQUEST)
        await kill(db, first.replicas)
        taken, stored = await second.claim("I.M", "alice", "r-9", REQUEST)
        assert stored is None and taken.attempt == 1
    finally:
        await first.close()
        await second.close()
        await db.close()
