"""PostgreSQL LISTEN on a dedicated connection, reconnecting, for whatever must hear a change at once
(the auth owner map and session cache, usersync's outbox delivery).

While the connection is up, ``live`` is True and notifications arrive within
milliseconds of the writer's commit. When it drops, ``live`` turns False
(callers fall back to short cache lifetimes or polling) and ``on_reconnect``
runs after every (re)connection, because anything may have changed unheard.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from sqlalchemy.engine import make_url

from aigc_gateway.background import Backoff, cancel_and_wait

log = logging.getLogger(__name__)


def asyncpg_dsn(url: str) -> str | None:
    """The DSN asyncpg takes for a SQLAlchemy URL, or None when the database is not PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class PgListener:
    def __init__(self, dsn: str, channels: dict[str, Callable[[str], None]],
                 on_reconnect: Callable[[], Awaitable[None] | None] | None = None, *, ping_seconds: float = 2.0):
        self.dsn = dsn
        self.channels = channels
        self.on_reconnect = on_reconnect
        self.ping_seconds = ping_seconds
        self.live = False
        self.last_alive = 0.0  # time.monotonic() of the last connect or ping that answered
        self.connected_at = 0.0  # time.monotonic() when the current connection started listening
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pg-listen")

    async def wait_live(self, timeout: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        self.live = False

    async def _run(self) -> None:
        backoff = Backoff(initial=0.2, cap=5.0)
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=5)
                for channel, callback in self.channels.items():
                    await conn.add_listener(channel, lambda _c, _pid, _ch, payload, cb=callback: cb(payload))
                self.live = True
                self.connected_at = self.last_alive = time.monotonic()
                self._connected.set()
                backoff.reset()
                if self.on_reconnect is not None:
                    result = self.on_reconnect()
                    if asyncio.iscoroutine(result):
                        await result
                while True:  # a ping notices a dead connection that no notification would reveal
                    await asyncio.sleep(self.ping_seconds)
                    async with asyncio.timeout(self.ping_seconds * 2):  # not wait_for: see ..background
                        await conn.fetchval("SELECT 1")
                    self.last_alive = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure means reconnect
                if self.live:
                    log.warning("LISTEN connection lost (%s); reconnecting", exc)
                else:
                    log.debug("LISTEN connection failed: %s", exc)
            finally:
                self.live = False
                if conn is not None:
                    try:
                        await asyncio.wait_for(conn.close(), timeout=2)
                    except Exception:  # noqa: BLE001
                        conn.terminate()
            await backoff.sleep()
