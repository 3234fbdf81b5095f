"""mesh.db_sessions: a session's end runs to the end despite a cancellation, with a task
only when it suspends (real SQLite, both drivers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    bindparam,
    event,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from mesh.db import create_engine, session_factory
from mesh.db_lean import lean, lean_statements, use_lean_statements
from mesh.db_sessions import MeshSession, MeshSessionMaker, _Begin, after_commit, run_to_end
from mesh.sqlite_writes import write_lock
from tests.support.postgres import engine_with


@contextmanager
def counting_tasks() -> Iterator[list[int]]:
    """Counts the tasks the running loop creates inside the block."""
    loop = asyncio.get_running_loop()
    made = [0]

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kw: Any) -> asyncio.Task[Any]:
        made[0] += 1
        return asyncio.Task(coro, loop=loop, **kw)

    loop.set_task_factory(factory)
    try:
        yield made
    finally:
        loop.set_task_factory(None)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A SQLite file with table t (id, n NOT NULL), on the driver the environment picks."""
    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")
    try:
        async with engine.begin() as c:
            await c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        yield engine
    finally:
        await engine.dispose()


def _checked_out(engine: AsyncEngine) -> int:
    return int(engine.sync_engine.pool.checkedout())  # type: ignore[attr-defined]


async def test_an_end_that_never_suspends_runs_in_the_callers_task() -> None:
    caller = asyncio.current_task()
    seen: list[asyncio.Task[Any] | None] = []

    async def end() -> int:
        seen.append(asyncio.current_task())
        return 7

    with counting_tasks() as made:
        assert await run_to_end(end()) == 7
    assert seen == [caller]
    assert made[0] == 0


async def test_an_end_that_suspends_gets_its_values_and_errors_through() -> None:
    loop = asyncio.get_running_loop()

    async def end() -> str:
        ready = loop.create_future()
        loop.call_soon(ready.set_result, "a")
        got: str = await ready  # the value the driving task sends back in
        failing = loop.create_future()
        loop.call_soon(failing.set_exception, KeyError("b"))
        try:
            await failing
        except KeyError as exc:  # the future's error reaches the coroutine
            got += str(exc.args[0])
        await asyncio.sleep(0)  # poll: a bare yield, resumed on the next loop turn
        return got

    assert await run_to_end(end()) == "ab"

    async def fails_late() -> None:
        await asyncio.sleep(0)  # poll: a suspension point before the error
        raise ValueError("late")

    with pytest.raises(ValueError, match="late"):
        await run_to_end(fails_late())

    async def fails_at_once() -> None:
        raise ValueError("early")

    with pytest.raises(ValueError, match="early"):
        await run_to_end(fails_at_once())


async def test_a_cancelled_caller_waits_for_the_end_then_is_cancelled() -> None:
    release = asyncio.Event()
    steps: list[str] = []

    started = asyncio.Event()

    async def end() -> None:
        steps.append("started")
        started.set()
        await release.wait()
        steps.append("finished")

    async def caller() -> None:
        await run_to_end(end())
        steps.append("caller went on")  # must never happen: the caller was cancelled

    task = asyncio.create_task(caller())
    await started.wait()  # the caller is inside the suspended end
    task.cancel()
    task.cancel()  # twice: still waits for the end
    await asyncio.sleep(0.01)  # poll: the caller must still be waiting
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert steps == ["started", "finished"]


async def test_begin_commits_closes_and_makes_no_task_on_the_meshs_driver(
    engine: AsyncEngine,
) -> None:
    sessions = session_factory(engine)
    assert isinstance(sessions, MeshSessionMaker)
    assert sessions.class_ is MeshSession
    with counting_tasks() as made:
        async with sessions.begin() as s:
            await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))
        async with sessions() as s:
            assert (await s.execute(text("SELECT n FROM t"))).scalar_one() == 1
    assert made[0] == 0  # SQLAlchemy's own context managers make three
    assert _checked_out(engine) == 0


