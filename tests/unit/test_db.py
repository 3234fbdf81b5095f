"""Frozen migrations (mesh/db.py): a column added later reaches old and fresh databases alike;
instances starting together migrate one database once; a service's SQLite file is private.

Real SQLite files. The service-level upgrade tests, on PostgreSQL too, are in
tests/integration/services/test_migrations.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import (
    AddColumn,
    Migration,
    create_engine,
    default_sqlite_url,
    incompatible,
    migrate,
    schema,
)
from tests.support.other_account import as_nobody, needs_other_account
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


_INSTANCE = """
import asyncio, json, sys
from sqlalchemy import Column, Integer, MetaData, String, Table
from mesh.db import Migration, create_engine, migrate

def things(md):
    return Table("things", md, Column("id", Integer, primary_key=True),
                 Column("name", String(50), nullable=False))

async def main():
    engine = create_engine(f"sqlite+aiosqlite:///{sys.argv[1]}")
    steps = [Migration(1, "things", creates=(things,)),
             Migration(2, "index", statements=("CREATE INDEX ix_things_name ON things (name)",))]
    print(json.dumps(await migrate(engine, steps, attempts=int(sys.argv[2]))))
    await engine.dispose()

asyncio.run(main())
"""


async def _instances(db: Path, n: int, attempts: int) -> list[tuple[int, str]]:
    """`n` processes migrating `db` at the same moment: (exit code, output) of each."""
    argv = (sys.executable, "-c", _INSTANCE, str(db), str(attempts))
    out, both = asyncio.subprocess.PIPE, asyncio.subprocess.STDOUT
    procs = [await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=both) for _ in range(n)]
    outs = await asyncio.gather(*(p.communicate() for p in procs))
    return [(p.returncode or 0, out.decode()) for p, (out, _) in zip(procs, outs, strict=True)]


async def test_instances_starting_together_migrate_one_database_once(tmp_path: Path) -> None:
    """Four processes migrate one SQLite file at once, as `meshctl up` starts a service's
    instances: each ends with the whole schema, every step applied once."""
    db = tmp_path / "shared.db"
    ran = await _instances(db, 4, attempts=5)
    assert all(code == 0 for code, _ in ran), ran
    applied = [v for _, out in ran for v in json.loads(out.splitlines()[-1])]
    assert sorted(applied) == [1, 2]
    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT version FROM schema_migrations"))).all()
    finally:
        await engine.dispose()
    assert sorted(rows) == [(1,), (2,)]


def _losing_once(failures: list[int], times: int) -> Callable[[Any], None]:
    """A migration step that fails as a step does when another instance committed it
    first (`times` times), then does nothing."""

    def run(conn: Any) -> None:
        if len(failures) < times:
            failures.append(1)
            raise sa_exc.IntegrityError("INSERT INTO schema_migrations", {}, Exception("taken"))

    return run


async def test_a_step_lost_to_another_instance_is_read_again(engines):
    failures: list[int] = []
    step = Migration(1, "things", creates=(_things_v1,), run=_losing_once(failures, 2))
    assert await migrate(engines("raced"), [step]) == [1]
    assert failures == [1, 1]


async def test_a_step_that_keeps_failing_is_raised_after_the_attempts(engines):
    failures: list[int] = []
    step = Migration(1, "things", creates=(_things_v1,), run=_losing_once(failures, 99))
    with pytest.raises(sa_exc.IntegrityError):
        await migrate(engines("broken"), [step], attempts=3)
    assert len(failures) == 3


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_service_database_is_private_to_its_owner(tmp_path: Path) -> None:
    """The directory made 0700, the file 0600 before SQLite opens it, and the WAL and
    shared-memory files SQLite makes beside it follow the file's mode."""
    data = tmp_path / "run" / "data"
    url = default_sqlite_url(data, "users")
    assert _mode(data) == 0o700 and _mode(data / "users.db") == 0o600
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE keys (pem TEXT)"))
            await conn.execute(text("INSERT INTO keys VALUES ('-----BEGIN PRIVATE KEY-----')"))
        made = sorted(p.name for p in data.iterdir())
        assert {"users.db-wal", "users.db-shm"} <= set(made), made
        for name in made:
            assert _mode(data / name) & 0o077 == 0, f"{name} is {_mode(data / name):o}"
    finally:
        await engine.dispose()


def test_a_database_readable_by_others_is_narrowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    db = shared / "users.db"
    db.write_bytes(b"")
    os.chmod(db, 0o644)
    default_sqlite_url(shared, "users")
    assert _mode(db) == 0o600
    assert "narrowed to 0600" in caplog.text
    assert _mode(shared) == 0o755  # a directory it did not make is left as it is


@needs_other_account
def test_another_account_cannot_read_a_service_database() -> None:
    """The attacker: another account on the machine (`nobody`) reading the users
    service's database is refused; the control, a file as SQLite would have made it
    (0644 in a 0755 directory), it reads."""
    base = Path(tempfile.mkdtemp(prefix="mesh-db-modes-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)  # a place others may enter, as a checkout often is
        default_sqlite_url(base / "data", "users")
        secret = base / "data" / "users.db"
        secret.write_bytes(b"-----BEGIN PRIVATE KEY-----")
        control = base / "old.db"
        control.write_bytes(b"-----BEGIN PRIVATE KEY-----")
        os.chmod(control, 0o644)
        refused = as_nobody("cat", str(secret))
        assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused
        assert as_nobody("cat", str(control)).stdout.startswith("-----BEGIN")
    finally:
        shutil.rmtree(base)
