"""A service's engine keeps `MESH_DB_POOL_SIZE` PostgreSQL connections open (real server).

SQLAlchemy's default pool keeps 5 and closes the rest when they are returned; a service
under 16 concurrent orders then opened connections again for every burst (measured in
`bench orders --database postgresql`: 20 against 25 orders/s). SQLite is not pooled by it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from base.settings import SettingsError
from mesh.service_db import service_engine
from mesh.settings import Settings
from tests.support.postgres import PG_URL, pg_available


async def _kept_after_a_burst(engine: AsyncEngine, burst: int) -> int:
    """Connections left open in the pool after `burst` were used at once and returned."""
    held = asyncio.Event()
    ready = 0

    async def use() -> None:
        nonlocal ready
        async with engine.connect() as c:
            await c.execute(text("SELECT 1"))
            ready += 1
            if ready == burst:
                held.set()
            await held.wait()  # all `burst` connections are out at once

    await asyncio.wait_for(asyncio.gather(*(use() for _ in range(burst))), 20)
    return engine.pool.checkedin()  # type: ignore[attr-defined,no-any-return]


@pytest.mark.parametrize(("pool_size", "kept"), [(None, 10), ("5", 5), ("12", 12)])
async def test_the_pool_keeps_what_mesh_db_pool_size_says(pool_size: str | None, kept: int) -> None:
    if not await pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    env = {"ORDERS_DATABASE_URL": PG_URL}
    if pool_size is not None:
        env["MESH_DB_POOL_SIZE"] = pool_size
    engine = service_engine(Settings.from_env("orders", env))
    try:
        assert await _kept_after_a_burst(engine, 14) == kept  # 14: past any size here
    finally:
        await engine.dispose()


def test_a_pool_size_below_one_is_refused() -> None:
    with pytest.raises(SettingsError, match="MESH_DB_POOL_SIZE"):
        Settings.from_env("orders", {"MESH_DB_POOL_SIZE": "0"})


async def test_sqlite_files_ignore_it(tmp_path: Path) -> None:
    env = {"MESH_DATA_DIR": str(tmp_path), "MESH_DB_POOL_SIZE": "3"}
    engine = service_engine(Settings.from_env("orders", env))
    try:
        async with engine.connect() as c:
            assert (await c.execute(text("SELECT 1"))).scalar() == 1
        assert engine.pool.size() == 5  # type: ignore[attr-defined]  # SQLAlchemy's own
    finally:
        await engine.dispose()
