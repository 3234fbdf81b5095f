"""Database access shared by services: async engines and frozen, versioned migrations.

Every service owns one database: a SQLite file by default (WAL mode) or
PostgreSQL when `<SERVICE>_DATABASE_URL` points at one. Schemas move forward
through numbered migrations recorded in `schema_migrations`, each applied in
its own transaction, so a service can start against any older schema.

Migrations are frozen. Each one declares exactly the DDL of its version:
`creates` (table factories, each building its table as it was at that
version, into the MetaData it is given), `adds` (`AddColumn`: an ALTER TABLE
... ADD COLUMN), then `statements` (raw SQL) and `run` (a function of the
connection, e.g. a data backfill). A released migration is never edited: a
new column is a new migration with an `AddColumn`, never an edit of the
table factory of version 1 (a fresh database would get the column from v1
and the later ALTER would fail; that is the bug this layout removes).

The tables a store queries are not declared a second time: `schema(...)`
replays the `creates` and `adds` of a migration list into one MetaData, the
head model, and stores take their Table objects from it. Raw `statements`
and `run` are opaque to the replay: use them for data and for indexes or
constraints queries need not know about, never to add, drop or retype a
column (the model would no longer match the database; the upgrade tests in
tests/integration/services/test_migrations.py compare both).

Why not alembic: each service's database holds its own tables plus the
mesh's (outbox, inbox, saga), whose migrations ship with the mesh and are
numbered apart (9001...); one ordered list per service, applied by a
40-line runner, keeps that composition trivial and needs no script
directory per service; SQLAlchemy's own DDL compiler gives the portable
SQLite/PostgreSQL DDL. What alembic would add (autogenerate, downgrades) is
not used: migrations only move forward. The limit: dropping or retyping a
column needs raw SQL and a new table factory (a table rebuild), which the
replay does not model.

Expand/contract: every migration says whether the previous release can keep
running beside a database migrated to it (`compatible_with_previous`). The
rule: True only for expand steps that old code cannot notice: new tables,
new nullable columns or columns with a server default, new indexes, data
backfills old code tolerates. False for contract steps: dropping or
renaming a table or column, a new NOT NULL column without a default, a
tighter constraint, a changed meaning of existing data. A contract step
ships in a release after the one that stopped using what it removes. The
default is False, so a migration that does not say is treated as breaking:
a release whose new migrations are not all compatible is refused (a later
release check reads `incompatible(...)`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, MetaData, Table, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.schema import CreateColumn, CreateIndex, CreateTable

from mesh import sqlite_driver as sqlite_driver_module
from mesh.db_greenlets import install as install_pooled_greenlets
from mesh.db_lean import lean
from mesh.db_sessions import MeshSession, MeshSessionMaker
from mesh.private_dir import private_dir
from mesh.sqlite_writes import SerialWriteSession

log = logging.getLogger(__name__)


def sqlite_driver() -> str:
    """The SQLAlchemy drivername of every SQLite engine: `sqlite+meshsqlite`
    (`mesh.sqlite_driver`: statements on the event loop, one thread hand-off per writing
    transaction), or `sqlite+aiosqlite` with `MESH_SQLITE_DRIVER=aiosqlite` (a thread
    hand-off per DBAPI call; the fallback, and the comparison in `bench orders`)."""
    if os.environ.get("MESH_SQLITE_DRIVER", "").strip().lower() == "aiosqlite":
        return "sqlite+aiosqlite"
    return f"sqlite+{sqlite_driver_module.DRIVER}"


def normalise_url(url: str) -> str:
    """Pick the async driver: postgresql:// -> asyncpg; every SQLite URL (sqlite://,
    sqlite+aiosqlite://, ...) -> `sqlite_driver()`."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername != "postgresql+asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif backend == "sqlite" and parsed.drivername != (driver := sqlite_driver()):
        parsed = parsed.set(drivername=driver)
    return parsed.render_as_string(hide_password=False)


def default_sqlite_url(data_dir: str | Path, service: str) -> str:
    """The service's SQLite file in `data_dir`, made private first (`private_sqlite_file`)."""
    path = Path(data_dir) / f"{service}.db"
    private_sqlite_file(path)
    return f"{sqlite_driver()}:///{path}"


def private_sqlite_file(path: Path) -> None:
    """Make `path`, a service's SQLite database, readable by its owner only before SQLite
    opens it: a directory made here is 0700, the file 0600 (created empty if missing,
    which SQLite takes as a new database; an existing one is narrowed to 0600).

    Why: a service's database holds its secrets (the users service's token signing keys,
    password hashes); readable by others on the machine, anyone there could sign an
    administrator's token. SQLite would create it 0644 under the usual umask; its WAL
    and shared-memory files take the database file's mode, so they follow. Limits: an
    existing directory's mode is left as it is (it may be shared on purpose), and the
    file's mode is all that guards it there."""
    private_dir(path.parent, narrow=False)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("%s was readable by others; narrowed to 0600 (it holds secrets)", path)
    finally:
        os.close(fd)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


