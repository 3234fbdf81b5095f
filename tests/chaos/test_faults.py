"""Faults on the real `meshctl up` stack (LocalMesh: supervisor, services, Envoy edge), with
traffic through the edge: an orders instance SIGKILLed mid-storm, nats-server down for
10 s, an inventory instance frozen (SIGSTOP) for 10 s, the Envoy edge SIGKILLed, the
trace sink SIGKILLed. One stack for the module: each scenario leaves it whole (the
killed process is back, NATS restarted, the frozen one resumed) and uses its own user
and product, so the books are per test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
import pytest_asyncio
from shop.orders.v2 import orders_pb2

from mesh.local.traces.store import DB_NAME, recent_traces
from tests.support.chaos import (
    SERVER_ERRORS,
    Shopper,
    books_balance,
    meshctl_status,
    p99,
)
from tests.support.edge_tokens import admin
from tests.support.local_mesh import Stack, local_mesh
from tests.support.poll import eventually

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

STOCK = 50


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with local_mesh(tmp_path_factory.mktemp("chaos")) as s:
        yield s


@pytest_asyncio.fixture(loop_scope="module")
async def shopper(stack: Stack) -> AsyncIterator[Shopper]:
    async with grpc.aio.insecure_channel(stack.edge.address) as channel:
        s = Shopper(channel)
        await s.setup(STOCK, (await admin(stack)).metadata)
        yield s


async def _serving_again(stack: Stack, name: str, old_address: str) -> bool:
    """`name` registered at a new address and healthy by its own admin `/health` (the gRPC
    port speaks mTLS with the stack's CA; the admin port answers plain HTTP)."""
    inst = next((i for i in await stack.registry.healthy("orders") if i.id == name), None)
    if inst is None or inst.address == old_address:
        return False
    url = f"http://{inst.host}:{inst.meta['admin_port']}/health"
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(url, timeout=aiohttp.ClientTimeout(total=0.5)) as r,
        ):
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_orders_instance_killed_during_200_orders(stack: Stack, shopper: Shopper) -> None:
    victim = stack.child("orders-1")
    old = next(i for i in await stack.registry.healthy("orders") if i.id == "orders-1")
    # One order to read back during the kill (idempotent GetOrder through the edge).
    seed_key = uuid.uuid4().hex
    assert await shopper.place(seed_key) == grpc.StatusCode.OK
    [seed] = await shopper.all_orders()

    read_failures: list[str] = []
    reads = 0
    stop_reading = asyncio.Event()

    async def read_loop() -> None:
        nonlocal reads
        while not stop_reading.is_set():
            try:
                got = await shopper.orders.GetOrder(
                    orders_pb2.GetOrderRequest(order_id=seed.order_id),
                    metadata=shopper.auth,
                    timeout=10,
                )
                assert got.order_id == seed.order_id
            except grpc.aio.AioRpcError as err:
                read_failures.append(f"{err.code().name}: {err.details()}")
            reads += 1

    keys = [uuid.uuid4().hex for _ in range(199)]
    in_flight = 0
    at_kill = 0
    killed = asyncio.Event()
    codes: dict[str, grpc.StatusCode] = {}

    async def order(key: str) -> None:
        nonlocal in_flight
        in_flight += 1
        codes[key] = await shopper.place(key)
        in_flight -= 1

    async def kill_when_busy() -> float:
        nonlocal at_kill
        await eventually(lambda: len(codes) >= 20, 60, "20 orders answered before the kill")
        at_kill = in_flight
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed.set()
        t0 = time.monotonic()
        await eventually(
            lambda: _serving_again(stack, "orders-1", old.address), 10, "orders-1 to be back"
        )
        return time.monotonic() - t0

    readers = [asyncio.create_task(read_loop()) for _ in range(2)]
    killer = asyncio.create_task(kill_when_busy())
    await asyncio.gather(*(order(k) for k in keys))
    back_s = await killer
    stop_reading.set()
    await asyncio.gather(*readers)
    print(f"\nchaos: orders-1 serving again {back_s:.2f}s after SIGKILL; {reads} reads")

    assert killed.is_set() and victim.restarts == 1
    assert back_s < 5.0, f"orders-1 took {back_s:.2f}s to serve again"
    assert stack.edge_access_lines("/GetOrder"), "the edge logged no read to explain"
    assert not read_failures, (  # with the edge's own account: which host, tries, why
        f"{len(read_failures)}/{reads} idempotent reads failed: {read_failures[:3]}; the"
        f" edge logged: {stack.edge_access_lines('/GetOrder', failed=True)[:5]}"
    )
    fivexx = {k: c for k, c in codes.items() if c in SERVER_ERRORS}
    assert set(fivexx.values()) <= {grpc.StatusCode.UNAVAILABLE}, shopper.outcomes
    assert len(fivexx) <= at_kill, f"{len(fivexx)} UNAVAILABLE, {at_kill} in flight at the kill"
    await shopper.settle(list(fivexx))
    orders = await books_balance(stack, shopper, STOCK)
    completed = sum(o.status == orders_pb2.ORDER_STATUS_COMPLETED for o in orders)
    print(f"chaos: {dict(shopper.outcomes)}; {at_kill} in flight at the kill; {completed} sold")
    # A repeated key whose first saga failed transiently gets a new order: 200 or more.
    assert len(orders) >= 200
    # Only orders in flight on the killed instance may fail for a reason other than stock.
    assert STOCK - at_kill <= completed <= STOCK


