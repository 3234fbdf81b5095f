"""mesh.db_sessions: a session's end runs to the end despite a cancellation, with a task
only when it suspends (real SQLite, both drivers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from mesh.db import create_engine, session_factory
from mesh.db_sessions import MeshSession, MeshSessionMaker, _Begin, after_commit, run_to_end


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


@pytest.mark.usefixtures("aiosqlite_driver")
async def test_a_caller_cancelled_during_a_suspending_commit_still_commits(
    engine: AsyncEngine,
) -> None:
    # aiosqlite hands every call to a thread: its COMMIT suspends, so the end goes on in
    # a task of its own and the caller's cancellation waits for it.
    assert engine.dialect.driver == "aiosqlite"
    sessions = session_factory(engine)

    async def writer() -> None:
        async with sessions.begin() as s:
            task = asyncio.current_task()
            assert task is not None

            def cancel_me(_: Session) -> None:
                task.cancel()  # lands at the COMMIT's first suspension

            event.listen(s.sync_session, "before_commit", cancel_me)
            await s.execute(text("INSERT INTO t (id, n) VALUES (1, 1)"))

    with counting_tasks() as made, pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(writer())
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
