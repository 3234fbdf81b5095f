"""Edge failover on the real stack: an orders instance dies, another one joins.

Its own stack (module scope): these tests kill processes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from mesh.discovery.registry import Instance
from tests.support.e2e_stack import call_ok, new_ctx, run_calls, v2_order_request
from tests.support.local_mesh import Stack
from tests.support.poll import eventually
from tests.support.ports import free_port

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


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="Debian's `prometheus` package")
async def test_prometheus_follows_a_restarted_instance_to_its_new_port(
    stack: Stack, tmp_path: Path
) -> None:
    """A real Prometheus on the config `meshctl up` writes (`.run/prometheus`): every
    instance is scraped (`up` 1), and after a SIGKILL the restarted instance, on a new
    admin port, is scraped there while the dead port is no longer a target."""
    config = stack.base / "prometheus" / "prometheus.yml"
    port = free_port()
    prometheus = await asyncio.create_subprocess_exec(
        "prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip

    def scraped() -> dict[str, tuple[str, float]]:
        """instance_id -> (address, up) of the targets Prometheus has scraped."""
        url = f"http://127.0.0.1:{port}/api/v1/query?query=up"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                doc = json.loads(r.read())
        except OSError:  # not listening yet
            return {}
        return {
            s["metric"]["instance_id"]: (s["metric"]["instance"], float(s["value"][1]))
            for s in doc["data"]["result"]
        }

    async def all_up(ids: set[str], moved: tuple[str, str] | None = None) -> bool:
        now = await asyncio.to_thread(scraped)
        if moved is not None and now.get(moved[0], ("", 0.0))[0] == moved[1]:
            return False  # still the old address
        return set(now) >= ids and all(now[i][1] == 1.0 for i in ids)

    try:
        registered = await stack.registry.healthy("orders")
        ids = {i.id for s in ("users", "orders", "inventory", "payments")
               for i in await stack.registry.healthy(s)}  # fmt: skip
        await eventually(lambda: all_up(ids), 30, f"Prometheus scraping {sorted(ids)}")
        [two] = [i for i in registered if i.id == "orders-2"]
        old = f"{two.host}:{two.meta['admin_port']}"
        assert (await asyncio.to_thread(scraped))["orders-2"][0] == old
        child = stack.child("orders-2")
        child.proc.kill()
        await eventually(lambda: all_up(ids, ("orders-2", old)), 60, "orders-2 at its new port")
        assert (await asyncio.to_thread(scraped))["orders-2"][0] != old
        assert child.restarts >= 1
    finally:
        prometheus.terminate()
        await asyncio.wait_for(prometheus.wait(), 10)
