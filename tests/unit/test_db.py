"""Frozen migrations (mesh/db.py): a column added later reaches old and fresh databases alike.

Real SQLite files. The service-level upgrade tests, on PostgreSQL too, are in
tests/integration/services/test_migrations.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import AddColumn, Migration, create_engine, incompatible, migrate, schema
from tests.support.schema import describe


def _things_v1(md: MetaData) -> Table:
    return Table(
        "things",
        md,
        Column("id", Integer, primary_key=True),
        Column("name", String(50), nullable=False),
    )


def _colour() -> Column[str]:
    return Column("colour", String(20), nullable=False, server_default="red")


V1 = Migration(1, "things", creates=(_things_v1,), compatible_with_previous=True)
V2 = Migration(
    2,
    "things get a colour",
    adds=(AddColumn("things", _colour),),
    statements=("CREATE INDEX ix_things_colour ON things (colour)",),
    compatible_with_previous=True,  # a column with a server default: old code never sees it
)
V3 = Migration(3, "drop the name", statements=("ALTER TABLE things DROP COLUMN name",))


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[Callable[[str], AsyncEngine]]:
    made: list[AsyncEngine] = []

    def make(name: str) -> AsyncEngine:
        made.append(create_engine(f"sqlite+aiosqlite:///{tmp_path / name}.db"))
        return made[-1]

    yield make
    for engine in made:
        await engine.dispose()


async def test_a_column_added_later_reaches_an_old_database_and_a_fresh_one_alike(engines):
    old, fresh = engines("old"), engines("fresh")
    assert await migrate(old, [V1, V2], up_to=1) == [1]
    async with old.begin() as conn:
        await conn.execute(text("INSERT INTO things (id, name) VALUES (1, 'kettle')"))
    assert await migrate(old, [V1, V2]) == [2]
    # A fresh database gets v1's table as v1 had it, then v2's ALTER: no clash.
    assert await migrate(fresh, [V1, V2]) == [1, 2]
    assert await describe(old) == await describe(fresh)
    things = schema([V1, V2]).tables["things"]
    async with old.connect() as conn:
        assert (await conn.execute(select(things))).all() == [(1, "kettle", "red")]


def test_the_model_is_the_replay_of_creates_and_adds():
    md = schema([V2, V1])  # order of the list does not matter, versions do
    assert [c.name for c in md.tables["things"].columns] == ["id", "name", "colour"]
    assert [c.name for c in schema([V1]).tables["things"].columns] == ["id", "name"]


def test_a_migration_that_does_not_say_is_incompatible():
    assert incompatible([V1, V2, V3]) == [V3]
    assert Migration(4, "undeclared").compatible_with_previous is False


async def test_duplicate_versions_are_refused(engines):
    with pytest.raises(ValueError, match="duplicate"):
        await migrate(engines("dup"), [V1, Migration(1, "again")])
    with pytest.raises(ValueError, match="duplicate"):
        schema([V1, V1])
