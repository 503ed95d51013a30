"""PostgreSQL for tests: a fresh database per test session, migrated to head.

Uses ``AIGC_TEST_DATABASE_URL`` (a server URL; `.ci/run` starts one with
scripts/postgres.sh), else starts a throwaway server with that script.
Each test that asks for ``database`` gets its own empty database, cloned from
a migrated template database, so tests never see each other's rows.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pytest

from aigc_gateway.db import Database
from aigc_gateway.db.migrate import upgrade

ROOT = Path(__file__).resolve().parents[2]


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_server_url() -> str:
    url = os.environ.get("AIGC_TEST_DATABASE_URL")
    if url:
        return url
    out = subprocess.run([str(ROOT / "scripts" / "postgres.sh"), "start"], check=True, capture_output=True,
                         text=True).stdout
    return out.strip().split("DATABASE_URL=", 1)[1]


@pytest.fixture(scope="session")
def postgres_template(postgres_server_url: str) -> str:
    """A migrated database that per-test databases are cloned from (CREATE DATABASE ... TEMPLATE)."""
    name = f"aigc_tpl_{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(postgres_server_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    upgrade(_with_db(postgres_server_url, name))
    return name


async def _clone(server_url: str, template: str) -> str:
    name = f"aigc_t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await conn.close()
    return _with_db(server_url, name)


async def _drop(server_url: str, url: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def database_url(postgres_server_url: str, postgres_template: str):
    """URL of an empty, migrated PostgreSQL database for this test only."""
    url = await _clone(postgres_server_url, postgres_template)
    yield url
    await _drop(postgres_server_url, url)


@pytest.fixture
async def database(database_url: str):
    db = Database(database_url, pool_size=5)
    yield db
    await db.close()