async def test_nats_down_for_10s_during_orders(stack: Stack, shopper: Shopper) -> None:
    assert stack.nats is not None  # the module's stack: the test's own nats-server
    await stack.nats.stop()
    t0 = time.monotonic()
    try:
        keys = [uuid.uuid4().hex for _ in range(30)]
        for batch in (keys[:15], keys[15:]):
            codes = await asyncio.gather(*(shopper.place(k) for k in batch))
            assert set(codes) == {grpc.StatusCode.OK}, shopper.outcomes
        # The outage lasts 10 s: the scenario, not a wait for an effect.
        await asyncio.sleep(max(0.0, 10 - (time.monotonic() - t0)))  # poll: the outage window
    finally:
        await stack.nats.start()
    orders = await books_balance(stack, shopper, STOCK)
    assert len(orders) == 30
    assert all(o.status == orders_pb2.ORDER_STATUS_COMPLETED for o in orders)


async def test_inventory_instance_frozen_for_10s(stack: Stack, shopper: Shopper) -> None:
    frozen = stack.child("inventory-2")
    latencies: list[float] = []
    failures: list[str] = []

    async def read_loop(until: float) -> None:
        while time.monotonic() < until:
            t = time.monotonic()
            try:
                await shopper.product()
            except grpc.aio.AioRpcError as err:
                failures.append(f"{err.code().name}: {err.details()}")
            latencies.append(time.monotonic() - t)

    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        until = time.monotonic() + 10
        await asyncio.gather(*(read_loop(until) for _ in range(4)))
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
    worst = p99(latencies)
    print(f"\nchaos: {len(latencies)} reads with inventory-2 frozen: p99 {worst * 1000:.0f} ms")
    assert failures == []
    assert worst < 1.0, f"p99 of reads {worst:.2f}s with an instance frozen"
    # Orders still go through once it is resumed.
    assert await shopper.place(uuid.uuid4().hex) == grpc.StatusCode.OK


async def _edge_answers(stack: Stack) -> bool:
    """A public REST read through the edge on a new connection answers 200."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://{stack.edge.address}/api/v1/products",
                timeout=aiohttp.ClientTimeout(total=1),
            ) as r,
        ):
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def test_edge_killed_then_restarted_loses_no_order(stack: Stack, shopper: Shopper) -> None:
    """SIGKILL the Envoy edge: `meshctl up` starts it again with the same config (routes,
    the endpoints it last wrote, the JWT rules); calls made meanwhile fail UNAVAILABLE
    and, retried with their idempotency keys once it is back, each makes one order."""
    edge = stack.child("envoy")
    restarts = edge.restarts
    assert await _edge_answers(stack)
    keys = [uuid.uuid4().hex for _ in range(20)]
    os.kill(edge.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    during = await asyncio.gather(*(shopper.place(k) for k in keys[:10]))
    await eventually(lambda: _edge_answers(stack), 30, "the edge to answer again")
    back_s = time.monotonic() - t0
    print(
        f"\nchaos: the edge answered again {back_s:.2f}s after SIGKILL;"
        f" orders meanwhile: {Counter(c.name for c in during)}"
    )
    assert edge.restarts == restarts + 1 and edge.running
    assert back_s < 10.0, f"the edge took {back_s:.2f}s to answer again"
    # Nothing but "the edge is not there" while it was down, no half-made answer.
    assert set(during) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, during
    await shopper.settle(keys[:10])  # the client retries with the same keys
    await shopper.settle(keys[10:])  # new orders through the restarted edge
    # A login is still required on the restarted edge (its JWT rules came back with it).
    status, _ = await stack.http("GET", f"/api/v2/orders/{uuid.uuid4()}")
    assert status == 401
    orders = await books_balance(stack, shopper, STOCK)
    assert len(orders) == 20, f"{len(orders)} orders for 20 keys"
    assert all(o.status == orders_pb2.ORDER_STATUS_COMPLETED for o in orders)
    rows = meshctl_status(stack.base)
    envoy = str(stack.child("envoy").proc.pid)  # the restarted one's, for a drill's `kill`
    assert rows["envoy"] == ["envoy", envoy, "running", str(restarts + 1), "SIGKILL"], rows
    assert rows["traces"][2] == "running", rows


async def test_trace_sink_killed_orders_go_on_and_traces_return(
    stack: Stack, shopper: Shopper
) -> None:
    """SIGKILL the local trace sink: orders go through while it is down (spans that
    cannot be exported are dropped, nothing waits for them), and the traces of orders
    placed after the supervisor started it again are stored."""
    sink = stack.child("traces")
    restarts = sink.restarts
    os.kill(sink.proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    codes = await asyncio.gather(*(shopper.place(uuid.uuid4().hex) for _ in range(10)))
    assert set(codes) == {grpc.StatusCode.OK}, shopper.outcomes
    print(f"\nchaos: 10 orders placed {time.monotonic() - t0:.2f}s after the sink's SIGKILL")
    await eventually(lambda: sink.restarts == restarts + 1 and sink.running, 15, "a new sink")
    after_ns = time.time_ns()
    conn = sqlite3.connect(f"file:{stack.base / DB_NAME}?mode=ro", uri=True)
    try:

        async def order_traced() -> bool:
            # An order now, and its trace in the restarted sink: the services' exporters
            # reconnect to it (export delay 0.5 s, then gRPC's reconnect backoff).
            assert await shopper.place(uuid.uuid4().hex) == grpc.StatusCode.OK
            return any(
                t.start_ns >= after_ns and "CreateOrder" in t.root for t in recent_traces(conn, 200)
            )

        await eventually(order_traced, 30, "an order's trace in the restarted sink", interval_s=1)
    finally:
        conn.close()
    print(f"chaos: an order's trace stored {time.monotonic() - t0:.2f}s after the SIGKILL")
    rows = meshctl_status(stack.base)
    traces = str(stack.child("traces").proc.pid)
    assert rows["traces"] == ["traces", traces, "running", str(restarts + 1), "SIGKILL"], rows
