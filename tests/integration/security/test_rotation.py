"""Certificates renewed under steady load: no call fails.

Server and client identities live 4.5 s and renew at two thirds of that, so in
30 s of load each renews many times and the first certificates expire
mid-run: the server hands the new certificate to new handshakes (dynamic
credentials), the client reconnects with its new one and drains the old
connections. An expired certificate still in use anywhere would fail a handshake.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import grpc
from opentelemetry.sdk.trace import TracerProvider
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.client.runtime import MeshRuntime
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.security.pki import describe
from mesh.server import ServiceDefinition, start_service
from mesh.settings import Settings
from tests.support import pki
from tests.support.ping import PingServicer
from tests.support.poll import eventually
from tests.support.server_runtime import StubRuntime

LIFETIME_S = 4.5
LOAD_S = 30.0  # the "30 s of steady load"


async def test_rotation_under_load_fails_no_call() -> None:
    security = dataclasses.replace(pki.session_pki(), cert_lifetime_s=LIFETIME_S)
    definition = ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, PingServicer("p"))],
        service_names=["shop.testing.v1.PingService"],
    )
    server = await start_service(
        definition,
        Settings(service="ping", registry="none", security=security),
        StubRuntime(with_metrics=False),
    )
    registry = StaticRegistry(
        [Instance(id="p1", service="ping", host="127.0.0.1", port=server.port)]
    )
    runtime = await MeshRuntime.create(
        Settings(service="caller", registry="none", security=security),
        registry=registry,
        tracer_provider=TracerProvider(),
    )
    assert server.identity is not None and runtime.identity is not None
    first_server_cert = server.identity.pair.cert_pem
    stub = ping_pb2_grpc.PingServiceStub(runtime.channel("ping"))
    ok = failed = 0
    errors: list[str] = []

    async def worker() -> None:
        nonlocal ok, failed
        end = time.monotonic() + LOAD_S
        while time.monotonic() < end:
            try:
                await stub.Ping(ping_pb2.PingRequest(value="r"), timeout=5)
                ok += 1
            except grpc.aio.AioRpcError as err:
                failed += 1
                errors.append(f"{err.code().name}: {err.details()}")

    try:
        await asyncio.gather(*(worker() for _ in range(8)))
        assert failed == 0, errors[:5]
        assert ok > 200
        assert server.identity.generation >= 3
        assert runtime.identity.generation >= 3
        # The first certificates have expired by now; new handshakes still succeed both
        # ways, so each side is using a renewed one.
        assert describe(first_server_cert).remaining().total_seconds() < 0
        async with pki.mtls_channel(server.address, "ping") as fresh:
            reply = await ping_pb2_grpc.PingServiceStub(fresh).Ping(ping_pb2.PingRequest(value="n"))
            assert reply.value == "n"
    finally:
        await runtime.close()
        await server.stop(0)


async def test_a_renewal_moves_clients_to_new_connections_and_drains_the_old() -> None:
    security = pki.session_pki()
    definition = ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, PingServicer("p"))],
        service_names=["shop.testing.v1.PingService"],
    )
    server = await start_service(
        definition,
        Settings(service="ping", registry="none", security=security),
        StubRuntime(with_metrics=False),
    )
    instance = Instance(id="p1", service="ping", host="127.0.0.1", port=server.port)
    runtime = await MeshRuntime.create(
        Settings(service="caller", registry="none", security=security),
        registry=StaticRegistry([instance]),
        tracer_provider=TracerProvider(),
    )
    try:
        assert runtime.identity is not None
        channel = runtime.channel("ping")
        stub = ping_pb2_grpc.PingServiceStub(channel)
        slow = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=800), timeout=5))
        await eventually(lambda: sum(s.inflight for s in channel.pool.status()) == 1)
        (old,) = channel.pool.endpoints()
        runtime.identity.renew()
        (new,) = channel.pool.endpoints()
        assert new is not old and old.draining  # the running call keeps its connection
        assert (await stub.Ping(ping_pb2.PingRequest(value="after"), timeout=5)).value == "after"
        await slow  # and finishes there
        await eventually(lambda: all(not s.draining for s in channel.pool.status()))
    finally:
        await runtime.close()
        await server.stop(0)
