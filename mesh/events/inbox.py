"""Idempotent handling: handled event ids recorded in the consumer's own database.

`Inbox.handle(envelope)` opens a transaction and first inserts
(consumer, event id) into `mesh_inbox` with ON CONFLICT DO NOTHING. If the row
was already there the event was handled before: `tx.duplicate` is true and the
body should do nothing (the consume loop then acks). Otherwise the handler's
writes commit together with the id, so a redelivery (lost ack, relay republish,
consumer restart) has no second effect. Inserting first also serialises two
concurrent deliveries of one id on PostgreSQL: the second waits on the unique
key and then sees the conflict.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from meshproto.events.v1 import envelope_pb2
from sqlalchemy import (
    Column,
    DateTime,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    delete,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.db import Migration, schema
from mesh.db_lean import lean

INBOX_TABLE = "mesh_inbox"
INBOX_MIGRATION_VERSION = 9002

SessionHandler = Callable[[envelope_pb2.Envelope, AsyncSession], Awaitable[None]]
BatchSessionHandler = Callable[[list[envelope_pb2.Envelope], AsyncSession], Awaitable[None]]
Handler = Callable[[envelope_pb2.Envelope], Awaitable[None]]
BatchHandler = Callable[[list[envelope_pb2.Envelope]], Awaitable[None]]


def _inbox_v1(md: MetaData) -> Table:
    # Frozen: a released migration is never edited (see mesh/db.py).
    return Table(
        INBOX_TABLE,
        md,
        Column("consumer", String(128), nullable=False),
        Column("event_id", String(64), nullable=False),
        Column("event_type", String(255), nullable=False),
        Column("handled_at", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("consumer", "event_id"),
    )


def inbox_migrations(version: int = INBOX_MIGRATION_VERSION) -> list[Migration]:
    """Migrations creating the inbox table; add them to the consuming service's list."""
    return [
        Migration(
            version=version,
            name="mesh events inbox",
            creates=(_inbox_v1,),
            compatible_with_previous=True,  # a new table
        )
    ]


def inbox_table() -> Table:
    """The inbox table as its migrations leave it."""
    return schema(inbox_migrations()).tables[INBOX_TABLE]


@dataclass(slots=True)
class InboxTx:
    """The handler's transaction; when `duplicate`, the event was handled already."""

    session: AsyncSession
    duplicate: bool


class Inbox:
    """Records handled event ids of one consumer (name) in its service's database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], consumer: str) -> None:
        self._sessions = sessions
        self.consumer = consumer
        self._table = inbox_table()
        # Portable: SQLite >= 3.24 and PostgreSQL both take this form.
        self._record_many = lean(insert(self._table))  # a batch's new ids, executemany
        self._claim = lean(
            text(
                f"INSERT INTO {INBOX_TABLE} (consumer, event_id, event_type, handled_at)"
                " VALUES (:c, :i, :t, :h) ON CONFLICT DO NOTHING"
            )
        )

    @asynccontextmanager
    async def handle(self, envelope: envelope_pb2.Envelope) -> AsyncIterator[InboxTx]:
        """A transaction that commits the handler's writes with the event id, once."""
        async with self._sessions.begin() as session:
            res = await session.execute(
                self._claim,
                {"c": self.consumer, "i": envelope.id, "t": envelope.type,
                 "h": datetime.now(UTC)},
            )  # fmt: skip
            yield InboxTx(session=session, duplicate=getattr(res, "rowcount", 1) == 0)

    def idempotent(self, fn: SessionHandler) -> Handler:
        """Wrap `fn(envelope, session)` into a bus handler that runs it at most once per id."""

        async def handler(envelope: envelope_pb2.Envelope) -> None:
            async with self.handle(envelope) as tx:
                if not tx.duplicate:
                    await fn(envelope, tx.session)

        return handler

    def idempotent_batch(self, fn: BatchSessionHandler) -> BatchHandler:
        """Wrap `fn(new_envelopes, session)`: one transaction records all ids and runs `fn`
        on those not handled before (for `Subscription`'s batch mode: far fewer commits)."""

        async def handler(envelopes: list[envelope_pb2.Envelope]) -> None:
            c = self._table.c
            async with self._sessions.begin() as session:
                ids = [e.id for e in envelopes]
                # Read which ids are known, then insert the rest in one
                # executemany: two statements per batch instead of one per event.
                # A concurrent handler inserting one of them in between makes the
                # insert fail on the primary key; the batch then rolls back and the
                # consumer replays it one event at a time, which is race-free.
                known = set(
                    (
                        await session.execute(
                            select(c.event_id).where(
                                c.consumer == self.consumer, c.event_id.in_(ids)
                            )
                        )
                    ).scalars()
                )
                fresh = [
                    e for e in dict((e.id, e) for e in envelopes).values() if e.id not in known
                ]
                if not fresh:
                    return
                now = datetime.now(UTC)
                await session.execute(
                    self._record_many,
                    [{"consumer": self.consumer, "event_id": e.id, "event_type": e.type,
                      "handled_at": now} for e in fresh],
                )  # fmt: skip
                await fn(fresh, session)

        return handler

    async def seen(self, event_id: str) -> bool:
        async with self._sessions() as session:
            row = await session.execute(
                self._table.select().where(
                    self._table.c.consumer == self.consumer, self._table.c.event_id == event_id
                )
            )
            return row.first() is not None

    async def purge(self, older_than_s: float) -> int:
        """Forget ids handled long ago; keep them longer than any stream's max age."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
        c = self._table.c
        async with self._sessions.begin() as session:
            res = await session.execute(
                delete(self._table).where(c.consumer == self.consumer, c.handled_at < cutoff)
            )
            return int(getattr(res, "rowcount", 0) or 0)
