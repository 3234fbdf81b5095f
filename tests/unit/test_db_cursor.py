"""mesh.db_cursor: lean statements on the driver's cursor (the mesh SQLite driver's,
SQLAlchemy's asyncpg adapter's) give what `exec_driver_sql` gives (rows, names,
rowcounts, errors, invalidation), and step aside wherever SQLAlchemy would do more
(events, logging, no transaction, another driver). Real SQLite files, and the tests'
PostgreSQL when it answers (those cases skip otherwise)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import asyncpg as sa_asyncpg
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError, NoResultFound
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from mesh import db_cursor, db_lean, sqlite_driver
from mesh.db import session_factory
from mesh.db_lean import Plan, lean, make_plan
from tests.support.postgres import engine_with

T_ = TypeVar("T_")

md = MetaData()
T = Table(
    "cur_t",
    md,
    Column("id", String(36), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
)
c = T.c
ADD = lean(insert(T))
BUMP = lean(
    update(T)
    .where(c.id == bindparam("k"))
    .values(n=c.n + bindparam("by", type_=BigInteger))
    .returning(c.id, c.n)
)
SET = lean(update(T).where(c.status == bindparam("s")).values(status=bindparam("to")))
BY_STATUS = lean(select(c.id, c.n).where(c.status == bindparam("s")).order_by(c.id))
IN_LIST = lean(select(c.id).where(c.id.in_(bindparam("ids", expanding=True))).order_by(c.id))
COUNTED = lean(select((c.n * 2).label("twice"), c.id).where(c.id == bindparam("k")))
DROP = lean(delete(T).where(c.status == bindparam("s")))
ADD_SQL = "INSERT INTO cur_t (id, n, status) VALUES (?, ?, ?)"
UPSERT = lean(
    text("INSERT INTO cur_t (id, n, status) VALUES (:i, :n, 'TXT') ON CONFLICT DO NOTHING")
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with engine_with("sqlite", tmp_path / "cursor.db", "cursor", md) as eng:
        yield eng
    db_cursor.use_cursor(True)


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """The mesh SQLite driver's engine, then SQLAlchemy's asyncpg one (skipped when the
    tests' PostgreSQL does not answer)."""
    async with engine_with(request.param, tmp_path / "cursor.db", "cursor", md) as eng:
        yield eng
    db_cursor.use_cursor(True)


def cursor_class(engine: AsyncEngine) -> type:
    """The class of the DBAPI cursors `engine`'s connections make."""
    return (
        sqlite_driver.Cursor
        if engine.dialect.name == "sqlite"
        else sa_asyncpg.AsyncAdapt_asyncpg_cursor
    )


@contextmanager
def on_cursor(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL of every statement that ran on the driver's cursor in the block."""
    ran: list[str] = []
    run = db_cursor.run

    def counted(conn: Connection, sql: str, *rest: Any) -> Any:
        ran.append(sql)
        return run(conn, sql, *rest)

    with monkeypatch.context() as patched:
        patched.setattr(db_cursor, "run", counted)
        yield ran


async def both_ways(
    monkeypatch: pytest.MonkeyPatch, step: Callable[[], Awaitable[T_]]
) -> tuple[T_, T_, list[str]]:
    """`step` through `exec_driver_sql`, then with the cursor path on: what each gave,
    and the SQL of the statements that ran on the cursor the second time."""
    db_cursor.use_cursor(False)
    expected = await step()
    db_cursor.use_cursor(True)
    with on_cursor(monkeypatch) as on:
        got = await step()
    return expected, got, on


async def _workload(engine: AsyncEngine) -> list[Any]:
    """Each kind of lean statement the shop runs, and every way its results are read."""
    sessions = session_factory(engine, serial_writes=True)
    out: list[Any] = []
    async with sessions.begin() as s:
        for i in range(4):
            res = await s.execute(ADD, {"id": f"r{i}", "n": i, "status": "NEW"})
            out.append(res.rowcount)
        res = await s.execute(BUMP, {"k": "r1", "by": 10})
        row = res.first()
        out += [tuple(row), row.id, row.n, row._mapping["n"], list(row._mapping)]
        out.append((await s.execute(BUMP, {"k": "nobody", "by": 1})).first())
        out.append((await s.execute(SET, {"s": "NEW", "to": "OLD"})).rowcount)
        out.append((await s.execute(UPSERT, {"i": "t1", "n": 7})).rowcount)
        out.append((await s.execute(UPSERT, {"i": "t1", "n": 8})).rowcount)
    async with sessions() as s:
        out.append((await s.execute(BY_STATUS, {"s": "OLD"})).all())
        out.append((await s.execute(BY_STATUS, {"s": "OLD"})).scalars().all())
        out.append((await s.execute(BY_STATUS, {"s": "OLD"})).mappings().all())
        out.append([tuple(r) for r in await s.execute(BY_STATUS, {"s": "OLD"})])
        out.append(list((await s.execute(BY_STATUS, {"s": "none"})).keys()))
        out.append((await s.execute(BY_STATUS, {"s": "none"})).first())
        out.append(await s.scalar(COUNTED, {"k": "r1"}))
        out.append((await s.execute(COUNTED, {"k": "r1"})).one()._asdict())
        out.append((await s.execute(COUNTED, {"k": "r9"})).one_or_none())
        try:
            (await s.execute(COUNTED, {"k": "r9"})).one()
        except NoResultFound as exc:
            out.append(str(exc))
        for ids in (["r2", "r0"], ["r1"], []):
            out.append((await s.execute(IN_LIST, {"ids": ids})).scalars().all())
    async with sessions.begin() as s:
        out.append((await s.execute(DROP, {"s": "TXT"})).rowcount)
    async with engine.connect() as conn:
        out.append((await conn.execute(select(T).order_by(c.id))).all())
    return out


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(T))


async def test_the_cursor_gives_what_exec_driver_sql_gives(
    any_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = any_engine
    # This SQLAlchemy passes the fence: the path under test runs.
    assert engine.dialect.driver in db_cursor.DRIVERS
    with on_cursor(monkeypatch) as on:
        got = await _workload(engine)
    await _reset(engine)
    # Then as before, every statement seen by a listener (which keeps the cursor off).
    db_cursor.use_cursor(False)
    statements: list[str] = []

    def count(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        statements.append(sql)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        with on_cursor(monkeypatch) as off:
            expected = await _workload(engine)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert got == expected
    assert off == []
    assert on == statements[:-1]  # every lean statement (not the last, unmarked read)
    assert expected[:4] == [1, 1, 1, 1] and expected[4] == ("r1", 11)
    assert expected[-1][0] == ("r0", 0, "OLD")


async def _duplicate(engine: AsyncEngine) -> IntegrityError:
    sessions = session_factory(engine, serial_writes=True)
    with pytest.raises(IntegrityError) as caught:
        async with sessions.begin() as s:
            await s.execute(ADD, {"id": "dup", "n": 1, "status": "NEW"})
            await s.execute(ADD, {"id": "dup", "n": 2, "status": "NEW"})
    return caught.value


async def test_errors_are_sqlalchemys_and_nothing_is_kept(
    any_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = any_engine
    expected, got, on = await both_ways(monkeypatch, lambda: _duplicate(engine))
    assert len(on) == 2
    assert type(got.orig) is type(expected.orig)
    assert (got.statement, got.params, str(got)) == (
        expected.statement,
        expected.params,
        str(expected),
    )
    async with engine.connect() as conn:  # the block rolled back
        assert (await conn.execute(select(c.id))).all() == []


async def _a_bug_in_the_driver(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> Any:
    """What a block sees when the driver's cursor raises an error that is not a DBAPI one."""

    def broken(*_: Any) -> Any:
        raise TypeError("a bug in the driver")

    sessions = session_factory(engine, serial_writes=True)
    with monkeypatch.context() as patched:
        patched.setattr(cursor_class(engine), "execute", broken)
        with pytest.raises(TypeError) as caught:
            async with sessions.begin() as s:
                await s.execute(ADD, {"id": "bug", "n": 1, "status": "NEW"})
    return caught.value


async def test_an_error_that_is_not_the_drivers_passes_as_it_is(
    any_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = any_engine
    expected, got, on = await both_ways(
        monkeypatch, lambda: _a_bug_in_the_driver(engine, monkeypatch)
    )
    assert len(on) == 1
    assert type(got) is type(expected) is TypeError and str(got) == str(expected)


def close_under(sync: Connection) -> None:
    """Close the driver's connection under SQLAlchemy: SQLite's database handle, or the
    asyncpg connection's socket (as a server that went away leaves it)."""
    dbapi_connection: Any = sync.connection.dbapi_connection
    if sync.dialect.name == "sqlite":
        dbapi_connection._sqlite.close()
    else:
        dbapi_connection._connection.terminate()


async def _on_a_closed_database(engine: AsyncEngine) -> tuple[DBAPIError, bool]:
    """A statement on a connection whose database handle was closed under it: the
    error SQLAlchemy raises, and whether it invalidated the connection."""
    plan = make_plan(ADD, engine.dialect, ("id", "n", "status"), False)
    assert isinstance(plan, Plan)
    args = plan.args({"id": "x", "n": 1, "status": "NEW"})
    async with engine.connect() as conn:
        await conn.begin()

        def closed_then_run(sync: Connection) -> tuple[DBAPIError, bool]:
            close_under(sync)
            with pytest.raises(DBAPIError) as caught:
                db_lean.run_on(sync, plan, args)
            return caught.value, sync.invalidated

        return await conn.run_sync(closed_then_run)


async def test_a_lost_connection_is_invalidated_as_sqlalchemy_does(
    any_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = any_engine
    before, after, on = await both_ways(monkeypatch, lambda: _on_a_closed_database(engine))
    (expected, expected_invalidated), (got, invalidated) = before, after
    assert len(on) == 1
    assert expected_invalidated and invalidated
    assert got.connection_invalidated and expected.connection_invalidated
    assert str(got) == str(expected)


async def _add(engine: AsyncEngine, key: str) -> None:
    async with session_factory(engine, serial_writes=True).begin() as s:
        await s.execute(ADD, {"id": key, "n": 1, "status": "NEW"})


@pytest.mark.parametrize("what", ["nothing", "listener", "handle_error", "echo", "no transaction"])
async def test_it_steps_aside_for_listeners_logging_and_no_transaction(
    engine: AsyncEngine,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    what: str,
) -> None:
    """With any of these SQLAlchemy does more than run the statement, so it runs it (a
    fresh engine each: a listener once added keeps the cursor path off, cautiously)."""
    seen: list[str] = []

    def before(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        seen.append(sql)

    def failed(ctx: Any) -> None:
        seen.append(type(ctx.original_exception).__name__)

    with on_cursor(monkeypatch) as on:
        if what == "nothing":  # the control: the cursor
            await _add(engine, "a")
            assert len(on) == 1
            return
        if what == "listener":
            event.listen(engine.sync_engine, "before_cursor_execute", before)
            await _add(engine, "a")
            assert seen == [ADD_SQL]
        elif what == "handle_error":
            event.listen(engine.sync_engine, "handle_error", failed)
            await _duplicate(engine)
            assert seen == ["IntegrityError"]
        elif what == "echo":  # statements logged: SQLAlchemy logs them
            engine.sync_engine.echo = True
            with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
                await _add(engine, "a")
            assert any(ADD_SQL in r.getMessage() for r in caplog.records)
        else:
            plan = make_plan(ADD, engine.dialect, ("id", "n", "status"), False)
            assert isinstance(plan, Plan)
            args = plan.args({"id": "a", "n": 1, "status": "NEW"})
            async with engine.connect() as conn:  # not begun: SQLAlchemy begins it
                await conn.run_sync(lambda sync: db_lean.run_on(sync, plan, args))
                await conn.commit()
        assert on == []
    if what != "handle_error":
        async with engine.connect() as conn:
            assert (await conn.execute(select(c.id))).scalars().all() == ["a"]


async def test_another_driver_takes_sqlalchemys_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_SQLITE_DRIVER", "aiosqlite")
    async with engine_with("sqlite", tmp_path / "aio.db", "unused", md) as eng:
        assert eng.dialect.driver == "aiosqlite"
        sessions = session_factory(eng, serial_writes=True)
        with on_cursor(monkeypatch) as on:
            async with sessions.begin() as s:
                await s.execute(ADD, {"id": "p", "n": 1, "status": "NEW"})
                assert (await s.execute(BY_STATUS, {"s": "NEW"})).all() == [("p", 1)]
        assert on == []


async def _stale_then_fresh(engine: AsyncEngine, other: AsyncConnection, to: str) -> list[Any]:
    """COUNTED prepared on the pooled connection, `n` retyped to `to` on `other` (a
    second connection of the engine, held aside), COUNTED again in a transaction (the
    stale prepared statement: asyncpg refuses it), then once more in the next: what each
    gave (the error's type)."""
    sessions = session_factory(engine)
    out: list[Any] = []
    async with sessions() as s:
        await s.execute(ADD, {"id": "k", "n": 3, "status": "NEW"})
        out.append((await s.execute(COUNTED, {"k": "k"})).one()._asdict())
        await s.rollback()
    await other.execute(text(f"ALTER TABLE cur_t ALTER COLUMN n TYPE {to}"))
    await other.commit()
    for _ in range(2):
        try:
            async with sessions.begin() as s:
                await s.execute(ADD, {"id": "k", "n": 3, "status": "NEW"})
                out.append((await s.execute(COUNTED, {"k": "k"})).one()._asdict())
                await s.execute(DROP, {"s": "NEW"})
        except DBAPIError as exc:
            out.append(type(exc.orig).__name__)
    return out


async def test_a_stale_prepared_statement_is_prepared_again_as_sqlalchemy_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a column retyped under a prepared statement makes its next run fail
    once (asyncpg's InvalidCachedStatementError, in a transaction); SQLAlchemy's asyncpg
    execution context then invalidates the dialect's cache, and the statement is
    prepared again. On the cursor path `run` does both duties: the same failure, then
    success. The control: with the invalidation made a no-op, the statement stays stale."""
    stale = "InvalidCachedStatementError"
    async with (
        engine_with("postgresql", tmp_path / "unused.db", "stale", md) as engine,
        engine.connect() as other,
    ):
        try:
            db_cursor.use_cursor(False)
            expected = await _stale_then_fresh(engine, other, "numeric")
            db_cursor.use_cursor(True)
            with on_cursor(monkeypatch) as on:
                got = await _stale_then_fresh(engine, other, "bigint")
                with monkeypatch.context() as patched:
                    patched.setattr(engine.dialect, "_invalidate_schema_cache", lambda: None)
                    control = await _stale_then_fresh(engine, other, "numeric")
        finally:
            db_cursor.use_cursor(True)
    row = {"twice": 6, "id": "k"}
    assert expected == [row, stale, row]
    assert got == [row, stale, row]
    assert control == [row, stale, stale]
    assert len(on) >= 6  # the statements of the cursor runs took the cursor path


def test_the_asyncpg_fence_knows_what_the_execution_context_does() -> None:
    """The cursor path does what SQLAlchemy's asyncpg execution context does per
    statement, as long as that context does nothing more: a context that does more, or
    an adapter without what the path sets and calls, keeps asyncpg off it."""
    context = sa_asyncpg.PGExecutionContext_asyncpg
    cursor = sa_asyncpg.AsyncAdapt_asyncpg_cursor
    dialect = sa_asyncpg.PGDialect_asyncpg
    assert db_cursor.asyncpg_duties_known(context, cursor, dialect)
    assert db_cursor.ASYNCPG in db_cursor.DRIVERS

    class DoesMore(context):  # type: ignore[misc,valid-type]
        def pre_exec(self) -> None:
            super().pre_exec()
            self.cursor.arraysize = 50

    class NoSlot:
        __slots__ = ("_description",)

    class NoInvalidation:
        _invalidate_schema_cache_asof = 0

    class NoTimestamp:
        def _invalidate_schema_cache(self) -> None:
            pass

    assert not db_cursor.asyncpg_duties_known(DoesMore, cursor, dialect)
    assert not db_cursor.asyncpg_duties_known(context, NoSlot, dialect)
    assert not db_cursor.asyncpg_duties_known(context, cursor, NoInvalidation)
    assert not db_cursor.asyncpg_duties_known(context, cursor, NoTimestamp)
