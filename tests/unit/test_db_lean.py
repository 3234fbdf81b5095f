"""mesh.db_lean: statements marked `lean` give what `session.execute` gives (rows,
rowcounts, errors, the database's contents), run as driver SQL where they can, and fall
back where the lean path would differ. Real SQLite files and, when it answers, the
PostgreSQL on 127.0.0.1:5432 (a schema of its own, dropped after)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    event,
    insert,
    literal,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from mesh import db_lean
from mesh.db import session_factory
from mesh.db_lean import lean, lean_statements, use_lean_statements
from tests.support.postgres import engine_with

md = MetaData()
T = Table(
    "lean_t",
    md,
    Column("id", String(36), primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=True),
    Column("body", LargeBinary, nullable=True),
    Column("flag", Boolean, nullable=False, default=False),
)
c = T.c
INSERT = lean(insert(T))
BUMP = lean(
    update(T)
    .where(c.id == bindparam("k"), c.status.in_([literal("NEW", String), literal("OLD", String)]))
    .values(n=c.n + bindparam("by", type_=BigInteger), status=bindparam("to"))
    .returning(c.id, c.n)
)
BY_ID = lean(select(c.id, c.n, c.status, c.body).where(c.id == bindparam("k")))
COUNT = lean(select(c.n).where(c.status == bindparam("s")).order_by(c.n))
UPSERT_TEXT = lean(
    text(
        "INSERT INTO lean_t (id, n, status, flag) VALUES (:i, :n, 'TXT', false)"
        " ON CONFLICT DO NOTHING"
    )
)
DROP = lean(delete(T).where(c.status == bindparam("s")))
# Expanding IN lists: a plan per length of each list (a literal list is a default).
IN_LIST = lean(select(c.id).where(c.id.in_(bindparam("ids", expanding=True))).order_by(c.id))
NOT_IN = lean(
    select(c.id)
    .where(c.id.not_in(bindparam("ids", expanding=True)), c.status.in_(["NEW", "OLD"]))
    .order_by(c.id)
)
SET_IN = lean(update(T).where(c.id.in_(bindparam("ids", expanding=True))).values(n=bindparam("n")))
# Fall back: a tuple IN, a DateTime read back on SQLite (SQLAlchemy converts it), a flag
# the insert leaves to its Python-side default.
TUPLE_IN = lean(select(c.id).where(tuple_(c.id, c.n).in_(bindparam("pairs", expanding=True))))
WITH_AT = lean(select(c.id, c.at).where(c.id == bindparam("k")))
NO_FLAG = lean(insert(T).values(status="DEF"))


@pytest.fixture(params=["sqlite", "postgresql"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    was = lean_statements()
    async with engine_with(request.param, tmp_path / "lean.db", "lean", md) as eng:
        try:
            yield eng
        finally:
            use_lean_statements(was)


@contextmanager
def compiled_or_driver(engine: AsyncEngine) -> Iterator[list[bool]]:
    """Per statement run on `engine`: True if it ran as driver SQL (no compiled form in
    its execution context), False if SQLAlchemy compiled it."""
    seen: list[bool] = []

    def record(_conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _m: Any) -> None:
        if "lean_t" in statement:
            seen.append(context.compiled is None)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


AT = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)


async def _workload(engine: AsyncEngine) -> list[Any]:
    """Every marked statement once or more; what each returned, comparable across runs."""
    sessions = session_factory(engine, serial_writes=True)
    out: list[Any] = []
    async with sessions.begin() as s:
        rows = [
            {"id": f"r{i}", "n": i, "status": "NEW", "at": AT, "body": b"\x00\xff", "flag": True}
            for i in range(3)
        ]
        out.append((await s.execute(INSERT, rows)).rowcount)
        out.append((await s.execute(INSERT, [{**rows[0], "id": "one"}])).rowcount)
        out.append((await s.execute(INSERT, {**rows[0], "id": "single"})).rowcount)
    async with sessions.begin() as s:
        bumped = (await s.execute(BUMP, {"k": "r1", "by": 10, "to": "OLD"})).first()
        out.append(tuple(bumped) if bumped else None)
        out.append((bumped.id, bumped.n) if bumped else None)  # read by name
        out.append((await s.execute(BUMP, {"k": "missing", "by": 1, "to": "OLD"})).first())
        out.append((await s.execute(UPSERT_TEXT, {"i": "t1", "n": 7})).rowcount)
        out.append((await s.execute(UPSERT_TEXT, {"i": "t1", "n": 8})).rowcount)
    async with sessions() as s:
        row = (await s.execute(BY_ID, {"k": "r1"})).first()
        out.append(tuple(row) if row else None)
        out.append(row._mapping["status"] if row else None)
        out.append(await s.scalar(BY_ID, {"k": "r2"}))
        out.append(list((await s.execute(COUNT, {"s": "NEW"})).scalars()))
        for ids in (["r2", "r0"], ["r1"], [], ["r0", "r1", "r2"], ["r1", "nobody"]):
            out.append((await s.execute(IN_LIST, {"ids": ids})).scalars().all())
            out.append((await s.execute(NOT_IN, {"ids": ids})).scalars().all())
        out.append((await s.execute(TUPLE_IN, {"pairs": [("r0", 0), ("r1", 0)]})).scalars().all())
        at_row = (await s.execute(WITH_AT, {"k": "r0"})).first()
        out.append(at_row.at.astimezone(UTC) if at_row else None)
    async with sessions.begin() as s:
        out.append((await s.execute(SET_IN, {"ids": ["r0", "r2", "none"], "n": 5})).rowcount)
        await s.execute(NO_FLAG, {"id": "d", "n": 0})
        out.append((await s.execute(DROP, {"s": "TXT"})).rowcount)
    async with sessions() as s:
        everything = (await s.execute(select(T).order_by(c.id))).all()
        out.append([(r.id, r.n, r.status, r.at and r.at.astimezone(UTC), r.body, r.flag)
                    for r in everything])  # fmt: skip
        # As stored: SQLite keeps a DateTime as the text SQLAlchemy's processor wrote.
        out.append(str(await s.scalar(text("SELECT at FROM lean_t WHERE id = 'r0'"))))
    return out


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(T))


async def test_marked_statements_give_what_session_execute_gives(engine: AsyncEngine) -> None:
    use_lean_statements(False)
    with compiled_or_driver(engine) as off:
        expected = await _workload(engine)
    await _reset(engine)
    use_lean_statements(True)
    with compiled_or_driver(engine) as on:
        got = await _workload(engine)
    assert got == expected
    assert not any(off)
    # The same statements reached the database; most of them as driver SQL.
    assert len(on) == len(off)
    fell_back = len(on) - sum(on)
    # TUPLE_IN, NO_FLAG and the two unmarked selects are compiled; WITH_AT too on
    # SQLite, where SQLAlchemy converts the DateTime it reads (asyncpg returns datetimes).
    assert fell_back == (5 if engine.dialect.name == "sqlite" else 4), on
    assert expected[3] == ("r1", 11) and expected[5] is None
    assert expected[-2][-1] == ("single", 0, "NEW", AT, b"\x00\xff", True)


async def test_the_driver_errors_are_sqlalchemys(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, serial_writes=True)
    row = {"id": "dup", "n": 1, "status": "NEW", "at": None, "body": None, "flag": False}
    async with sessions.begin() as s:
        await s.execute(INSERT, row)
    with compiled_or_driver(engine) as seen, pytest.raises(IntegrityError):
        async with sessions.begin() as s:
            await s.execute(INSERT, row)
    assert seen == [True]
    # A required parameter missing: SQLAlchemy's own error, from its own path.
    with compiled_or_driver(engine) as seen, pytest.raises(StatementError, match="'by'"):
        async with sessions.begin() as s:
            await s.execute(BUMP, {"k": "dup", "to": "OLD"})
    assert seen == []


async def test_options_and_orm_listeners_take_sqlalchemys_path(engine: AsyncEngine) -> None:
    sessions = session_factory(engine, serial_writes=True)
    params = {"k": "nobody"}
    with compiled_or_driver(engine) as seen:
        async with sessions() as s:
            await s.execute(BY_ID, params)
            await s.execute(BY_ID, params, execution_options={"logging_token": "x"})
            event.listen(s.sync_session, "do_orm_execute", lambda _state: None)
            await s.execute(BY_ID, params)
    assert seen == [True, False, False]
    with compiled_or_driver(engine) as seen:
        event.listen(engine.sync_engine, "before_execute", lambda *_: None)
        async with sessions() as s:
            await s.execute(BY_ID, params)
    assert seen == [False]


async def test_only_the_marked_object_is_lean_and_it_is_forgotten_with_it(
    engine: AsyncEngine,
) -> None:
    stmt = lean(select(c.id).where(c.id == bindparam("k")))
    derived = stmt.where(c.n > 1)
    assert id(stmt) in db_lean._MARKED and id(derived) not in db_lean._MARKED
    in_list = lean(select(c.id).where(c.id.in_(bindparam("ids", expanding=True))))
    with compiled_or_driver(engine) as seen:
        async with session_factory(engine)() as s:  # plans made, for one length each
            await s.execute(stmt, {"k": "a"})
            await s.execute(in_list, {"ids": ["a", "b"]})
    assert seen == [True, True]
    keys = id(stmt), id(in_list)
    del stmt, derived, in_list
    gc.collect()
    assert not set(keys) & set(db_lean._MARKED)  # their plans do not keep them alive


def test_orm_statements_are_refused() -> None:
    class Base(DeclarativeBase):
        pass

    class Thing(Base):
        __tablename__ = "thing"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)

    with pytest.raises(TypeError, match="ORM"):
        lean(select(Thing))
    with pytest.raises(TypeError, match="ORM"):
        lean(insert(Thing))
    lean(select(Thing.__table__))  # the table itself is Core


async def test_an_in_list_runs_lean_per_length_up_to_a_bound(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_lean.Expanding, "MAX_LENGTHS", 2)
    sessions = session_factory(engine)
    async with sessions.begin() as s:
        await s.execute(INSERT, [{"id": f"x{i}", "n": i, "status": "NEW", "flag": False,
                                  "at": None, "body": None} for i in range(4)])  # fmt: skip
    stmt = lean(select(c.id).where(c.id.in_(bindparam("ids", expanding=True))).order_by(c.id))
    with compiled_or_driver(engine) as seen:
        async with sessions() as s:
            for ids in (["x1"], ["x0", "x3"], ["x2"], ["x0", "x1", "x2"], ["x3", "x2"]):
                assert (await s.execute(stmt, {"ids": ids})).scalars().all() == sorted(ids)
    # Lengths 1 and 2 got plans; a third length takes SQLAlchemy's path.
    assert seen == [True, True, True, False, True]
