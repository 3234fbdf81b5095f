"""The released migrations' DDL, pinned: `python -m tests.support.migrations_lock --write`.

`tests/contract/frozen_migrations.json` holds, per service and dialect (SQLite,
PostgreSQL), the DDL of every released migration version (`mesh.db.ddl`).
tests/contract/test_migrations_frozen.py fails when a pinned version's DDL
changes (a released migration was edited: add a new one instead) or when a
version is not pinned yet. `--write` pins the versions not pinned yet and
never rewrites a pinned one.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine.interfaces import Dialect

from mesh.db import Migration, ddl
from services.inventory import store as inventory
from services.orders import store as orders
from services.payments import store as payments
from services.users import store as users

LOCK = Path(__file__).resolve().parents[1] / "contract" / "frozen_migrations.json"
SERVICES: dict[str, Callable[[], list[Migration]]] = {
    "inventory": inventory.migrations,
    "orders": orders.migrations,
    "payments": payments.migrations,
    "users": users.migrations,
}
DIALECTS: dict[str, Dialect] = {
    "sqlite": sqlite.dialect(),
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
}

Lock = dict[str, dict[str, dict[str, list[str]]]]


def current() -> Lock:
    """{service: {dialect: {version: [DDL]}}} as the code declares it now."""
    return {
        service: {
            name: {str(v): stmts for v, stmts in ddl(migrations(), dialect).items()}
            for name, dialect in DIALECTS.items()
        }
        for service, migrations in SERVICES.items()
    }


def pinned() -> Lock:
    if not LOCK.exists():
        return {}
    lock: Lock = json.loads(LOCK.read_text())
    return lock


def write() -> None:
    lock = pinned()
    for service, dialects in current().items():
        for name, versions in dialects.items():
            for version, stmts in versions.items():
                lock.setdefault(service, {}).setdefault(name, {}).setdefault(version, stmts)
    LOCK.write_text(json.dumps(lock, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write()
