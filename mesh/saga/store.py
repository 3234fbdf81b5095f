"""Saga rows in the orchestrating service's database (`mesh_saga`), SQLite or PostgreSQL.

One row per saga holds its status, position, data (JSON), failure and a lease
(`owner`, `lease_until` in epoch ms). Every write is a conditional UPDATE on
(saga id, expected status and position, owner): a runner whose lease was taken
over writes nothing and stops. Services add `saga_migrations()` to their list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.db import Migration, schema
from mesh.db_lean import lean
from mesh.saga.model import SagaFailure, SagaState, SagaStatus

SAGA_TABLE = "mesh_saga"
# Far above a service's own numbering and beside the events' 9001/9002.
SAGA_MIGRATION_VERSION = 9010

UNFINISHED = (SagaStatus.RUNNING.value, SagaStatus.COMPENSATING.value)
FINISHED = (SagaStatus.COMPLETED.value, SagaStatus.COMPENSATED.value)
# Chunk IN lists under SQLite's bound-parameter limit.
_CHUNK = 500


class LeaseLost(RuntimeError):
    """The row is no longer ours (taken over after our lease expired) or moved on."""


def _saga_v1(md: MetaData) -> Table:
    # Frozen: a released migration is never edited (see mesh/db.py).
    return Table(
        SAGA_TABLE,
        md,
        Column("saga_id", String(128), primary_key=True),
        Column("name", String(128), nullable=False),
        Column("status", String(16), nullable=False),
        Column("completed", Integer, nullable=False),
        Column("data", Text, nullable=False),
        Column("failure", Text, nullable=True),
        Column("attempts", Integer, nullable=False),
        Column("last_error", Text, nullable=True),
        Column("owner", String(128), nullable=True),
        # Epoch ms, like the outbox lease: no timezone handling across backends.
        Column("lease_until", BigInteger, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        # Partial index: finished rows pile up, recovery and parked() only want the rest.
        Index(
            f"ix_{SAGA_TABLE}_open",
            "status",
            sqlite_where=text(_OPEN),
            postgresql_where=text(_OPEN),
        ),
    )


_OPEN = "status IN ('RUNNING', 'COMPENSATING', 'PARKED')"


def saga_migrations(version: int = SAGA_MIGRATION_VERSION) -> list[Migration]:
    """Migrations creating the saga table; add them to the orchestrating service's list."""
    return [
        Migration(
            version=version,
            name="mesh saga",
            creates=(_saga_v1,),
            compatible_with_previous=True,  # a new table
        )
    ]


def saga_table() -> Table:
    """The saga table as its migrations leave it."""
    return schema(saga_migrations()).tables[SAGA_TABLE]


def _values(state: SagaState) -> dict[str, Any]:
    return {
        "status": state.status.value,
        "completed": state.completed,
        "data": json.dumps(state.data, separators=(",", ":"), sort_keys=True),
        "failure": json.dumps(state.failure.to_json()) if state.failure else None,
        "attempts": state.attempts,
        "last_error": state.last_error,
        "updated_at": state.updated_at_ms,
    }


def _state(row: Row[Any]) -> SagaState:
    m = row._mapping
    return SagaState(
        saga_id=m["saga_id"],
        name=m["name"],
        status=SagaStatus(m["status"]),
        completed=int(m["completed"]),
        data=json.loads(m["data"]),
        failure=SagaFailure.from_json(json.loads(m["failure"])) if m["failure"] else None,
        attempts=int(m["attempts"]),
        last_error=m["last_error"],
        created_at_ms=int(m["created_at"]),
        updated_at_ms=int(m["updated_at"]),
    )


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


_STATE_COLUMNS = ("status", "completed", "data", "failure", "attempts", "last_error", "updated_at")


