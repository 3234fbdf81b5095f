"""Domain orders as v1 and v2 messages, and saga failures as caller statuses."""

from __future__ import annotations

import grpc
import pytest
from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2

from base.errors import FailedPrecondition
from services.orders import servicer_v1, servicer_v2
from services.orders.model import Address, Line, Order, OrderStatus, StatusChange
from services.orders.upstream import public_error


def order(status: OrderStatus = OrderStatus.PAID, currency: str = "USD") -> Order:
    return Order(
        order_id="o", saga_id="o", user_id="u",
        lines=(Line("p1", 2, 150), Line("p2", 1, None)), currency=currency, total_minor=300,
        status=status,
        history=(StatusChange(OrderStatus.PENDING, 1_000_000),
                 StatusChange(status, 2_500_000, "r")),
        shipping=Address("Ada", ("1 Road",), "Berlin", "", "DE"), failure_reason="",
        card_last4="4242", payment_id="pay", created_us=1_000_000, updated_us=2_500_000,
    )  # fmt: skip


def test_v1_shows_steps_of_the_saga_as_pending() -> None:
    for status in (OrderStatus.PENDING, OrderStatus.RESERVED, OrderStatus.PAID):
        assert servicer_v1.to_proto(order(status)).status == v1.ORDER_STATUS_PENDING
    msg = servicer_v1.to_proto(order(OrderStatus.COMPLETED))
    assert msg.status == v1.ORDER_STATUS_COMPLETED and msg.total_cents == 300
    assert [i.unit_price_cents for i in msg.items] == [150, 0]
    assert msg.create_time.ToMicroseconds() == 1_000_000


def test_v1_refuses_orders_in_other_currencies() -> None:
    with pytest.raises(FailedPrecondition):
        servicer_v1.to_proto(order(currency="EUR"))


def test_v2_has_money_history_and_address() -> None:
    msg = servicer_v2.to_proto(order(OrderStatus.RESERVED, "EUR"))
    assert msg.status == v2.ORDER_STATUS_RESERVED
    assert (msg.total.currency_code, msg.total.amount_minor) == ("EUR", 300)
    assert msg.items[0].unit_price.amount_minor == 150 and not msg.items[1].HasField("unit_price")
    assert [c.status for c in msg.status_history] == [v2.ORDER_STATUS_PENDING,
                                                       v2.ORDER_STATUS_RESERVED]  # fmt: skip
    assert msg.status_history[1].reason == "r"
    assert msg.shipping_address.city == "Berlin" and msg.card_last4 == "4242"
    assert msg.update_time.ToMicroseconds() == 2_500_000


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        ("NOT_FOUND", grpc.StatusCode.NOT_FOUND),
        ("FAILED_PRECONDITION", grpc.StatusCode.FAILED_PRECONDITION),
        ("ABORTED", grpc.StatusCode.ABORTED),
        ("INVALID_ARGUMENT", grpc.StatusCode.INVALID_ARGUMENT),
        ("UNAVAILABLE", grpc.StatusCode.UNAVAILABLE),
        ("DEADLINE_EXCEEDED", grpc.StatusCode.UNAVAILABLE),
        ("RESOURCE_EXHAUSTED", grpc.StatusCode.UNAVAILABLE),
        ("INTERNAL", grpc.StatusCode.UNAVAILABLE),
        ("UNKNOWN", grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_saga_failures_map_to_the_promised_statuses(
    recorded: str, expected: grpc.StatusCode
) -> None:
    err = public_error(recorded, "why", "SOME_REASON")
    assert err.code is expected
    assert "why" in err.message