async def test_begin_rolls_back_on_an_error_and_closes_when_the_commit_fails(
    engine: AsyncEngine,
) -> None:
    sessions = session_factory(engine, serial_writes=True)
    with pytest.raises(RuntimeError):
        async with sessions.begin() as s:
            await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))
            raise RuntimeError("the caller's own error")
    closed: list[bool] = []

    def before_commit(session: Session) -> None:
        session.execute(text("INSERT INTO t (id, n) VALUES (2, NULL)"))  # NOT NULL

    def after_end(session: Session, _: Any) -> None:
        closed.append(True)

    with pytest.raises(IntegrityError):
        async with sessions.begin() as s:
            event.listen(s.sync_session, "before_commit", before_commit)
            event.listen(s.sync_session, "after_transaction_end", after_end)
            await s.execute(text("INSERT INTO t (id, n) VALUES (3, 3)"))
    assert closed  # the failed commit's transaction ended
    assert _checked_out(engine) == 0
    async with sessions() as s:
        assert (await s.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0


async def test_begin_keeps_sqlalchemys_rules_for_savepoints_and_an_explicit_commit(
    engine: AsyncEngine,
) -> None:
    """The transaction is begun on the loop and ended with the close in one call: a
    savepoint inside still rolls back alone, a commit inside leaves nothing to end, and
    a second `begin()` on a session already in a transaction is refused as before."""
    sessions = session_factory(engine, serial_writes=True)
    async with sessions.begin() as s:
        await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))
        with pytest.raises(RuntimeError):
            async with s.begin_nested():
                await s.execute(text("INSERT INTO t (id, n) VALUES (2, 2)"))
                raise RuntimeError("undo the savepoint only")
    async with sessions.begin() as s:
        await s.execute(text("INSERT INTO t (id, n) VALUES (3, 3)"))
        await s.commit()
    async with sessions() as s:
        rows = (await s.execute(text("SELECT id FROM t ORDER BY id"))).scalars().all()
    assert rows == [1, 3]
    async with sessions() as s:
        await s.execute(text("SELECT 1"))  # autobegun
        with pytest.raises(InvalidRequestError):
            async with _Begin(s):
                pass
    assert _checked_out(engine) == 0


@pytest.fixture
def aiosqlite_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_SQLITE_DRIVER", "aiosqlite")


async def _write_cancelled_at_commit(
    sessions: Any, listen: Callable[[Any, Callable[..., object]], None], *statement: Any
) -> None:
    """Runs `statement` in a `begin()` block whose task `listen(session, cancel)`
    arranges to cancel at the COMMIT's first suspension; returns once cancelled."""

    async def writer() -> None:
        async with sessions.begin() as s:
            task = asyncio.current_task()
            assert task is not None
            listen(s, lambda *_: task.cancel())
            await s.execute(*statement)

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(writer())


@pytest.mark.usefixtures("aiosqlite_driver")
async def test_a_caller_cancelled_during_a_suspending_commit_still_commits(
    engine: AsyncEngine,
) -> None:
    # aiosqlite hands every call to a thread: its COMMIT suspends, so the end goes on in
    # a task of its own and the caller's cancellation waits for it.
    assert engine.dialect.driver == "aiosqlite"
    sessions = session_factory(engine)

    def before_commit(s: Any, cancel: Callable[..., object]) -> None:
        event.listen(s.sync_session, "before_commit", cancel)

    with counting_tasks() as made:
        await _write_cancelled_at_commit(
            sessions, before_commit, text("INSERT INTO t (id, n) VALUES (1, 1)")
        )
    assert made[0] == 2  # the writer, and one task for the end (SQLAlchemy makes two)
    assert _checked_out(engine) == 0
    async with sessions() as s:
        assert (await s.execute(text("SELECT n FROM t WHERE id = 1"))).scalar_one() == 1


