"""An asyncio SQLite driver for SQLAlchemy that runs statements on the event loop's
thread and sends to a worker thread only what can wait: a lock another connection holds
(SQLITE_BUSY), a COMMIT that fsyncs; WAL checkpoints run on a thread of their own.

Why hand-written (measured: "SQLite statements on the event loop" in
docs/performance-log.md): with aiosqlite (SQLAlchemy's `sqlite+aiosqlite`) every
statement crosses to the connection's thread and back three or four times (cursor,
execute, fetchall, close), each crossing a queue put, a thread wake-up, a GIL hand-over
and a self-pipe write back to the loop, plus a greenlet switch on SQLAlchemy's side; on
the shop those crossings were the top self cost of an orders process and most of a
statement's ~150 µs of CPU. A statement on a small WAL database in the page cache takes
a few to tens of microseconds in SQLite itself, less than one crossing. So this driver
runs it where it is asked for, and crosses only to wait (a lock, an fsync) instead of
three or four times per statement. No well-kept library does this: aiosqlite and
SQLAlchemy's other SQLite dialects are either thread-per-call or synchronous. It is a
SQLAlchemy dialect (`sqlite+meshsqlite`, registered through the public dialect registry)
over the standard `sqlite3` module; SQLite, its locking and its durability are exactly
those of `sqlite3`.

What may block, and where it runs:

- **Waiting for a lock.** The connection's own busy timeout is 0, so a statement that
  meets a lock held by another connection fails at once with SQLITE_BUSY instead of
  sleeping on the loop. It is then run again on the connection's worker thread with the
  busy timeout the connection was given (`timeout=` of `connect`, 5 s like `sqlite3`,
  or a later `PRAGMA busy_timeout = N`, which this driver records instead of setting).
  Running it again is what SQLite's busy handler does itself: a statement that got
  SQLITE_BUSY acquiring its first lock of a transaction holds no lock and no snapshot
  afterwards (SQLite releases them before calling the handler). SQLITE_BUSY_SNAPSHOT
  (a transaction that read and then wants to write after another writer committed) is
  raised as before: waiting cannot cure it, and SQLite's busy handler does not wait on
  it either.
- **COMMIT** runs on the loop when it cannot wait on the disk: in WAL mode with
  `synchronous=NORMAL` or OFF (what `mesh.db.create_engine` sets) a COMMIT appends to
  the WAL (a `write`, no fsync) and only a checkpoint fsyncs. Such a connection turns
  SQLite's automatic checkpoint off (`wal_autocheckpoint=0`, its own setting) and the
  process's checkpoint thread for that file (`_Checkpointer`, one per database file per
  process, a connection of its own) runs `PRAGMA wal_checkpoint(PASSIVE)` every
  `_Checkpointer.interval_s` (0.2 s) after commits: the fsyncs happen there, never on
  the loop. PASSIVE never waits for readers or writers; pages a reader still needs are
  copied by a later round. Measured (2-core box, one write transaction of one UPDATE on
  a held connection): 400 µs of CPU with the COMMIT handed to the worker thread, 235 µs
  on the loop: the hand-off (a queue put, a thread wake-up, a GIL hand-over, a self-pipe
  write back to the loop) cost more than the statement. In any other mode (a rollback
  journal, or `synchronous=FULL`, where a COMMIT fsyncs) the COMMIT of a transaction
  that wrote runs on the worker thread as before. The mode is read at a connection's
  first COMMIT (two PRAGMA reads) and again after any PRAGMA it runs. COMMIT of nothing
  is a no-op. ROLLBACK runs on the loop (it releases locks; it never waits). Limits: the
  WAL grows by what 0.2 s of commits write before a round copies it back (SQLite's
  default would checkpoint every 1,000 pages); a process whose checkpoint thread cannot
  keep up leaves a longer WAL, not lost data; another program's connections keep their
  own automatic checkpoints.
- **Reading pages** of a database not in the OS page cache is a disk read on the loop
  (SQLite reads through the page cache; the shop's databases are small and hot). A
  statement that scans many rows holds the loop for its run time: keep large scans out
  of request paths, or use PostgreSQL.

Cancelling a coroutine while its statement or COMMIT runs on the worker waits for the
worker to finish (at most the busy timeout) before the cancellation goes on: the
connection is never used by two threads at once, and a COMMIT under way completes (as
with aiosqlite, whose thread finished it anyway).

Each connection starts its worker thread (a daemon) at its first hand-off and stops it
when closed; a checkpoint thread stops when the process's last connection to its file
closes. Rows are fetched in full when a statement runs (as SQLAlchemy's other
asyncio dialects do); server-side cursors are not supported. `MESH_SQLITE_DRIVER=aiosqlite`
makes `mesh.db.create_engine` use SQLAlchemy's aiosqlite dialect instead.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import re
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sqlalchemy import pool
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL, AdaptedConnection
from sqlalchemy.exc import MissingGreenlet

T = TypeVar("T")
log = logging.getLogger(__name__)

DRIVER = "meshsqlite"
_SQLITE_BUSY = 5
_SQLITE_BUSY_SNAPSHOT = 517
_BUSY_PRAGMA = re.compile(r"\s*PRAGMA\s+(?:main\.)?busy_timeout\s*=\s*(\d+)\s*;?\s*$", re.I)
_SYNCHRONOUS_NORMAL = 1  # PRAGMA synchronous: 0 OFF, 1 NORMAL, 2 FULL, 3 EXTRA


def is_busy(exc: BaseException) -> bool:
    """SQLITE_BUSY (any extended code but BUSY_SNAPSHOT, which waiting cannot cure)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        isinstance(exc, sqlite3.OperationalError)
        and code is not None
        and code & 0xFF == _SQLITE_BUSY
        and code != _SQLITE_BUSY_SNAPSHOT
    )


