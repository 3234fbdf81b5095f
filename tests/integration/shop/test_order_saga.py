"""The order saga across four real processes: happy paths, every failure and its
compensation, as every service sees it afterwards."""

from __future__ import annotations

import grpc
import pytest
from shop.events.v1 import events_pb2
from shop.inventory.v1 import inventory_pb2
from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2
from shop.payments.v1 import payments_pb2

from mesh.events import unpack
from services.inventory.validation import MAX_STOCK
from tests.support.shop import ShopStack
from tests.support.shop_calls import (
    DECLINE,
    INSUFFICIENT_FUNDS,
    OrderEvents,
    StreamEvents,
    assert_consistent,
    create_v1,
    create_v2,
    fails,
    new_product,
    new_user,
    orders_of,
    payment,
    statuses,
    stock_settles,
)

pytestmark = pytest.mark.asyncio(loop_scope="package")

UNKNOWN = "00000000-0000-4000-8000-000000000000"


async def test_v2_happy_path_completes_and_every_service_agrees(shop: ShopStack) -> None:
    user = await new_user(shop)
    apples = await new_product(shop, stock=10, price=250)
    pears = await new_product(shop, stock=5, price=1999)

    order = await shop.orders_v2().CreateOrder(create_v2(user, [(apples, 3), (pears, 1)]))

    assert order.status == v2.ORDER_STATUS_COMPLETED
    assert statuses(order) == ["PENDING", "RESERVED", "PAID", "COMPLETED"]
    assert order.total.currency_code == "USD" and order.total.amount_minor == 3 * 250 + 1999
    assert [(i.product_id, i.quantity, i.unit_price.amount_minor) for i in order.items] == [
        (apples, 3, 250),
        (pears, 1, 1999),
    ]
    assert order.card_last4 == "4242" and order.failure_reason == ""
    assert order.shipping_address.city == "London"
    await stock_settles(shop, apples, (7, 0))
    await stock_settles(shop, pears, (4, 0))
    p = await payment(shop, order.order_id)
    assert p is not None and p.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    assert p.amount.amount_minor == order.total.amount_minor and p.card_last4 == "4242"
    again = await shop.orders_v2().GetOrder(v2.GetOrderRequest(order_id=order.order_id))
    assert again == order
    async with OrderEvents(shop.nats_url) as events:
        done = await events.wait_for("order.completed", order.order_id)
    assert unpack(done, events_pb2.OrderCompleted).total.amount_minor == order.total.amount_minor
    assert unpack(done, events_pb2.OrderCompleted).saga_id == order.order_id
    assert done.source == "orders"


async def test_v1_happy_path_and_v1_view_of_the_same_store(shop: ShopStack) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=4, price=500)
    order = await shop.orders_v1().CreateOrder(create_v1(user, [(product, 2)]))
    assert order.status == v1.ORDER_STATUS_COMPLETED
    assert order.total_cents == 1000
    assert [i.unit_price_cents for i in order.items] == [500]
    await stock_settles(shop, product, (2, 0))
    listed = await shop.orders_v1().ListOrders(v1.ListOrdersRequest(user_id=user))
    assert [o.order_id for o in listed.orders] == [order.order_id]
    as_v2 = await shop.orders_v2().GetOrder(v2.GetOrderRequest(order_id=order.order_id))
    assert as_v2.total.amount_minor == 1000 and as_v2.total.currency_code == "USD"
    assert not as_v2.HasField("shipping_address")


