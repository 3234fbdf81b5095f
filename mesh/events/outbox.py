"""Transactional outbox: an event row committed in the same transaction as the state change.

`Outbox.add(session, envelope)` inserts into `mesh_outbox` through the caller's
session, so the event exists if and only if the caller's transaction commits.
`mesh.events.relay.OutboxRelay` publishes committed rows to JetStream. Services
include `outbox_migrations()` in their migration list.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from meshproto.events.v1 import envelope_pb2
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.db import Migration, schema
from mesh.db_lean import lean
from mesh.db_sessions import after_commit
from mesh.events.envelope import encode

OUTBOX_TABLE = "mesh_outbox"
LEASE_TABLE = "mesh_outbox_lease"
# Default migration versions, far above a service's own numbering; a service may
# pass its own numbers instead.
OUTBOX_MIGRATION_VERSION = 9001

# BIGINT on PostgreSQL; plain INTEGER PRIMARY KEY on SQLite, which is the rowid
# (BIGINT there would not autoincrement).
_Id = BigInteger().with_variant(Integer(), "sqlite")


def _outbox_v1(md: MetaData) -> Table:
    # Frozen: a released migration is never edited (see mesh/db.py).
    return Table(
        OUTBOX_TABLE,
        md,
        # The relay publishes in this order.
        Column("seq", _Id, primary_key=True, autoincrement=True),
        Column("event_id", String(64), nullable=False, unique=True),
        Column("subject", String(255), nullable=False),
        Column("payload", LargeBinary, nullable=False),
        Column("headers", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True), nullable=True),
        # Partial index: the relay only ever looks for unsent rows, oldest first.
        Index(
            f"ix_{OUTBOX_TABLE}_unsent",
            "seq",
            sqlite_where=text("sent_at IS NULL"),
            postgresql_where=text("sent_at IS NULL"),
        ),
    )


def _lease_v1(md: MetaData) -> Table:
    return Table(
        LEASE_TABLE,
        md,
        Column("name", String(64), primary_key=True),
        Column("holder", String(128), nullable=False),
        Column("expires_at", BigInteger, nullable=False),  # epoch ms: no timezone games
    )


def outbox_migrations(version: int = OUTBOX_MIGRATION_VERSION) -> list[Migration]:
    """Migrations creating the outbox tables; add them to the service's list."""
    return [
        Migration(
            version=version,
            name="mesh events outbox",
            creates=(_outbox_v1, _lease_v1),
            compatible_with_previous=True,  # new tables
        )
    ]


class OutboxTables:
    """The outbox tables as the migrations leave them (built per use, no module globals)."""

    def __init__(self) -> None:
        self.metadata = schema(outbox_migrations())
        self.outbox = self.metadata.tables[OUTBOX_TABLE]
        self.lease = self.metadata.tables[LEASE_TABLE]


class Outbox:
    """Adds events to the caller's transaction and wakes the relay after commit."""

    def __init__(self) -> None:
        self.tables = OutboxTables()
        self._insert = lean(insert(self.tables.outbox))
        self._committed = asyncio.Event()

    async def add(self, session: AsyncSession, envelope: envelope_pb2.Envelope) -> None:
        """Insert `envelope` in `session`'s transaction; published after it commits."""
        await self.add_many(session, [envelope])

    async def add_many(
        self, session: AsyncSession, envelopes: Sequence[envelope_pb2.Envelope]
    ) -> None:
        rows: list[dict[str, Any]] = []
        for env in envelopes:
            body, headers = encode(env)
            rows.append(
                {
                    "event_id": env.id,
                    "subject": env.type,
                    "payload": body,
                    "headers": json.dumps(headers, separators=(",", ":")),
                }
            )
        if not rows:
            return
        await session.execute(self._insert, rows)
        # Wake the relay right after this transaction commits (latency); nothing on
        # rollback. The relay also polls, for rows committed by other processes and
        # for rows left by a crash.
        after_commit(session, self._committed.set)

    def notify(self) -> None:
        """Tell the relay that rows were committed (e.g. by raw SQL outside `add`)."""
        self._committed.set()

    async def wait_committed(self, max_wait_s: float) -> bool:
        """For the relay: wait for a commit signal or `max_wait_s`; True if signalled.

        A signal already given (a commit while the relay was publishing: the common case
        under load) returns at once, without arming a timer."""
        if not self._committed.is_set():
            try:
                async with asyncio.timeout(max_wait_s):
                    await self._committed.wait()
            except TimeoutError:
                return False
        self._committed.clear()
        return True
