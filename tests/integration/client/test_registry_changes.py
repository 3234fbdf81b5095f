"""Registry changes: new instances take traffic at once, removed ones drain."""

from __future__ import annotations

import asyncio
import time

import grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.discovery.embedded import EmbeddedRegistry
from tests.support.mesh_client import instance
from tests.support.poll import eventually


async def test_new_instance_receives_traffic_within_a_second(registry, servers, channels) -> None:
    first = await servers("first")
    await registry.register(instance("first", first.port))
    stub = ping_pb2_grpc.PingServiceStub(channels(registry, lb_policy="round_robin"))
    assert (await stub.Ping(ping_pb2.PingRequest(), timeout=5)).server == "first"

    newcomer = await servers("newcomer")
    registered = time.monotonic()
    await registry.register(instance("newcomer", newcomer.port))
    while True:
        reply = await stub.Ping(ping_pb2.PingRequest(), timeout=5)
        if reply.server == "newcomer":
            break
        assert time.monotonic() - registered < 1.0, "the new instance got no call within 1 s"
    assert newcomer.servicer.calls >= 1


async def test_removed_instance_finishes_its_calls_in_flight_then_closes(
    registry, servers, channels
) -> None:
    leaving = await servers("leaving")
    staying = await servers("staying")
    await registry.register(instance("leaving", leaving.port))
    ch = channels(registry)
    stub = ping_pb2_grpc.PingServiceStub(ch)
    await asyncio.wait_for(ch.channel_ready(), 5)

    slow = asyncio.ensure_future(
        stub.Ping(ping_pb2.PingRequest(value="slow", sleep_ms=600), timeout=5)
    )
    await eventually(lambda: leaving.servicer.calls == 1, what="the slow call on 'leaving'")
    await registry.register(instance("staying", staying.port))
    await registry.deregister("leaving")
    await eventually(lambda: all(s.id != "leaving" or s.draining for s in ch.pool.status()))

    # new calls go to the remaining instance only, while the old call is still running
    for _ in range(5):
        assert (await stub.Ping(ping_pb2.PingRequest(), timeout=5)).server == "staying"
    assert not slow.done()

    reply = await slow  # drained, not cut
    assert (reply.value, reply.server) == ("slow", "leaving")
    await eventually(
        lambda: all(s.id != "leaving" for s in ch.pool.status()), what="the channel closed"
    )


async def test_removed_instance_is_cut_after_the_drain_timeout(registry, servers, channels) -> None:
    leaving = await servers("leaving")
    await registry.register(instance("leaving", leaving.port))
    ch = channels(registry, drain_timeout_s=0.2)
    stub = ping_pb2_grpc.PingServiceStub(ch)
    await asyncio.wait_for(ch.channel_ready(), 5)
    stuck = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=3000), timeout=10))
    await eventually(lambda: leaving.servicer.calls == 1, what="the long call")
    await registry.deregister("leaving")
    try:
        await stuck  # 3 s of work: an answer (OK) would mean it was not cut
        raise AssertionError("the call outlived its drain timeout")
    except grpc.aio.AioRpcError as err:
        assert err.code() is grpc.StatusCode.CANCELLED


async def test_with_the_embedded_registry_a_new_instance_gets_calls_within_a_second(
    tmp_path, servers, channels
) -> None:
    # two registry objects on one directory: the servers' process and the client's
    servers_side = EmbeddedRegistry(tmp_path, health_check=False)
    client_side = EmbeddedRegistry(tmp_path, health_check=False)
    try:
        first = await servers("first")
        await servers_side.register(instance("first", first.port))
        ch = channels(client_side, lb_policy="round_robin")
        stub = ping_pb2_grpc.PingServiceStub(ch)
        assert (await stub.Ping(ping_pb2.PingRequest(), timeout=5)).server == "first"

        newcomer = await servers("newcomer")
        registered = time.monotonic()
        await servers_side.register(instance("newcomer", newcomer.port))
        while (await stub.Ping(ping_pb2.PingRequest(), timeout=5)).server != "newcomer":
            assert time.monotonic() - registered < 1.0, "the new instance got no call within 1 s"

        await servers_side.deregister("first")
        await eventually(
            lambda: all(s.id != "first" for s in ch.pool.status()),
            within_s=1.0,
            what="the removed instance dropped",
        )
        before = first.servicer.calls
        for _ in range(10):
            assert (await stub.Ping(ping_pb2.PingRequest(), timeout=5)).server == "newcomer"
        assert first.servicer.calls == before
    finally:
        await client_side.close()
        await servers_side.close()
