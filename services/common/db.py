"""Database plumbing every shop service repeats: URL, migrations, outage mapping.

- `database_url(settings)`: `<SERVICE>_DATABASE_URL`, else the service's SQLite file
  under MESH_DATA_DIR; `service_engine(settings)`: the engine for it, with the pool
  size of `MESH_DB_POOL_SIZE`.
- `prepare_database`: the migrations (`mesh.db.migrate`, which outlasts a race with
  an instance starting at the same time), a database that does not answer named.
- `db_guard`: a database that is down, locked past its busy timeout or out of pool
  connections becomes UNAVAILABLE (retryable), not INTERNAL. Programming errors
  (bad SQL, constraint violations nobody handled) stay INTERNAL: they are bugs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import ParamSpec, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from base.errors import Unavailable
from mesh.db import Migration, create_engine, default_sqlite_url, migrate
from mesh.server import ServiceStartError
from mesh.settings import Settings

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


_OUTAGES: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,  # connection lost, SQLite "database is locked"
    sa_exc.InterfaceError,  # connection closed under us
    sa_exc.TimeoutError,  # no pooled connection within pool_timeout
    ConnectionError,
    OSError,  # asyncpg raises plain OSError when it cannot connect
)


def database_url(settings: Settings) -> str:
    """The service's database: its `<SERVICE>_DATABASE_URL`, else `<data_dir>/<service>.db`."""
    return settings.database_url or default_sqlite_url(settings.data_dir, settings.service)


def service_engine(settings: Settings) -> AsyncEngine:
    """The engine of the service's database (`database_url`), its PostgreSQL pool sized
    by `MESH_DB_POOL_SIZE`."""
    return create_engine(database_url(settings), pool_size=settings.db_pool_size)


async def prepare_database(engine: AsyncEngine, migrations: Sequence[Migration]) -> None:
    """Migrate at start; an unreachable database is a start failure with a clear message."""
    try:
        await migrate(engine, migrations)
    except _OUTAGES as exc:
        url = engine.url.render_as_string(hide_password=True)
        raise ServiceStartError(f"database {url} is unreachable: {exc}") from exc


@asynccontextmanager
async def unavailable_on_outage() -> AsyncIterator[None]:
    try:
        yield
    except _OUTAGES as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise Unavailable(
            "the database is unavailable; retry later", reason="DATABASE_UNAVAILABLE"
        ) from exc


def db_guard(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate an async store or servicer method: database outages answer UNAVAILABLE."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        async with unavailable_on_outage():
            return await fn(*args, **kwargs)

    return wrapper
