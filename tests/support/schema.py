"""A database's schema as plain data (SQLAlchemy inspection), for comparing two databases.

Everything a migration can change and a query can notice: per table its
columns (name, type as the database reports it, nullability, server
default), primary key, foreign keys (with ON DELETE), indexes (with their
uniqueness), unique and check constraints. Two databases built by the same
DDL on the same backend describe equal; a column that one of them got by
another path (a different type, a lost default, a missing index) shows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine


def _describe(conn: Connection) -> dict[str, Any]:
    insp = inspect(conn)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        out[table] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"))
                for c in insp.get_columns(table)
            ],
            "primary key": insp.get_pk_constraint(table)["constrained_columns"],
            "foreign keys": sorted(
                (
                    tuple(fk["constrained_columns"]),
                    fk["referred_table"],
                    tuple(fk["referred_columns"]),
                    (fk.get("options") or {}).get("ondelete"),
                )
                for fk in insp.get_foreign_keys(table)
            ),
            "indexes": sorted(
                (ix["name"], tuple(ix["column_names"]), bool(ix["unique"]))
                for ix in insp.get_indexes(table)
            ),
            "unique": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            "checks": sorted(
                (c.get("name"), " ".join(c["sqltext"].split()))
                for c in insp.get_check_constraints(table)
            ),
        }
    return out


async def describe(engine: AsyncEngine) -> dict[str, Any]:
    """{table: {columns, primary key, foreign keys, indexes, unique, checks}}."""
    async with engine.connect() as conn:
        return await conn.run_sync(_describe)
