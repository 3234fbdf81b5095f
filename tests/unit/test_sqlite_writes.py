"""mesh.sqlite_writes: writing transactions of one process queue on a lock (real SQLite)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from mesh.db import create_engine, session_factory
from mesh.sqlite_writes import SerialWriteSession, is_write, write_lock


def test_is_write_knows_dml_and_text() -> None:
    assert is_write(text("  insert into t values (1)"))
    assert is_write(text("UPDATE t SET x = 1"))
    assert not is_write(text("SELECT 1"))
    assert not is_write(text("CREATE TABLE t (x int)"))


async def test_writers_queue_and_every_commit_lands(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    sessions = session_factory(engine, serial_writes=True)
    assert sessions.class_ is SerialWriteSession
    assert session_factory(engine).class_ is not SerialWriteSession  # off by default
    try:
        async with sessions.begin() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
        inside = 0
        most = 0

        async def writer(i: int) -> None:
            nonlocal inside, most
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
                inside += 1
                most = max(most, inside)
                await asyncio.sleep(0.001)  # hold the transaction open across the loop
                inside -= 1

        await asyncio.gather(*(writer(i) for i in range(30)))
        assert most == 1  # one writing transaction at a time
        async with sessions() as s:
            assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 30
        assert not write_lock(engine.sync_engine).locked()
    finally:
        await engine.dispose()


async def test_a_rollback_releases_the_lock_and_a_read_first_tx_does_not_queue(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    sessions = session_factory(engine, serial_writes=True)
    try:
        async with sessions.begin() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
        with pytest.raises(RuntimeError):
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (1)"))
                assert write_lock(engine.sync_engine).locked()
                raise RuntimeError("roll back")
        assert not write_lock(engine.sync_engine).locked()
        async with sessions.begin() as s:
            await s.execute(text("SELECT count(*) FROM t"))
            await s.execute(text("INSERT INTO t VALUES (2)"))
            assert not write_lock(engine.sync_engine).locked()  # read first: left to SQLite
        async with sessions() as s:
            assert (await s.execute(text("SELECT x FROM t"))).scalars().all() == [2]
    finally:
        await engine.dispose()
