"""mesh.sqlite_driver: statements and (in WAL with synchronous=NORMAL) COMMITs on the loop,
checkpoints on a thread of their own, a worker thread only for a COMMIT that fsyncs and
for waiting on a lock another connection holds (real SQLite files)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import create_engine, normalise_url, session_factory
from mesh.sqlite_driver import DRIVER, Connection, _Checkpointer, wal_checkpoints


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'd.db'}")
    async with eng.begin() as c:
        await c.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY, v TEXT)"))
    try:
        yield eng
    finally:
        await eng.dispose()


def _workers() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "sqlite-worker")


def test_every_sqlite_url_gets_the_mesh_driver_unless_told(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for url in ("sqlite:///x.db", "sqlite+aiosqlite:///x.db", "sqlite+pysqlite:///x.db"):
        assert normalise_url(url) == f"sqlite+{DRIVER}:///x.db"
    monkeypatch.setenv("MESH_SQLITE_DRIVER", "aiosqlite")
    assert normalise_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"


async def test_reads_writes_and_commits_run_on_the_loop_in_wal_with_synchronous_normal(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'd.db'}")  # mesh.db: WAL, NORMAL

    @event.listens_for(engine.sync_engine, "connect")
    def thread_id_function(dbapi_conn: Any, _record: Any) -> None:
        # SELECT tid(): the thread SQLite runs the statement on.
        dbapi_conn.create_function("tid", 0, lambda: threading.get_ident() % 1_000_000_007)

    here = threading.get_ident() % 1_000_000_007
    sessions = session_factory(engine, serial_writes=True)
    try:
        before = _workers()
        async with sessions() as s:
            assert (await s.execute(text("SELECT tid()"))).scalar() == here
            async with engine.connect() as c:  # AsyncConnection insists its driver awaited
                assert (await c.exec_driver_sql("SELECT tid()")).scalar() == here
            await s.commit()  # nothing written: no hand-off
        async with sessions.begin() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY, v INTEGER)"))
            await s.execute(text("INSERT INTO t (x, v) VALUES (1, tid()), (2, tid())"))
            rows = (await s.execute(text("SELECT x, v FROM t ORDER BY x"))).all()
            assert [tuple(r) for r in rows] == [(1, here), (2, here)]
        assert _workers() == before  # the statements and the COMMIT ran here
        async with engine.connect() as c:  # SQLite's own checkpoints are off once it commits
            await c.execute(text("INSERT INTO t (x, v) VALUES (3, 3)"))
            await c.commit()
            assert (await c.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
    finally:
        await engine.dispose()
    # The commit landed: another connection (plain sqlite3) sees it.
    with sqlite3.connect(tmp_path / "d.db") as other:
        assert other.execute("SELECT count(*) FROM t").fetchone() == (3,)


async def test_the_checkpoint_thread_copies_the_wal_into_the_database_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.db"
    engine = create_engine(f"sqlite:///{path}")
    try:
        async with engine.begin() as c:
            await c.execute(text("CREATE TABLE t (x INTEGER PRIMARY KEY, v TEXT)"))
        size = path.stat().st_size
        for i in range(50):  # ~50 pages of rows, in the WAL once committed
            async with engine.begin() as c:
                await c.execute(
                    text("INSERT INTO t (x, v) VALUES (:x, :v)"), {"x": i, "v": "v" * 4000}
                )
        # In WAL mode the database file grows only when a checkpoint copies pages into it.
        deadline = time.monotonic() + 5
        while True:
            rounds, last = wal_checkpoints(str(path))
            if last is not None and last[1] == last[2] and path.stat().st_size > size + 50 * 4000:
                break
            assert time.monotonic() < deadline, (rounds, last, path.stat().st_size)
            await asyncio.sleep(0.05)  # poll
        assert rounds >= 1
        with sqlite3.connect(path) as other:
            assert other.execute("SELECT count(*) FROM t").fetchone() == (50,)
    finally:
        await engine.dispose()
    assert wal_checkpoints(str(path)) == (0, None)  # its thread stopped with the last connection
    assert str(path) not in _Checkpointer._by_path


async def test_a_commit_that_fsyncs_hands_off_to_the_worker(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'f.db'}")
    try:
        async with engine.begin() as c:
            await c.execute(text("CREATE TABLE t (x INTEGER)"))
        before = _workers()
        async with engine.begin() as c:
            await c.exec_driver_sql("PRAGMA synchronous = FULL")  # a COMMIT fsyncs the WAL
            await c.execute(text("INSERT INTO t VALUES (0)"))
        assert _workers() == before + 1  # the commit went to the connection's worker
        async with engine.begin() as c:
            await c.exec_driver_sql("PRAGMA synchronous = NORMAL")  # read again: on the loop
            await c.execute(text("INSERT INTO t VALUES (1)"))
        assert _workers() == before + 1
    finally:
        await engine.dispose()
    with sqlite3.connect(tmp_path / "f.db") as other:
        assert other.execute("SELECT count(*) FROM t").fetchone() == (2,)


async def test_a_lock_held_elsewhere_is_waited_for_off_the_loop(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        conn = sqlite3.connect(tmp_path / "d.db", isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")  # the write lock
        conn.execute("INSERT INTO t (x, v) VALUES (10, 'held')")
        held.set()
        release.wait(5)
        conn.execute("COMMIT")
        conn.close()

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        await asyncio.to_thread(held.wait, 5)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)  # poll: counts loop turns during the wait

        tick = asyncio.create_task(ticker())
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, release.set)
        started = time.monotonic()
        async with session_factory(engine).begin() as s:
            await s.execute(text("INSERT INTO t (x, v) VALUES (11, 'waited')"))
        waited = time.monotonic() - started
        tick.cancel()
        assert waited >= 0.25  # it waited for the holder's commit, it did not fail
        assert ticks >= 10  # and the loop ran meanwhile
    finally:
        release.set()
        await asyncio.to_thread(thread.join, 5)
    async with engine.connect() as c:
        got = (await c.execute(text("SELECT x FROM t ORDER BY x"))).scalars().all()
    assert got == [10, 11]


async def test_pragma_busy_timeout_sets_the_wait_and_a_wait_past_it_fails(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}")  # mesh.db: busy_timeout=5000
    try:
        async with engine.begin() as c:
            await c.execute(text("CREATE TABLE t (x INTEGER)"))
            raw = (await c.get_raw_connection()).dbapi_connection
            assert isinstance(raw, Connection) and raw.busy_timeout_ms == 5000
            await c.exec_driver_sql("PRAGMA busy_timeout = 150")
            assert raw.busy_timeout_ms == 150
            # SQLite's own stays 0: a lock never puts the loop to sleep.
            assert (await c.exec_driver_sql("PRAGMA busy_timeout")).scalar() == 0
        holder = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            started = time.monotonic()
            with pytest.raises(sa_exc.OperationalError, match="locked"):
                async with engine.begin() as c:
                    await c.exec_driver_sql("PRAGMA busy_timeout = 150")
                    await c.execute(text("INSERT INTO t VALUES (1)"))
            assert 0.1 <= time.monotonic() - started < 3
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    finally:
        await engine.dispose()


async def test_a_cancelled_wait_lets_the_worker_finish_and_the_connection_serves_on(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    holder = sqlite3.connect(tmp_path / "d.db", isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    sessions = session_factory(engine)

    async def write() -> None:
        async with sessions.begin() as s:
            await s.execute(text("INSERT INTO t (x, v) VALUES (20, 'x')"))

    task = asyncio.create_task(write())
    try:
        await asyncio.sleep(0.1)  # poll: let it reach the wait on the worker
        task.cancel()
        await asyncio.sleep(0.1)  # poll: the cancellation waits for the worker...
        assert not task.done()
        holder.execute("ROLLBACK")  # ...which gets the lock now
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
    finally:
        if holder.in_transaction:
            holder.execute("ROLLBACK")
        holder.close()
    async with sessions.begin() as s:  # the pool's connections still work
        await s.execute(text("INSERT INTO t (x, v) VALUES (21, 'y')"))
    async with engine.connect() as c:
        got = (await c.execute(text("SELECT x FROM t ORDER BY x"))).scalars().all()
    assert got == [21]


async def test_a_checkpoint_that_fails_is_said_once_and_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_Checkpointer, "interval_s", 0.01)
    caplog.set_level(logging.DEBUG, logger="mesh.sqlite_driver")
    path = str(tmp_path / "gone" / "x.db")  # a directory that does not exist: cannot open
    checkpointer = _Checkpointer.join(path)
    try:
        deadline = time.monotonic() + 5
        while sum("checkpoint of" in r.getMessage() for r in caplog.records) < 3:
            checkpointer.commits += 1  # as committers do
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # poll
        said = [r for r in caplog.records if "checkpoint of" in r.getMessage()]
        assert [r.levelno for r in said[:3]] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
        assert checkpointer.rounds == 0
    finally:
        checkpointer.leave()
    assert wal_checkpoints(path) == (0, None)
