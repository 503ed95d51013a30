"""Wake the outbox delivery when an ownership change commits, instead of waiting for the next poll.

The instance service writes the outbox row in the same transaction as the ``instances`` change and
``pg_notify('aigc_instances', ...)``, so a notification means "there may be something to deliver".
This is only a latency optimisation: polling (``delivery_poll_seconds``) remains the guarantee, so a
lost connection costs nothing but speed.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url

from aigc_gateway.db.models import INSTANCE_CHANNEL

log = logging.getLogger(__name__)


def asyncpg_dsn(url: str) -> str | None:
    """The DSN asyncpg takes for a SQLAlchemy URL, or None when the database is not PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


async def listen(dsn: str, wake: Callable[[], None], *, ping_seconds: float = 5.0) -> None:
    """Call ``wake`` on every notification on ``aigc_instances``; reconnect forever (cancel to stop)."""
    backoff = 0.5
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(dsn, timeout=5)
            await conn.add_listener(INSTANCE_CHANNEL, lambda *_: wake())
            wake()  # changes made while we were not listening
            backoff = 0.5
            while True:  # a ping notices a dead connection that no notification would reveal
                await asyncio.sleep(ping_seconds)
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=ping_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure means: reconnect, and poll meanwhile
            log.debug("outbox wake-up connection lost: %s", exc)
        finally:
            if conn is not None:
                conn.terminate()
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)
