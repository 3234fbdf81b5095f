"""The PostgreSQL the test machine may have (127.0.0.1:5432, trust auth, database `test`).

Tests that take a database run on SQLite and, when this server answers, on
PostgreSQL too; `pg_available()` tells, asked once per test process.
"""

from __future__ import annotations

import asyncio

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