async def test_v1_reads_v2_orders_and_refuses_other_currencies(shop: ShopStack) -> None:
    user = await new_user(shop)
    usd = await new_product(shop, price=300)
    eur = await new_product(shop, price=300, currency="EUR")
    o_usd = await shop.orders_v2().CreateOrder(create_v2(user, [(usd, 1)]))
    o_eur = await shop.orders_v2().CreateOrder(create_v2(user, [(eur, 2)], currency="EUR"))
    assert o_eur.status == v2.ORDER_STATUS_COMPLETED and o_eur.total.currency_code == "EUR"

    seen = await shop.orders_v1().GetOrder(v1.GetOrderRequest(order_id=o_usd.order_id))
    assert seen.status == v1.ORDER_STATUS_COMPLETED and seen.total_cents == 300
    f = await fails(shop.orders_v1().GetOrder(v1.GetOrderRequest(order_id=o_eur.order_id)))
    assert f.code is grpc.StatusCode.FAILED_PRECONDITION
    assert f.reason == "NOT_REPRESENTABLE_IN_V1"
    listed = await shop.orders_v1().ListOrders(v1.ListOrdersRequest(user_id=user))
    assert [o.order_id for o in listed.orders] == [o_usd.order_id]
    # v1 cannot show the cancelled order either: it is refused before anything is undone
    # (it used to be cancelled and refunded, then answered NOT_REPRESENTABLE_IN_V1).
    cancel = v1.CancelOrderRequest(order_id=o_eur.order_id, reason="changed mind")
    f = await fails(shop.orders_v1().CancelOrder(cancel))
    assert (f.code, f.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_REPRESENTABLE_IN_V1")
    still = await shop.orders_v2().GetOrder(v2.GetOrderRequest(order_id=o_eur.order_id))
    assert still.status == v2.ORDER_STATUS_COMPLETED
    p = await payment(shop, o_eur.order_id)
    assert p is not None and p.status == payments_pb2.PAYMENT_STATUS_CAPTURED
    await stock_settles(shop, eur, (98, 0))


async def test_unknown_user_is_not_found_and_nothing_is_held(shop: ShopStack) -> None:
    product = await new_product(shop, stock=5)
    f = await fails(shop.orders_v2().CreateOrder(create_v2(UNKNOWN, [(product, 1)])))
    assert f.code is grpc.StatusCode.NOT_FOUND
    assert f.reason == "USER_NOT_FOUND"
    await stock_settles(shop, product, (5, 0))
    assert await orders_of(shop, UNKNOWN) == []


async def test_unknown_product_fails_the_order_and_releases_the_rest(shop: ShopStack) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=5)
    f = await fails(shop.orders_v2().CreateOrder(create_v2(user, [(product, 2), (UNKNOWN, 1)])))
    assert f.code is grpc.StatusCode.NOT_FOUND and f.reason == "PRODUCT_NOT_FOUND"
    [order] = await orders_of(shop, user)
    assert order.status == v2.ORDER_STATUS_FAILED
    assert UNKNOWN in order.failure_reason
    assert statuses(order) == ["PENDING", "FAILED"]
    await stock_settles(shop, product, (5, 0))
    assert await payment(shop, order.order_id) is None


async def test_insufficient_stock_fails_with_nothing_reserved_or_charged(shop: ShopStack) -> None:
    user = await new_user(shop)
    plenty = await new_product(shop, stock=50)
    scarce = await new_product(shop, stock=1)
    f = await fails(shop.orders_v2().CreateOrder(create_v2(user, [(plenty, 3), (scarce, 2)])))
    assert f.code is grpc.StatusCode.FAILED_PRECONDITION and f.reason == "INSUFFICIENT_STOCK"
    [order] = await orders_of(shop, user)
    assert order.status == v2.ORDER_STATUS_FAILED and "insufficient stock" in order.failure_reason
    await stock_settles(shop, plenty, (50, 0))
    await stock_settles(shop, scarce, (1, 0))
    assert await payment(shop, order.order_id) is None
    async with OrderEvents(shop.nats_url) as events:
        comp = await events.wait_for("order.compensation.completed", order.order_id)
    assert unpack(comp, events_pb2.OrderCompensationCompleted).reason == order.failure_reason
    assert list(unpack(comp, events_pb2.OrderCompensationCompleted).compensated_steps) == [
        "create_order"
    ]


@pytest.mark.parametrize(
    ("number", "decline"),
    [(DECLINE, "card_declined"), (INSUFFICIENT_FUNDS, "insufficient_funds")],
)
async def test_declined_card_releases_the_stock(shop: ShopStack, number: str, decline: str) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=3)
    f = await fails(shop.orders_v2().CreateOrder(create_v2(user, [(product, 2)], number=number)))
    assert f.code is grpc.StatusCode.FAILED_PRECONDITION and f.reason == "CARD_DECLINED"
    assert decline in f.message
    [order] = await orders_of(shop, user)
    assert order.status == v2.ORDER_STATUS_FAILED
    assert statuses(order) == ["PENDING", "RESERVED", "FAILED"]
    await stock_settles(shop, product, (3, 0))
    p = await payment(shop, order.order_id)
    assert p is not None and p.status == payments_pb2.PAYMENT_STATUS_DECLINED
    async with OrderEvents(shop.nats_url) as events:
        comp = await events.wait_for("order.compensation.completed", order.order_id)
    # Undone in reverse: the reservation, then the order (the declined charge has
    # nothing to undo: a business failure of the step itself).
    assert list(unpack(comp, events_pb2.OrderCompensationCompleted).compensated_steps) == [
        "reserve_stock",
        "create_order",
    ]
    await assert_consistent(shop, [order])


async def test_price_in_another_currency_fails_and_releases(shop: ShopStack) -> None:
    user = await new_user(shop)
    eur = await new_product(shop, stock=4, currency="EUR")
    f = await fails(shop.orders_v2().CreateOrder(create_v2(user, [(eur, 1)], currency="USD")))
    assert f.code is grpc.StatusCode.FAILED_PRECONDITION and f.reason == "CURRENCY_MISMATCH"
    [order] = await orders_of(shop, user)
    assert order.status == v2.ORDER_STATUS_FAILED
    await stock_settles(shop, eur, (4, 0))
    assert await payment(shop, order.order_id) is None


