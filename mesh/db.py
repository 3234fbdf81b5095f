"""Database access shared by services: async engines and versioned migrations.

Every service owns one database: a SQLite file by default (WAL mode) or
PostgreSQL when `<SERVICE>_DATABASE_URL` points at one. Schemas move forward
through numbered migrations recorded in `schema_migrations`, each applied in
its own transaction, so a service can start against any older schema.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine


def normalise_url(url: str) -> str:
    """Pick the async driver for plain URLs (postgresql:// -> asyncpg, sqlite:// -> aiosqlite)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername != "postgresql+asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite" and parsed.drivername != "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    return parsed.render_as_string(hide_password=False)


def default_sqlite_url(data_dir: str | Path, service: str) -> str:
    path = Path(data_dir) / f"{service}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{path}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url`; SQLite gets WAL, foreign keys and a busy timeout."""
    url = normalise_url(url)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: statements (or a function of a sync connection) run in one transaction."""

    version: int
    name: str
    statements: Sequence[str] = ()
    run: Callable[[Connection], None] | None = None


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded, in version order; returns those applied."""
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions: {sorted(versions)}")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL)"
            )
        )
    applied: list[int] = []
    for m in sorted(migrations, key=lambda m: m.version):
        async with engine.begin() as conn:
            # Row lock on PostgreSQL would need the row to exist; a unique insert
            # at the end makes two racing starters fail one transaction instead.
            done = await conn.scalar(
                text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": m.version}
            )
            if done:
                continue
            for stmt in m.statements:
                await conn.execute(text(stmt))
            if m.run is not None:
                await conn.run_sync(m.run)
            await conn.execute(
                text("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)"),
                {"v": m.version, "n": m.name},
            )
            applied.append(m.version)
    return applied
