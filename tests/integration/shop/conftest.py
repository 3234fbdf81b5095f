"""The shop's four services as real processes, shared by the tests of this package.

One nats-server for the package; one stack per database backend (SQLite files,
then one fresh PostgreSQL database per service; PostgreSQL skips cleanly when
nothing answers on 127.0.0.1:5432). Tests that stop or kill processes use the
stack of their own module (`isolated_stack`) so the shared one stays intact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.nats import NatsServer, nats_server
from tests.support.shop import ShopStack
from tests.support.shop_backends import BACKENDS, stack_for


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def nats_srv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    # The mesh's NATS permissions on: each service connects as its own identity.
    async with nats_server(tmp_path_factory.mktemp("nats"), auth=True) as server:
        yield server


@pytest_asyncio.fixture(scope="package", loop_scope="package", params=BACKENDS)
async def shop(
    request: pytest.FixtureRequest, nats_srv: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ShopStack]:
    """The shared stack: tests on it use their own users and products."""
    base = tmp_path_factory.mktemp(f"shop-{request.param}")
    async with stack_for(request.param, base, nats_srv) as stack:
        yield stack