class _Worker:
    """One daemon thread running a connection's hand-offs in order."""

    __slots__ = ("_queue", "_thread")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sqlite-worker", daemon=True)
            self._thread.start()
        self._queue.put((loop, fut, fn))
        return fut

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, fut, fn = item
            try:
                result, error = fn(), None
            except BaseException as exc:  # handed to the awaiting coroutine
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, fut, result, error)


class _Checkpointer:
    """Checkpoints one database file's WAL for this process, on a daemon thread with a
    connection of its own (see the module docstring: COMMIT on the loop)."""

    interval_s = 0.2
    _lock = threading.Lock()
    _by_path: dict[str, _Checkpointer] = {}

    def __init__(self, path: str) -> None:
        self.path = path
        self.users = 0
        self.commits = 0  # bumped by committers (any thread); only its changes matter
        self.rounds = 0  # checkpoints run
        self.last: tuple[int, int, int] | None = None  # (busy, WAL frames, copied)
        self._stop = threading.Event()

    @classmethod
    def join(cls, path: str) -> _Checkpointer:
        """The checkpointer of `path`, started if it was not running."""
        with cls._lock:
            found = cls._by_path.get(path)
            if found is None:
                found = cls._by_path[path] = cls(path)
                threading.Thread(target=found._run, name="sqlite-checkpoint", daemon=True).start()
            found.users += 1
            return found

    def leave(self) -> None:
        with self._lock:
            self.users -= 1
            if self.users <= 0 and self._by_path.get(self.path) is self:
                del self._by_path[self.path]
                self._stop.set()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        seen = 0
        failing = False
        try:
            while not self._stop.wait(self.interval_s):
                if self.commits == seen:
                    continue
                seen = self.commits
                try:
                    if conn is None:
                        conn = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
                    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                except Exception as exc:  # tried again after the next commits
                    # Said once per run of failures: meanwhile the WAL only grows.
                    (log.debug if failing else log.warning)(
                        "sqlite checkpoint of %s failed (the WAL grows until one works): %r",
                        self.path, exc,
                    )  # fmt: skip
                    failing = True
                    continue
                failing = False
                self.rounds += 1
                self.last = (int(row[0]), int(row[1]), int(row[2]))
        finally:
            if conn is not None:
                conn.close()


def wal_checkpoints(path: str) -> tuple[int, tuple[int, int, int] | None]:
    """The checkpoint rounds this process ran on the database file `path` (as `PRAGMA
    database_list` names it) and the last one's (busy, WAL frames, frames copied); (0,
    None) when no connection of this process commits on the loop to it."""
    with _Checkpointer._lock:
        found = _Checkpointer._by_path.get(path)
    return (0, None) if found is None else (found.rounds, found.last)


class _Ready:
    """An awaitable that is done at once (awaiting it never suspends)."""

    __slots__ = ()

    def __await__(self) -> Any:
        return iter(())


_READY = _Ready()


def _ready(_raw: Any) -> Any:
    return _READY


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class _Ran:
    """What a statement left: its description, rowcount, lastrowid and rows."""

    __slots__ = ("description", "lastrowid", "rowcount", "rows")

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.description = cur.description
        self.rows = cur.fetchall() if cur.description is not None else []
        self.rowcount = cur.rowcount
        self.lastrowid = cur.lastrowid


