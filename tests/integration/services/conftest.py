"""Databases for the services' integration tests: a SQLite file, then a PostgreSQL schema.

Each test gets its own database: a fresh SQLite file, or a fresh schema on the
PostgreSQL at 127.0.0.1:5432 (the engine's search_path points at it; dropped
after). PostgreSQL cases skip when nothing answers there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mesh.db import create_engine
from tests.support.postgres import PG_URL, pg_available


async def _engine(kind: str, tmp_path: Path, name: str = "service") -> tuple[AsyncEngine, str]:
    if kind == "sqlite":
        return create_engine(f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}"), ""
    if not await pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    schema = f"svc_{time.time_ns()}"
    admin = create_async_engine(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    await admin.dispose()
    engine = create_engine(
        PG_URL,
        connect_args={"server_settings": {"search_path": schema}},
        pool_size=10,
        max_overflow=10,
    )
    return engine, schema


async def _drop(eng: AsyncEngine, schema: str) -> None:
    """Drop the PostgreSQL schema (if any) and dispose of the engine."""
    if schema:
        async with eng.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    await eng.dispose()


@contextlib.asynccontextmanager
async def _database(kind: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng, schema = await _engine(kind, tmp_path)
    try:
        yield eng
    finally:
        await _drop(eng, schema)


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The service's database engine (caller-owned: build() does not dispose it)."""
    async with _database(request.param, tmp_path) as eng:
        yield eng


@pytest.fixture
async def pg_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A PostgreSQL schema only: for what concerns PostgreSQL alone (its locking)."""
    async with _database("postgresql", tmp_path) as eng:
        yield eng


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with _database("sqlite", tmp_path) as eng:
        yield eng


@pytest.fixture(params=["sqlite", "postgresql"])
async def databases(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[AsyncEngine]]]:
    """Make several databases of one kind (SQLite files or PostgreSQL schemas), all
    dropped and disposed after the test: for comparing two databases."""
    made: list[tuple[AsyncEngine, str]] = []

    async def make() -> AsyncEngine:
        made.append(await _engine(request.param, tmp_path, f"db{len(made)}"))
        return made[-1][0]

    try:
        yield make
    finally:
        for eng, schema in made:
            await _drop(eng, schema)
