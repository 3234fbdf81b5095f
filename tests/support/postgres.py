"""The PostgreSQL the test machine may have (127.0.0.1:5432, trust auth, database `test`).

Tests that take a database run on SQLite and, when this server answers, on
PostgreSQL too; `pg_available()` tells, asked once per test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mesh.db import create_engine

PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

_answered: dict[str, bool] = {}


async def pg_available(timeout_s: float = 3.0) -> bool:
    """Whether the server accepts a connection (cached: the answer does not change)."""
    if "up" not in _answered:
        import asyncpg

        try:
            conn = await asyncio.wait_for(
                asyncpg.connect(PG_URL.replace("+asyncpg", "")), timeout_s
            )
        except Exception:
            _answered["up"] = False
        else:
            await conn.close()
            _answered["up"] = True
    return _answered["up"]


@contextlib.asynccontextmanager
async def pg_schema(prefix: str) -> AsyncIterator[str]:
    """A fresh schema of the test PostgreSQL (a name per test keeps parallel and repeated
    runs apart), dropped after; skips the test when nothing answers."""
    if not await pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    schema = f"{prefix}_{time.time_ns()}_{uuid.uuid4().hex[:6]}"
    admin = create_async_engine(PG_URL)
    try:
        async with admin.begin() as conn:
            await conn.execute(text(f"CREATE SCHEMA {schema}"))
        yield schema
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        await admin.dispose()


@contextlib.asynccontextmanager
async def pg_schema_engine(prefix: str, **engine_kw: Any) -> AsyncIterator[AsyncEngine]:
    """A mesh engine on a fresh schema (`pg_schema`: its search_path), disposed of
    before the schema is dropped."""
    async with pg_schema(prefix) as schema:
        connect_args = {"server_settings": {"search_path": schema}}
        engine = create_engine(PG_URL, connect_args=connect_args, **engine_kw)
        try:
            yield engine
        finally:
            await engine.dispose()


@contextlib.asynccontextmanager
async def engine_with(
    kind: str, sqlite_file: Path, prefix: str, metadata: MetaData
) -> AsyncIterator[AsyncEngine]:
    """A mesh engine with `metadata`'s tables: on the SQLite file `sqlite_file` (kind
    "sqlite") or on a fresh PostgreSQL schema (kind "postgresql", `pg_schema_engine`)."""
    async with contextlib.AsyncExitStack() as stack:
        if kind == "sqlite":
            engine = create_engine(f"sqlite:///{sqlite_file}")
            stack.push_async_callback(engine.dispose)
        else:
            engine = await stack.enter_async_context(pg_schema_engine(prefix))
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        yield engine
