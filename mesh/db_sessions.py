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

`async with maker.begin()` and `async with maker()` blocks run lean transactions
(`_LeanTransaction`): the block's lean statements (`mesh.db_lean`) run on a connection the
first of them takes, without the ORM session's transaction machinery; anything else the
block does joins that transaction.

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
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import InvalidRequestError
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


# The session events a lean transaction fires only by handing itself to the session
# (`_LeanTransaction.join`): with any listener for them beyond the mesh's own, it does.
_TRANSACTION_EVENTS = (
    "after_begin",
    "after_transaction_create",
    "before_commit",
    "after_commit",
    "after_rollback",
    "after_soft_rollback",
    "after_transaction_end",
)


def _already_begun() -> InvalidRequestError:
    """What SQLAlchemy's session raises for a second `begin()` (a lean block refuses it
    the same way)."""
    return InvalidRequestError("A transaction is already begun on this Session.")


class _LeanTransaction:
    """The transaction of a session's block (`async with maker.begin()`, which commits at
    its end, or `async with maker()`, which rolls back what is left) on a connection of its
    own, begun by its first lean statement, the ORM session never begun unless something
    needs it.

    Why: for a block of lean statements (`mesh.db_lean`), the ORM session's transaction
    machinery costs more than the statements. Its SessionTransaction's state machine,
    `Session.connection()` on every statement, and the commit and close of the
    transaction and the session took ~16 % of an orders process's samples under `bench
    orders` (6 Dec 2026); a two-statement write transaction on a held SQLite file cost
    163 µs of CPU through the session against 95 µs on a bare `AsyncConnection`. Here
    the first lean statement takes a connection from the engine (`Engine.connect`,
    `begin`), every lean statement runs on it, and the block's end commits it (or rolls
    it back) and runs the `after_commit` callbacks itself.

    Nothing else changes meaning. The moment the connection is taken the session is
    bound to it (`bind` = the connection, `join_transaction_mode="control_fully"`, the
    documented way to join a session into an external transaction), so anything that
    begins the session after that (a statement that is not lean, `add`, `flush`,
    `connection()`, `run_sync`, `begin_nested`) runs in this same transaction, and the
    session then owns it: its commit or rollback ends it and fires its events. An
    explicit `commit()`/`rollback()`/`close()` joins it first, so it ends what it ends
    with the session. At the block's end, a session that has listeners of its own for
    the transaction events (`before_commit`, `after_rollback`, ... beyond the mesh's)
    is joined first too, so they fire as before. Something that begins the session
    before the first lean statement leaves the block on the session's own path.

    Limits: until the session is joined, `get_transaction()` is None (`in_transaction()`
    is true, `MeshSession` says so) and an `after_begin` listener added during the
    block fires late (at the join); a listener for `after_begin` or
    `after_transaction_create` that exists when the block begins keeps the block on the
    session's path. Only for sessions bound to one Engine (no `binds`, no `twophase`)."""

    __slots__ = ("conn", "saved")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.saved: tuple[Any, Any] = (None, None)

    def run(self, sync: Session, statement: Any, plan: db_lean.Plan | None, args: Any) -> Any:
        """In the session's greenlet: a lean statement on the block's connection, as
        driver SQL (`plan`) or, where it has no plan for this call, compiled."""
        conn = self.conn
        if conn is None:
            conn = self._open(sync)
        if plan is None:
            return db_lean.run_compiled_on(conn, statement, args)
        return db_lean.run_on(conn, plan, args)

    def _open(self, sync: Session) -> Connection:
        engine = sync.bind
        assert isinstance(engine, Engine)  # MeshSession._start_lean checked
        conn = engine.connect()
        try:
            conn.begin()
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        self.saved = (engine, sync.join_transaction_mode)
        sync.bind = conn
        sync.join_transaction_mode = "control_fully"
        return conn

    def join(self, sync: Session) -> None:
        """Hand the transaction to the session (in its greenlet), if it has one the
        session does not know of yet."""
        if self.conn is not None and not sync.in_transaction():
            sync.connection()

    def end(self, sync: Session, session: MeshSession, begun: bool, *exc_info: Any) -> None:
        """In the session's greenlet: the block's end. A `begin()` block (`begun`)
        commits what the session and the connection hold, or rolls it back if the block
        raised (`exc_info`: its type, value, traceback); `async with maker() as session`
        rolls back what is left, as the session's close does. Then closes both."""
        conn = self.conn
        commit = begun and (not exc_info or exc_info[0] is None)
        in_session = True  # whether the session took part (its close must clear it)
        try:
            if not sync.in_transaction() and session.listens(sync):
                if conn is not None:
                    self.join(sync)
                elif commit:
                    sync.begin()  # no lean statement ran: the session's own end, as before
            in_session = sync.in_transaction()
            if in_session:
                if begun:
                    transaction = sync.get_transaction()
                    assert transaction is not None
                    transaction.__exit__(*(exc_info or (None, None, None)))  # events and all
                else:
                    sync.close()  # rolls back, as the session's own end
            if conn is not None and conn.in_transaction():
                if commit:
                    conn.commit()
                    _run_after_commit(sync)
                else:
                    conn.rollback()
        finally:
            try:
                if conn is not None:
                    sync.bind, sync.join_transaction_mode = self.saved
                    conn.close()
            finally:
                session.transaction_ended(sync)
                if in_session or sync.identity_map:
                    sync.close()


