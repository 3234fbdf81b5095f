"""The orders domain over a real SQLite database, with in-memory stand-ins for the
services the saga calls (recording every call, failing on demand)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.db import create_engine
from tests.support.orders_domain import Domain, open_domain


@pytest.fixture
async def domain(tmp_path: Path) -> AsyncIterator[Domain]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    try:
        async with open_domain(engine) as d:
            yield d
    finally:
        await engine.dispose()