def test_rest_passes_a_thrown_error_into_the_coroutine() -> None:
    # The driving task throws its cancellation into the awaitable; the coroutine may
    # handle it and go on (as `_Rest` must let it).
    from mesh.db_sessions import _Rest

    class Pause:
        def __await__(self) -> Generator[str, Any, None]:
            yield "pause"

    async def body() -> str:
        try:
            await Pause()
        except asyncio.CancelledError:
            return "handled"
        return "not thrown"

    coro: Coroutine[Any, Any, str] = body()
    first = coro.send(None)
    rest = _Rest(coro, first).__await__()
    assert next(rest) == "pause"
    with pytest.raises(StopIteration) as stop:
        rest.throw(asyncio.CancelledError())
    assert stop.value.value == "handled"


@pytest.mark.parametrize("serial_writes", [False, True])
async def test_after_commit_runs_once_committed_and_never_after_a_rollback(
    engine: AsyncEngine, serial_writes: bool
) -> None:
    sessions = session_factory(engine, serial_writes=serial_writes)
    ran: list[str] = []

    def first() -> None:
        ran.append("first")

    async with sessions.begin() as s:
        await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))
        after_commit(s, first)
        after_commit(s, first)  # queued once
        after_commit(s, lambda: ran.append("second"))
        assert ran == []  # not before the COMMIT
    assert ran == ["first", "second"]

    ran.clear()
    with pytest.raises(RuntimeError):
        async with sessions.begin() as s:
            await s.execute(text("INSERT INTO t (id, n) VALUES (2, 2)"))
            after_commit(s, first)
            raise RuntimeError("rolled back")
    async with sessions() as s:  # a session used again after a rollback: nothing carried
        await s.execute(text("INSERT INTO t (id, n) VALUES (3, 3)"))
        after_commit(s, first)
        await s.rollback()
        await s.execute(text("INSERT INTO t (id, n) VALUES (4, 4)"))
        await s.commit()
    assert ran == []
    # The mesh's sessions need no listener of their own per session (SQLAlchemy's
    # instance-level `event.listen` is what this replaces).
    async with sessions() as s:
        after_commit(s, first)
        assert not s.sync_session.dispatch.after_commit.listeners


async def test_a_failing_after_commit_callback_is_logged_and_the_others_run(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    sessions = session_factory(engine)
    ran: list[str] = []

    def broken() -> None:
        raise ValueError("a callback's bug")

    async with sessions.begin() as s:
        await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))
        after_commit(s, broken)
        after_commit(s, lambda: ran.append("next"))
    assert ran == ["next"]
    assert "after-commit callback" in caplog.text and "a callback's bug" in caplog.text
    async with sessions() as s:  # the commit stands
        assert (await s.execute(text("SELECT n FROM t"))).scalar_one() == 1


async def test_after_commit_works_on_a_plain_sqlalchemy_session(engine: AsyncEngine) -> None:
    ran: list[int] = []
    async with AsyncSession(engine) as s:
        async with s.begin():
            await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))
            after_commit(s, lambda: ran.append(1))
        assert ran == [1]
        async with s.begin():  # the next transaction of the same session: not again
            await s.execute(text("INSERT INTO t (id, n) VALUES (2, 2)"))
        with pytest.raises(RuntimeError):
            async with s.begin():
                await s.execute(text("INSERT INTO t (id, n) VALUES (3, 3)"))
                after_commit(s, lambda: ran.append(3))
                raise RuntimeError("rolled back")
    assert ran == [1]


# -- the lean transaction of a `begin()` block (statements marked with mesh.db_lean.lean)

_md = MetaData()
_T = Table("t", _md, Column("id", Integer, primary_key=True), Column("n", Integer, nullable=False))
_ADD = lean(insert(_T))
_SET = lean(update(_T).where(_T.c.id == bindparam("k")).values(n=bindparam("v")))
_N = lean(select(_T.c.n).where(_T.c.id == bindparam("k")))
# Marked, but with no plan (a value rendered into the SQL): compiled by SQLAlchemy.
_SET_RENDERED = lean(
    update(_T).where(_T.c.id == bindparam("k", literal_execute=True)).values(n=bindparam("v"))
)
_N_RENDERED = lean(select(_T.c.n).where(_T.c.id == bindparam("k", literal_execute=True)))


