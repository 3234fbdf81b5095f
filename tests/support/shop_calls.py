"""Helpers of the shop tests: make users/products/orders, read every service's state."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import nats
from meshproto.events.v1.envelope_pb2 import Envelope
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2
from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2
from shop.payments.v1 import payments_pb2
from shop.users.v1 import users_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from base.errors import details_of
from mesh.db import create_engine
from mesh.events import decode
from tests.support.poll import eventually
from tests.support.shop import ShopStack

T = TypeVar("T")

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
INSUFFICIENT_FUNDS = "4000000000009995"
PROCESSOR_ERROR = "4000000000000119"
SLOW = "4000000000000259"


async def new_user(shop: ShopStack) -> str:
    user = await shop.users().CreateUser(
        users_pb2.CreateUserRequest(
            email=f"{uuid.uuid4().hex}@example.com",
            password="correct horse battery",
            profile=users_pb2.Profile(display_name="Test Customer"),
        )
    )
    return user.user_id


async def new_product(
    shop: ShopStack, *, stock: int = 100, price: int = 250, currency: str = "USD"
) -> str:
    product = await shop.inventory().CreateProduct(
        inventory_pb2.CreateProductRequest(
            sku=f"SKU-{uuid.uuid4().hex[:12]}",
            name="Test product",
            price=money_pb2.Money(currency_code=currency, amount_minor=price),
            initial_stock=stock,
        )
    )
    return product.product_id


async def stock(shop: ShopStack, product_id: str) -> tuple[int, int]:
    """(available, reserved) of a product."""
    p = await shop.inventory().GetProduct(inventory_pb2.GetProductRequest(product_id=product_id))
    return p.available, p.reserved


async def stock_settles(
    shop: ShopStack, product_id: str, expected: tuple[int, int], within_s: float = 10.0
) -> None:
    """Wait until a product's (available, reserved) is `expected`. A completed order's
    units leave `reserved` when inventory handles its `order.completed`, just after the
    order's answer, so a check right after an order polls rather than reads once."""
    last: list[tuple[int, int]] = []

    async def settled() -> bool:
        last[:] = [await stock(shop, product_id)]
        return last[0] == expected

    try:
        await eventually(settled, within_s, f"stock of {product_id} to be {expected}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {last[0] if last else None}") from None


async def payment(shop: ShopStack, saga_id: str) -> payments_pb2.Payment | None:
    """The saga's payment, or None when payments has none (never charged, or voided)."""
    try:
        return await shop.payments().GetPayment(payments_pb2.GetPaymentRequest(saga_id=saga_id))
    except grpc.aio.AioRpcError as err:
        if err.code() is grpc.StatusCode.NOT_FOUND:
            return None
        raise


def address() -> v2.Address:
    return v2.Address(recipient="Ada Lovelace", lines=["12 St James's Square"], city="London",
                      postal_code="SW1Y 4JH", country_code="GB")  # fmt: skip


def card(number: str = APPROVE) -> v2.PaymentCard:
    return v2.PaymentCard(number=number, exp_month=12, exp_year=2040, cvc="123")


def create_v2(
    user_id: str,
    items: Sequence[tuple[str, int]],
    *,
    key: str | None = None,
    number: str = APPROVE,
    currency: str = "USD",
) -> v2.CreateOrderRequest:
    return v2.CreateOrderRequest(
        idempotency_key=key or uuid.uuid4().hex,
        user_id=user_id,
        items=[v2.OrderItem(product_id=p, quantity=q) for p, q in items],
        currency_code=currency,
        card=card(number),
        shipping_address=address(),
    )


def create_v1(
    user_id: str, items: Sequence[tuple[str, int]], *, number: str = APPROVE
) -> v1.CreateOrderRequest:
    return v1.CreateOrderRequest(
        user_id=user_id,
        items=[v1.OrderItem(product_id=p, quantity=q) for p, q in items],
        card_number=number,
    )


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str
    violations: dict[str, str]


