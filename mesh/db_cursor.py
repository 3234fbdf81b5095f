"""Lean statements (`mesh.db_lean`) straight on the driver's cursor: the mesh's SQLite
driver (`sqlite+meshsqlite`, `mesh.sqlite_driver`) and SQLAlchemy's asyncpg adapter
(`postgresql+asyncpg`); what `Connection.exec_driver_sql` does for them, without its
per-statement set-up.

Why: once a statement's SQL and parameters are ready (`db_lean.Plan`), SQLAlchemy's
`exec_driver_sql` still costs more than the statement. It builds an execution context,
checks its events, and builds the result's metadata from the cursor's description on
every call. Measured on a held SQLite file (6 Dec 2026, the 2-core box, one statement on
a begun connection, CPU per call): a one-row SELECT 47-49 µs through `exec_driver_sql`
against 13-16 µs on the driver's cursor; an UPDATE 23 µs against 11 µs. On the shop's
hot paths (about 35 statements per order, most of them lean) that was the largest
single cost of the database work left. On PostgreSQL (`bench db --database
postgresql`, 6 Dec 2026, fourteenth session: a transaction of an UPDATE ... RETURNING and
an INSERT, medians of 12 rounds of 1,000 in turns, two runs) the transaction cost 517 and
560 µs of CPU with its statements on the adapter's cursor against 603 and 628 µs through
`exec_driver_sql`: the same ~35-40 µs a statement (until then the lean transaction on
PostgreSQL saved nothing over the ORM session's own: 603 against 592 µs).

What it keeps. The statement runs on the same connection, in the same transaction, with
the same SQL and parameters, through the same driver; the result is buffered (every row
fetched before it returns, as `prebuffer_rows` does) and reads as SQLAlchemy's does: a
`LeanResult` is an `IteratorResult` (`first`, `all`, `one`, `scalar`, `scalars`,
`mappings`, rows by position or by name, `row._mapping`) with the cursor's `rowcount`.
A driver error, or an interruption, goes through SQLAlchemy's own handling
(`Connection._handle_dbapi_exception`): the same `IntegrityError`/`OperationalError`...,
and the same invalidation of a connection whose state is unknown (an interrupted
statement, a closed database, a server that went away); any other error passes as it
is, as it does through `exec_driver_sql`. On the asyncpg adapter, the two things its
execution context does per statement are done here too (`asyncpg_duties_known` checks
that they are all it does): the cursor is told when the dialect last invalidated its
cache of types and prepared statements (so a statement prepared before a schema change
is prepared again), and an `InvalidCachedStatementError` or `InternalServerError`
invalidates that cache, so the next statement is prepared afresh.

Where it steps aside (`exec_driver_sql` runs the statement, as before): another driver
(aiosqlite, psycopg...); a connection not in a transaction (SQLAlchemy would begin one);
execution options on the connection; any event listener added to the connection, its
engine or its dialect (`before_cursor_execute`, `handle_error`, `do_execute`...:
SQLAlchemy would run them); statement logging on (`echo`, or the `sqlalchemy.engine`
logger at INFO); several parameter sets. Result keys are the cursor description's
names, as `exec_driver_sql` gives them (SQLite 3.10+ reports `table.column` names as
they are, and SQLAlchemy then leaves them; a repeated name reads as its last column in
both).

Private SQLAlchemy, fenced here: `SimpleResultMetaData` (the metadata of a result built
from rows, `sqlalchemy.engine.result`, not in SQLAlchemy's documentation),
`Connection._handle_dbapi_exception`, and the `_has_events` flags of a connection, an
engine and a dialect (what SQLAlchemy itself tests before looking for listeners; asking
the listener collections was ~2 % of an orders process under `bench orders`); for
asyncpg, the adapter cursor's `_invalidate_schema_cache_asof` and the dialect's
`_invalidate_schema_cache`, and the names its execution context's `pre_exec` and
`handle_dbapi_exception` use (if they change, SQLAlchemy does something per statement
this module does not know, and asyncpg statements take `exec_driver_sql`). All are
checked when this module is imported; if one is missing or different (another
SQLAlchemy), `DRIVERS` leaves that driver out (`AVAILABLE` is false when the shared part
fails: every lean statement then takes `exec_driver_sql`). `MESH_FASTPATH=0` turns it
off too. `tests/unit/test_db_cursor.py` runs the shop's kinds of statements both ways, on
SQLite and on PostgreSQL when it answers, and requires equal results, rowcounts,
errors and invalidation, and that SQLAlchemy's path runs wherever it would do more.
"""

