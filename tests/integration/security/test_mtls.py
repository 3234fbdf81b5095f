"""mTLS on a real mesh server: who gets in, who does not (real TLS handshakes)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.security.pki import create_ca
from mesh.server import RunningService, ServiceDefinition, start_service
from mesh.settings import Settings
from tests.support import pki
from tests.support.ping import PingServicer
from tests.support.server_runtime import StubRuntime

PING = "shop.testing.v1.PingService"


@pytest.fixture
async def server() -> AsyncIterator[RunningService]:
    definition = ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, PingServicer("p"))],
        service_names=[PING],
    )
    settings = Settings(service="ping", registry="none", security=pki.session_pki())
    running = await start_service(definition, settings, StubRuntime(with_metrics=False))
    yield running
    await running.stop(0)


async def _ping(channel: grpc.aio.Channel) -> str:
    reply = await ping_pb2_grpc.PingServiceStub(channel).Ping(
        ping_pb2.PingRequest(value="hi"), timeout=3
    )
    return str(reply.value)


async def _refused(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _ping(channel)
    return err.value.code()


async def test_a_client_with_a_mesh_certificate_gets_in(server: RunningService) -> None:
    async with pki.mtls_channel(server.address, "ping") as ch:
        assert await _ping(ch) == "hi"
        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_plaintext_client_is_refused(server: RunningService) -> None:
    assert await _refused(grpc.aio.insecure_channel(server.address)) == grpc.StatusCode.UNAVAILABLE


async def test_a_tls_client_without_a_certificate_is_refused(server: RunningService) -> None:
    ch = grpc.aio.secure_channel(
        server.address,
        pki.credentials(None),
        options=[("grpc.ssl_target_name_override", "ping.mesh.local")],
    )
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_another_ca_is_refused(server: RunningService) -> None:
    other_ca, cert = pki.foreign_pair("orders")
    # Trusting the real CA (so the server side is verified), presenting a foreign leaf.
    ch = pki.mtls_channel(server.address, "ping", pair_=cert)
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE
    # And a client trusting only the other CA does not accept the mesh server either.
    ch = grpc.aio.secure_channel(
        server.address,
        pki.credentials(cert, root=other_ca.cert_pem),
        options=[("grpc.ssl_target_name_override", "ping.mesh.local")],
    )
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_a_certificate_from_the_clusters_issuer_gets_in_one_from_below_it_does_not(
    server: RunningService,
) -> None:
    """On Kubernetes, cert-manager signs with an intermediate of the mesh root
    (mesh/k8s/certificates.py): its certificates chain to the root the server trusts.
    The intermediate may sign leaves only, so a CA someone made with its key (and a
    leaf from that), or an intermediate of another root, gets nowhere."""
    async with pki.mtls_channel(server.address, "ping", pair_=pki.chained_pair("orders")) as ch:
        assert await _ping(ch) == "hi"
    forged = pki.below_the_issuer_pair("orders")
    assert await _refused(pki.mtls_channel(server.address, "ping", pair_=forged)) == (
        grpc.StatusCode.UNAVAILABLE
    )
    other_root = create_ca("mesh.local", dt.timedelta(days=1))
    foreign = pki.chained_pair("orders", root=other_root)
    assert await _refused(pki.mtls_channel(server.address, "ping", pair_=foreign)) == (
        grpc.StatusCode.UNAVAILABLE
    )


async def test_an_expired_certificate_is_refused(server: RunningService) -> None:
    expired = pki.pair("orders", lifetime_s=600, issued_ago_s=3600)
    ch = pki.mtls_channel(server.address, "ping", pair_=expired)
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE
    fresh = pki.pair("orders")
    async with pki.mtls_channel(server.address, "ping", pair_=fresh) as ok:
        assert await _ping(ok) == "hi"


async def test_a_client_refuses_a_server_holding_another_services_certificate(
    server: RunningService,
) -> None:
    # The server is "ping"; a client that meant to reach "payments" must not talk to it.
    ch = pki.mtls_channel(server.address, "payments", caller="orders")
    assert await _refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mesh_tls_off_serves_plaintext_and_says_so_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    definition = ServiceDefinition(
        name="ping",
        servicers=[(ping_pb2_grpc.add_PingServiceServicer_to_server, PingServicer("p"))],
        service_names=[PING],
    )
    security = dataclasses.replace(pki.session_pki(), tls=False)
    settings = Settings(service="ping", registry="none", security=security)
    with caplog.at_level(logging.WARNING, logger="mesh.security.identity"):
        running = await start_service(definition, settings, StubRuntime(with_metrics=False))
    try:
        assert "MESH_TLS=off" in caplog.text and "!!!" in caplog.text
        async with grpc.aio.insecure_channel(running.address) as ch:
            assert await _ping(ch) == "hi"
        assert running.identity is None
    finally:
        await running.stop(0)
