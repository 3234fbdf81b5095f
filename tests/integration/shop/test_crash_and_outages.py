"""Orders killed mid-saga and restarted; dependencies down. These tests stop and kill
processes, so they run on a stack of their own (one per backend)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from shop.orders.v2 import orders_pb2 as v2
from shop.payments.v1 import payments_pb2
from sqlalchemy import text

from tests.support.nats import NatsServer
from tests.support.poll import eventually
from tests.support.shop import ShopStack
from tests.support.shop_backends import BACKENDS, stack_for
from tests.support.shop_calls import (
    PROCESSOR_ERROR,
    SLOW,
    assert_consistent,
    create_v2,
    fails,
    new_product,
    new_user,
    orders_of,
    payment,
    service_db,
    stock_settles,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")

FINAL = (v2.ORDER_STATUS_COMPLETED, v2.ORDER_STATUS_FAILED, v2.ORDER_STATUS_CANCELLED)
# The charge step's position in the place saga: four steps done means it runs now.
CHARGE_STEP = 4


@pytest_asyncio.fixture(scope="module", loop_scope="package", params=BACKENDS)
async def isolated(
    request: pytest.FixtureRequest, nats_srv: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ShopStack]:
    base = tmp_path_factory.mktemp(f"isolated-{request.param}")
    # A call to a service with no instance waits for one up to its deadline: short
    # deadlines keep "dependency down" quick (the 3 s slow card still fits in 4 s).
    env = {"ORDERS_CALL_TIMEOUT_S": "1", "ORDERS_CHARGE_TIMEOUT_S": "4",
           "ORDERS_UNDO_BACKOFF_MAX_S": "0.5", "ORDERS_COMPENSATION_REPLY_S": "1"}  # fmt: skip
    async with stack_for(request.param, base, nats_srv, env) as stack:
        yield stack


async def saga_at_step(shop: ShopStack, step: int) -> str | None:
    """The id of a running order saga that has completed `step` steps, if any."""
    async with service_db(shop, "orders") as db, db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT saga_id FROM mesh_saga WHERE name = 'order.place.v1'"
                    " AND status = 'RUNNING' AND completed = :n"
                ),
                {"n": step},
            )
        ).first()
    return None if row is None else str(row[0])


async def final_order(shop: ShopStack, order_id: str, within_s: float = 30.0) -> v2.Order:
    async def final() -> v2.Order | None:
        try:
            o = await shop.orders_v2().GetOrder(v2.GetOrderRequest(order_id=order_id))
        except grpc.aio.AioRpcError:
            return None  # orders restarting
        return o if o.status in FINAL else None

    return await eventually(final, within_s, f"order {order_id} final")


async def test_orders_killed_while_charging_recovers_to_a_consistent_end(
    isolated: ShopStack,
) -> None:
    shop = isolated
    user = await new_user(shop)
    product = await new_product(shop, stock=5, price=900)
    request = create_v2(user, [(product, 2)], key="crash-me", number=SLOW)
    placing = asyncio.ensure_future(shop.orders_v2().CreateOrder(request, timeout=30))

    async def charging() -> str | None:
        return await saga_at_step(shop, CHARGE_STEP)

    saga_id = await eventually(charging, what="the saga charging the slow card")
    await shop.kill("orders")  # kill -9 while payments works on the charge
    f = await fails(placing)
    assert f.code is grpc.StatusCode.UNAVAILABLE
    await shop.start("orders")  # same instance id: it resumes its own sagas at once

    first = await final_order(shop, saga_id)
    sold = 2 if first.status == v2.ORDER_STATUS_COMPLETED else 0
    await stock_settles(shop, product, (5 - sold, 0))
    await assert_consistent(shop, [first])
    if first.status == v2.ORDER_STATUS_FAILED:
        # The card died with the process: the saga undid everything, the charge
        # included (payments voided the saga, so a late charge could not land).
        assert "card details" in first.failure_reason
        assert await payment(shop, saga_id) is None

    # The client retries with its key: the order it gets is completed, paid once.
    retried = await shop.orders_v2().CreateOrder(request, timeout=30)
    assert retried.status == v2.ORDER_STATUS_COMPLETED
    await stock_settles(shop, product, (3, 0))
    mine = await orders_of(shop, user)
    assert sum(o.status == v2.ORDER_STATUS_COMPLETED for o in mine) == 1
    await assert_consistent(shop, mine)


async def test_a_dependency_down_answers_unavailable(isolated: ShopStack) -> None:
    shop = isolated
    user = await new_user(shop)
    product = await new_product(shop, stock=5)
    await shop.stop("users")
    try:
        f = await fails(shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)]), timeout=30))
        assert f.code is grpc.StatusCode.UNAVAILABLE
        await stock_settles(shop, product, (5, 0))
    finally:
        await shop.start("users")

    async def placed() -> v2.Order | None:
        try:
            return await shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)]), timeout=30)
        except grpc.aio.AioRpcError as err:
            assert err.code() is grpc.StatusCode.UNAVAILABLE  # until orders sees users again
            return None

    order = await eventually(placed, what="an order once users is back")
    assert order.status == v2.ORDER_STATUS_COMPLETED


async def test_payments_down_holds_stock_until_the_charge_is_known_undone(
    isolated: ShopStack,
) -> None:
    shop = isolated
    user = await new_user(shop)
    product = await new_product(shop, stock=5)
    await shop.stop("payments")
    try:
        f = await fails(shop.orders_v2().CreateOrder(create_v2(user, [(product, 2)]), timeout=30))
        assert f.code is grpc.StatusCode.UNAVAILABLE
        # Whether the card was charged is unknown while payments is down: the
        # reservation is kept until the refund (a void) goes through.
        await stock_settles(shop, product, (3, 2))
    finally:
        await shop.start("payments")
    [order] = await orders_of(shop, user)
    done = await final_order(shop, order.order_id)
    assert done.status == v2.ORDER_STATUS_FAILED
    await stock_settles(shop, product, (5, 0))
    assert await payment(shop, order.order_id) is None


async def test_processor_outage_fails_the_order_with_unavailable(isolated: ShopStack) -> None:
    shop = isolated
    user = await new_user(shop)
    product = await new_product(shop, stock=5)
    f = await fails(
        shop.orders_v2().CreateOrder(
            create_v2(user, [(product, 1)], number=PROCESSOR_ERROR), timeout=30
        )
    )
    assert f.code is grpc.StatusCode.UNAVAILABLE
    [order] = await orders_of(shop, user)
    done = await final_order(shop, order.order_id)
    assert done.status == v2.ORDER_STATUS_FAILED
    await stock_settles(shop, product, (5, 0))
    p = await payment(shop, order.order_id)
    assert p is None or p.status != payments_pb2.PAYMENT_STATUS_CAPTURED
