"""Fixtures for the saga integration tests: a service database on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
)

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.saga import saga_migrations
from tests.support.postgres import PG_URL, pg_schema
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
    async with contextlib.AsyncExitStack() as stack:
        schema = ""
        if kind == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}"
            engine = create_engine(url)
        else:
            schema = await stack.enter_async_context(pg_schema("saga"))
            url = PG_URL
            engine = pg_engine(schema)
        stack.push_async_callback(engine.dispose)  # before the schema is dropped
        await migrate(engine, [SERVICE_TABLES, *saga_migrations()])
        yield Db(kind, url, schema, engine, session_factory(engine))


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
