"""A service's database, as every service on the mesh uses it: URL, engine, migrations
at start, outages answered UNAVAILABLE.

- `database_url(settings)`: `<SERVICE>_DATABASE_URL`, else the service's SQLite file
  under MESH_DATA_DIR; `service_engine(settings)`: the engine for it, with the pool
  size of `MESH_DB_POOL_SIZE`.
- `prepare_database`: the migrations (`mesh.db.migrate`, which outlasts a race with
  an instance starting at the same time), a database that does not answer named.
- `db_guard`: a database that is down, locked past its busy timeout or out of pool
  connections becomes UNAVAILABLE (retryable), not INTERNAL. Programming errors
  (bad SQL, constraint violations nobody handled) stay INTERNAL: they are bugs. SQLite
  reports both as OperationalError; its result code tells them apart (BUSY, LOCKED,
  IOERR, FULL... are outages; "no such table", a syntax error are not). Until 7 Dec
  2026 (in the shop's services/common/db.py) every SQLite OperationalError answered
  UNAVAILABLE, so a client retried a bug as if the database were away.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
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
    sa_exc.OperationalError,  # connection lost, SQLite "database is locked" (see _outage)
    sa_exc.InterfaceError,  # connection closed under us
    sa_exc.TimeoutError,  # no pooled connection within pool_timeout
    ConnectionError,
    OSError,  # asyncpg raises plain OSError when it cannot connect
)
# SQLite raises OperationalError for its bugs too ("no such table", a syntax error: the
# generic SQLITE_ERROR): only these primary result codes are the database not answering.
_SQLITE_OUTAGE_CODES = frozenset(
    {
        5,  # SQLITE_BUSY: locked by another writer past the busy timeout
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY: e.g. the file or the disk went read-only
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)


def _outage(exc: BaseException) -> bool:
    """Whether `exc` means the database is not answering (retry later), not a bug."""
    if not isinstance(exc, _OUTAGES):
        return False
    orig = getattr(exc, "orig", None)
    if isinstance(exc, sa_exc.OperationalError) and isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in _SQLITE_OUTAGE_CODES
    return True


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
        if not _outage(exc):
            raise
        url = engine.url.render_as_string(hide_password=True)
        raise ServiceStartError(f"database {url} is unreachable: {exc}") from exc


@asynccontextmanager
async def unavailable_on_outage() -> AsyncIterator[None]:
    try:
        yield
    except _OUTAGES as exc:
        if not _outage(exc):
            raise
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
