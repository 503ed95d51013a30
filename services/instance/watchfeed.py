"""The rows WatchInstance streams read, batched: every stream woken by one wave of changes reads in one query.

A watcher re-reads its slot row (and its announced idle pause) each time something about its instance changes.
One commit can wake a thousand watchers at once (a pg_notify per row it wrote, or a LISTEN reconnect that wakes
every stream); read one by one that is two thousand queries queued on a pool of ten connections, and the last
stream heard of its change seconds late (bench/watch_streams.py: 7.5 s p50 at 1,000 streams). Here the reads
asked for in the same turn of the event loop go together: one SELECT of the rows, one of their idle states, per
batch of up to ``max_batch`` instances.
"""
from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from sqlalchemy import select, tuple_

from aigc_gateway.db import Database
from aigc_gateway.db.models import InstanceRow
from aigc_gateway.names import InstanceRef

from . import idle_api

log = logging.getLogger(__name__)

Seen = tuple[InstanceRow | None, datetime | None]  # the row (None: gone) and its announced idle pause


class WatchFeed:
    def __init__(self, db: Database, max_batch: int = 500):
        self.db = db
        self.max_batch = max_batch
        self._pending: dict[InstanceRef, list[asyncio.Future[Seen]]] = {}
        self._flushing: asyncio.Task[None] | None = None
        self.batches = 0  # how many queries the reads took (the test checks the batching with it)

    async def get(self, ref: InstanceRef) -> Seen:
        future: asyncio.Future[Seen] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(ref, []).append(future)
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush(), name="watch-feed")
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # one turn of the loop: the other watchers woken with this one ask too
        try:
            while self._pending:
                refs = list(self._pending)[: self.max_batch]
                waiting = {ref: self._pending.pop(ref) for ref in refs}
                try:
                    seen = await self._read(refs)
                except Exception as exc:  # noqa: BLE001 - each watcher handles its own failed read
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for ref, futures in waiting.items():
                    for future in futures:
                        if not future.done():  # a cancelled watcher's future is done already
                            future.set_result(seen.get(ref, (None, None)))
        finally:
            self._flushing = None

    async def _read(self, refs: list[InstanceRef]) -> dict[InstanceRef, Seen]:
        self.batches += 1
        async with self.db.session() as session:
            rows = list((await session.execute(select(InstanceRow).where(
                tuple_(InstanceRow.namespace, InstanceRow.template, InstanceRow.id).in_(
                    [(r.namespace, r.template, r.id) for r in refs])))).scalars())
        pauses = await idle_api.scheduled(self.db, rows)
        out: dict[InstanceRef, Seen] = {}
        for row in rows:
            ref = InstanceRef(row.namespace, row.template, row.id)
            out[ref] = (row, pauses.get(ref))
        return out