class SagaStore:
    """Reads and conditional writes of saga rows through the service's sessions.

    The statements of the per-step path (get, insert, write, lock) are built once
    with bound parameters: building a Core UPDATE per call (operators, coercions,
    `values()`) cost more CPU than running it (measured with py-spy --gil on an orders
    process under `bench orders`)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions
        self.table = saga_table()
        c = self.table.c
        self._get = lean(select(self.table).where(c.saga_id == bindparam("k_id")))
        moved = (
            c.saga_id == bindparam("k_id"),
            c.status == bindparam("k_status"),
            c.completed == bindparam("k_completed"),
        )
        new_values: dict[str, Any] = {name: bindparam(f"v_{name}") for name in _STATE_COLUMNS}
        write_any = (
            update(self.table)
            .where(*moved)
            .values(owner=bindparam("v_owner"), lease_until=bindparam("v_lease"), **new_values)
        )
        self._write_any = lean(write_any)
        self._write_ours = lean(write_any.where(c.owner == bindparam("k_owner")))
        self._lock = lean(
            update(self.table)
            .where(*moved, c.owner == bindparam("k_owner"))
            .values(lease_until=bindparam("v_lease"))
        )
        self._inserts: dict[str, Any] = {}

    def _insert_stmt(self, dialect: str) -> Any:
        stmt = self._inserts.get(dialect)
        if stmt is None:
            ins: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
            columns = ("saga_id", "name", "owner", "lease_until", "created_at", *_STATE_COLUMNS)
            values: dict[str, Any] = {name: bindparam(name) for name in columns}
            stmt = self._inserts[dialect] = lean(
                ins(self.table).values(values).on_conflict_do_nothing()
            )
        return stmt

    # -- reads -------------------------------------------------------------------

    async def get(self, saga_id: str) -> SagaState | None:
        async with self.sessions() as s:
            row = (await s.execute(self._get, {"k_id": saga_id})).first()
        return _state(row) if row else None

    async def find(
        self, statuses: Iterable[SagaStatus], *, name: str | None = None, limit: int = 1000
    ) -> list[SagaState]:
        """Sagas in `statuses`, oldest update first."""
        c = self.table.c
        q = select(self.table).where(c.status.in_([s.value for s in statuses]))
        if name is not None:
            q = q.where(c.name == name)
        q = q.order_by(c.updated_at, c.saga_id).limit(limit)
        async with self.sessions() as s:
            return [_state(r) for r in (await s.execute(q)).all()]

    async def count(self, status: SagaStatus) -> dict[str, int]:
        """Sagas in `status` per definition name."""
        c = self.table.c
        q = select(c.name, func.count()).where(c.status == status.value).group_by(c.name)
        async with self.sessions() as s:
            return {str(n): int(k) for n, k in (await s.execute(q)).all()}

    # -- writes inside the caller's transaction ------------------------------------

    async def insert(
        self, session: AsyncSession, state: SagaState, owner: str, lease_until_ms: int
    ) -> bool:
        """Insert a new saga; False when the id exists already (nothing written)."""
        row = {
            "saga_id": state.saga_id,
            "name": state.name,
            "owner": owner,
            "lease_until": lease_until_ms,
            "created_at": state.created_at_ms,
            **_values(state),
        }
        stmt = self._insert_stmt(session.get_bind().dialect.name)
        res = await session.execute(stmt, row)
        return bool(getattr(res, "rowcount", 0))

    async def write(
        self,
        session: AsyncSession,
        before: SagaState,
        after: SagaState,
        owner: str,
        lease_until_ms: int,
        *,
        take_over: bool = False,
    ) -> None:
        """Move the row from `before` to `after` if it is still `before` and ours
        (any owner with `take_over`, for parked sagas which nobody runs)."""
        params = {
            "k_id": before.saga_id,
            "k_status": before.status.value,
            "k_completed": before.completed,
            "v_owner": owner,
            "v_lease": lease_until_ms,
            **{f"v_{k}": v for k, v in _values(after).items()},
        }
        if not take_over:
            params["k_owner"] = owner
        res = await session.execute(self._write_any if take_over else self._write_ours, params)
        if not getattr(res, "rowcount", 0):
            raise LeaseLost(f"saga {before.saga_id}: not ours any more or moved on")

    async def lock(
        self, session: AsyncSession, state: SagaState, owner: str, lease_until_ms: int
    ) -> None:
        """First statement of a local step's transaction: checks ownership and takes the
        row's write lock (PostgreSQL) / the database write lock (SQLite) up front."""
        res = await session.execute(
            self._lock,
            {"k_id": state.saga_id, "k_status": state.status.value,
             "k_completed": state.completed, "k_owner": owner, "v_lease": lease_until_ms},
        )  # fmt: skip
        if not getattr(res, "rowcount", 0):
            raise LeaseLost(f"saga {state.saga_id}: not ours any more or moved on")

    # -- leases ----------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        names: Sequence[str],
        lease_until_ms: int,
        now_ms: int,
        *,
        saga_id: str | None = None,
    ) -> list[str]:
        """Take the lease of unfinished sagas (of `names`) that are ours or whose lease
        expired; returns their ids. PostgreSQL skips rows another claimer has locked."""
        c = self.table.c

        def claimable(q: Any) -> Any:
            q = q.where(
                c.status.in_(UNFINISHED),
                c.name.in_(list(names)),
                (c.owner == owner) | (c.lease_until < now_ms),
            )
            return q.where(c.saga_id == saga_id) if saga_id is not None else q

        candidates = claimable(select(c.saga_id)).with_for_update(skip_locked=True)
        stmt = (
            claimable(update(self.table))
            .where(c.saga_id.in_(candidates))
            .values(owner=owner, lease_until=lease_until_ms)
            .returning(c.saga_id)
        )
        async with self.sessions.begin() as s:
            return [str(r[0]) for r in (await s.execute(stmt)).all()]

    async def renew(self, owner: str, saga_ids: Sequence[str], lease_until_ms: int) -> None:
        c = self.table.c
        async with self.sessions.begin() as s:
            for chunk in _chunks(saga_ids):
                await s.execute(
                    update(self.table)
                    .where(c.owner == owner, c.saga_id.in_(chunk))
                    .values(lease_until=lease_until_ms)
                )

    async def release(self, owner: str, saga_ids: Sequence[str]) -> None:
        """Let any runner take these sagas now (on shutdown, or after an interrupted run)."""
        c = self.table.c
        async with self.sessions.begin() as s:
            for chunk in _chunks(saga_ids):
                await s.execute(
                    update(self.table)
                    .where(c.owner == owner, c.saga_id.in_(chunk))
                    .values(lease_until=0)
                )

    async def purge(self, finished_before_ms: int) -> int:
        """Delete COMPLETED/COMPENSATED sagas last updated before the given time.

        A purged saga id can be run again as a new saga: keep rows at least as long
        as clients may retry a request with the same id."""
        c = self.table.c
        async with self.sessions.begin() as s:
            res = await s.execute(
                delete(self.table).where(c.status.in_(FINISHED), c.updated_at < finished_before_ms)
            )
        return int(getattr(res, "rowcount", 0))
