"""One writing transaction at a time per process on SQLite, queued in the event loop.

SQLite lets one connection write at a time. A second connection that wants the
write lock does not queue: SQLite's busy handler sleeps and polls (1, 2, 5, 10,
... up to 100 ms between tries) until `busy_timeout`. Under concurrency (sixteen
sagas in one orders process, each step a short write transaction) the writers
mostly sleep: the lock is free most of the time while they wait out their next
poll, throughput collapses and latency climbs to seconds (measured with
`python -m bench orders`: p50 3.9 s at 4 orders/s on the loaded 2-core box).

`SerialWriteSession` (what `mesh.db.session_factory(..., serial_writes=True)` makes)
takes a per-process `asyncio.Lock` before a transaction's first statement when
that statement is an INSERT/UPDATE/DELETE (the saga runner's steps start with
their conditional UPDATE for this reason) and releases it when that transaction
ends (commit or rollback), so
the writers of one process queue in the event loop and the next one starts the
moment the previous commits. Reads never take it (WAL readers do not block
writers). Nothing about durability or isolation changes: the same statements run
in the same transactions; only the waiting moves from SQLite's sleeps to a queue.

A transaction that reads before it writes does not queue: holding a read snapshot
while waiting would make its write fail outright (SQLITE_BUSY_SNAPSHOT) whenever
another writer commits first; it meets SQLite's busy handler as before.

Off by default (`mesh.db.session_factory(engine, serial_writes=True)` turns it on):
writers in *other* processes sharing the file (the second orders or inventory
instance) still meet SQLite's busy handler, and a process that hands the lock from
one queued transaction to the next leaves them few gaps. Measured with the chaos
test that SIGKILLs orders-1 under 200 orders: with the queue on in both orders
processes the restarted instance took 7.6 s to > 10 s to serve again (the test
allows 5 s; 5.9 s without the queue on the same loaded box). So it is for a
database one process writes (the events benchmark's producer and consumer).

Other limits: A statement
run through `Connection` (not a session), or a write through `scalar()` or
`stream()`, does not take the lock and behaves as before. A coroutine waiting
longer than `wait_s` for the lock goes ahead without it (SQLite's own locking
still protects the data): a transaction that opens a second, nested writing
session cannot deadlock, it only waits that long once.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.sql.elements import TextClause

log = logging.getLogger(__name__)

_HELD = "mesh_sqlite_write_lock"
_BUSY = "mesh_sqlite_tx_started"
_WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "REPLACE")
# engine -> event loop -> lock (an asyncio.Lock belongs to one loop; tests run many).
_locks: weakref.WeakKeyDictionary[
    Engine, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]
] = weakref.WeakKeyDictionary()


def write_lock(engine: Engine) -> asyncio.Lock:
    """The lock of `engine` (its sync engine) in the running event loop."""
    per_loop = _locks.get(engine)
    if per_loop is None:
        per_loop = _locks[engine] = weakref.WeakKeyDictionary()
    loop = asyncio.get_running_loop()
    lock = per_loop.get(loop)
    if lock is None:
        lock = per_loop[loop] = asyncio.Lock()
    return lock


def is_write(statement: Any) -> bool:
    """INSERT, UPDATE or DELETE, as a Core construct or as `text()`."""
    if getattr(statement, "is_dml", False):
        return True
    if isinstance(statement, TextClause):
        return statement.text.lstrip()[:7].upper().startswith(_WRITE_VERBS)
    return False


class _SyncSession(Session):
    """The sync session under `SerialWriteSession`: releases the lock when its root
    transaction ends (after the COMMIT or ROLLBACK reached SQLite)."""


@event.listens_for(_SyncSession, "after_transaction_end")
def _release(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return
    session.info.pop(_BUSY, None)
    lock = session.info.pop(_HELD, None)
    if lock is not None and lock.locked():
        lock.release()


class SerialWriteSession(AsyncSession):
    """An AsyncSession whose writing transactions queue on the engine's process lock."""

    sync_session_class = _SyncSession
    wait_s = 5.0

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
        lock = write_lock(engine)
        try:
            async with asyncio.timeout(self.wait_s):
                await lock.acquire()
        except TimeoutError:
            log.warning("sqlite write lock not free within %.1fs; writing without it", self.wait_s)
            self.sync_session.info[_HELD] = None  # this transaction does not try again
            return
        # Released by _release when the transaction ends (the statement autobegins one if
        # none is open). The marker also keeps a second write of this transaction from
        # taking the lock again.
        self.sync_session.info[_HELD] = lock
