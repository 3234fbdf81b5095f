"""Fixtures for the saga integration tests: a service database on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    create_async_engine,
)

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.saga import saga_migrations
from tests.support.postgres import PG_URL, pg_available
from tests.support.saga import Db, Runners

# The orchestrating service's own tables: local steps and transition hooks write here.
SERVICE_TABLES = Migration(
    version=1,
    name="service state",
    statements=(
        "CREATE TABLE orders (id VARCHAR(64) PRIMARY KEY, status VARCHAR(16) NOT NULL)",
        "CREATE TABLE saga_log (saga_id VARCHAR(128) NOT NULL, event VARCHAR(32) NOT NULL,"
        " status VARCHAR(16) NOT NULL, step VARCHAR(64))",
    ),
)


def pg_engine(schema: str) -> AsyncEngine:
    return create_engine(PG_URL, connect_args={"server_settings": {"search_path": schema}})


@contextlib.asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    schema = ""
    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
        engine = create_engine(url)
    else:
        if not await pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        # A schema per test keeps parallel and repeated runs apart.
        schema = f"saga_{time.time_ns()}_{uuid.uuid4().hex[:6]}"
        admin = create_async_engine(PG_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await admin.dispose()
        url = PG_URL
        engine = pg_engine(schema)
    await migrate(engine, [SERVICE_TABLES, *saga_migrations()])
    try:
        yield Db(kind, url, schema, engine, session_factory(engine))
    finally:
        if schema:
            async with engine.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    async with database(request.param, tmp_path) as d:
        yield d


@pytest.fixture
async def runners(db: Db) -> AsyncIterator[Runners]:
    r = Runners(db)
    yield r
    for runner in r.made:
        await runner.close(grace_s=1.0)
