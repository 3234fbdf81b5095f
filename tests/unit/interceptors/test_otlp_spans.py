"""The hand-written OTLP span encoding against the SDK exporter's own encoder.

Every test compares parsed requests: `encode_export_request(spans)` parsed as an
`ExportTraceServiceRequest` must equal what `encode_spans(spans)` builds for the same
spans, for random spans of every shape, the mesh's own spans from a real call, and
values the SDK encoder refuses. The exporter's requests are compared over a real gRPC
collector too.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
    set_span_in_context,
)
from opentelemetry.trace.status import Status, StatusCode
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath, otlp_spans
from interceptors.otlp_spans import encode_export_request
from interceptors.tracing import TracingClientInterceptor, TracingServerInterceptor
from tests.support.ping_calls import NOT_FOUND, channel
from tests.support.poll import eventually

# Attribute values of every type the SDK accepts (None only inside sequences).
VALUES: tuple[Any, ...] = (
    "x", "", "ünïcødé ✓", "a" * 300, 0, 1, -5, (1 << 63) - 1, -(1 << 63), True, False,
    0.0, -0.0, 1.5, float("inf"), b"", b"\x00\xff", ("a", "b"), [1, 2, 3], [True, False],
    [1.5, None], [],
)  # fmt: skip


def parsed(spans: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(encode_export_request(spans))


def collecting(resource: Resource, limits: SpanLimits | None = None) -> tuple[Any, Any]:
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider, memory


def random_spans(seed: int, count: int = 200) -> list[ReadableSpan]:
    """SDK spans of random shape from three tracers of two providers."""
    rnd = random.Random(seed)
    first, memory = collecting(
        Resource({"service.name": "orders", "telemetry.sdk.language": "python"})
    )
    second = TracerProvider(
        resource=Resource({"service.name": "other", "n": 1}, schema_url="https://schema/1"),
        span_limits=SpanLimits(max_attributes=3, max_events=1, max_links=1),
    )
    second.add_span_processor(SimpleSpanProcessor(memory))
    tracers = [
        first.get_tracer("plain"),
        first.get_tracer("scoped", "1.2", schema_url="https://scope/1", attributes={"k": 1}),
        second.get_tracer("limited"),
    ]
    for _ in range(count):
        parent = None
        if rnd.random() < 0.6:
            state = TraceState([("vendor", "v1"), ("b", "x")]) if rnd.random() < 0.3 else None
            remote = SpanContext(
                rnd.getrandbits(128) or 1, rnd.getrandbits(64) or 1,
                is_remote=rnd.random() < 0.5, trace_flags=TraceFlags(1), trace_state=state,
            )  # fmt: skip
            parent = set_span_in_context(NonRecordingSpan(remote))
        links = None
        if rnd.random() < 0.25:
            linked = SpanContext(rnd.getrandbits(128) or 1, rnd.getrandbits(64) or 1,
                                 is_remote=rnd.random() < 0.5)  # fmt: skip
            links = [Link(linked, {"link": rnd.choice(VALUES)} if rnd.random() < 0.5 else None)]
        attributes = {f"k{j}": rnd.choice(VALUES) for j in range(rnd.randrange(0, 9))}
        tracer = rnd.choice(tracers)
        name = rnd.choice(["shop.orders.v2.OrderService/CreateOrder", "", "é"])
        kind = rnd.choice(list(SpanKind))
        with tracer.start_as_current_span(name, parent, kind, attributes, links) as span:
            if rnd.random() < 0.2:
                span.record_exception(ValueError("boom"))
            for _ in range(rnd.randrange(0, 3)):
                span.add_event(rnd.choice(["event", ""]), {"e": rnd.choice(VALUES)})
            if rnd.random() < 0.4:
                code = rnd.choice([StatusCode.OK, StatusCode.ERROR])
                description = "failed" if code is StatusCode.ERROR and rnd.random() < 0.5 else None
                span.set_status(Status(code, description))
    spans = list(memory.get_finished_spans())
    # As the mesh's lean spans hand them on: plain dicts of attributes.
    return spans + [as_dict_span(s) for s in spans[: count // 2]]


def as_dict_span(span: ReadableSpan) -> ReadableSpan:
    return ReadableSpan(
        span.name, span.get_span_context(), span.parent, span.resource, dict(span.attributes or {}),
        span.events, span.links, span.kind, None, span.status, span.start_time,
        span.end_time, span.instrumentation_scope,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def fresh_memo() -> None:
    otlp_spans.forget_encoded()


@pytest.mark.parametrize("seed", range(6))
def test_random_spans_encode_as_the_sdk_encoder_does(seed: int) -> None:
    spans = random_spans(seed)
    assert parsed(spans) == encode_spans(spans)
    # Again, with the kept attribute encodings in use.
    assert parsed(spans) == encode_spans(spans)


def test_an_empty_batch_is_an_empty_request() -> None:
    assert encode_export_request([]) == b""
    assert parsed([]) == encode_spans([])


def test_equal_resources_share_one_entry_as_in_the_sdk() -> None:
    spans = []
    for _ in range(2):  # two Resource objects, equal
        provider, memory = collecting(Resource({"service.name": "same"}))
        with provider.get_tracer("t").start_as_current_span("s"):
            pass
        spans += memory.get_finished_spans()
    assert spans[0].resource is not spans[1].resource
    request = parsed(spans)
    assert request == encode_spans(spans)
    assert len(request.resource_spans) == 1
    assert len(request.resource_spans[0].scope_spans[0].spans) == 2


def test_kept_encodings_tell_true_one_and_one_point_zero_apart() -> None:
    provider, memory = collecting(Resource({}))
    tracer = provider.get_tracer("t")
    for value in (True, 1, 1.0, 0.0, -0.0, False, 0, "1"):
        with tracer.start_as_current_span("s", attributes={"a": value}):
            pass
    spans = [as_dict_span(s) for s in memory.get_finished_spans()]
    request = parsed(spans)
    assert request == encode_spans(spans)
    kinds = [s.attributes[0].value.WhichOneof("value") for s in request.resource_spans[0]
             .scope_spans[0].spans]  # fmt: skip
    assert kinds == ["bool_value", "int_value", "double_value", "double_value",
                     "double_value", "bool_value", "int_value", "string_value"]  # fmt: skip


def test_kept_encodings_stay_right_past_their_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otlp_spans, "MEMO_ENTRIES", 3)
    provider, memory = collecting(Resource({}))
    tracer = provider.get_tracer("t")
    for i in range(20):
        with tracer.start_as_current_span("s", attributes={"id": f"v{i % 7}", "n": i % 5}):
            pass
    spans = [as_dict_span(s) for s in memory.get_finished_spans()]
    assert parsed(spans) == encode_spans(spans)
    assert len(otlp_spans._memo) <= 3


def test_values_the_sdk_cannot_encode_are_left_out_as_it_leaves_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    provider, memory = collecting(Resource({}))
    with provider.get_tracer("t").start_as_current_span("s"):
        pass
    good = memory.get_finished_spans()[0]
    span = ReadableSpan(
        "s", good.get_span_context(), None, good.resource,
        {"big": 1 << 64, "small": -(1 << 63) - 1, "broken": "\udcff", "nested": [1, 1 << 70],
         "kept": "yes"},
        kind=SpanKind.INTERNAL, status=good.status, start_time=1, end_time=2,
        instrumentation_scope=good.instrumentation_scope,
    )  # fmt: skip
    with caplog.at_level(logging.ERROR):
        request = parsed([span])
    with caplog.at_level(logging.CRITICAL):  # the SDK's encoder logs its own
        assert request == encode_spans([span])
    kept = request.resource_spans[0].scope_spans[0].spans[0].attributes
    assert [kv.key for kv in kept] == ["kept"]
    assert sum("Failed to encode key" in r.getMessage() for r in caplog.records) == 4


async def test_the_mesh_chains_spans_encode_as_the_sdk_encoder_does(start_server: Any) -> None:
    provider, memory = collecting(Resource({"service.name": "ping"}))
    server = await start_server(interceptors=[TracingServerInterceptor(provider)])
    async with channel(server.address, TracingClientInterceptor(provider)) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        await stub.Ping(ping_pb2.PingRequest(value="one"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Ping(ping_pb2.PingRequest(value="fail", error_code=NOT_FOUND))
    spans = memory.get_finished_spans()
    assert len(spans) >= 3
    assert parsed(spans) == encode_spans(spans)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    async def Export(self, request, context):  # type: ignore[override]
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


async def test_the_lean_exporter_sends_the_request_the_sdk_exporter_sends() -> None:
    lean = _fastpath.otlp_span_exporter()
    assert lean is not OTLPSpanExporter, "capable on the pinned exporter"
    collector = Collector()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    spans = random_spans(7, count=60)
    try:
        for kind in (lean, OTLPSpanExporter):
            exporter = kind(endpoint=f"127.0.0.1:{port}", insecure=True)
            # The exporter is synchronous: off the loop, which serves the collector.
            assert await asyncio.to_thread(exporter.export, spans) is SpanExportResult.SUCCESS
            exporter.shutdown()
        await eventually(lambda: len(collector.requests) == 2, within_s=5)
        assert collector.requests[0] == collector.requests[1]
    finally:
        await server.stop(None)


def test_the_public_path_keeps_the_sdk_exporter() -> None:
    before = _fastpath.LEAN_OTLP
    _fastpath.use_fastpath(False)
    try:
        assert _fastpath.otlp_span_exporter() is OTLPSpanExporter
        assert not _fastpath.selected()["otlp_encoder"]
    finally:
        _fastpath.use_fastpath(before)


def test_an_exporter_that_encodes_otherwise_fails_the_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As after an SDK upgrade that sends something else: the lean exporter is not used."""

    def other(self: Any, data: Sequence[ReadableSpan]) -> ExportTraceServiceRequest:
        request = encode_spans(data)
        request.resource_spans[0].schema_url = "https://changed"
        return request

    assert _fastpath._lean_otlp_exporter() is not None
    monkeypatch.setattr(OTLPSpanExporter, "_translate_data", other)
    assert _fastpath._lean_otlp_exporter() is None
