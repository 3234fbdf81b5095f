"""gRPC `shop.orders.v1.OrderService`: validate, call the domain layer, map to v1.

v1 speaks whole US cents: an order in another currency (placed through v2) is
not representable, so GetOrder answers FAILED_PRECONDITION for it and
ListOrders leaves it out. RESERVED and PAID, which v1 does not know, show as
PENDING (the saga is still running).

v1 ListOrders has no paging fields: it answers the user's newest
`V1_LIST_LIMIT` orders (fewer when some are not representable in v1); older
ones are listed by v2, page by page. Every method acts for the caller's own
account (services/orders/ownership.py).
"""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from shop.orders.v1 import orders_pb2, orders_pb2_grpc

from base.errors import FailedPrecondition
from mesh.service_db import db_guard
from services.orders import ownership, validation
from services.orders.model import Order, OrderStatus
from services.orders.orders import Orders

# The most orders v1 ListOrders answers with (the wire contract has no page token).
V1_LIST_LIMIT = 100

Context = Any  # grpc.aio.ServicerContext; unused: errors travel as exceptions

STATUS: dict[OrderStatus, orders_pb2.OrderStatus.ValueType] = {
    OrderStatus.PENDING: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.RESERVED: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.PAID: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.COMPLETED: orders_pb2.ORDER_STATUS_COMPLETED,
    OrderStatus.CANCELLED: orders_pb2.ORDER_STATUS_CANCELLED,
    OrderStatus.FAILED: orders_pb2.ORDER_STATUS_FAILED,
}


def timestamp(us: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMicroseconds(us)
    return ts


def representable(order: Order) -> bool:
    return order.currency == validation.V1_CURRENCY


def require_representable(order: Order) -> Order:
    """The order, if v1 can show it; FAILED_PRECONDITION NOT_REPRESENTABLE_IN_V1 if not."""
    if not representable(order):
        raise FailedPrecondition(
            f"order {order.order_id} is in {order.currency}; v1 shows US cents only, use v2",
            reason="NOT_REPRESENTABLE_IN_V1",
        )
    return order


def to_proto(order: Order) -> orders_pb2.Order:
    require_representable(order)
    return orders_pb2.Order(
        order_id=order.order_id,
        user_id=order.user_id,
        items=[
            orders_pb2.OrderItem(
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price_cents=line.unit_price_minor or 0,
            )
            for line in order.lines
        ],
        total_cents=order.total_minor,
        status=STATUS[order.status],
        failure_reason=order.failure_reason,
        create_time=timestamp(order.created_us),
    )


class OrderServicerV1(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: Orders) -> None:
        self.orders = orders

    @db_guard
    async def CreateOrder(
        self, request: orders_pb2.CreateOrderRequest, context: Context
    ) -> orders_pb2.Order:
        actor, user_id = ownership.requested_user(request.user_id)
        cmd = validation.create_order_v1(request, user_id=user_id)
        ownership.check_place(actor, cmd.user_id)
        return to_proto(await self.orders.place(cmd))

    @db_guard
    async def GetOrder(
        self, request: orders_pb2.GetOrderRequest, context: Context
    ) -> orders_pb2.Order:
        oid = validation.order_id(request.order_id)
        return to_proto(await ownership.visible_order(self.orders, oid))

    @db_guard
    async def ListOrders(
        self, request: orders_pb2.ListOrdersRequest, context: Context
    ) -> orders_pb2.ListOrdersResponse:
        actor, requested = ownership.requested_user(request.user_id)
        user_id = validation.list_orders_v1(request, user_id=requested)
        ownership.check_list(actor, user_id)
        found = await self.orders.list_all(user_id, limit=V1_LIST_LIMIT)
        return orders_pb2.ListOrdersResponse(
            orders=[to_proto(o) for o in found if representable(o)]
        )

    @db_guard
    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: Context
    ) -> orders_pb2.Order:
        order_id, reason = validation.cancel_order(request.order_id, request.reason)
        # Refused before it is cancelled: v1 could not answer with the cancelled order,
        # and an error after the refund would tell the caller nothing happened.
        require_representable(await ownership.visible_order(self.orders, order_id))
        return to_proto(await self.orders.cancel(order_id, reason))
