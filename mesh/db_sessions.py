"""The mesh's AsyncSession and session maker: a session's end (commit or rollback, then
close) runs to the end even if the caller is cancelled, without a task per end.

Why: SQLAlchemy's asyncio layer protects a session's end from cancellation by running
it in a task of its own and awaiting that task through `asyncio.shield`, so a
cancellation (a gRPC deadline, a client gone) can never leave a transaction or a pooled
connection half closed. `async with sessions.begin()` does that twice (the commit, then
the session's `__aexit__`), and a task plus a shield cost two extra turns of the event
loop each: measured on a held SQLite file (one UPDATE per transaction, `sqlite+meshsqlite`,
the shop's `SerialWriteSession`, medians of eight rounds), 266 µs of CPU per write
transaction with SQLAlchemy's two tasks, 237 µs through this module; a read session 171
→ 143 µs. On the shop's own driver in its default mode (WAL,
`synchronous=NORMAL`) the COMMIT, ROLLBACK and the connection's return to the pool
never suspend, so there is nothing for a cancellation to interrupt.

`run_to_end(coro)` keeps SQLAlchemy's guarantee and pays for it only when needed: it
runs `coro` at once in the caller's task; a cancellation can only land where a
coroutine suspends, so if `coro` finishes without suspending it is done, no task made.
If it suspends (PostgreSQL's COMMIT, a COMMIT that fsyncs, a busy SQLite lock), the rest
of it runs in a task of its own, awaited through `asyncio.shield` exactly as SQLAlchemy
does: the caller's cancellation waits until the end has finished, then is raised.
The task drives the coroutine's remaining steps transparently (`_Rest`: every future
the coroutine awaits is the task's own await, every value or exception the task sends
goes back in), which is what `yield from` would do for a coroutine not yet started.

`after_commit(session, callback)` runs `callback()` once the session's transaction has
committed (never if it rolls back): what the outbox uses to wake its relay, and the
orders saga to answer a waiting caller. SQLAlchemy's way, `event.listen(session,
"after_commit", fn, once=True)` per transaction, builds an instance-level dispatcher
for every session it is called on, which every later event of that session then goes
through. Measured on the 2-core box (one process, a held SQLite file): a pair of such
listeners cost ~60 µs of CPU against ~3 µs for a callback queued in `session.info`,
and a whole transaction adding one outbox row (`SerialWriteSession`, medians of eight
rounds of 1,500, four alternating runs) 769-839 µs before, 608-673 µs with this, paid
on every transaction that adds an event (three or four an order). The mesh's sessions
(`MeshSession`'s sync session class) carry the two listeners that run or drop the queue
at class level, registered once; any other session gets them as instance listeners the
first time it is given a callback.

Limits: only the two ends this module makes cheaper (`MeshSessionMaker.begin()`'s
context manager and `MeshSession.__aexit__`); an explicit `await session.commit()` or
`close()` is SQLAlchemy's own, unprotected as always. Unlike SQLAlchemy's `begin()`
context manager, the session is closed even when its commit raises (SQLAlchemy leaves
that session to the garbage collector).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction

from mesh import db_lean

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S", bound="MeshSession")


class _Rest:
    """The rest of coroutine `coro`, which has already yielded `first` to its driver,
    as an awaitable: the task awaiting it sees each yielded future as its own."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # the driving task throws (cancellation) in
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(rest: _Rest) -> Any:
    return await rest


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """`coro`'s result, with `coro` run to its end even if the caller is cancelled
    meanwhile (the cancellation is raised afterwards); a task only if `coro` suspends."""
    try:
        first = coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    task: asyncio.Task[T] = asyncio.get_running_loop().create_task(_finish(_Rest(coro, first)))
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as err:
            if task.done():
                raise
            cancelled = err
        else:
            break
    if cancelled is not None:
        raise cancelled
    return result


# Where a session keeps the callbacks `after_commit` queued for its transaction.
_AFTER_COMMIT = "mesh_after_commit"


class MeshSyncSession(Session):
    """The sync session under `MeshSession`: runs `after_commit`'s callbacks (class-level
    listeners, registered once for every session of this class)."""