from __future__ import annotations

import inspect
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy.engine import Connection, Dialect, Engine, IteratorResult

from interceptors import _fastpath
from mesh.sqlite_driver import DRIVER

try:  # the fence: SQLAlchemy's internals this module relies on
    from sqlalchemy.engine.result import SimpleResultMetaData

    _handle_error = Connection._handle_dbapi_exception
    AVAILABLE: Final = (
        _fastpath.requested()
        and all(getattr(cls, "_has_events", None) is False for cls in (Connection, Engine, Dialect))
        and list(inspect.signature(_handle_error).parameters)[:6]
        == ["self", "e", "statement", "parameters", "cursor", "context"]
    )
except (ImportError, AttributeError, TypeError, ValueError):  # pragma: no cover
    AVAILABLE = False  # type: ignore[misc]

# What SQLAlchemy's asyncpg execution context does per statement, by the names its two
# methods use (sqlalchemy 2.1): pre_exec tells the cursor when the dialect's cache was
# invalidated (and invalidates it for DDL, which a lean statement never is);
# handle_dbapi_exception invalidates it after a stale prepared statement.
_ASYNCPG_CONTEXT_NAMES: Final = (
    frozenset(
        ("_invalidate_schema_cache", "_invalidate_schema_cache_asof", "compiled", "cursor",
         "dialect", "isddl")
    ),
    frozenset(
        ("InternalServerError", "InvalidCachedStatementError", "_invalidate_schema_cache",
         "dbapi", "dialect", "isinstance")
    ),
)  # fmt: skip


def asyncpg_duties_known(context: type, cursor: type, dialect: type) -> bool:
    """Whether SQLAlchemy's asyncpg execution context (`context`) does per statement only
    what `run` does in its place (the names its `pre_exec` and `handle_dbapi_exception`
    use), and the adapter's `cursor` and `dialect` have what `run` sets and calls."""
    try:
        names = (
            frozenset(context.pre_exec.__code__.co_names),  # type: ignore[attr-defined]
            frozenset(context.handle_dbapi_exception.__code__.co_names),  # type: ignore[attr-defined]
        )
        slots = cursor.__slots__  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return (
        names == _ASYNCPG_CONTEXT_NAMES
        and "_invalidate_schema_cache_asof" in slots
        and hasattr(dialect, "_invalidate_schema_cache_asof")
        and callable(getattr(dialect, "_invalidate_schema_cache", None))
    )


try:  # the fence of the asyncpg adapter's part
    from sqlalchemy.dialects.postgresql import asyncpg as _sa_asyncpg

    ASYNCPG_AVAILABLE: Final = AVAILABLE and asyncpg_duties_known(
        _sa_asyncpg.PGExecutionContext_asyncpg,
        _sa_asyncpg.AsyncAdapt_asyncpg_cursor,
        _sa_asyncpg.PGDialect_asyncpg,
    )
except (ImportError, AttributeError):  # pragma: no cover
    ASYNCPG_AVAILABLE = False  # type: ignore[misc]

ASYNCPG: Final = "asyncpg"
# The drivers whose cursors lean statements run on.
DRIVERS: Final = frozenset(
    name
    for name, ok in (
        (DRIVER, AVAILABLE and sqlite3.sqlite_version_info >= (3, 10)),
        (ASYNCPG, ASYNCPG_AVAILABLE),
    )
    if ok
)


