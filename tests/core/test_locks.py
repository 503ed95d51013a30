"""aigc_gateway.locks: the one home of advisory, lease and process-local locks (real PostgreSQL; SQLite file)."""
from __future__ import annotations

import asyncio
from pathlib import Path

from aigc_gateway.db import Database
from aigc_gateway.db.listen import asyncpg_dsn
from aigc_gateway.locks import (
    LocalLocks,
    QueuedLocks,
    SessionLock,
    is_free,
    lock_key,
    transaction_lock,
    try_transaction_lock,
)

from ..dblocks import lock_waiters, until_waiting


def test_lock_key_is_a_stable_signed_64_bit_hash_of_the_name() -> None:
    assert lock_key("allocator:ns/tpl") == lock_key("allocator:ns/tpl")
    assert lock_key("allocator:ns/tpl") != lock_key("allocator:ns/tpl2")
    assert all(-2 ** 63 <= lock_key(f"quota:{u}") < 2 ** 63 for u in ("alice", "bob", ""))


async def test_local_locks_serialise_one_name_only_and_forget_idle_names() -> None:
    locks = LocalLocks()
    entered = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with locks.hold("u1"):
            order.append("a+")
            entered.set()
            await release.wait()
            order.append("a-")

    async def second(name: str, tag: str) -> None:
        async with locks.hold(name):
            order.append(f"{tag}+")

    holder = asyncio.create_task(first())
    await entered.wait()
    waiter = asyncio.create_task(second("u1", "b"))
    await second("u2", "c")  # another name is not held up
    await asyncio.sleep(0)  # the waiter reaches the held lock
    assert order == ["a+", "c+"] and len(locks) == 1
    release.set()
    await asyncio.gather(holder, waiter)
    assert order == ["a+", "c+", "a-", "b+"]
    assert len(locks) == 0  # nobody holds or waits: nothing kept


async def test_a_held_transaction_lock_makes_a_try_fail_until_its_transaction_ends(database: Database) -> None:
    async with transaction_lock(database, "usersync:reconcile") as held:
        assert held is not None
        async with try_transaction_lock(database, "usersync:reconcile") as other:
            assert other is None
        async with try_transaction_lock(database, "usersync:something-else") as unrelated:
            assert unrelated is not None
    async with try_transaction_lock(database, "usersync:reconcile") as again:
        assert again is not None
        async with database.session() as session:
            assert await is_free(session, "usersync:reconcile") is False  # `again` holds it


async def test_queued_locks_wait_in_process_before_waiting_in_postgresql(database: Database) -> None:
    """Two coroutines of one process, the lock held by another replica: only one waits in PostgreSQL."""
    queued = QueuedLocks(database)
    entered: list[int] = []

    async def take(i: int) -> None:
        async with queued.hold("allocator:ns/tpl"):
            entered.append(i)

    async with database.lock("allocator:ns/tpl"):  # "another replica"
        tasks = [asyncio.create_task(take(i)) for i in range(2)]
        await until_waiting(database, "allocator:ns/tpl", 1)
        await asyncio.sleep(0.1)  # not a correctness bar: gives a wrong second waiter time to show up below
        assert await lock_waiters(database, "allocator:ns/tpl") == 1
        assert len(queued.local) == 1 and entered == []
    await asyncio.gather(*tasks)
    assert sorted(entered) == [0, 1]


async def test_a_session_lock_is_held_by_one_connection_and_retaken_after_it_drops(database_url: str) -> None:
    a, b = SessionLock(asyncpg_dsn(database_url), "replica:x"), SessionLock(asyncpg_dsn(database_url), "replica:x")
    try:
        assert await a.take(wait=True) is True
        assert await b.take(wait=False) is False and not b.held
        assert a.conn is not None
        a.conn.terminate()  # what the kernel does to a killed process's socket
        assert await b.take(wait=True) is True  # the lock went with the session
        assert await a.take(wait=False) is False  # the dead connection is noticed, the lock is b's now
    finally:
        await a.release()
        await b.release()


async def test_on_sqlite_a_try_always_succeeds_and_a_session_lock_is_never_held(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'locks.db'}")
    try:
        async with try_transaction_lock(db, "usersync:reconcile") as first:
            assert first is not None
        async with try_transaction_lock(db, "usersync:reconcile") as second:
            assert second is not None
        assert await SessionLock(asyncpg_dsn(db.url), "instance-reconciler").take(wait=True) is False
    finally:
        await db.close()