class MeshSession(AsyncSession):
    """An AsyncSession whose `async with` end runs through `run_to_end`, whose
    transactions run `after_commit`'s callbacks, and which runs statements marked with
    `mesh.db_lean.lean` as driver SQL compiled once (`execute` and `scalar`; any other
    call, or a statement the lean path would change, runs as SQLAlchemy runs it)."""

    sync_session_class = MeshSyncSession
    # The session listeners a lean transaction stands in for (`transaction_ended`).
    own_listeners: ClassVar[frozenset[Callable[..., Any]]] = frozenset(
        {_run_after_commit, _drop_after_commit}
    )
    _lean: _LeanTransaction | None = None  # in a lean block, until it ends
    lean_ok = False  # set by MeshSessionMaker: bound to one Engine (no binds, no twophase)

    def _start_lean(self) -> bool:
        """Begin a lean transaction for the block this session starts, where it can."""
        sync = self.sync_session
        if (
            self.lean_ok
            and db_lean.lean_statements()
            and isinstance(sync.bind, Engine)
            and not sync.in_transaction()
            and not sync.dispatch.after_begin
            and not sync.dispatch.after_transaction_create
        ):
            self._lean = _LeanTransaction()
            return True
        return False

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
            sync = self.sync_session
            ready = db_lean.prepare(sync, statement, params)
            if ready is not None:
                plan, args = ready
                lean = self._lean
                if lean is not None and not sync.in_transaction():
                    return await self.run_sync(lean.run, statement, plan, args)
                if plan is not None:
                    return await self.run_sync(db_lean.run, statement, plan, args)
        return await super().execute(
            statement, params, execution_options=execution_options or {},
            bind_arguments=bind_arguments, **kw,
        )  # fmt: skip

    async def scalar(self, statement: Any, params: Any = None, **kw: Any) -> Any:  # type: ignore[override]
        """`execute(...).scalar()`: what SQLAlchemy's does for a Core statement, through
        this class's `execute` (so a subclass's `execute`, e.g. `SerialWriteSession`'s
        write lock, sees scalar statements too, which AsyncSession's `scalar` bypasses)."""
        return (await self.execute(statement, params, **kw)).scalar()

    async def _join_lean(self) -> None:
        """Hand a lean transaction to the session, so what ends the session's ends it."""
        if self._lean is not None:
            await self.run_sync(self._lean.join)

    async def commit(self) -> None:
        await self._join_lean()
        await super().commit()

    async def rollback(self) -> None:
        await self._join_lean()
        await super().rollback()

    async def close(self) -> None:
        await self._join_lean()
        await super().close()

    def in_transaction(self) -> bool:
        lean = self._lean
        if lean is not None and lean.conn is not None and lean.conn.in_transaction():
            return True
        return super().in_transaction()

    def listens(self, sync: Session) -> bool:
        """Whether `sync` has transaction listeners beyond the mesh's own (a lean
        transaction then hands itself to the session to end, so they fire). Objects to
        flush need no check: adding or changing one begins the session (autobegin)."""
        own = self.own_listeners
        dispatch = sync.dispatch
        for name in _TRANSACTION_EVENTS:
            listeners = getattr(dispatch, name)
            if listeners and any(fn not in own for fn in listeners):
                return True
        return False

    def transaction_ended(self, sync: Session) -> None:
        """A lean transaction ended (its after-commit callbacks ran if it committed):
        what the mesh's `after_transaction_end` listeners do for a session's."""
        sync.info.pop(_AFTER_COMMIT, None)

    def begin(self) -> Any:
        if self._lean is not None and self._lean.conn is not None:
            # As an autobegun session refuses it: a lean statement began the transaction.
            raise _already_begun()
        return super().begin()

    async def __aenter__(self: S) -> S:
        if self._lean is None:
            self._start_lean()
        return self

    async def __aexit__(self, type_: Any, value: Any, traceback: Any) -> None:
        lean = self._lean
        if lean is None:
            await run_to_end(self.close())
            return
        self._lean = None
        await run_to_end(self.run_sync(lean.end, self, False))