async def test_cancel_refunds_and_returns_stock(shop: ShopStack) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=6, price=700)
    order = await shop.orders_v2().CreateOrder(create_v2(user, [(product, 4)]))
    await stock_settles(shop, product, (2, 0))

    cancelled = await shop.orders_v2().CancelOrder(
        v2.CancelOrderRequest(order_id=order.order_id, reason="changed my mind")
    )
    assert cancelled.status == v2.ORDER_STATUS_CANCELLED
    assert cancelled.failure_reason == "changed my mind"
    assert statuses(cancelled)[-2:] == ["COMPLETED", "CANCELLED"]
    p = await payment(shop, order.order_id)
    assert p is not None and p.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    await stock_settles(shop, product, (6, 0))

    # Cancelling again answers the order unchanged and gives nothing back twice.
    again = await shop.orders_v2().CancelOrder(v2.CancelOrderRequest(order_id=order.order_id))
    assert again == cancelled
    await stock_settles(shop, product, (6, 0))
    as_v1 = await shop.orders_v1().CancelOrder(v1.CancelOrderRequest(order_id=order.order_id))
    assert as_v1.status == v1.ORDER_STATUS_CANCELLED


async def test_a_cancel_returns_units_beyond_the_stock_limit(shop: ShopStack) -> None:
    """The product was filled to AddStock's limit after the sale: the cancel still
    returns the units (it was refused with STOCK_LIMIT after the refund, and the order
    stayed COMPLETED with its money given back, on every retry)."""
    user = await new_user(shop)
    product = await new_product(shop, stock=6, price=700)
    order = await shop.orders_v2().CreateOrder(create_v2(user, [(product, 4)]))
    await stock_settles(shop, product, (2, 0))
    await shop.inventory().AddStock(
        inventory_pb2.AddStockRequest(product_id=product, quantity=MAX_STOCK - 2)
    )
    cancelled = await shop.orders_v2().CancelOrder(v2.CancelOrderRequest(order_id=order.order_id))
    assert cancelled.status == v2.ORDER_STATUS_CANCELLED
    p = await payment(shop, order.order_id)
    assert p is not None and p.status == payments_pb2.PAYMENT_STATUS_REFUNDED
    await stock_settles(shop, product, (MAX_STOCK + 4, 0))
    async with StreamEvents(shop.nats_url, "inventory.>", "INVENTORY") as events:
        back = await events.wait_for("inventory.returned", order.order_id)
    assert [
        (i.product_id, i.quantity) for i in unpack(back, events_pb2.InventoryReturned).items
    ] == [(product, 4)]


async def test_cancel_of_failed_or_unknown_orders(shop: ShopStack) -> None:
    user = await new_user(shop)
    product = await new_product(shop, stock=1)
    await fails(shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)], number=DECLINE)))
    [failed] = await orders_of(shop, user)
    f = await fails(shop.orders_v2().CancelOrder(v2.CancelOrderRequest(order_id=failed.order_id)))
    assert f.code is grpc.StatusCode.FAILED_PRECONDITION and f.reason == "ORDER_FAILED"
    f = await fails(shop.orders_v1().CancelOrder(v1.CancelOrderRequest(order_id=failed.order_id)))
    assert f.code is grpc.StatusCode.FAILED_PRECONDITION
    f = await fails(shop.orders_v2().CancelOrder(v2.CancelOrderRequest(order_id=UNKNOWN)))
    assert f.code is grpc.StatusCode.NOT_FOUND
    f = await fails(shop.orders_v2().GetOrder(v2.GetOrderRequest(order_id=UNKNOWN)))
    assert f.code is grpc.StatusCode.NOT_FOUND


async def test_list_orders_pages_newest_first(shop: ShopStack) -> None:
    user = await new_user(shop)
    other = await new_user(shop)
    product = await new_product(shop, stock=20)
    placed = [
        (await shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)]))).order_id
        for _ in range(5)
    ]
    await shop.orders_v2().CreateOrder(create_v2(other, [(product, 1)]))

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await shop.orders_v2().ListOrders(
            v2.ListOrdersRequest(user_id=user, page_size=2, page_token=token)
        )
        pages.append([o.order_id for o in page.orders])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [oid for p in pages for oid in p] == list(reversed(placed))
    first = await shop.orders_v2().ListOrders(v2.ListOrdersRequest(user_id=user, page_size=2))
    f = await fails(
        shop.orders_v2().ListOrders(
            v2.ListOrdersRequest(user_id=other, page_token=first.next_page_token)
        )
    )
    assert f.code is grpc.StatusCode.INVALID_ARGUMENT and "page_token" in f.violations
    everything = await shop.orders_v1().ListOrders(v1.ListOrdersRequest(user_id=user))
    assert [o.order_id for o in everything.orders] == list(reversed(placed))
