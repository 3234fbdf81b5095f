"""The shop's four services as real processes on a nats-server of this package, and a
subscriber of the test's own.

One nats-server (random port, JetStream, temp store; tests stop and restart it), one
SQLite stack (tests/support/shop.py, the settings of the shop tests) and one
`Recorder` subscribed from the start, shared by every test of the package: the tests
run one after another, each on its own users, products and orders, and a test that
stops NATS or kills a service brings it back before it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import pytest
import pytest_asyncio

from tests.support.nats import NatsServer, nats_server
from tests.support.shop import ShopStack
from tests.support.shop_backends import stack_for
from tests.support.shop_events import LOW_STOCK_THRESHOLD, Recorder

SUBSCRIBED = ("order.completed", "payment.completed", "inventory.reserved", "user.created")
EVENTS_ENV: Mapping[str, str] = {"INVENTORY_LOW_STOCK_THRESHOLD": str(LOW_STOCK_THRESHOLD)}


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def nats_srv(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[NatsServer]:
    # The mesh's NATS permissions on: each service connects as its own identity.
    async with nats_server(tmp_path_factory.mktemp("nats"), auth=True) as server:
        yield server


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def recorder(
    nats_srv: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Recorder]:
    rec = Recorder(nats_srv.admin_url, tmp_path_factory.mktemp("recorder") / "rec.db", SUBSCRIBED)
    await rec.start()
    try:
        yield rec
    finally:
        await rec.close()


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def shop(
    nats_srv: NatsServer, recorder: Recorder, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ShopStack]:
    base = tmp_path_factory.mktemp("shop-events")
    async with stack_for("sqlite", base, nats_srv, EVENTS_ENV) as stack:
        yield stack


@pytest_asyncio.fixture(loop_scope="package")
async def nats_running(nats_srv: NatsServer) -> AsyncIterator[NatsServer]:
    """The package's server, started again after the test if the test left it stopped."""
    yield nats_srv
    await nats_srv.start()
