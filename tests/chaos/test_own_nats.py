"""nats-server SIGKILLed under `meshctl up` as `make run` runs it: `up`'s own authenticated
nats-server (each service with its own NATS identity), supervised, with JetStream's store
in the run directory. The rest of the chaos suite stops a test's own nats-server instead,
to hold an outage for a given time; this is the process a user's mesh actually runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from shop.orders.v2 import orders_pb2

from tests.support.chaos import Shopper, books_balance, meshctl_status
from tests.support.edge_tokens import admin
from tests.support.local_mesh import Stack, local_mesh
from tests.support.poll import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

STOCK = 50


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with local_mesh(tmp_path_factory.mktemp("own-nats"), own_nats=True) as s:
        yield s


async def test_nats_killed_during_orders_every_event_handled_once(stack: Stack) -> None:
    """SIGKILL nats-server while 40 orders are placed: every order completes (the saga
    does not wait for NATS: its events wait in the outbox), the supervisor starts the
    server again on its port and store, the services reconnect with their credentials,
    and every `order.completed` reaches inventory exactly once (the sales ledger, the
    reservations confirmed)."""
    assert stack.nats is None, "this stack runs up's own nats-server"
    nats = stack.child("nats")
    async with grpc.aio.insecure_channel(stack.edge.address) as channel:
        shopper = Shopper(channel)
        await shopper.setup(STOCK, (await admin(stack)).metadata)
        codes: dict[str, grpc.StatusCode] = {}

        async def order(key: str) -> None:
            codes[key] = await shopper.place(key)

        async def kill_when_busy() -> float:
            await eventually(lambda: len(codes) >= 10, 60, "10 orders answered before the kill")
            os.kill(nats.proc.pid, signal.SIGKILL)
            t0 = time.monotonic()
            await eventually(
                lambda: nats.restarts == 1 and nats.running, 15, "nats-server started again"
            )
            return time.monotonic() - t0

        killer = asyncio.create_task(kill_when_busy())
        await asyncio.gather(*(order(uuid.uuid4().hex) for _ in range(40)))
        back_s = await killer
        print(f"\nchaos: up's nats-server running again {back_s:.2f}s after SIGKILL")
        assert set(codes.values()) == {grpc.StatusCode.OK}, shopper.outcomes
        orders = await books_balance(stack, shopper, STOCK)
        assert len(orders) == 40
        assert all(o.status == orders_pb2.ORDER_STATUS_COMPLETED for o in orders)
    rows = meshctl_status(stack.base)
    assert rows["nats"] == ["nats", str(nats.proc.pid), "running", "1", "SIGKILL"], rows