def _run_after_commit(session: Session) -> None:
    for callback in session.info.pop(_AFTER_COMMIT, ()):
        try:  # each isolated: a failing callback must not fail the commit after the fact
            callback()
        except Exception:
            log.exception("after-commit callback %r failed", callback)


def _drop_after_commit(session: Session, transaction: SessionTransaction) -> None:
    # After a root transaction's end: a commit ran the queue already; a rollback (or an
    # end that never reached the database) drops it, so no later transaction runs it.
    if transaction.parent is None:
        session.info.pop(_AFTER_COMMIT, None)


event.listen(MeshSyncSession, "after_commit", _run_after_commit)
event.listen(MeshSyncSession, "after_transaction_end", _drop_after_commit)


def after_commit(session: AsyncSession | Session, callback: Callable[[], None]) -> None:
    """Run `callback()` once the session's current transaction has committed; never if it
    rolls back. A callback already queued for this transaction (`==`) is not queued twice."""
    sync = session.sync_session if isinstance(session, AsyncSession) else session
    if not isinstance(sync, MeshSyncSession) and not event.contains(
        sync, "after_commit", _run_after_commit
    ):
        event.listen(sync, "after_commit", _run_after_commit)
        event.listen(sync, "after_transaction_end", _drop_after_commit)
    queued: list[Callable[[], None]] = sync.info.setdefault(_AFTER_COMMIT, [])
    if callback not in queued:
        queued.append(callback)


class MeshSession(AsyncSession):
    """An AsyncSession whose `async with` end runs through `run_to_end`, whose
    transactions run `after_commit`'s callbacks, and which runs statements marked with
    `mesh.db_lean.lean` as driver SQL compiled once (`execute` and `scalar`; any other
    call, or a statement the lean path would change, runs as SQLAlchemy runs it)."""

    sync_session_class = MeshSyncSession

    async def execute(  # type: ignore[override]
        self,
        statement: Any,
        params: Any = None,
        *,
        execution_options: Any = None,
        bind_arguments: Any = None,
        **kw: Any,
    ) -> Any:
        if not execution_options and bind_arguments is None and not kw:
            ready = db_lean.prepare(self.sync_session, statement, params)
            if ready is not None:
                return await self.run_sync(db_lean.run, statement, *ready)
        return await super().execute(
            statement, params, execution_options=execution_options or {},
            bind_arguments=bind_arguments, **kw,
        )  # fmt: skip

    async def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        """`execute(...).scalar()`: what SQLAlchemy's does for a Core statement, through
        this class's `execute` (so a subclass's `execute`, e.g. `SerialWriteSession`'s
        write lock, sees scalar statements too, which AsyncSession's `scalar` bypasses)."""
        return (await self.execute(statement, params, **kw)).scalar()

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        await run_to_end(self.close())


class _Begin(Generic[S]):
    """`async with maker.begin() as session`: a transaction that commits (or rolls back
    on an exception), then the session closed, through one `run_to_end`.

    Two greenlet calls fewer than SQLAlchemy's `AsyncSession.begin()` context: the
    transaction is begun here, on the loop (`Session.begin()` does no I/O: the
    connection is taken by the first statement), and its end and the session's close
    run in one `run_sync` call. Measured on a held SQLite file (one UPDATE per
    transaction, `SerialWriteSession`): see the README's "Statements per order" notes."""

    __slots__ = ("session", "transaction")

    def __init__(self, session: S) -> None:
        self.session = session
        self.transaction: SessionTransaction | None = None

    async def __aenter__(self) -> S:
        transaction = self.session.sync_session.begin()
        transaction.__enter__()  # as AsyncSessionTransaction.start(is_ctxmanager=True)
        self.transaction = transaction
        return self.session

    async def __aexit__(
        self,
        type_: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await run_to_end(self.session.run_sync(self._end, type_, value, traceback))

    def _end(self, sync: Session, type_: Any, value: Any, traceback: Any) -> None:
        try:
            if self.transaction is not None:
                self.transaction.__exit__(type_, value, traceback)
        finally:
            sync.close()


class MeshSessionMaker(async_sessionmaker[S]):
    """`async_sessionmaker` whose `begin()` ends its transaction and session through
    `run_to_end` (one for both), for sessions of a `MeshSession` class."""

    def begin(self) -> _Begin[S]:  # type: ignore[override]
        return _Begin(self())
