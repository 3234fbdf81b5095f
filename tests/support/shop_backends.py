"""The whole shop on SQLite or PostgreSQL, for the shop integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from tests.support.nats import NatsServer
from tests.support.postgres import pg_available
from tests.support.shop import ShopStack, pg_databases, shop_stack

BACKENDS = ["sqlite", "postgresql"]


# Quick timeouts and recovery so failure paths finish in test time.
STACK_ENV: Mapping[str, str] = {
    "ORDERS_CALL_TIMEOUT_S": "3",
    "ORDERS_CHARGE_TIMEOUT_S": "10",
    "ORDERS_PAYMENT_SETTLE_S": "3",
    "ORDERS_SAGA_LEASE_S": "5",
    "ORDERS_SAGA_RECOVER_EVERY_S": "1",
    "PAYMENTS_SLOW_CARD_DELAY_S": "3",
}


@contextlib.asynccontextmanager
async def stack_for(
    backend: str, base: Path, nats: NatsServer, extra_env: Mapping[str, str] | None = None
) -> AsyncIterator[ShopStack]:
    """The stack on `backend`; its services connect as their identities on `nats`, the
    tests (`stack.nats_url`) as its administrator."""
    env = {**STACK_ENV, **(extra_env or {})}
    nats_url = nats.admin_url
    if backend == "sqlite":
        async with shop_stack(base, nats_url=nats_url, extra_env=env, nats=nats) as stack:
            yield stack
        return
    if not await pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    async with (
        pg_databases() as urls,
        shop_stack(base, nats_url=nats_url, database_urls=urls, extra_env=env, nats=nats) as stack,
    ):
        yield stack
