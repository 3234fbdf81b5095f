"""One writing transaction at a time on a SQLite file: queued in the event loop, and a
file lock across processes.

SQLite lets one connection write at a time. A second connection that wants the
write lock does not queue: SQLite's busy handler sleeps and polls (1, 2, 5, 10,
... up to 100 ms between tries) until `busy_timeout`. Under concurrency (sixteen
sagas in one orders process, each step a short write transaction) the writers
mostly sleep: the lock is free most of the time while they wait out their next
poll, throughput collapses and latency climbs to seconds (measured with
`python -m bench orders`: p50 3.9 s at 4 orders/s on the loaded 2-core box).

`SerialWriteSession` (what `mesh.db.session_factory(..., serial_writes=True)` makes)
takes a per-process `asyncio.Lock` (then a file lock, below) before a transaction's
first statement when that statement is an INSERT/UPDATE/DELETE (the saga runner's
steps start with their conditional UPDATE for this reason) and releases it when that
transaction ends (commit or rollback), so the writers of one process queue in the
event loop and the next one starts the moment the previous commits. Reads never take
it (WAL readers do not block writers). Nothing about durability or isolation
changes: the same statements run in the same transactions; only the waiting moves
from SQLite's sleeps to a queue.

Across processes (two instances of a service writing one file), the process lock
alone starved the other process: it handed the SQLite lock from one queued
transaction to the next while the other process slept in the busy handler (the
chaos test that SIGKILLs orders-1 under 200 orders saw the restarted instance take
5.4 s to > 10 s to serve again). So the holder of the process lock also takes an
exclusive `flock` on `<database>.write-lock` beside the file, released (its fd
closed) when the transaction ends, just before the process lock. A free file lock is
taken at once; a taken one is waited for by a daemon thread blocked in `flock`, so the
kernel wakes the waiter the moment the holder commits, instead of a sleep-poll; the
event loop never blocks. A holder killed with SIGKILL releases it with its fds.
Measured on the shop (two orders, two inventory instances; `python -m bench orders`,
16 clients, 2-core box): p99 0.9 s instead of 1.9-2.9 s, 36 instead of 31 orders/s;
the chaos test's orders-1 served again after 0.7-1.4 s. It is on in the shop
(`services/common/bootstrap.py`).

A transaction that ends while another writer of its process is queued passes the file
lock on to it (`_WriteQueue`), up to `KEEP_FOR` (8) transactions in a row; then it is
released, so a waiter of the other process, already blocked in the kernel, gets its
turn (not a strict FIFO: the kernel wakes every waiter and the first to run wins). Why
not release it after every transaction, as until 5 Dec 2026: the other process's
waiter then held the file lock until its own event loop came round to run its
transaction (milliseconds under load), while every writer queued here waited behind
it. Measured with `bench orders` (16 clients, three rounds, old and new alternating):
p99 412-577 ms before, 328-382 ms after; orders/s and CPU per order within their
spread (the median order is a little slower: 170-185 ms before, 182-195 ms after).

A transaction that reads before it writes does not queue: holding a read snapshot
while waiting would make its write fail outright (SQLITE_BUSY_SNAPSHOT) whenever
another writer commits first; it meets SQLite's busy handler as before.

Off by default (`mesh.db.session_factory(engine, serial_writes=True)` turns it on).
An in-memory database (no file) gets the process lock only.

Other limits: A statement
run through `Connection` (not a session), or a write through `scalar()` or
`stream()`, does not take the lock and behaves as before. A coroutine waiting
longer than `wait_s` for the locks (both together) goes ahead without them
(SQLite's own locking still protects the data): a transaction that opens a second,
nested writing session cannot deadlock, it only waits that long once (a nested
session of another engine on the same file waits on the file lock likewise). A
waiter that gives up leaves its thread to close its fd once it gets the lock. The
file lock is advisory: a writer that does not use this module (a `Connection`, the
relay, another program) meets SQLite's busy handler as before.

The threads that wait in `flock` are kept and reused (`_FlockWaiters`): starting one
per wait cost the event loop a thread start each time the other process held the
lock (`Thread.start` was 3.9 % of an orders process's samples under `bench orders`,
and the loop waits there until the new thread runs). Up to four idle ones are kept;
more start when more waits are blocked at once (a waiter that gave up still holds its
thread until it gets the lock, then closes the fd).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.elements import TextClause

from mesh.db_sessions import MeshSession, MeshSyncSession

log = logging.getLogger(__name__)

_HELD = "mesh_sqlite_write_lock"
_FILE = "mesh_sqlite_write_file_lock"
_BUSY = "mesh_sqlite_tx_started"
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
# engine -> event loop -> queue (an asyncio.Lock belongs to one loop; tests run many).
_queues: weakref.WeakKeyDictionary[
    Engine, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _WriteQueue]
] = weakref.WeakKeyDictionary()


class _WriteQueue:
    """The writers of one engine in one event loop: the lock they queue on, how many wait
    for it, and the file lock a writer that ended left to the next one (`kept`).

    Why keep it: with two processes writing one file, each transaction used to take the
    file lock and give it back. A writer of the other process, blocked in `flock`, then
    got it, and held it until its own event loop came round to running its transaction
    (under load, milliseconds: the loop has other callbacks queued first), while every
    queued writer here waited. Passing the file lock on to the next writer of this process
    skips that round trip; after `KEEP_FOR` transactions in a row the holder lets it go,
    so the other process's writers still get their turn."""

    KEEP_FOR = 8

    __slots__ = ("kept", "lock", "streak", "waiting")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.waiting = 0  # writers waiting for `lock`
        self.kept: int | None = None  # an fd holding the file lock, for the next writer
        self.streak = 0  # transactions in a row under one file lock

    async def acquire(self, deadline: float) -> bool:
        """Take `lock` (False when the loop's clock passes `deadline` first). A waiter that
        gives up and leaves nobody behind it lets a kept file lock go."""
        self.waiting += 1
        try:
            async with asyncio.timeout_at(deadline):
                await self.lock.acquire()
            return True
        except TimeoutError:
            return False
        finally:
            self.waiting -= 1
            if self.waiting == 0 and not self.lock.locked():
                self._let_go()

    def take_kept(self) -> int | None:
        """The file lock the previous writer left (this writer now holds it), or None."""
        fd, self.kept = self.kept, None
        return fd

    def end(self, fd: int | None) -> None:
        """A writer's transaction ended (after its COMMIT or ROLLBACK): its file lock goes
        to the next writer of this process if one waits and the streak allows, else back
        to the other processes; then the lock is released."""
        if fd is not None:
            if self.waiting and self.streak < self.KEEP_FOR:
                self.kept = fd
                self.streak += 1
            else:
                os.close(fd)  # releases the file lock
                self.streak = 0
        self.lock.release()

    def _let_go(self) -> None:
        if self.kept is not None:
            os.close(self.kept)
            self.kept = None
            self.streak = 0