_enabled = True


def use_cursor(enabled: bool) -> None:
    """Run lean statements on the driver's cursor where `usable`, or always through
    `exec_driver_sql` (tests and `bench db` compare the two)."""
    global _enabled
    _enabled = enabled


class LeanResult(IteratorResult[Any]):
    """The buffered rows of a statement run on the cursor, and its `rowcount`."""

    rowcount: int = -1


class Columns:
    """A plan's result metadata, made from a cursor description's names and kept for the
    plan's next runs (rebuilt if the names ever differ)."""

    __slots__ = ("meta", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        # Keys exactly as `exec_driver_sql` gives them: the description's names as
        # SQLite reports them (3.10+ keeps `table.column` as is, and SQLAlchemy then does
        # not translate it), a repeated name read as its last column.
        self.meta = SimpleResultMetaData(names)


def quiet(bind: Connection | Engine) -> bool:
    """Whether no event listener was ever added to `bind` (a connection, or an engine)
    or its engine: SQLAlchemy's own first test, `_has_events`, without asking the listener
    collections. False when the fence is down: then ask them."""
    if not AVAILABLE:
        return False
    if isinstance(bind, Connection):
        return not (bind._has_events or bind.engine._has_events)
    return not bind._has_events


def usable(conn: Connection, args: Any) -> bool:
    """Whether a lean statement with driver parameters `args` may run on `conn`'s cursor."""
    if not (AVAILABLE and _enabled) or type(args) is not tuple:
        return False
    dialect = conn.dialect
    if dialect.driver not in DRIVERS or not conn.in_transaction() or conn.get_execution_options():
        return False
    # SQLAlchemy's own test before it looks at any listener: whether one was ever added
    # to the connection, its engine or its dialect (it stays set after a removal, so
    # this path stays off then too: the cautious side).
    if not quiet(conn) or dialect._has_events:
        return False
    return not conn.engine.logger.isEnabledFor(logging.INFO)


def run(
    conn: Connection, sql: str, args: tuple[Any, ...], known: Columns | None
) -> tuple[LeanResult, Columns]:
    """`sql` with `args` on `conn`'s cursor (in the session's greenlet; `usable` said
    yes): a buffered `LeanResult`, and the Columns it used (`known`, the plan's last
    ones, when the names are the same) for the plan to keep."""
    dialect = conn.dialect
    cursor: Any = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    asyncpg = dialect.driver == ASYNCPG
    if asyncpg:  # the execution context's pre_exec
        cursor._invalidate_schema_cache_asof = dialect._invalidate_schema_cache_asof  # type: ignore[attr-defined]
    try:
        cursor.execute(sql, args)
        description = cursor.description
        rows: Sequence[Any] = cursor.fetchall() if description is not None else ()
        rowcount = cursor.rowcount
    except BaseException as e:
        # A driver error, or an interruption (cancellation, exit): SQLAlchemy's own
        # handling, with its error types, events and invalidation (the fence). Any other
        # error passes as it is, as `exec_driver_sql` lets it.
        dbapi = dialect.loaded_dbapi
        if isinstance(e, dbapi.Error) or not isinstance(e, Exception):
            if asyncpg and isinstance(
                e, (dbapi.InvalidCachedStatementError, dbapi.InternalServerError)
            ):  # the execution context's handle_dbapi_exception
                dialect._invalidate_schema_cache()  # type: ignore[attr-defined]
            _handle_error(conn, e, sql, args, cursor, None)
        raise
    finally:
        cursor.close()
    names = () if description is None else tuple(d[0] for d in description)
    columns = known if known is not None and known.names == names else Columns(names)
    result = LeanResult(columns.meta, iter(rows))
    result.rowcount = rowcount
    return result, columns
