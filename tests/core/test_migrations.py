"""Alembic upgrade and downgrade on PostgreSQL and on the embedded SQLite default: the migrated
schema is exactly the models' (tables, columns and their types and nullability, keys, indexes), as
Alembic's own autogenerate comparison sees it, and downgrading removes it all."""
from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from aigc_gateway.db.migrate import downgrade, upgrade
from aigc_gateway.db.tables import load_all

from ..plugins.postgres import _asyncpg_dsn, _with_db


async def _tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def _differences(url: str) -> list[object]:
    """What the migrated database lacks or has beyond the models (empty: the same schema)."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(lambda c: [d for d in compare_metadata(
                MigrationContext.configure(c, opts={"compare_type": True}), load_all())
                if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")])
    finally:
        await engine.dispose()


async def _roundtrip(url: str) -> None:
    await asyncio.to_thread(upgrade, url)
    expected = set(load_all().tables)
    assert expected <= await _tables(url)
    differences = await _differences(url)
    assert differences == [], differences
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
