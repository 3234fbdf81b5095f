"""Databases for the services' integration tests: a SQLite file, then a PostgreSQL schema.

Each test gets its own database: a fresh SQLite file, or a fresh schema on the
PostgreSQL at 127.0.0.1:5432 (the engine's search_path points at it; dropped
after). PostgreSQL cases skip when nothing answers there.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import create_engine
from tests.support.postgres import pg_schema_engine


async def _engine(stack: contextlib.AsyncExitStack, kind: str, tmp_path: Path,
                  name: str = "service") -> AsyncEngine:  # fmt: skip
    """A SQLite file, or a fresh PostgreSQL schema; `stack` drops and disposes of it."""
    if kind == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / f'{name}.db'}")
        stack.push_async_callback(engine.dispose)
        return engine
    return await stack.enter_async_context(pg_schema_engine("svc", pool_size=10, max_overflow=10))


@contextlib.asynccontextmanager
async def _database(kind: str, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with contextlib.AsyncExitStack() as stack:
        yield await _engine(stack, kind, tmp_path)


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
    async with contextlib.AsyncExitStack() as stack:

        async def make() -> AsyncEngine:
            made[0] += 1
            return await _engine(stack, request.param, tmp_path, f"db{made[0]}")

        made = [0]
        yield make
