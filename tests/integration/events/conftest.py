"""Fixtures for the events integration tests: a real nats-server and service databases."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from mesh.db import Migration, create_engine, migrate, session_factory
from mesh.events import EventBus, Outbox, inbox_migrations, outbox_migrations
from services.common.event_types import shop_streams
from tests.support.events_db import Db
from tests.support.nats import NatsServer, nats_server
from tests.support.postgres import pg_schema_engine

# A service table, to show the event committing with the state change.
STATE = Migration(
    version=1,
    name="things",
    statements=("CREATE TABLE things (id VARCHAR(64) PRIMARY KEY, n INTEGER NOT NULL)",),
)


@pytest.fixture
async def nats_srv(tmp_path: Path) -> AsyncIterator[NatsServer]:
    """A server with the mesh's NATS permissions on (no anonymous client gets in)."""
    async with nats_server(tmp_path / "nats", auth=True) as server:
        yield server


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
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'svc.db'}")
            stack.push_async_callback(engine.dispose)
        else:
            # A schema per test keeps parallel and repeated runs apart.
            engine = await stack.enter_async_context(pg_schema_engine("t"))
        await migrate(engine, [STATE, *outbox_migrations(), *inbox_migrations()])
        yield Db(engine, session_factory(engine))


@pytest.fixture
async def bus_factory(nats_srv: NatsServer) -> AsyncIterator[Callable[..., Any]]:
    buses: list[EventBus] = []

    async def make(name: str = "test", **kwargs: Any) -> EventBus:
        # The test administrator: these tests exercise the bus, not the permissions
        # (test_nats_auth.py does, with the services' identities).
        bus = await EventBus.connect(
            nats_srv.admin_url, name=name, streams=shop_streams(), **kwargs
        )
        await bus.ensure_streams()
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()


@pytest.fixture
def outbox() -> Outbox:
    return Outbox()