@contextlib.asynccontextmanager
async def service_db(shop: ShopStack, service: str) -> AsyncIterator[AsyncEngine]:
    """An engine on `service`'s own database (SQLite file or PostgreSQL), disposed after."""
    engine = create_engine(shop.database_url(service))
    try:
        yield engine
    finally:
        await engine.dispose()


async def count(engine: AsyncEngine, sql: str, **params: Any) -> int:
    """`SELECT count(*) ...` with `params`, as an int."""
    async with engine.connect() as conn:
        return int(await conn.scalar(text(sql), params) or 0)


async def fails(call: Awaitable[Any]) -> Failure:
    """Await a call that must fail; its status, message, ErrorInfo reason and violations."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        bad_request, info = details_of(err)
        return Failure(
            err.code(),
            err.details() or "",
            info.reason if info else "",
            {v.field: v.description for v in bad_request.field_violations} if bad_request else {},
        )
    raise AssertionError("the call succeeded; it should have failed")


async def orders_of(shop: ShopStack, user_id: str) -> list[v2.Order]:
    orders: list[v2.Order] = []
    token = ""
    while True:
        page = await shop.orders_v2().ListOrders(
            v2.ListOrdersRequest(user_id=user_id, page_size=100, page_token=token)
        )
        orders.extend(page.orders)
        token = page.next_page_token
        if not token:
            return orders


def statuses(order: v2.Order) -> list[str]:
    return [
        v2.OrderStatus.Name(c.status).removeprefix("ORDER_STATUS_") for c in order.status_history
    ]


async def assert_consistent(shop: ShopStack, orders: Sequence[v2.Order]) -> None:
    """Money follows orders: captured only for a completed order, refunded or never
    captured for a failed or cancelled one."""
    for o in orders:
        p = await payment(shop, o.order_id)
        if o.status == v2.ORDER_STATUS_COMPLETED:
            assert p is not None and p.status == payments_pb2.PAYMENT_STATUS_CAPTURED, o.order_id
            assert p.amount.amount_minor == o.total.amount_minor
        elif o.status == v2.ORDER_STATUS_CANCELLED:
            assert p is None or p.status in (
                payments_pb2.PAYMENT_STATUS_REFUNDED,
                payments_pb2.PAYMENT_STATUS_DECLINED,
            ), o.order_id
        elif o.status == v2.ORDER_STATUS_FAILED:
            assert p is None or p.status != payments_pb2.PAYMENT_STATUS_CAPTURED, o.order_id
        else:
            raise AssertionError(f"order {o.order_id} is not final: {o.status}")


class StreamEvents:
    """Reads a domain's stream (every event from the start) through an ephemeral consumer."""

    def __init__(self, nats_url: str, subjects: str = "order.>", stream: str = "ORDER") -> None:
        self.nats_url = nats_url
        self.subjects = subjects
        self.stream = stream
        self.seen: list[Envelope] = []
        self._nc: Any = None
        self._sub: Any = None

    async def __aenter__(self) -> StreamEvents:
        self._nc = await nats.connect(self.nats_url)
        js = self._nc.jetstream()
        self._sub = await js.pull_subscribe(self.subjects, stream=self.stream)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._nc.close()

    async def _pull(self) -> None:
        try:
            msgs = await self._sub.fetch(256, timeout=0.2)
        except nats.errors.TimeoutError:
            return
        for m in msgs:
            await m.ack()
            self.seen.append(decode(m.data))

    async def wait_for(self, event_type: str, subject: str, within_s: float = 15.0) -> Envelope:
        """The first event of `event_type` about `subject` (an order id, a payment id...)."""

        async def found() -> Envelope | None:
            for env in self.seen:
                if env.type == event_type and env.subject == subject:
                    return env
            await self._pull()
            return None

        return await eventually(found, within_s, f"{event_type} of {subject}")


def OrderEvents(nats_url: str) -> StreamEvents:
    return StreamEvents(nats_url, "order.>", "ORDER")
