"""Counting the SQL statements and transactions a service runs, for tests that pin a
hot path's cost.

The shop's per-order CPU is mostly per statement (SQLAlchemy + the driver) and per
transaction, so a test can hold a path to its numbers. Only statements naming one of
`tables` count: health probes (`SELECT 1`) and the like running meanwhile do not.
Commits count whatever they wrote: run nothing else on the engine meanwhile.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


@contextlib.contextmanager
def recorded_statements(engine: AsyncEngine, tables: Sequence[str]) -> Iterator[list[str]]:
    """A list that collects, while the block runs, each statement of `engine` naming one
    of `tables` (as a whole word); executemany counts once."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, tables)) + r")\b")
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if pattern.search(statement):
            seen.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


@contextlib.contextmanager
def recorded_commits(engine: AsyncEngine) -> Iterator[list[int]]:
    """A list that gets one entry per COMMIT of `engine` while the block runs (a read
    session closed without committing rolls back and does not count)."""
    seen: list[int] = []

    def record(_conn: Any) -> None:
        seen.append(len(seen) + 1)

    event.listen(engine.sync_engine, "commit", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "commit", record)
