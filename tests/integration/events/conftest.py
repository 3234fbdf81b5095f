"""Fixtures for the events integration tests: a real nats-server and service databases."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.events import EventBus, Outbox, inbox_migrations, outbox_migrations
from services.common.event_types import shop_streams
from tests.support.nats import NatsServer, nats_server
from tests.support.postgres import PG_URL, pg_available

# A service table, to show the event committing with the state change.
STATE = Migration(
    version=1,
    name="things",
    statements=("CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, n INTEGER NOT NULL)",),
)


@pytest.fixture
async def nats_srv(tmp_path: Path) -> AsyncIterator[NatsServer]:
    async with nats_server(tmp_path / "nats") as server:
        yield server


@dataclass
class Db:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Db]:
    """A service database (SQLite, then PostgreSQL) with outbox, inbox and `things`."""
    async with _database(request.param, tmp_path) as d:
        yield d


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Db]:
    """SQLite only, for the slower restart tests."""
    async with _database("sqlite", tmp_path) as d:
        yield d


@contextlib.asynccontextmanager
async def _database(kind: str, tmp_path: Path) -> AsyncIterator[Db]:
    schema = ""
    if kind == "sqlite":
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}")
    else:
        if not await pg_available():
            pytest.skip("no PostgreSQL on 127.0.0.1:5432")
        # A schema per test keeps parallel and repeated runs apart.
        schema = f"t_{time.time_ns()}"
        admin = create_async_engine(PG_URL)
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA {schema}"))
        await admin.dispose()
        engine = create_engine(PG_URL, connect_args={"server_settings": {"search_path": schema}})
    await migrate(engine, [STATE, *outbox_migrations(), *inbox_migrations()])
    try:
        yield Db(engine, session_factory(engine))
    finally:
        if schema:
            async with engine.begin() as conn:
                await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await engine.dispose()


@pytest.fixture
async def bus_factory(nats_srv: NatsServer) -> AsyncIterator[Callable[..., Any]]:
    buses: list[EventBus] = []

    async def make(name: str = "test", **kwargs: Any) -> EventBus:
        bus = await EventBus.connect(nats_srv.url, name=name, streams=shop_streams(), **kwargs)
        await bus.ensure_streams()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()
