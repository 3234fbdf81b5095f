"""A session's transaction against a lean one (`mesh.db_sessions._LeanTransaction`), and
both against a bare `AsyncConnection`, on one held database.

Run: `python -m bench db [--rounds R] [--transactions N] [--database sqlite|postgresql]`.
One process, one table; per round each mode runs N transactions, the modes taking
turns (so the box's drift hits them alike), and the CPU time (`time.process_time`) per
transaction is printed per mode: the median of the rounds, and its ratio to the
session's own transaction.

  write, session   `async with sessions.begin()`: an UPDATE and an INSERT, both
                   statements marked lean (`mesh.db_lean`), the lean transaction off
                   (the ORM session's own transaction, as before 6 Dec 2026)
  write, lean      the same block, a lean transaction (the default): its statements run
                   on the driver's cursor (`mesh.db_cursor`; on PostgreSQL since 6 Dec
                   2026's fourteenth session)
  write, lean/sql  the same, its statements through `exec_driver_sql` (the cursor path
                   off, as before 6 Dec 2026's ninth session, and on PostgreSQL before
                   the fourteenth)
  write, bare      `async with engine.connect()` + `begin()`, the same two statements as
                   driver SQL: what no session costs (no write queue, no plan lookup)
  read, session    `async with sessions()`: one lean SELECT, the session's own transaction
  read, lean       the same, a lean transaction
  read, lean/sql   the same, through `exec_driver_sql`

SQLite: a held file with the shop's settings (`mesh.db.create_engine`: WAL,
synchronous=NORMAL) and `SerialWriteSession` (`serial_writes=True`, as the shop). With
`--database postgresql`, a fresh schema on the tests' PostgreSQL (127.0.0.1:5432,
dropped after). Limits: one process and no concurrency, so nothing waits for a lock;
what it shows is CPU per transaction, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh import db, db_cursor
from mesh.db_lean import Plan, lean, make_plan
from mesh.db_sessions import MeshSessionMaker
from mesh.sqlite_writes import SerialWriteSession

_md = MetaData()
_T = Table("bench_t", _md, Column("id", Integer, primary_key=True), Column("v", String))
_LOG = Table(
    "bench_log",
    _md,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("v", String),
)
_UPDATE = lean(update(_T).where(_T.c.id == bindparam("k")).values(v=bindparam("v")))
_INSERT = lean(insert(_LOG))
_SELECT = lean(select(_T.c.v).where(_T.c.id == bindparam("k")))


@asynccontextmanager
async def _engine(database: str) -> AsyncIterator[AsyncEngine]:
    if database == "postgresql":
        from tests.support.postgres import pg_schema_engine

        async with pg_schema_engine("bench_db") as engine:
            yield engine
        return
    with tempfile.TemporaryDirectory() as d:
        engine = db.create_engine(f"sqlite:///{Path(d) / 'bench.db'}")
        try:
            yield engine
        finally:
            await engine.dispose()


class _SessionTransactions(MeshSessionMaker[SerialWriteSession]):
    """Sessions whose blocks take the ORM session's own transaction (no lean one)."""

    def __call__(self, **local_kw: Any) -> SerialWriteSession:
        session = super().__call__(**local_kw)
        session.lean_ok = False
        return session


def _modes(engine: AsyncEngine) -> dict[str, Callable[[], Awaitable[None]]]:
    lean_tx = db.session_factory(engine, serial_writes=engine.dialect.name == "sqlite")
    own_tx = _SessionTransactions(engine, expire_on_commit=False, class_=lean_tx.class_)
    dialect = engine.dialect
    update_plan = make_plan(_UPDATE, dialect, ("k", "v"), False)
    insert_plan = make_plan(_INSERT, dialect, ("v",), False)
    assert isinstance(update_plan, Plan) and isinstance(insert_plan, Plan)

    async def write(sessions: Any) -> None:
        async with sessions.begin() as s:
            await s.execute(_UPDATE, {"k": 1, "v": "x"})
            await s.execute(_INSERT, {"v": "y"})

    async def read(sessions: Any) -> None:
        async with sessions() as s:
            (await s.execute(_SELECT, {"k": 1})).first()

    async def bare() -> None:
        async with engine.connect() as conn, conn.begin():
            await conn.exec_driver_sql(update_plan.sql, update_plan.args({"k": 1, "v": "x"}))
            await conn.exec_driver_sql(insert_plan.sql, insert_plan.args({"v": "y"}))

    async def without_cursor(step: Awaitable[None]) -> None:
        db_cursor.use_cursor(False)
        try:
            await step
        finally:
            db_cursor.use_cursor(True)

    modes: dict[str, Callable[[], Awaitable[None]]] = {
        "write, session": lambda: write(own_tx),
        "write, lean": lambda: write(lean_tx),
        "write, lean/sql": lambda: without_cursor(write(lean_tx)),
        "write, bare": bare,
        "read, session": lambda: read(own_tx),
        "read, lean": lambda: read(lean_tx),
        "read, lean/sql": lambda: without_cursor(read(lean_tx)),
    }
    return modes


async def run(rounds: int, transactions: int, database: str) -> dict[str, float]:
    """Median CPU µs per transaction of each mode."""
    async with _engine(database) as engine:
        async with engine.begin() as conn:
            await conn.run_sync(_md.create_all)
            await conn.execute(insert(_T).values(id=1, v="a"))
        modes = _modes(engine)
        for fn in modes.values():  # warm: plans, pool, caches
            for _ in range(50):
                await fn()
        per: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(rounds):
            for name, fn in modes.items():
                t0 = time.process_time()
                for _ in range(transactions):
                    await fn()
                per[name].append((time.process_time() - t0) / transactions * 1e6)
    return {name: statistics.median(values) for name, values in per.items()}


def cli(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench db",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)
    got = asyncio.run(run(args.rounds, args.transactions, args.database))
    print(f"{args.database}: CPU µs per transaction, median of {args.rounds} rounds of "
          f"{args.transactions} (modes taking turns)")  # fmt: skip
    for name, us in got.items():
        base = got["write, session"] if name.startswith("write") else got["read, session"]
        print(f"  {name:<16} {us:8.1f} µs   x{us / base:.2f} of the session's own")
