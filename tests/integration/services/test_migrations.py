"""Every service's migrations evolve a database: first version with data → head = fresh head.

Per service, on SQLite and PostgreSQL (when it answers): a database made at
the service's first migration and holding rows written as that version's
code wrote them is upgraded to head; its schema (columns, types, defaults,
keys, indexes, constraints) must equal a fresh database migrated straight
to head and a database made from the model the stores query (the replay
of the migrations), and the rows must still be there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import Migration, migrate, schema
from services.inventory import store as inventory
from services.orders import store as orders
from services.payments import store as payments
from services.users import store as users
from tests.support.schema import describe

AT = "'2026-01-01 00:00:00+00:00'"
USER = "'6f1c1c52-52a4-4d7e-9d38-2d8bd1f1c001'"
SAGA = "'6f1c1c52-52a4-4d7e-9d38-2d8bd1f1c002'"
PRODUCT = "'6f1c1c52-52a4-4d7e-9d38-2d8bd1f1c003'"

# Rows as each service's first version wrote them (frozen with that version).
FIRST_VERSION_ROWS: dict[str, Sequence[str]] = {
    "users": (
        "INSERT INTO users (user_id, email, password_hash, display_name, created_at)"
        f" VALUES ({USER}, 'ada@example.com', 'argon2-hash', 'Ada', {AT})",
        "INSERT INTO sessions (token_hash, user_id, created_at, expires_at)"
        f" VALUES ('{'a' * 64}', {USER}, {AT}, {AT})",
    ),
    "payments": (
        "INSERT INTO payments (payment_id, saga_id, status, currency, amount_minor,"
        " card_last4, created_at, updated_at)"
        f" VALUES ({USER}, {SAGA}, 'CAPTURED', 'EUR', 1250, '4242', {AT}, {AT})",
    ),
    "inventory": (
        "INSERT INTO products (product_id, sku, name, price_currency, price_minor,"
        " available, reserved, created_at)"
        f" VALUES ({PRODUCT}, 'SKU-1', 'Tea', 'EUR', 450, 10, 2, {AT})",
        "INSERT INTO reservations (saga_id, status, created_at, updated_at)"
        f" VALUES ({SAGA}, 'HELD', {AT}, {AT})",
        "INSERT INTO reservation_items (saga_id, product_id, quantity,"
        " unit_price_currency, unit_price_minor)"
        f" VALUES ({SAGA}, {PRODUCT}, 2, 'EUR', 450)",
    ),
    "orders": (
        "INSERT INTO orders (order_id, saga_id, user_id, status, currency, total_minor,"
        " failure_reason, card_last4, payment_id, history_len, created_us, updated_us)"
        f" VALUES ({SAGA}, {SAGA}, {USER}, 'PENDING', 'EUR', 900, '', '4242', '', 1, 1, 1)",
        "INSERT INTO order_items (order_id, position, product_id, quantity, unit_price_minor)"
        f" VALUES ({SAGA}, 0, {PRODUCT}, 2, 450)",
        "INSERT INTO order_status_history (order_id, position, status, reason, at_us)"
        f" VALUES ({SAGA}, 0, 'PENDING', '', 1)",
        "INSERT INTO order_idempotency_keys (user_id, idempotency_key, saga_id,"
        f" fingerprint, created_us) VALUES ({USER}, 'k1', {SAGA}, 'f', 1)",
    ),
}

MIGRATIONS: dict[str, Callable[[], list[Migration]]] = {
    "users": users.migrations,
    "payments": payments.migrations,
    "inventory": inventory.migrations,
    "orders": orders.migrations,
}

Databases = Callable[[], Awaitable[AsyncEngine]]


async def _count_rows(engine: AsyncEngine, tables: Sequence[str]) -> dict[str, int]:
    async with engine.connect() as conn:
        return {t: int(await conn.scalar(text(f"SELECT count(*) FROM {t}")) or 0) for t in tables}


@pytest.mark.parametrize("service", sorted(MIGRATIONS))
async def test_first_version_with_data_upgrades_to_the_fresh_head_schema(
    service: str, databases: Databases
) -> None:
    migrations = MIGRATIONS[service]()
    versions = sorted(m.version for m in migrations)
    first = versions[0]

    old = await databases()
    assert await migrate(old, migrations, up_to=first) == [first]
    async with old.begin() as conn:
        for statement in FIRST_VERSION_ROWS[service]:
            await conn.execute(text(statement))
    tables = sorted(schema([m for m in migrations if m.version == first]).tables)
    before = await _count_rows(old, tables)
    assert all(before.values()), before
    assert await migrate(old, migrations) == versions[1:]

    fresh = await databases()
    assert await migrate(fresh, migrations) == versions
    upgraded = await describe(old)
    assert upgraded == await describe(fresh)

    # The model the stores query is what the migrations built.
    model = await databases()
    async with model.begin() as conn:
        await conn.run_sync(schema(migrations).create_all)
    without_bookkeeping = {t: d for t, d in upgraded.items() if t != "schema_migrations"}
    assert await describe(model) == without_bookkeeping

    assert await _count_rows(old, tables) == before
    assert await migrate(old, migrations) == []  # head is head
