"""mesh.db_greenlets: SQLAlchemy's asyncio calls on pooled greenlets behave as on
SQLAlchemy's own (the same cases through both), reuse their greenlet, and run a real
database (SQLite, both drivers)."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from greenlet import getcurrent  # type: ignore[import-untyped]
from sqlalchemy import exc, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import session as session_module
from sqlalchemy.util import concurrency
from sqlalchemy.util.concurrency import await_

from mesh import db_greenlets
from mesh.db import create_engine, session_factory

Spawn = Callable[..., Coroutine[Any, Any, Any]]
SPAWNS = {"sqlalchemy": db_greenlets._ORIGINAL, "pooled": db_greenlets.greenlet_spawn}
REQUEST = contextvars.ContextVar[str]("request")


@pytest.fixture(autouse=True)
def as_it_was() -> Iterator[None]:
    """Each test leaves SQLAlchemy's modules as it found them."""
    was = db_greenlets.pooled()
    yield
    db_greenlets.use_pooled_greenlets(was)


@pytest.fixture(params=sorted(SPAWNS))
def spawn(request: pytest.FixtureRequest) -> Spawn:
    return SPAWNS[request.param]


async def _value(v: Any) -> Any:
    await asyncio.sleep(0)  # poll: a real suspension of the driving task
    return v


async def _fail(error: BaseException) -> None:
    await asyncio.sleep(0)  # poll: a real suspension before the error
    raise error


def test_the_installed_sqlalchemy_is_capable() -> None:
    # If this fails, SQLAlchemy changed the shape the pooled spawn relies on: the mesh
    # falls back to SQLAlchemy's own (slower) and this test says so.
    assert db_greenlets.CAPABLE


async def test_values_and_errors_pass_through(spawn: Spawn) -> None:
    assert await spawn(lambda a, b=0: a + b, 2, b=3) == 5

    def broken() -> None:
        raise KeyError("sync error")

    with pytest.raises(KeyError, match="sync error"):
        await spawn(broken)
    with pytest.raises(exc.AwaitRequired):
        await spawn(lambda: 1, _require_await=True)


async def test_awaited_values_and_errors_reach_the_synchronous_code(spawn: Spawn) -> None:
    def body() -> list[Any]:
        seen = [await_(_value("a"))]
        try:
            await_(_fail(ValueError("async error")))
        except ValueError as error:  # thrown in where the body awaited
            seen.append(str(error))
        seen.append(await_(_value("b")))
        return seen

    assert await spawn(body, _require_await=True) == ["a", "async error", "b"]
    with pytest.raises(LookupError, match="uncaught"):
        await spawn(lambda: await_(_fail(LookupError("uncaught"))))


async def test_each_caller_sees_its_own_context_variables(spawn: Spawn) -> None:
    def body() -> tuple[str, str]:
        before = REQUEST.get()
        await_(_value(None))  # the other callers run meanwhile
        return before, REQUEST.get()

    async def caller(name: str) -> tuple[str, str]:
        REQUEST.set(name)
        result: tuple[str, str] = await spawn(body)
        return result

    names = [f"r{i}" for i in range(6)]
    results = await asyncio.gather(*(caller(n) for n in names))
    assert results == [(n, n) for n in names]


async def test_a_cancelled_caller_cancels_the_body_and_the_next_call_works(spawn: Spawn) -> None:
    entered = asyncio.Event()
    unwound: list[str] = []

    def body() -> None:
        entered.set()
        try:
            await_(asyncio.sleep(30))  # poll: cancelled below
        finally:
            unwound.append("finally")

    task: asyncio.Task[Any] = asyncio.create_task(spawn(body))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert unwound == ["finally"]
    assert await spawn(lambda: await_(_value(7))) == 7


async def test_sequential_calls_reuse_one_greenlet() -> None:
    seen: list[Any] = []  # holds them, so no id is recycled
    for _ in range(20):
        await db_greenlets.greenlet_spawn(lambda: seen.append(getcurrent()))
    assert len({id(g) for g in seen}) == 1
    seen.clear()
    for _ in range(20):
        await db_greenlets._ORIGINAL(lambda: seen.append(getcurrent()))
    assert len({id(g) for g in seen}) == 20  # SQLAlchemy's: a greenlet per call


async def test_concurrent_calls_each_get_a_worker_and_the_pool_stays_bounded() -> None:
    inside: list[Any] = []

    def body(i: int) -> int:
        inside.append(getcurrent())
        return int(await_(_value(i)))

    n = db_greenlets.MAX_IDLE + 8
    results = await asyncio.gather(*(db_greenlets.greenlet_spawn(body, i) for i in range(n)))
    assert results == list(range(n))
    assert len({id(g) for g in inside}) == n  # all in flight at once
    assert len(db_greenlets._idle()) == db_greenlets.MAX_IDLE


@pytest.mark.parametrize("driver", ["meshsqlite", "aiosqlite"])
async def test_a_real_database_runs_on_pooled_greenlets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    if driver == "aiosqlite":  # every call awaits a thread: real suspensions
        monkeypatch.setenv("MESH_SQLITE_DRIVER", "aiosqlite")
    monkeypatch.delenv("MESH_FASTPATH", raising=False)
    db_greenlets.use_pooled_greenlets(False)
    engine = create_engine(f"sqlite:///{tmp_path / 't.db'}")  # installs them
    try:
        assert db_greenlets.pooled()
        assert session_module.greenlet_spawn is db_greenlets.greenlet_spawn  # type: ignore[attr-defined]
        sessions = session_factory(engine, serial_writes=True)
        async with engine.begin() as c:
            await c.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))

        async def write(i: int) -> None:
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t (id, n) VALUES (:i, :i)"), {"i": i})

        await asyncio.gather(*(write(i) for i in range(1, 21)))
        with pytest.raises(IntegrityError):
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t (id, n) VALUES (100, 1)"))
                await s.execute(text("INSERT INTO t (id, n) VALUES (101, NULL)"))
        async with sessions() as s:
            rows = (await s.execute(text("SELECT id FROM t ORDER BY id"))).scalars().all()
        assert rows == list(range(1, 21))  # the failed transaction left nothing
    finally:
        await engine.dispose()


def test_mesh_fastpath_off_keeps_sqlalchemys_own(monkeypatch: pytest.MonkeyPatch) -> None:
    db_greenlets.use_pooled_greenlets(False)
    monkeypatch.setenv("MESH_FASTPATH", "0")
    db_greenlets.install()
    assert not db_greenlets.pooled()
    monkeypatch.setenv("MESH_FASTPATH", "1")
    db_greenlets.install()
    assert db_greenlets.pooled()
    db_greenlets.use_pooled_greenlets(False)
    assert session_module.greenlet_spawn is db_greenlets._ORIGINAL  # type: ignore[attr-defined]


def test_a_changed_sqlalchemy_is_not_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    db_greenlets.use_pooled_greenlets(False)
    assert db_greenlets._capable()

    async def someone_elses(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("not called")

    monkeypatch.setattr(session_module, "greenlet_spawn", someone_elses)
    assert not db_greenlets._capable()
    monkeypatch.undo()

    def await_elsewhere(awaitable: Any) -> Any:  # an await_ that no longer uses `parent`
        return "not handed over"

    monkeypatch.setattr(concurrency, "await_", await_elsewhere)
    assert not db_greenlets._capable()