class Cursor:
    """A DBAPI cursor over `sqlite3`: runs on the loop, or on the worker when it must wait."""

    __slots__ = ("_conn", "_rows", "arraysize", "description", "lastrowid", "rowcount")
    server_side = False

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._rows: collections.deque[Any] = collections.deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def execute(self, operation: str, parameters: Any = None) -> Any:
        if operation[:6].upper() == "PRAGMA":
            self._conn._commit_here = None  # journal_mode / synchronous may change
            m = _BUSY_PRAGMA.match(operation)
            if m is not None:  # the wait of the worker; SQLite's own stays 0
                self._conn.busy_timeout_ms = int(m.group(1))
                operation, parameters = "PRAGMA busy_timeout = 0", None
        raw = self._conn._sqlite
        args = () if parameters is None else (parameters,)
        return self._done(self._conn._run(lambda: _Ran(raw.execute(operation, *args))))

    def executemany(self, operation: str, seq_of_parameters: Sequence[Any]) -> Any:
        raw = self._conn._sqlite
        rows = seq_of_parameters
        return self._done(self._conn._run(lambda: _Ran(raw.executemany(operation, rows))))

    def _done(self, ran: _Ran) -> Cursor:
        self._conn._switch()
        self.description = ran.description
        self.rowcount = ran.rowcount
        self.lastrowid = ran.lastrowid
        self._rows = collections.deque(ran.rows)
        return self

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        n = self.arraysize if size is None else size
        rows = self._rows
        return [rows.popleft() for _ in range(min(n, len(rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def __iter__(self) -> Any:
        while self._rows:
            yield self._rows.popleft()

    def close(self) -> None:
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """Called by SQLAlchemy's asyncio results on the cursors of asyncio dialects:
        the rows are fetched and the statement reset already, so nothing is left to do."""

    def setinputsizes(self, *sizes: Any) -> None:
        pass

    def setoutputsize(self, size: Any, column: Any = None) -> None:
        pass


class Connection(AdaptedConnection):
    """A DBAPI connection over a `sqlite3` connection opened with busy timeout 0."""

    __slots__ = ("_checkpointer", "_commit_here", "_sqlite", "_worker", "busy_timeout_ms")

    def __init__(self, raw: sqlite3.Connection, busy_timeout_ms: int) -> None:
        # AdaptedConnection.driver_connection (typed there for awaitable drivers).
        self._connection = raw  # type: ignore[assignment]
        self._sqlite = raw
        self._worker = _Worker()
        self.busy_timeout_ms = busy_timeout_ms
        self._commit_here: bool | None = None  # None: read the mode at the next COMMIT
        self._checkpointer: _Checkpointer | None = None

    # -- DBAPI ---------------------------------------------------------------------------

    def cursor(self, server_side: bool = False) -> Cursor:
        if server_side:
            raise NotImplementedError("meshsqlite has no server-side cursors")
        return Cursor(self)

    def execute(self, operation: str, parameters: Any = None) -> Cursor:
        return self.cursor().execute(operation, parameters)  # type: ignore[no-any-return]

    def commit(self) -> None:
        raw = self._sqlite
        if not raw.in_transaction:
            return  # nothing to commit: no hand-off
        here = self._commit_here
        if here is None:
            here = self._commit_here = self._commits_without_fsync()
        if not here:
            self._offload(lambda: self._waiting(raw.commit))
            return
        self._run(raw.commit)
        if self._checkpointer is not None:
            self._checkpointer.commits += 1

    def _commits_without_fsync(self) -> bool:
        """Whether a COMMIT here never fsyncs (WAL with synchronous NORMAL or OFF, or an
        in-memory database); a WAL file's checkpoints then move to its checkpoint thread.
        Runs inside the transaction being committed: PRAGMA reads take no lock."""
        raw = self._sqlite
        mode = str(raw.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode == "memory":
            return True
        if mode != "wal" or raw.execute("PRAGMA synchronous").fetchone()[0] > _SYNCHRONOUS_NORMAL:
            return False
        if self._checkpointer is None:
            path = next((r[2] for r in raw.execute("PRAGMA database_list") if r[1] == "main"), "")
            if not path:
                return False
            raw.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = _Checkpointer.join(path)
        return True

    def rollback(self) -> None:
        self._sqlite.rollback()

    def close(self) -> None:
        self._worker.stop()
        checkpointer, self._checkpointer = self._checkpointer, None
        self._sqlite.close()
        if checkpointer is not None:
            checkpointer.leave()

    def terminate(self) -> None:
        self.close()

    @property
    def isolation_level(self) -> str | None:
        return self._sqlite.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._sqlite.isolation_level = value  # type: ignore[assignment]

    @property
    def in_transaction(self) -> bool:
        return self._sqlite.in_transaction

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._sqlite.create_function(*args, **kwargs)

    # -- where things run -------------------------------------------------------------------

    def _run(self, fn: Callable[[], T]) -> T:
        """`fn` on the loop; on SQLITE_BUSY once more on the worker, waiting for the lock."""
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or self.busy_timeout_ms <= 0:
                raise
        return self._offload(lambda: self._waiting(fn))

    def _waiting(self, fn: Callable[[], T]) -> T:
        """On the worker: `fn` with the connection's busy timeout, back to 0 after."""
        raw = self._sqlite
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or self.busy_timeout_ms <= 0:
                raise
        raw.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        try:
            return fn()
        finally:
            raw.execute("PRAGMA busy_timeout = 0")

    def _switch(self) -> None:
        """A greenlet round trip that does not reach the event loop (~1 µs): SQLAlchemy's
        `AsyncConnection.execute` insists that its driver awaited something."""
        with contextlib.suppress(MissingGreenlet):
            self.run_async(_ready)

    def _offload(self, fn: Callable[[], T]) -> T:
        """`fn` on the worker thread, awaited through SQLAlchemy's greenlet; run here when
        there is no greenlet to wait in (a connection closed by garbage collection)."""
        try:
            return self.run_async(lambda _raw: self._on_worker(fn))
        except MissingGreenlet:  # the coroutine was closed unstarted: nothing ran
            return fn()

    async def _on_worker(self, fn: Callable[[], T]) -> T:
        fut = self._worker.submit(fn)
        cancelled = False
        while not fut.done():
            try:
                await asyncio.shield(fut)
            except asyncio.CancelledError:
                # Never leave the worker using the connection behind the caller's back:
                # the cancellation goes on once the worker is done with it.
                cancelled = True
            except BaseException:  # fut's own error: raised by fut.result() below
                pass
        if cancelled:
            raise asyncio.CancelledError
        return fut.result()


class _DBAPI:
    """The module-like object SQLAlchemy's dialect calls `connect` on."""

    paramstyle = "qmark"
    threadsafety = 1
    apilevel = "2.0"
    Error = sqlite3.Error
    Warning = sqlite3.Warning
    InterfaceError = sqlite3.InterfaceError
    DatabaseError = sqlite3.DatabaseError
    DataError = sqlite3.DataError
    OperationalError = sqlite3.OperationalError
    IntegrityError = sqlite3.IntegrityError
    InternalError = sqlite3.InternalError
    ProgrammingError = sqlite3.ProgrammingError
    NotSupportedError = sqlite3.NotSupportedError
    Binary = sqlite3.Binary
    PARSE_COLNAMES = sqlite3.PARSE_COLNAMES
    PARSE_DECLTYPES = sqlite3.PARSE_DECLTYPES
    sqlite_version = sqlite3.sqlite_version
    sqlite_version_info = sqlite3.sqlite_version_info

    def connect(self, database: str, *, timeout: float = 5.0, **kwargs: Any) -> Connection:
        kwargs["check_same_thread"] = False  # the worker thread uses it too (never at once)
        raw = sqlite3.connect(database, timeout=0, **kwargs)
        return Connection(raw, int(timeout * 1000))


class SQLiteDialect_meshsqlite(SQLiteDialect_pysqlite):
    """`sqlite+meshsqlite://`: SQLAlchemy's pysqlite dialect (SQL, types, isolation) over
    this module's asyncio connection."""

    driver = DRIVER
    is_async = True
    supports_statement_cache = True
    supports_server_side_cursors = False
    has_terminate = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        if cls._is_url_file_db(url):
            return pool.AsyncAdaptedQueuePool
        return pool.StaticPool

    def get_driver_connection(self, connection: Any) -> Any:
        return connection.driver_connection

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.terminate()


def register() -> None:
    """Make `sqlite+meshsqlite://` URLs resolve to this dialect (idempotent)."""
    registry.register(f"sqlite.{DRIVER}", __name__, "SQLiteDialect_meshsqlite")


register()
