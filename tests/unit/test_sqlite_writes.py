"""mesh.sqlite_writes: writing transactions queue on a process and a file lock (real SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import create_engine, session_factory
from mesh.sqlite_writes import (
    SerialWriteSession,
    _FlockWaiters,
    file_lock_waits,
    is_write,
    lock_path,
    take_file_lock,
    write_lock,
    write_queue,
)


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
                await asyncio.sleep(0.001)  # poll: hold the transaction open across the loop
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
        async with sessions.begin() as s:  # `scalar` goes through the same queue
            assert await s.scalar(text("INSERT INTO t VALUES (3) RETURNING x")) == 3
            assert write_lock(engine.sync_engine).locked()
        async with sessions.begin() as s:
            assert await s.scalar(text("SELECT count(*) FROM t")) == 2
            await s.execute(text("INSERT INTO t VALUES (4)"))
            assert not write_lock(engine.sync_engine).locked()  # read first, by scalar
        async with sessions() as s:
            assert (await s.execute(text("SELECT x FROM t"))).scalars().all() == [2, 3, 4]
    finally:
        await engine.dispose()


def _waiting_for_file_lock() -> bool:
    return file_lock_waits() > 0


async def _poll(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # poll


@contextlib.asynccontextmanager
async def _two_processes(db: Path) -> AsyncIterator[tuple[AsyncEngine, Any, Any]]:
    """Two engines on one file: two processes as far as locks go (each has its own
    process lock; the file lock beside the database is what they share). Yields the
    first engine and both session makers."""
    url = f"sqlite+aiosqlite:///{db}"
    first, second = create_engine(url), create_engine(url)
    try:
        yield (
            first,
            session_factory(first, serial_writes=True),
            session_factory(second, serial_writes=True),
        )
    finally:
        await first.dispose()
        await second.dispose()


async def test_a_writer_of_another_engine_starts_right_after_the_holder_commits(
    tmp_path: Path,
) -> None:
    async with _two_processes(tmp_path / "x.db") as (first, a, b):
        async with a.begin() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
        assert lock_path(first.sync_engine) == f"{tmp_path / 'x.db'}.write-lock"

        async def other() -> float:
            async with b.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (2)"))
                return time.monotonic()

        async with a.begin() as s:
            await s.execute(text("INSERT INTO t VALUES (1)"))
            waiter = asyncio.create_task(other())
            await _poll(_waiting_for_file_lock)  # blocked in flock, not in SQLite's sleeps
        committed = time.monotonic()
        wrote = await asyncio.wait_for(waiter, 5)
        assert wrote - committed < 0.05  # woken by the kernel, not a busy-handler poll
        async with b() as s:
            assert (await s.execute(text("SELECT x FROM t ORDER BY x"))).scalars().all() == [1, 2]


async def test_a_sigkilled_holder_releases_the_file_lock(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    sessions = session_factory(engine, serial_writes=True)
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import fcntl, os, sys, time\n"
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "time.sleep(60)  # poll: holds the lock until the test kills it\n",
        f"{db}.write-lock",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 10) == b"held\n"
        async with sessions() as s:  # DDL takes no lock
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
            await s.commit()

        async def write() -> None:
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (1)"))

        task = asyncio.create_task(write())
        await _poll(_waiting_for_file_lock)
        assert not task.done()
        holder.send_signal(signal.SIGKILL)
        await asyncio.wait_for(task, 5)
    finally:
        if holder.returncode is None:
            holder.kill()
        await holder.wait()
        await engine.dispose()


def test_waits_for_a_taken_file_lock_reuse_their_threads(tmp_path: Path) -> None:
    """Twenty waits one after another run on one thread, three at once on three, a wait
    that gave up frees the lock when it gets it (tests/support/flock_waits.py, in a
    process of its own: see its docstring for why)."""
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.flock_waits", str(tmp_path)],
        cwd=root, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr


def test_a_wait_told_done_finds_its_thread_idle_for_the_next() -> None:
    # A job's completion is told after its thread counts itself idle again, so the wait
    # it lets start reuses that thread. Told from inside the job (as before), a next
    # wait submitted in the gap started a second thread: the test above failed so
    # under load, once in a full run.
    waiters = _FlockWaiters()
    threads: set[int] = set()
    idle_when_told: list[int] = []
    for _ in range(50):
        done = threading.Event()

        def tell(done: threading.Event = done) -> None:
            idle_when_told.append(waiters._idle)  # the thread already counts as idle
            done.set()

        def job(tell: Callable[[], None] = tell) -> Callable[[], None]:
            threads.add(threading.get_native_id())
            return tell

        waiters.submit(job)
        assert done.wait(5)
    assert idle_when_told == [1] * 50
    assert len(threads) == 1


def _file_lock_free(path: str) -> bool:
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # releases it too, when this took it


async def test_queued_writers_of_a_process_pass_the_file_lock_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty writers queued in one process take the file lock once per `KEEP_FOR` + 1
    transactions (not twenty times), and it is free again once the queue is empty."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'q.db'}")
    sessions = session_factory(engine, serial_writes=True)
    takes = 0
    real_take = take_file_lock

    async def counting_take(path: str, deadline: float) -> int | None:
        nonlocal takes
        takes += 1
        return await real_take(path, deadline)

    monkeypatch.setattr("mesh.sqlite_writes.take_file_lock", counting_take)
    try:
        async with sessions() as s:  # DDL takes no lock
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
            await s.commit()

        async def writer(i: int) -> None:
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (:x)"), {"x": i})
                await asyncio.sleep(0)  # poll: one turn of the loop; the others queue

        await asyncio.gather(*(writer(i) for i in range(20)))
        per_take = write_queue(engine.sync_engine).KEEP_FOR + 1
        assert takes == -(-20 // per_take)  # 3 with KEEP_FOR = 8
        assert _file_lock_free(str(lock_path(engine.sync_engine)))
        async with sessions() as s:
            assert (await s.execute(text("SELECT count(*) FROM t"))).scalar() == 20
    finally:
        await engine.dispose()


async def test_the_other_process_gets_the_file_lock_between_streaks(tmp_path: Path) -> None:
    """A process with a long queue of writers gives the file lock up after `KEEP_FOR`
    transactions in a row: a writer of another engine on the file (another process, as
    far as locks go), blocked in `flock`, commits long before that queue is drained (not
    always after the first streak: the kernel wakes the waiter, and a writer here that
    runs first may take the lock again, as the module says)."""
    async with _two_processes(tmp_path / "f.db") as (first, a, b):
        async with a() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
            await s.commit()
        order: list[str] = []

        async def writer(sessions: Any, name: str) -> None:
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (1)"))
                await asyncio.sleep(0.005)  # poll: a transaction that takes a little while
            order.append(name)

        many = [asyncio.create_task(writer(a, f"a{i}")) for i in range(40)]
        await _poll(lambda: len(order) >= 1)
        other = asyncio.create_task(writer(b, "b"))
        # Counted from when b blocks in flock, not from when its task was made: on a
        # loaded machine its thread once started after most of a's queue had gone.
        await _poll(lambda: file_lock_waits() > 0 or "b" in order)
        waited_at = len(order)
        await asyncio.wait_for(asyncio.gather(other, *many), 20)
        # Kept without end, b would come last; a streak ends after KEEP_FOR + 1.
        streak = write_queue(first.sync_engine).KEEP_FOR + 1
        assert waited_at + streak < len(many), (waited_at, order)  # b waited early
        assert order.index("b") < len(order) - streak, (waited_at, order)


async def test_a_kept_file_lock_nobody_claims_is_let_go(tmp_path: Path) -> None:
    """The writer a file lock was kept for is cancelled before it runs: with nobody else
    queued, the lock goes back (the other processes are not locked out)."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
    sessions = session_factory(engine, serial_writes=True)
    try:
        async with sessions() as s:
            await s.execute(text("CREATE TABLE t (x INTEGER)"))
            await s.commit()
        path = str(lock_path(engine.sync_engine))

        async def second() -> None:
            async with sessions.begin() as s:
                await s.execute(text("INSERT INTO t VALUES (2)"))

        async with sessions.begin() as s:
            await s.execute(text("INSERT INTO t VALUES (1)"))
            waiting = asyncio.create_task(second())
            await _poll(lambda: write_queue(engine.sync_engine).waiting == 1)
        waiting.cancel()  # woken by the end above, cancelled before it ran
        assert write_queue(engine.sync_engine).kept is not None  # kept for it
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert write_queue(engine.sync_engine).kept is None
        assert _file_lock_free(path)
    finally:
        await engine.dispose()
