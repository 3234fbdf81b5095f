"""Lean tracing interceptors: spans, W3C propagation, unsampled path, provider from OTEL_*."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.tracing import (
    TracingClientInterceptor,
    TracingServerInterceptor,
    format_traceparent,
    make_tracer_provider,
    parse_traceparent,
)
from tests.support.ping import PingServicer
from tests.support.ping_calls import (
    ARITIES,
    METHODS,
    NOT_FOUND,
    UNAVAILABLE,
    channel,
    invoke,
    invoke_error,
)
from tests.support.poll import eventually


def provider(
    sampler: sampling.Sampler = sampling.ALWAYS_ON,
) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=sampler, resource=Resource({"service.name": "test"}))
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def traceparent_of(metadata: tuple[tuple[str, Any], ...]) -> str | None:
    return dict(metadata).get("traceparent")


class Relay(PingServicer):
    """Every arity calls the downstream's unary Ping (a client call made inside a handler)."""

    def __init__(self, downstream: Any) -> None:
        super().__init__("relay")
        self.downstream = downstream

    async def _hop(self, context: Any) -> None:
        self.metadata_seen.append(tuple(context.invocation_metadata() or ()))
        await self.downstream.Ping(ping_pb2.PingRequest(value="down"))

    async def Ping(self, request, context):  # type: ignore[override]
        await self._hop(context)
        return ping_pb2.PingResponse()

    async def PingList(self, request, context):  # type: ignore[override]
        await self._hop(context)
        yield ping_pb2.PingResponse()

    async def PingStream(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            pass
        await self._hop(context)
        return ping_pb2.PingResponse()

    async def PingBidi(self, request_iterator, context):  # type: ignore[override]
        async for _ in request_iterator:
            pass
        await self._hop(context)
        yield ping_pb2.PingResponse()


async def hop(start_server: Any, tp: TracerProvider, arity: str) -> tuple[Any, Any]:
    """client -(arity)-> relay -(Ping)-> downstream, every side traced with `tp`."""
    downstream = await start_server(interceptors=[TracingServerInterceptor(tp)])
    async with channel(downstream.address, TracingClientInterceptor(tp)) as down:
        relay = await start_server(
            Relay(ping_pb2_grpc.PingServiceStub(down)), interceptors=[TracingServerInterceptor(tp)]
        )
        async with channel(relay.address, TracingClientInterceptor(tp)) as ch:
            await invoke(ping_pb2_grpc.PingServiceStub(ch), arity, n=1)
    return relay, downstream


@pytest.mark.parametrize("arity", ARITIES)
async def test_a_hop_is_one_trace_with_parent_links(start_server, arity):
    tp, exporter = provider()
    await hop(start_server, tp, arity)
    await eventually(lambda: len(exporter.get_finished_spans()) == 4)
    spans = exporter.get_finished_spans()
    assert len({s.context.trace_id for s in spans}) == 1

    def child_of(parent: Any) -> Any:
        [child] = [
            s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
        ]
        return child

    [client] = [s for s in spans if s.parent is None]
    server = child_of(client)
    down_client = child_of(server)
    down_server = child_of(down_client)
    name = METHODS[arity].lstrip("/")
    assert [(s.name, s.kind) for s in (client, server, down_client, down_server)] == [
        (name, SpanKind.CLIENT),
        (name, SpanKind.SERVER),
        ("shop.testing.v1.PingService/Ping", SpanKind.CLIENT),
        ("shop.testing.v1.PingService/Ping", SpanKind.SERVER),
    ]
    assert down_server.parent is not None and down_server.parent.is_remote
    service, method = name.split("/")
    for span in (client, server):
        assert span.attributes is not None
        assert dict(span.attributes) == {
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": method,
            "rpc.grpc.status_code": 0,
        }
        assert span.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize("arity", ARITIES)
async def test_error_status_on_client_and_server_faults_only_on_server(start_server, arity):
    tp, exporter = provider()
    srv = await start_server(interceptors=[TracingServerInterceptor(tp)])
    async with channel(srv.address, TracingClientInterceptor(tp)) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        await invoke_error(stub, arity, request=ping_pb2.PingRequest(error_code=UNAVAILABLE))
        await invoke_error(stub, arity, request=ping_pb2.PingRequest(error_code=NOT_FOUND))
    await eventually(lambda: len(exporter.get_finished_spans()) == 4)
    by = {}
    for span in exporter.get_finished_spans():
        assert span.attributes is not None
        by[(span.kind, span.attributes["rpc.grpc.status_code"])] = span.status.status_code
    assert by == {
        (SpanKind.CLIENT, 14): StatusCode.ERROR,
        (SpanKind.SERVER, 14): StatusCode.ERROR,
        (SpanKind.CLIENT, 5): StatusCode.ERROR,
        (SpanKind.SERVER, 5): StatusCode.UNSET,
    }


@pytest.mark.parametrize("arity", ARITIES)
async def test_unsampled_records_nothing_but_propagates(start_server, arity):
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_OFF))
    relay, downstream = await hop(start_server, tp, arity)
    assert exporter.get_finished_spans() == ()
    upstream = parse_traceparent(traceparent_of(relay.servicer.metadata_seen[0]) or "")
    downstream_tp = parse_traceparent(traceparent_of(downstream.servicer.metadata_seen[0]) or "")
    assert upstream is not None and downstream_tp is not None
    assert downstream_tp.trace_id == upstream.trace_id  # same trace through the hop
    assert downstream_tp.span_id != upstream.span_id  # each hop its own span id
    assert not upstream.trace_flags.sampled and not downstream_tp.trace_flags.sampled