class _Base(DeclarativeBase):
    pass


class _Row(_Base):
    __tablename__ = "t"
    id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int]


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """Table t (id, n NOT NULL) on a SQLite file or a fresh PostgreSQL schema."""
    async with engine_with(request.param, tmp_path / "lean.db", "leantx", _md) as eng:
        yield eng


@contextmanager
def checkouts(engine: AsyncEngine) -> Iterator[list[int]]:
    """Counts the connections taken from `engine`'s pool inside the block."""
    taken = [0]

    def checkout(*_: Any) -> None:
        taken[0] += 1

    event.listen(engine.sync_engine, "checkout", checkout)
    try:
        yield taken
    finally:
        event.remove(engine.sync_engine, "checkout", checkout)


def _all_released(engine: AsyncEngine) -> None:
    """Every connection back in the pool, and no SQLite write lock held."""
    assert _checked_out(engine) == 0
    assert not write_lock(engine.sync_engine).locked()


async def _ns(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as conn:
        return {r.id: r.n for r in await conn.execute(select(_T))}


@pytest.mark.parametrize("serial_writes", [False, True])
async def test_a_block_of_lean_statements_commits_on_one_connection_without_the_orm_transaction(
    any_engine: AsyncEngine, serial_writes: bool
) -> None:
    sessions = session_factory(any_engine, serial_writes=serial_writes)
    ran: list[str] = []
    with checkouts(any_engine) as taken:
        async with sessions.begin() as s:
            await s.execute(_ADD, {"id": 1, "n": 1})
            await s.execute(_SET, {"k": 1, "v": 2})
            assert await s.scalar(_N, {"k": 1}) == 2
            assert s.in_transaction()
            assert s.get_transaction() is None  # the ORM session was never begun
            after_commit(s, lambda: ran.append("committed"))
            assert ran == []
    assert taken == [1]
    assert ran == ["committed"]
    assert await _ns(any_engine) == {1: 2}
    _all_released(any_engine)

    with pytest.raises(RuntimeError):
        async with sessions.begin() as s:
            await s.execute(_SET, {"k": 1, "v": 3})
            after_commit(s, lambda: ran.append("rolled back"))
            raise RuntimeError("the caller's own error")
    assert ran == ["committed"]
    assert await _ns(any_engine) == {1: 2}
    _all_released(any_engine)
    with pytest.raises(IntegrityError):  # the driver's error, as SQLAlchemy's
        async with sessions.begin() as s:
            await s.execute(_ADD, {"id": 2, "n": 2})
            await s.execute(_ADD, {"id": 1, "n": 9})
    assert await _ns(any_engine) == {1: 2}
    assert _checked_out(any_engine) == 0


async def test_whatever_else_the_block_does_joins_the_same_transaction(
    any_engine: AsyncEngine,
) -> None:
    sessions = session_factory(any_engine, serial_writes=True)
    with checkouts(any_engine) as taken:
        with pytest.raises(RuntimeError):
            async with sessions.begin() as s:
                await s.execute(_ADD, {"id": 1, "n": 1})  # lean: the block's connection
                await s.execute(text("INSERT INTO t (id, n) VALUES (2, 2)"))  # the session's
                s.add(_Row(id=3, n=3))
                await s.flush()
                await s.execute(_SET, {"k": 2, "v": 20})
                assert (await s.execute(text("SELECT count(*) FROM t"))).scalar_one() == 3
                raise RuntimeError("undo all four")
        assert await _ns(any_engine) == {}
        async with sessions.begin() as s:
            await s.execute(_ADD, {"id": 1, "n": 1})
            await s.execute(text("INSERT INTO t (id, n) VALUES (2, 2)"))
            s.add(_Row(id=3, n=3))  # pending: flushed by the commit
            await s.execute(_SET, {"k": 2, "v": 20})
    assert taken == [3]  # one connection per block, and the read between them
    assert await _ns(any_engine) == {1: 1, 2: 20, 3: 3}
    async with sessions.begin() as s:
        s.add(_Row(id=4, n=4))  # no statement at all: the session's own end flushes it
    assert (await _ns(any_engine))[4] == 4
    async with sessions.begin() as s:
        row = _Row(id=5, n=5)
        s.add(row)
        await s.commit()
        await s.execute(_SET, {"k": 1, "v": 10})
        row.n = 50  # a change to an object the session holds: flushed at the end
    assert (await _ns(any_engine))[5] == 50
    assert (await _ns(any_engine))[1] == 10
    assert _checked_out(any_engine) == 0


async def test_an_explicit_commit_or_rollback_ends_what_the_block_wrote(
    any_engine: AsyncEngine,
) -> None:
    sessions = session_factory(any_engine, serial_writes=True)
    ran: list[int] = []
    async with sessions.begin() as s:
        await s.execute(_ADD, {"id": 1, "n": 1})
        after_commit(s, lambda: ran.append(1))
        await s.commit()
        assert ran == [1]
        assert await _ns(any_engine) == {1: 1}  # seen from another connection
        await s.execute(_ADD, {"id": 2, "n": 2})
        await s.rollback()
        await s.execute(_ADD, {"id": 3, "n": 3})  # a new transaction, committed at the end
    assert await _ns(any_engine) == {1: 1, 3: 3}
    assert ran == [1]
    _all_released(any_engine)


async def test_the_sessions_own_listeners_still_fire_and_a_failed_commit_loses_nothing_else(
    any_engine: AsyncEngine,
) -> None:
    sessions = session_factory(any_engine, serial_writes=True)
    seen: list[str] = []
    async with sessions.begin() as s:
        await s.execute(_ADD, {"id": 1, "n": 1})
        event.listen(s.sync_session, "before_commit", lambda _s: seen.append("before_commit"))
        event.listen(s.sync_session, "after_commit", lambda _s: seen.append("after_commit"))
    assert seen == ["before_commit", "after_commit"]
    with pytest.raises(RuntimeError):
        async with sessions.begin() as s:
            await s.execute(_ADD, {"id": 2, "n": 2})
            event.listen(s.sync_session, "after_rollback", lambda _s: seen.append("rollback"))
            raise RuntimeError("rolled back")
    assert seen[-1] == "rollback"
    ran: list[int] = []

    def fail(_s: Session) -> None:
        raise ValueError("refused at commit")

    with pytest.raises(ValueError, match="refused at commit"):
        async with sessions.begin() as s:
            await s.execute(_ADD, {"id": 3, "n": 3})
            after_commit(s, lambda: ran.append(3))
            event.listen(s.sync_session, "before_commit", fail)
    assert ran == []
    assert await _ns(any_engine) == {1: 1}
    _all_released(any_engine)


async def test_a_lean_block_is_one_transaction_and_cannot_be_begun_twice(
    any_engine: AsyncEngine,
) -> None:
    sessions = session_factory(any_engine)
    async with sessions.begin() as s:
        await s.execute(_ADD, {"id": 1, "n": 1})
        with pytest.raises(InvalidRequestError):
            async with _Begin(s):
                pass
    was = lean_statements()
    use_lean_statements(False)  # off: the session's own transaction, as before
    try:
        async with sessions.begin() as s:
            await s.execute(_ADD, {"id": 2, "n": 2})
            assert s.get_transaction() is not None
    finally:
        use_lean_statements(was)
    assert await _ns(any_engine) == {1: 1, 2: 2}


async def test_a_marked_statement_without_a_plan_runs_compiled_in_the_blocks_transaction(
    any_engine: AsyncEngine,
) -> None:
    """A marked statement the lean path cannot run as driver SQL (here a value rendered
    into the SQL; in the shop, a DateTime read back on SQLite) runs as SQLAlchemy
    compiles it, on the block's connection: the ORM session is still not begun."""
    sessions = session_factory(any_engine, serial_writes=True)
    compiled: list[bool] = []

    def record(_c: Any, _cur: Any, _sql: str, _p: Any, context: Any, _m: Any) -> None:
        compiled.append(context.compiled is not None)

    event.listen(any_engine.sync_engine, "before_cursor_execute", record)
    try:
        with checkouts(any_engine) as taken:
            async with sessions.begin() as s:
                await s.execute(_ADD, {"id": 1, "n": 1})
                await s.execute(_SET_RENDERED, {"k": 1, "v": 5})
                assert await s.scalar(_N_RENDERED, {"k": 1}) == 5
                assert s.get_transaction() is None  # one connection, no ORM transaction
            async with sessions() as s:  # a block with no driver-SQL statement at all
                assert await s.scalar(_N_RENDERED, {"k": 1}) == 5
                assert s.get_transaction() is None
            with pytest.raises(RuntimeError):
                async with sessions.begin() as s:
                    await s.execute(_SET_RENDERED, {"k": 1, "v": 9})
                    raise RuntimeError("rolled back")
    finally:
        event.remove(any_engine.sync_engine, "before_cursor_execute", record)
    assert taken == [3]
    assert compiled == [False, True, True, True, True]
    assert await _ns(any_engine) == {1: 5}
    _all_released(any_engine)
    was = lean_statements()
    use_lean_statements(False)  # off: the session's own transaction, as before
    try:
        async with sessions() as s:
            assert await s.scalar(_N_RENDERED, {"k": 1}) == 5
            assert s.get_transaction() is not None
    finally:
        use_lean_statements(was)


async def test_a_caller_cancelled_during_a_lean_commit_still_commits(
    any_engine: AsyncEngine,
) -> None:
    """PostgreSQL's COMMIT suspends (asyncpg): the block's end goes on in a task of its
    own and the caller's cancellation waits for it, as for the session's own end."""
    if any_engine.dialect.name != "postgresql":
        pytest.skip("the mesh's SQLite driver commits without suspending")
    sessions = session_factory(any_engine)

    def at_commit(_s: Any, cancel: Callable[..., object]) -> None:
        event.listen(any_engine.sync_engine, "commit", cancel, once=True)

    await _write_cancelled_at_commit(sessions, at_commit, _ADD, {"id": 1, "n": 1})
    assert await _ns(any_engine) == {1: 1}
    assert _checked_out(any_engine) == 0


async def test_a_plain_session_block_runs_lean_and_keeps_what_only_a_commit_keeps(
    any_engine: AsyncEngine,
) -> None:
    """`async with maker() as s`: lean statements on a connection of the block's own;
    what is not committed is rolled back at the end, as the session's close does."""
    sessions = session_factory(any_engine, serial_writes=True)
    ran: list[int] = []
    with checkouts(any_engine) as taken:
        async with sessions() as s:
            await s.execute(_ADD, {"id": 1, "n": 1})
            after_commit(s, lambda: ran.append(1))
            assert s.get_transaction() is None and s.in_transaction()
            with pytest.raises(InvalidRequestError):  # as an autobegun session refuses it
                s.begin()
            await s.commit()
            await s.execute(_ADD, {"id": 2, "n": 2})  # never committed
            after_commit(s, lambda: ran.append(2))
        async with sessions() as s:
            assert await s.scalar(_N, {"k": 1}) == 1
            assert await s.scalar(_N, {"k": 2}) is None
    assert taken == [2]
    assert ran == [1]
    assert await _ns(any_engine) == {1: 1}
    _all_released(any_engine)
    async with sessions() as s:  # the session's own path after a lean statement
        await s.execute(_SET, {"k": 1, "v": 5})
        await s.execute(text("UPDATE t SET n = n + 1 WHERE id = 1"))
        await s.commit()
    assert await _ns(any_engine) == {1: 6}
