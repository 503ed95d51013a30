"""WatchInstance's batched reads (services/instance/watchfeed.py) on real PostgreSQL: the watchers woken by one
wave of changes read their rows in one query, each gets its own row, and a gone row reads as None."""
from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.names import InstanceRef
from aigc_gateway.services.instance.watchfeed import WatchFeed


async def seed(db: Database, n: int) -> None:
    now = datetime.now(UTC)
    async with db.session() as session:
        for i in range(n):
            session.add(InstanceRow(namespace="games", template="sd", id=i, slot="PAUSED", owner=f"user-{i}",
                                    orphaned=False, created_at=now, updated_at=now, state_changed_at=now))
        await session.commit()


async def test_watchers_woken_together_read_in_one_query_each_their_own_row(database: Database) -> None:
    await seed(database, 120)
    feed = WatchFeed(database, max_batch=50)
    refs = [InstanceRef("games", "sd", i) for i in range(120)] + [InstanceRef("games", "sd", 7),
                                                                   InstanceRef("games", "sd", 999)]
    seen = await asyncio.gather(*(feed.get(ref) for ref in refs))
    # 121 distinct instances, at most 50 per query: three queries, not 122 (or 244 with the idle states).
    assert feed.batches == 3
    assert [row.owner if row else None for row, _ in seen] == [f"user-{i}" for i in range(120)] + ["user-7", None]
    assert all(pause is None for _, pause in seen)

    # A later wave is a batch of its own.
    row, _ = await feed.get(InstanceRef("games", "sd", 3))
    assert row is not None and row.owner == "user-3" and feed.batches == 4