async def test_incoming_unsampled_parent_is_respected_and_tracestate_carried(start_server):
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_ON))
    _relay, downstream = await hop_with_metadata(
        start_server,
        tp,
        [
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            ("tracestate", "vendor=abc"),
        ],
    )
    assert exporter.get_finished_spans() == ()
    md = dict(downstream.servicer.metadata_seen[0])
    assert md["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert md["traceparent"].endswith("-00")
    assert md["tracestate"] == "vendor=abc"


async def hop_with_metadata(start_server: Any, tp: TracerProvider, md: Any) -> tuple[Any, Any]:
    downstream = await start_server(interceptors=[TracingServerInterceptor(tp)])
    async with channel(downstream.address, TracingClientInterceptor(tp)) as down:
        relay = await start_server(
            Relay(ping_pb2_grpc.PingServiceStub(down)), interceptors=[TracingServerInterceptor(tp)]
        )
        async with channel(relay.address) as ch:  # an untraced caller sending its own header
            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(), metadata=md)
    return relay, downstream


async def test_client_span_is_child_of_the_current_span(start_server):
    tp, exporter = provider()
    srv = await start_server()
    async with channel(srv.address, TracingClientInterceptor(tp)) as ch:
        with tp.get_tracer("t").start_as_current_span("outer") as outer:
            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest())
    sent = parse_traceparent(traceparent_of(srv.servicer.metadata_seen[0]) or "")
    assert sent is not None and sent.trace_id == outer.get_span_context().trace_id
    client = next(s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT)
    assert client.parent is not None and client.parent.span_id == outer.get_span_context().span_id
    assert sent.span_id == client.context.span_id
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_traceparent_round_trip_and_rejections():
    ctx = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "a=1,b=2")
    assert ctx is not None and ctx.is_remote and ctx.trace_flags.sampled
    assert format_traceparent(ctx) == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert dict(ctx.trace_state) == {"a": "1", "b": "2"}
    future = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-extra")
    assert future is not None and future.trace_flags.sampled
    for bad in (
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
    ):
        assert parse_traceparent(bad) is None, bad


# --- make_tracer_provider ---------------------------------------------------------


def description(tp: TracerProvider) -> str:
    return str(tp.sampler.get_description())  # type: ignore[no-untyped-call]


def test_provider_defaults():
    tp = make_tracer_provider("orders", {})
    assert tp.resource.attributes["service.name"] == "orders"
    assert (
        description(tp) == sampling.ParentBased(sampling.ALWAYS_ON).get_description()  # type: ignore[no-untyped-call]
    )
    assert tp._active_span_processor._span_processors == ()  # exporter "none" by default


def test_provider_reads_the_standard_variables():
    tp = make_tracer_provider(
        "orders",
        {
            "OTEL_SERVICE_NAME": "orders-eu",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=dev,team=shop%20core",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
            "OTEL_TRACES_EXPORTER": "console",
        },
    )
    attrs = tp.resource.attributes
    assert (attrs["service.name"], attrs["deployment.environment"], attrs["team"]) == (
        "orders-eu",
        "dev",
        "shop core",
    )
    assert "TraceIdRatioBased{0.25}" in description(tp)
    assert len(tp._active_span_processor._span_processors) == 1
    tp.shutdown()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("always_on", "AlwaysOnSampler"),
        ("always_off", "AlwaysOffSampler"),
        ("traceidratio", "TraceIdRatioBased{0.5}"),
        ("parentbased_always_off", "ParentBased{root:AlwaysOffSampler"),
    ],
)
def test_provider_samplers(name, expected):
    tp = make_tracer_provider("x", {"OTEL_TRACES_SAMPLER": name, "OTEL_TRACES_SAMPLER_ARG": "0.5"})
    assert description(tp).startswith(expected)


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        (
            {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "-3"},
            "OTEL_BSP_MAX_QUEUE_SIZE",
        ),
    ],
)
def test_provider_rejects_bad_values_naming_the_variable(env, names):
    with pytest.raises(ValueError, match=names):
        make_tracer_provider("x", env)


def test_sdk_disabled_samples_nothing():
    tp = make_tracer_provider("x", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert not tp.get_tracer("t").start_span("s").is_recording()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.names: list[str] = []
        self.services: list[str] = []

    async def Export(self, request, context):  # type: ignore[override]
        for rs in request.resource_spans:
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    self.services.append(kv.value.string_value)
            for ss in rs.scope_spans:
                self.names.extend(s.name for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_otlp_exporter_sends_spans_to_the_configured_endpoint(start_server):
    collector = Collector()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        tp = make_tracer_provider(
            "orders",
            {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "50",
            },
        )
        srv = await start_server(interceptors=[TracingServerInterceptor(tp)])
        async with channel(srv.address, TracingClientInterceptor(tp)) as ch:
            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest())
        # The exporter is synchronous and runs in its own thread: flush off the loop.
        assert await asyncio.to_thread(tp.force_flush, 5000)
        await eventually(lambda: len(collector.names) == 2, within_s=5)
        assert collector.names == ["shop.testing.v1.PingService/Ping"] * 2
        assert set(collector.services) == {"orders"}
        await asyncio.to_thread(tp.shutdown)
    finally:
        await server.stop(None)