class _Begin(Generic[S]):
    """`async with maker.begin() as session`: a transaction that commits (or rolls back
    on an exception), then the session closed, through one `run_to_end`.

    Two greenlet calls fewer than SQLAlchemy's `AsyncSession.begin()` context: the
    transaction is begun here, on the loop (`Session.begin()` does no I/O: the
    connection is taken by the first statement), and its end and the session's close
    run in one `run_sync` call. Measured on a held SQLite file (one UPDATE per
    transaction, `SerialWriteSession`): see "Statements per order" in docs/performance-log.md.
    Where the session can (`MeshSession._start_lean`), the block is a
    `_LeanTransaction` instead."""

    __slots__ = ("session", "transaction")

    def __init__(self, session: S) -> None:
        self.session = session
        self.transaction: SessionTransaction | None = None

    async def __aenter__(self) -> S:
        session = self.session
        if session._lean is not None:
            raise _already_begun()
        if session._start_lean():
            return session
        transaction = session.sync_session.begin()
        transaction.__enter__()  # as AsyncSessionTransaction.start(is_ctxmanager=True)
        self.transaction = transaction
        return session

    async def __aexit__(
        self,
        type_: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await run_to_end(self.session.run_sync(self._end, type_, value, traceback))

    def _end(self, sync: Session, type_: Any, value: Any, traceback: Any) -> None:
        lean = self.session._lean
        if lean is not None:
            self.session._lean = None
            lean.end(sync, self.session, True, type_, value, traceback)
            return
        try:
            if self.transaction is not None:
                self.transaction.__exit__(type_, value, traceback)
        finally:
            sync.close()


class MeshSessionMaker(async_sessionmaker[S]):
    """`async_sessionmaker` whose `begin()` ends its transaction and session through
    `run_to_end` (one for both), for sessions of a `MeshSession` class."""

    def __call__(self, **local_kw: Any) -> S:
        session = super().__call__(**local_kw)
        kw = self.kw
        session.lean_ok = not kw.get("binds") and not kw.get("twophase") and not local_kw
        return session

    def begin(self) -> _Begin[S]:  # type: ignore[override]
        return _Begin(self())
