"""Edge failover on the real stack: an orders instance dies, another one joins.

Its own stack (module scope): these tests kill processes.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import pytest
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from mesh.discovery.registry import Instance
from tests.support.e2e_stack import call_ok, new_ctx, run_calls, v2_order_request
from tests.support.local_mesh import Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def _an_order(stack: Stack) -> tuple[str, str]:
    """An order made through the edge, and its owner's access token."""
    ctx = await run_calls(stack, await new_ctx(stack), 5)
    order = await call_ok(
        stack,
        "shop.orders.v2.OrderService/CreateOrder",
        v2_order_request(ctx["user_id"], ctx["product_id"]),
        f"authorization: Bearer {ctx['access']}",
    )
    return str(order["orderId"]), ctx["access"]


def _handled(inst: Instance, method: str) -> float:
    """grpc_server_handled_total for `method` on one instance, from its /metrics."""
    url = f"http://{inst.host}:{inst.meta['admin_port']}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total{") and f'grpc_method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_killed_instance_then_new_instance(stack: Stack) -> None:
    order_id, token = await _an_order(stack)
    async with grpc.aio.insecure_channel(stack.edge.address) as ch:
        stub = orders_pb2_grpc.OrderServiceStub(ch)

        async def get() -> orders_pb2.Order:
            return await stub.GetOrder(
                orders_pb2.GetOrderRequest(order_id=order_id),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )

        # Both instances serve; kill one the hard way (no drain, no deregistration).
        stack.child("orders-2").proc.kill()
        await stack.child("orders-2").proc.wait()
        failures = 0
        for _ in range(40):
            try:
                assert (await get()).order_id == order_id
            except grpc.aio.AioRpcError:
                failures += 1
        assert failures == 0, f"{failures}/40 idempotent calls failed after a kill"

        # A new instance registers and gets edge traffic, Envoy not restarted.
        await stack.start_instance("orders", "orders-3")
        deadline = time.monotonic() + 30
        new: Instance | None = None
        while time.monotonic() < deadline and new is None:
            new = next(
                (i for i in await stack.registry.healthy("orders") if i.id == "orders-3"), None
            )
            await asyncio.sleep(0.1)  # polling the registry
        assert new is not None, "orders-3 never became healthy"
        served = 0.0
        while time.monotonic() < deadline and served == 0:
            for _ in range(10):
                await get()
            served = await asyncio.to_thread(_handled, new, "GetOrder")
        assert served > 0, "the new instance received no edge traffic"
