"""Fixtures for the saga integration tests: a service database on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.saga import SagaDefinition, SagaRunner, SagaStore, StepRetry, saga_migrations
from tests.support.postgres import PG_URL, pg_available

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

# Tiny backoffs keep retry and parking tests fast.
FAST_RETRY = StepRetry(max_attempts=3, initial_backoff_s=0.001, max_backoff_s=0.005)


@dataclass
class Db:
    kind: str
    url: str
    schema: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.sessions() as s:
            return await s.scalar(text(sql), params)

    async def rows(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async with self.sessions() as s:
            return [tuple(r) for r in (await s.execute(text(sql), params)).all()]


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


@dataclass
class Runners:
    """Builds runners on one database and closes them after the test."""

    db: Db
    made: list[SagaRunner] = field(default_factory=list)

    def __call__(self, *definitions: SagaDefinition, **kwargs: Any) -> SagaRunner:
        kwargs.setdefault("compensation_retry", FAST_RETRY)
        runner = SagaRunner(
            SagaStore(self.db.sessions),
            {d.name: d for d in definitions},
            kwargs.pop("registry", None) or CollectorRegistry(),
            **kwargs,
        )
        self.made.append(runner)
        return runner


@pytest.fixture
async def runners(db: Db) -> AsyncIterator[Runners]:
    r = Runners(db)
    yield r
    for runner in r.made:
        await runner.close(grace_s=1.0)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A metric sample (0 when never set)."""
    return float(registry.get_sample_value(name, labels) or 0.0)
