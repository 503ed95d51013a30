"""Alembic upgrade and downgrade on PostgreSQL and on the embedded SQLite default."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from aigc_gateway.db.migrate import downgrade, upgrade
from aigc_gateway.db.models import Base
from aigc_gateway.db import tables  # noqa: F401 - every table on Base.metadata

from ..plugins.postgres import _asyncpg_dsn, _with_db


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _roundtrip(url: str) -> None:
    await asyncio.to_thread(upgrade, url)
    expected = set(Base.metadata.tables)
    assert expected <= await _tables(url)
    await asyncio.to_thread(downgrade, url, "base")
    assert not (expected & await _tables(url))
    await asyncio.to_thread(upgrade, url)
    assert expected <= await _tables(url)


async def test_upgrade_downgrade_postgres(postgres_server_url: str) -> None:
    name = f"aigc_mig_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        await _roundtrip(_with_db(postgres_server_url, name))
    finally:
        conn = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
        await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await conn.close()


async def test_upgrade_downgrade_sqlite(tmp_path: Path) -> None:
    await _roundtrip(f"sqlite+aiosqlite:///{tmp_path / 'gateway.sqlite3'}")