def write_queue(engine: Engine) -> _WriteQueue:
    """The writers' queue of `engine` (its sync engine) in the running event loop."""
    per_loop = _queues.get(engine)
    if per_loop is None:
        per_loop = _queues[engine] = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    q = per_loop.get(loop)
    if q is None:
        q = per_loop[loop] = _WriteQueue()
    return q


def write_lock(engine: Engine) -> asyncio.Lock:
    """The lock of `engine` (its sync engine) in the running event loop."""
    return write_queue(engine).lock


def is_write(statement: Any) -> bool:
    """INSERT, UPDATE or DELETE, as a Core construct or as `text()`."""
    if getattr(statement, "is_dml", False):
        return True
    if isinstance(statement, TextClause):
        return statement.text.lstrip()[:7].upper().startswith(_WRITE_VERBS)
    return False


class _SyncSession(MeshSyncSession):
    """The sync session under `SerialWriteSession`: releases the lock when its root
    transaction ends (after the COMMIT or ROLLBACK reached SQLite)."""


@event.listens_for(_SyncSession, "after_transaction_end")
def _release(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        _release_locks(session)


def _release_locks(session: Session) -> None:
    session.info.pop(_BUSY, None)
    fd = session.info.pop(_FILE, None)
    q = session.info.pop(_HELD, None)
    if q is not None:
        q.end(fd)
    elif fd is not None:
        os.close(fd)


class SerialWriteSession(MeshSession):
    """An AsyncSession whose writing transactions queue on the engine's process lock
    (released when the transaction ends: by `_release` for the session's own, by
    `transaction_ended` for a lean transaction, `mesh.db_sessions._LeanTransaction`)."""

    sync_session_class = _SyncSession
    own_listeners = MeshSession.own_listeners | {_release}
    wait_s = 5.0

    def transaction_ended(self, sync: Session) -> None:
        super().transaction_ended(sync)
        _release_locks(sync)

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        info = self.sync_session.info
        if _HELD not in info and is_write(statement):
            if _BUSY in info:
                # The transaction read first: waiting in the queue with its read snapshot
                # would make the write fail at once (SQLITE_BUSY_SNAPSHOT) if another
                # writer commits meanwhile. Left to SQLite, as without this module.
                info[_HELD] = None
            else:
                await self._take_write_lock()
        info[_BUSY] = True
        return await super().execute(statement, *args, **kwargs)

    async def _take_write_lock(self) -> None:
        bind = self.sync_session.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        q = write_queue(engine)
        deadline = asyncio.get_running_loop().time() + self.wait_s
        if not await q.acquire(deadline):
            log.warning("sqlite write lock not free within %.1fs; writing without it", self.wait_s)
            self.sync_session.info[_HELD] = None  # this transaction does not try again
            return
        # Released by _release when the transaction ends (the statement autobegins one if
        # none is open). The marker also keeps a second write of this transaction from
        # taking the lock again.
        self.sync_session.info[_HELD] = q
        fd = q.take_kept()  # the previous writer of this process left it to us
        path = lock_path(engine)
        if fd is None and path is not None:
            try:
                fd = await take_file_lock(path, deadline)
            except BaseException:
                self.sync_session.info.pop(_HELD, None)
                q.end(None)
                raise
            if fd is None:
                log.warning(
                    "sqlite write file lock not free in %.1fs; writing without it", self.wait_s
                )
        if fd is not None:
            self.sync_session.info[_FILE] = fd


def lock_path(engine: Engine) -> str | None:
    """`<database file>.write-lock`, or None for an in-memory database."""
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return f"{database}.write-lock"


class _FlockWaiters:
    """Daemon threads that run blocking `flock` waits, kept for the next wait.

    Why not a `ThreadPoolExecutor`: its threads are joined at interpreter exit, and a
    thread blocked in `flock` on a lock another process holds would hold the exit up;
    these are daemon threads, as the one-thread-per-wait they replace. `submit` hands a
    job to an idle thread or starts one, so a wait never queues behind another wait
    (each may block for as long as the other process holds the lock).
    """

    def __init__(self, keep: int = 4) -> None:
        self._keep = keep
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child has none of the threads

    def _reset(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], None] | None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting for a job, not yet promised one
        self.busy = 0  # jobs running (threads inside flock or about to be)

    def submit(self, job: Callable[[], Callable[[], None] | None]) -> None:
        """Run `job` on an idle thread (or a new one). What `job` returns, if anything,
        runs after the thread counts itself idle again: the job's completion is told
        there, so the next wait it lets start finds this thread free instead of
        starting another (under load the gap was wide enough to hit)."""
        with self._lock:
            start = self._idle == 0
            if not start:
                self._idle -= 1  # promised this job
            self.busy += 1
        self._jobs.put(job)
        if start:
            threading.Thread(target=self._work, name="sqlite-write-lock", daemon=True).start()

    def _work(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            then = None
            try:
                then = job()
            except BaseException:  # a daemon thread has nobody else to tell
                log.exception("sqlite write lock waiter failed")
            with self._lock:
                self.busy -= 1
                keep = self._idle < self._keep
                if keep:
                    self._idle += 1
            if then is not None:
                try:
                    then()
                except BaseException:
                    log.exception("sqlite write lock waiter failed")
            if not keep:
                return


_waiters = _FlockWaiters()


def file_lock_waits() -> int:
    """How many waits for a taken file lock are in progress in this process (each blocks
    a thread in `flock`): for diagnostics and tests."""
    return _waiters.busy


async def take_file_lock(path: str, deadline: float) -> int | None:
    """An fd holding an exclusive `flock` on `path` (closing it releases the lock), or None
    when the loop's clock passes `deadline` first.

    A free lock is taken at once (non-blocking). Otherwise a waiter thread (kept for
    reuse, `_FlockWaiters`) blocks in `flock`, so the kernel wakes it the moment the
    holder closes (or dies): no sleep-poll, and the event loop never blocks. A waiter
    that gives up (deadline, cancellation) leaves the thread to close the fd once it gets
    the lock; a daemon thread never holds up interpreter exit.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    loop = asyncio.get_running_loop()
    got: asyncio.Future[None] = loop.create_future()
    state = threading.Lock()  # decides once who closes fd: the waiter or the thread
    flags = {"handed": False, "gave_up": False}

    def handed(_: object) -> None:
        if not got.done():
            got.set_result(None)

    def tell() -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: the process is going away
            loop.call_soon_threadsafe(handed, None)

    def wait() -> Callable[[], None] | None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with state:
            if flags["gave_up"]:
                os.close(fd)
                return None
            flags["handed"] = True
        return tell  # once this thread is idle again (`_FlockWaiters.submit`)

    _waiters.submit(wait)
    try:
        async with asyncio.timeout_at(deadline):
            await got
        return fd
    except BaseException as exc:
        with state:
            flags["gave_up"] = True
            handed_over = flags["handed"]
        if handed_over:
            os.close(fd)
        if isinstance(exc, TimeoutError):
            return None
        raise
