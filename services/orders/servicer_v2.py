"""gRPC `shop.orders.v2.OrderService`: validate, call the domain layer, map to v2."""

from __future__ import annotations

from typing import Any

from shop.common.v1 import money_pb2
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from mesh.service_db import db_guard
from services.common.pagination import encode_page_token
from services.orders import ownership, validation
from services.orders.model import Order, OrderStatus
from services.orders.orders import Orders
from services.orders.servicer_v1 import timestamp

Context = Any  # grpc.aio.ServicerContext; unused: errors travel as exceptions

STATUS: dict[OrderStatus, orders_pb2.OrderStatus.ValueType] = {
    OrderStatus.PENDING: orders_pb2.ORDER_STATUS_PENDING,
    OrderStatus.RESERVED: orders_pb2.ORDER_STATUS_RESERVED,
    OrderStatus.PAID: orders_pb2.ORDER_STATUS_PAID,
    OrderStatus.COMPLETED: orders_pb2.ORDER_STATUS_COMPLETED,
    OrderStatus.CANCELLED: orders_pb2.ORDER_STATUS_CANCELLED,
    OrderStatus.FAILED: orders_pb2.ORDER_STATUS_FAILED,
}


def to_proto(order: Order) -> orders_pb2.Order:
    out = orders_pb2.Order(
        order_id=order.order_id,
        user_id=order.user_id,
        items=[
            orders_pb2.OrderItem(
                product_id=line.product_id,
                quantity=line.quantity,
                unit_price=None
                if line.unit_price_minor is None
                else money_pb2.Money(
                    currency_code=order.currency, amount_minor=line.unit_price_minor
                ),
            )
            for line in order.lines
        ],
        total=money_pb2.Money(currency_code=order.currency, amount_minor=order.total_minor),
        status=STATUS[order.status],
        status_history=[
            orders_pb2.StatusChange(
                status=STATUS[change.status], time=timestamp(change.at_us), reason=change.reason
            )
            for change in order.history
        ],
        failure_reason=order.failure_reason,
        card_last4=order.card_last4,
        create_time=timestamp(order.created_us),
        update_time=timestamp(order.updated_us),
    )
    if order.shipping is not None:
        a = order.shipping
        out.shipping_address.CopyFrom(
            orders_pb2.Address(
                recipient=a.recipient,
                lines=list(a.lines),
                city=a.city,
                postal_code=a.postal_code,
                country_code=a.country_code,
            )
        )
    return out


class OrderServicerV2(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, orders: Orders) -> None:
        self.orders = orders

    @db_guard
    async def CreateOrder(
        self, request: orders_pb2.CreateOrderRequest, context: Context
    ) -> orders_pb2.Order:
        actor, user_id = ownership.requested_user(request.user_id)
        cmd = validation.create_order_v2(request, user_id=user_id)
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
        user_id, size, after = validation.list_orders_v2(request, user_id=requested)
        ownership.check_list(actor, user_id)
        page = await self.orders.page(user_id, size, after)
        token = (
            "" if page.next_cursor is None
            else encode_page_token(validation.PAGE_KIND, page.next_cursor)
        )  # fmt: skip
        return orders_pb2.ListOrdersResponse(
            orders=[to_proto(o) for o in page.orders], next_page_token=token
        )

    @db_guard
    async def CancelOrder(
        self, request: orders_pb2.CancelOrderRequest, context: Context
    ) -> orders_pb2.Order:
        order_id, reason = validation.cancel_order(request.order_id, request.reason)
        await ownership.visible_order(self.orders, order_id)
        return to_proto(await self.orders.cancel(order_id, reason))
