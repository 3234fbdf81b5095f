"""Load balancing over real ping servers: round-robin and power of two choices."""

from __future__ import annotations

import asyncio
import collections

from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from tests.support.mesh_client import (
    SlowInterceptor,
    instance,
    ready_count,
)
from tests.support.poll import eventually


async def test_round_robin_spreads_calls_evenly_over_three_instances(
    registry, servers, channels
) -> None:
    backends = [await servers(f"s{i}") for i in range(3)]
    for i, b in enumerate(backends):
        await registry.register(instance(f"s{i}", b.port))
    ch = channels(registry, lb_policy="round_robin")
    await eventually(lambda: ready_count(ch) == 3, what="3 connected instances")
    stub = ping_pb2_grpc.PingServiceStub(ch)
    before = [b.servicer.calls for b in backends]

    seen: collections.Counter[str] = collections.Counter()
    for _ in range(60):
        seen[(await stub.Ping(ping_pb2.PingRequest(value="rr"), timeout=5)).server] += 1

    assert seen == {"s0": 20, "s1": 20, "s2": 20}
    # counted by the servers too: one connection per instance, no shared subchannel
    assert [b.servicer.calls - n for b, n in zip(backends, before, strict=True)] == [20, 20, 20]


async def test_p2c_sends_less_to_the_loaded_instance(registry, servers, channels) -> None:
    slow = await servers("slow", interceptors=[SlowInterceptor(0.05)])
    fast = [await servers(f"fast{i}") for i in range(2)]
    await registry.register(instance("slow", slow.port))
    for i, b in enumerate(fast):
        await registry.register(instance(f"fast{i}", b.port))
    ch = channels(registry, lb_policy="p2c")
    await eventually(lambda: ready_count(ch) == 3, what="3 connected instances")
    stub = ping_pb2_grpc.PingServiceStub(ch)

    seen: collections.Counter[str] = collections.Counter()

    async def worker() -> None:
        for _ in range(25):
            seen[(await stub.Ping(ping_pb2.PingRequest(), timeout=5)).server] += 1

    await asyncio.gather(*(worker() for _ in range(12)))

    assert sum(seen.values()) == 300
    # Round-robin would give it 100; its calls stay in flight 50 ms, so p2c avoids it.
    assert seen["slow"] < 40, seen
    assert seen["fast0"] > 100 and seen["fast1"] > 100, seen