def create_engine(url: str, *, pool_size: int | None = None, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url`; SQLite gets WAL, foreign keys and a busy timeout.

    `pool_size`: PostgreSQL connections kept open (SQLAlchemy's `QueuePool`, whose
    default is 5; services pass `MESH_DB_POOL_SIZE`, 10). Measured with `python -m
    bench orders --database postgresql` (16 clients, 2-core box): with 5, connections
    beyond the fifth were closed when returned and opened again for the next burst,
    and the shop placed 19.6-20.9 orders/s at 69.5-75.9 ms of CPU per order; with 10
    or 20, 24.5-25.5 orders/s at 62.7-64.5 ms. SQLite ignores it (its connections are
    cheap to open; no measurable difference at 20).

    Durability on SQLite: WAL with synchronous=NORMAL. A commit is atomic and
    consistent, and survives a crash of the process (the WAL is in the OS's page
    cache); a power loss or OS crash can lose the last commits before the next
    checkpoint (never corrupt the database). synchronous=FULL would fsync the WAL
    on every commit to survive that too, at one fsync per transaction."""
    install_pooled_greenlets()  # SQLAlchemy's asyncio calls on reused greenlets
    url = normalise_url(url)
    if pool_size is not None and make_url(url).get_backend_name() == "postgresql":
        kwargs["pool_size"] = pool_size
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def session_factory(engine: AsyncEngine, *, serial_writes: bool = False) -> async_sessionmaker[Any]:
    """Sessions of `engine`. With `serial_writes` on SQLite, their writing transactions
    queue per process and take a file lock beside the database across processes
    (`mesh.sqlite_writes`) instead of sleeping in SQLite's busy handler. Either way a
    session's `async with` end runs to the end through a task only if it suspends
    (`mesh.db_sessions`)."""
    if serial_writes and engine.dialect.name == "sqlite":
        return MeshSessionMaker(engine, expire_on_commit=False, class_=SerialWriteSession)
    return MeshSessionMaker(engine, expire_on_commit=False, class_=MeshSession)


# Lean (`mesh.db_lean`): orders takes the shared one in every order's first transaction.
_XACT_LOCK = lean(text("SELECT pg_advisory_xact_lock(:scope, :key)"))
_XACT_LOCK_SHARED = lean(text("SELECT pg_advisory_xact_lock_shared(:scope, :key)"))


def _int4(name: str) -> int:
    """A stable signed 32-bit key for `name` (CRC-32: the same in every process,
    unlike `hash`); two names may share a key, which only makes them wait on each other."""
    return int.from_bytes(zlib.crc32(name.encode()).to_bytes(4, "big"), "big", signed=True)


async def lock_until_end(
    session: AsyncSession, scope: str, name: str, *, shared: bool = False
) -> None:
    """Hold a lock on (`scope`, `name`) until the session's transaction ends; `shared`
    holders do not exclude each other, an exclusive holder excludes everyone.

    For two transactions that must not both miss each other's work under read
    committed, where no row exists yet to lock: e.g. one inserts a row for a key
    and then checks for a marker, the other inserts the marker and then updates
    the rows of that key. Each statement after the lock is taken sees what the
    other committed, so whichever runs second sees the first's work.

    PostgreSQL: a transaction-level advisory lock (`pg_advisory_xact_lock[_shared]`
    with two int4 keys from the names), released at commit or rollback; a wait is
    in the database, bounded by the server's `lock_timeout` (none by default).
    SQLite: nothing to take. Its writers take turns for the whole transaction, so
    the guarantee holds as long as the transaction has already written (the
    stores' transactions start with a write; a transaction that only reads sees
    one snapshot and is not covered). Limits: one database; keys are CRC-32 of the
    names, so an unrelated (`scope`, `name`) may share a key and wait needlessly."""
    if session.get_bind().dialect.name != "postgresql":
        return
    statement = _XACT_LOCK_SHARED if shared else _XACT_LOCK
    await session.execute(statement, {"scope": _int4(scope), "key": _int4(name)})


TableFactory = Callable[[MetaData], Table]


@dataclass(frozen=True, slots=True)
class AddColumn:
    """`ALTER TABLE <table> ADD COLUMN <column()>`: a column added after the table's creation.

    The factory returns a new Column each time (a Column belongs to one table).
    SQLite can add a NOT NULL column only with a server default.
    """

    table: str
    column: Callable[[], Column[Any]]


@dataclass(frozen=True, slots=True)
class Migration:
    """One frozen schema step, run in one transaction: `creates`, `adds`, `statements`, `run`.

    `compatible_with_previous`: whether the previous release still works on a
    database migrated to this step (see the module docstring for the rule).
    """

    version: int
    name: str
    statements: Sequence[str] = ()
    run: Callable[[Connection], None] | None = None
    creates: Sequence[TableFactory] = ()
    adds: Sequence[AddColumn] = ()
    compatible_with_previous: bool = False


def _ordered(migrations: Sequence[Migration]) -> list[Migration]:
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration versions: {sorted(versions)}")
    return sorted(migrations, key=lambda m: m.version)


def _replay(md: MetaData, m: Migration) -> tuple[list[Table], list[Column[Any]]]:
    """Apply `m`'s creates and adds to the model in `md`; the new tables and columns."""
    tables = [create(md) for create in m.creates]
    columns: list[Column[Any]] = []
    for add in m.adds:
        column = add.column()
        md.tables[add.table].append_column(column)
        columns.append(column)
    return tables, columns


def schema(migrations: Sequence[Migration], md: MetaData | None = None) -> MetaData:
    """The head model: the tables `migrations` create, with the columns they add later."""
    md = MetaData() if md is None else md
    for m in _ordered(migrations):
        _replay(md, m)
    return md


def incompatible(migrations: Sequence[Migration]) -> list[Migration]:
    """The migrations the previous release cannot run beside (contract steps)."""
    return [m for m in _ordered(migrations) if not m.compatible_with_previous]


def _add_column_sql(column: Column[Any], dialect: Dialect) -> str:
    table = dialect.identifier_preparer.format_table(column.table)
    return f"ALTER TABLE {table} ADD COLUMN {CreateColumn(column).compile(dialect=dialect)}"


def _apply(conn: Connection, md: MetaData, m: Migration) -> None:
    tables, columns = _replay(md, m)
    # checkfirst: as the IF NOT EXISTS of hand-written DDL (a racing instance
    # that created the table first makes this transaction's version row fail).
    md.create_all(conn, tables=tables, checkfirst=True)
    for column in columns:
        conn.exec_driver_sql(_add_column_sql(column, conn.dialect))


def ddl(migrations: Sequence[Migration], dialect: Dialect) -> dict[int, list[str]]:
    """Per version, the DDL `migrate` runs on `dialect` (a `run` function is not DDL and
    is not shown): what tests/contract/test_migrations_frozen.py pins once released."""
    md = MetaData()
    out: dict[int, list[str]] = {}
    for m in _ordered(migrations):
        tables, columns = _replay(md, m)
        statements: list[str] = []
        for table in (t for t in md.sorted_tables if t in tables):
            statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
            for index in sorted(table.indexes, key=lambda ix: str(ix.name)):
                statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
        statements += [_add_column_sql(column, dialect) for column in columns]
        statements += list(m.statements)
        out[m.version] = statements
    return out


async def migrate(
    engine: AsyncEngine,
    migrations: Sequence[Migration],
    *,
    up_to: int | None = None,
    attempts: int = 5,
) -> list[int]:
    """Apply the migrations not yet recorded, in version order (those <= `up_to` if
    given: tests build old databases); returns the versions applied.

    Instances of one service that start together against one database (`meshctl up`
    gives a service's instances one SQLite file; Compose and Kubernetes one PostgreSQL
    database) race on a step: the loser's transaction fails (its table, or its
    `schema_migrations` row, is there already) and it reads the record again, up to
    `attempts` times with a short backoff. Any other failure of the last attempt, a
    database that does not answer included, is raised."""
    applied: list[int] = []
    for attempt in range(1, attempts + 1):
        try:
            await _migrate_once(engine, migrations, up_to, applied)
            return applied
        except (sa_exc.IntegrityError, sa_exc.OperationalError, sa_exc.ProgrammingError) as exc:
            if attempt == attempts:
                raise
            log.info("migration raced with another instance (%s); retrying", type(exc).__name__)
            await asyncio.sleep(0.05 * attempt)  # backoff before re-reading schema_migrations
    raise AssertionError("unreachable")


async def _migrate_once(
    engine: AsyncEngine, migrations: Sequence[Migration], up_to: int | None, applied: list[int]
) -> None:
    """One pass of `migrate`, appending each version it applies to `applied`."""
    ordered = _ordered(migrations)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL)"
            )
        )
    model = MetaData()  # the schema as of the migration being applied
    for m in ordered:
        if up_to is not None and m.version > up_to:
            break
        async with engine.begin() as conn:
            # Row lock on PostgreSQL would need the row to exist; a unique insert
            # at the end makes two racing starters fail one transaction instead.
            done = await conn.scalar(
                text("SELECT 1 FROM schema_migrations WHERE version = :v"), {"v": m.version}
            )
            if done:
                _replay(model, m)
                continue
            await conn.run_sync(_apply, model, m)
            for stmt in m.statements:
                await conn.execute(text(stmt))
            if m.run is not None:
                await conn.run_sync(m.run)
            await conn.execute(
                text("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)"),
                {"v": m.version, "n": m.name},
            )
        applied.append(m.version)  # after the commit: a step rolled back is not applied
