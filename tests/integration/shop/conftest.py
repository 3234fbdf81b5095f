"""The shop's four services as real processes, shared by the tests of this package.

One nats-server for the package; one stack per database backend (SQLite files,
then one fresh PostgreSQL database per service; PostgreSQL skips cleanly when
nothing answers on 127.0.0.1:5432). Tests that stop or kill processes use the
stack of their own module (`isolated_stack`) so the shared one stays intact.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.nats import NatsServer, nats_server
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


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def nats_srv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    # The mesh's NATS permissions on: each service connects as its own identity.
    async with nats_server(tmp_path_factory.mktemp("nats"), auth=True) as server:
        yield server


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


@pytest_asyncio.fixture(scope="package", loop_scope="package", params=BACKENDS)
async def shop(
    request: pytest.FixtureRequest, nats_srv: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ShopStack]:
    """The shared stack: tests on it use their own users and products."""
    base = tmp_path_factory.mktemp(f"shop-{request.param}")
    async with stack_for(request.param, base, nats_srv) as stack:
        yield stack
