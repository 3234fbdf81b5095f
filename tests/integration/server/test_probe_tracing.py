"""Health checks without a caller's trace start none, on the chain services run.

Probes (Envoy, the registry, Consul, Kubernetes) health-check every instance every
few seconds; traced, they were most of an idle service's spans, exported for the
trace sink to drop. Against a real server with `mesh.server.server_interceptors`,
fused and separate, as grpc.aio interceptors and wrapped at registration, with the
sampler services default to (parentbased_always_on): a bare health check records
no span (and is still counted in the metrics), while an application call without a
trace is a root span (the control), and a health check sent with a sampled
`traceparent` is traced as that trace's child.
"""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.registered import chained_server
from mesh.server import server_interceptors
from tests.support.ping import PingServicer
from tests.support.server_runtime import StubRuntime

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(("fused", "registered"), [(True, True), (True, False), (False, False)])
async def test_a_health_check_starts_no_trace_unless_its_caller_sent_one(fused, registered):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ParentBased(sampling.ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = StubRuntime(provider)
    chain = server_interceptors(runtime, fused=fused)  # type: ignore[arg-type]
    registrar = chained_server(chain, registered=registered, options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_aio.HealthServicer(), registrar)
    ping_pb2_grpc.add_PingServiceServicer_to_server(PingServicer("p"), registrar)
    port = registrar.server.add_insecure_port("127.0.0.1:0")
    await registrar.server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            checks = health_pb2_grpc.HealthStub(ch)
            for _ in range(3):
                reply = await checks.Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
            assert exporter.get_finished_spans() == ()  # probes: nothing recorded
            handled = runtime.prometheus.get_sample_value(
                "grpc_server_handled_total",
                {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check",
                 "grpc_code": "OK"},
            )  # fmt: skip
            assert handled == 3  # still counted

            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(), timeout=5)
            (root,) = exporter.get_finished_spans()  # the control: a call is a root
            assert root.name == "shop.testing.v1.PingService/Ping" and root.parent is None
            exporter.clear()

            await checks.Check(
                health_pb2.HealthCheckRequest(), metadata=(("traceparent", SAMPLED),), timeout=5
            )
            (span,) = exporter.get_finished_spans()  # someone's trace: part of it
            assert span.name == "grpc.health.v1.Health/Check"
            assert span.context.trace_id == TRACE_ID
            assert span.parent is not None and span.parent.span_id == 0xB7AD6B7169203331
    finally:
        await registrar.server.stop(None)
