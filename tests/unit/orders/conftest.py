"""The orders domain over a real SQLite database, with in-memory stand-ins for the
services the saga calls (recording every call, failing on demand)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from mesh.db import create_engine, migrate, session_factory
from mesh.events import Outbox
from mesh.saga import SagaRunner, SagaStore
from services.orders import store
from services.orders.config import OrdersConfig
from services.orders.orders import Orders
from services.orders.saga import CardVault, OrderSagas
from services.orders.upstream import Upstreams
from tests.support.orders_domain import Domain, FakeShop

CONFIG = OrdersConfig(
    call_timeout_s=1, charge_timeout_s=1, payment_settle_s=0.2, saga_lease_s=5,
    compensation_reply_s=2, undo_backoff_max_s=0.05,
)  # fmt: skip


@pytest.fixture
async def domain(tmp_path: Path) -> AsyncIterator[Domain]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'orders.db'}")
    await migrate(engine, store.migrations())
    sessions = session_factory(engine)
    fake = FakeShop()
    orders_store = store.OrdersStore(sessions)
    up = Upstreams(users=cast(Any, fake), inventory=cast(Any, fake),
                   reservations=cast(Any, fake), payments=cast(Any, fake))  # fmt: skip
    sagas = OrderSagas(orders_store, Outbox(), up, CardVault(), CONFIG)
    runner = SagaRunner(SagaStore(sessions), sagas.definitions(), CollectorRegistry(), lease_s=5)
    orders = Orders(orders_store, runner, sagas, CONFIG)
    try:
        yield Domain(fake, orders_store, sagas, runner, orders, engine)
    finally:
        await orders.close(1)
        await runner.close(1)
        await engine.dispose()
