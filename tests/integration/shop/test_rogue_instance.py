"""A hijacked registry entry gets nothing: a rogue `payments` instance holding
inventory's certificate is registered as healthy next to the real one; orders'
handshake refuses it (the callee must be payments.<trust-domain>), so it never
sees a card number, and every order still completes through the real payments."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.orders.v2 import orders_pb2 as v2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from tests.support import pki
from tests.support.shop import ShopStack
from tests.support.shop_calls import create_v2, new_product, new_user

pytestmark = pytest.mark.asyncio(loop_scope="package")


class RoguePayments(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def Charge(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.seen.append(request)  # what an attacker is after: the card number
        return payments_pb2.Payment(payment_id="stolen")


async def test_a_rogue_payments_instance_gets_no_call(shop: ShopStack) -> None:
    rogue = RoguePayments()
    health = health_aio.HealthServicer()

    def add(server: grpc.aio.Server) -> None:
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(rogue, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    server, port = await pki.mtls_server(add, "inventory")  # a stolen/borrowed identity
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    # The attacker writes its own entry and skips the health probe: listed as healthy.
    attacker = EmbeddedRegistry(shop.registry.directory, health_check=False)
    rogue_instance = Instance(id="payments-rogue", service="payments", host="127.0.0.1", port=port)
    await attacker.register(rogue_instance)
    try:
        listed = {i.id for i in await shop.registry.healthy("payments")}
        assert "payments-rogue" in listed and len(listed) == 2
        user = await new_user(shop)
        product = await new_product(shop, stock=10, price=100)
        for _ in range(4):  # p2c over two instances: a rogue that could be picked would be
            order = await shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)]))
            assert order.status == v2.ORDER_STATUS_COMPLETED
        assert rogue.seen == []
    finally:
        await attacker.deregister(rogue_instance.id)
        await attacker.close()
        await server.stop(None)
