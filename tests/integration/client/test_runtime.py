"""MeshRuntime and mesh.connect: the full client chain over real servers."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

import mesh
from mesh.client.runtime import MeshRuntime
from mesh.discovery.static import StaticRegistry
from mesh.settings import ResilienceSettings, Settings
from tests.support.mesh_client import UnavailableInterceptor, instance
from tests.support.pki import session_pki
from tests.support.poll import eventually


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def runtime(
    registry: StaticRegistry, spans: InMemorySpanExporter
) -> AsyncIterator[MeshRuntime]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    settings = Settings(
        service="caller",
        registry="none",
        security=session_pki(),
        resilience=ResilienceSettings(
            default_deadline_s=3.0,
            lb_policy="round_robin",
            outlier_consecutive_failures=3,
            outlier_base_ejection_s=5.0,
            retry_initial_backoff_s=0.01,
            retry_max_backoff_s=0.05,
        ),
    )
    rt = await MeshRuntime.create(settings, registry=registry, tracer_provider=provider)
    yield rt
    await rt.close()


def sample(rt: MeshRuntime, name: str, **labels: str) -> float:
    value = rt.prometheus.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_the_chain_is_end_user_deadline_retry_breaker_tracing_metrics(runtime) -> None:
    names = [type(i).__name__ for i in runtime.client_interceptors("ping")]
    assert names == [
        "EndUserClientInterceptor",
        "DeadlineClientInterceptor",
        "RetryClientInterceptor",
        "BreakerClientInterceptor",
        "TracingClientInterceptor",
        "MetricsClientInterceptor",
    ]


async def test_a_call_through_the_runtime_gets_every_concern(
    runtime, registry, servers, spans
) -> None:
    backend = await servers("b0")
    await registry.register(instance("b0", backend.port))
    stub = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)

    reply = await stub.Ping(ping_pb2.PingRequest(value="hi"))
    assert reply.value == "hi"

    # deadline: the settings' default reached the server
    remaining = backend.servicer.time_remaining_seen[-1]
    assert remaining is not None and 2.0 < remaining <= 3.0
    # tracing: a client span, its context sent as traceparent
    (span,) = spans.get_finished_spans()
    assert span.name == "shop.testing.v1.PingService/Ping"
    sent = dict(backend.servicer.metadata_seen[-1])
    assert sent["traceparent"].split("-")[1] == f"{span.context.trace_id:032x}"
    # metrics and breakers, in the runtime's own registry
    labels = {"service": "ping", "grpc_service": "shop.testing.v1.PingService"}
    assert (
        sample(runtime, "grpc_client_handled_total", grpc_method="Ping", grpc_code="OK", **labels)
        == 1
    )
    assert runtime.breakers.states() == {("ping", "/shop.testing.v1.PingService/Ping"): 0}
    assert b"grpc_client_handled_total" in generate_latest(runtime.prometheus)


async def test_retries_re_pick_and_ejections_are_counted(runtime, registry, servers) -> None:
    sick = await servers("sick", interceptors=[UnavailableInterceptor()])
    good = await servers("good")
    await registry.register(instance("sick", sick.port))
    await registry.register(instance("good", good.port))
    stub = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
    channel = runtime.channels[0]
    await eventually(lambda: sum(s.state == "READY" for s in channel.pool.status()) == 2)

    replies: collections.Counter[str] = collections.Counter()
    for _ in range(20):  # Ping is idempotent: every call lands on "good" in the end
        replies[(await stub.Ping(ping_pb2.PingRequest())).server] += 1
    assert replies == {"good": 20}
    assert sample(runtime, "mesh_client_ejections_total", service="ping", instance="sick") == 1
    assert (
        sample(
            runtime,
            "mesh_client_retries_total",
            service="ping",
            method="/shop.testing.v1.PingService/Ping",
            grpc_code="UNAVAILABLE",
        )
        == 3
    )


async def test_stubs_of_one_service_share_a_channel(runtime, registry) -> None:
    a = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
    b = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
    c = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub, lb_policy="p2c")
    assert len(runtime.channels) == 2
    assert a.Ping._mesh is b.Ping._mesh is not c.Ping._mesh


async def test_unknown_options_are_rejected(runtime) -> None:
    with pytest.raises(TypeError, match="unknown connect\\(\\) option 'lb'"):
        await runtime.connect("ping", ping_pb2_grpc.PingServiceStub, lb="p2c")
    with pytest.raises(ValueError, match="lb_policy"):
        await runtime.connect("ping", ping_pb2_grpc.PingServiceStub, lb_policy="random")


async def test_closing_the_runtime_fails_new_calls_fast(runtime, registry, servers) -> None:
    backend = await servers("b0")
    await registry.register(instance("b0", backend.port))
    stub = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)
    await stub.Ping(ping_pb2.PingRequest())
    await runtime.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        # Fast: well before the time an instance is otherwise waited for.
        async with asyncio.timeout(runtime.settings.resilience.default_deadline_s / 2):
            await stub.Ping(ping_pb2.PingRequest())
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "closed" in (info.value.details() or "")
    with pytest.raises(RuntimeError, match="closed"):
        await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)


async def test_mesh_connect_makes_a_default_runtime_lazily(monkeypatch) -> None:
    monkeypatch.setenv("MESH_REGISTRY", "none")
    monkeypatch.setenv("MESH_SERVICE", "lazy-client")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    try:
        stub = await mesh.connect("ping", ping_pb2_grpc.PingServiceStub, no_instance_wait_s=0.1)
        rt = await mesh.default_runtime()
        assert rt.settings.service == "lazy-client"
        assert await mesh.default_runtime() is rt
        with pytest.raises(grpc.aio.AioRpcError) as info:  # nobody registered "ping"
            await asyncio.wait_for(stub.Ping(ping_pb2.PingRequest(), timeout=0.2), 2)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        await mesh.close_default_runtime()


async def test_mesh_connect_uses_a_given_runtime(runtime, registry, servers) -> None:
    backend = await servers("b0")
    await registry.register(instance("b0", backend.port))
    stub = await mesh.connect("ping", ping_pb2_grpc.PingServiceStub, runtime=runtime)
    assert (await stub.Ping(ping_pb2.PingRequest(value="x"))).server == "b0"
    assert runtime.channels


async def test_all_four_arities_through_the_full_chain(runtime, registry, servers, spans) -> None:
    backend = await servers("b0")
    await registry.register(instance("b0", backend.port))
    stub = await runtime.connect("ping", ping_pb2_grpc.PingServiceStub)

    async def pings(*values: str) -> AsyncIterator[ping_pb2.PingRequest]:
        for v in values:
            yield ping_pb2.PingRequest(value=v)

    assert (await stub.Ping(ping_pb2.PingRequest(value="u"))).value == "u"
    listed = stub.PingList(ping_pb2.PingRequest(value="l", count=3))
    assert [r.counter async for r in listed] == [0, 1, 2]  # the retry read one ahead
    assert await listed.code() is grpc.StatusCode.OK
    assert (await stub.PingStream(pings("a", "b"))).counter == 2
    assert [r.value async for r in stub.PingBidi(pings("x", "y"))] == ["x", "y"]
    assert len(spans.get_finished_spans()) == 4
    handled = "grpc_client_handled_total"
    labels = {"service": "ping", "grpc_service": "shop.testing.v1.PingService", "grpc_code": "OK"}
    for method in ("Ping", "PingList", "PingStream", "PingBidi"):
        assert sample(runtime, handled, grpc_method=method, **labels) == 1
