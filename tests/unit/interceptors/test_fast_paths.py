"""The per-call fast paths behave exactly as the slow paths they skip.

Tracing without `start_span` for dropped spans (client and server), the done
callback shared by a call's observers, the metrics children updated directly,
and interceptors the mesh's runner calls without a link.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider, _disable_tracer_configurator, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, TraceState
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from interceptors._call import when_done
from interceptors._client import RETURNS_CALL
from interceptors._spans import SpanShortcut
from interceptors.metrics import MetricsClientInterceptor, RpcMetrics
from interceptors.tracing import (
    TracingClientInterceptor,
    TracingServerInterceptor,
    parse_traceparent,
)
from mesh.client.calls import fold_chain, unary_link
from tests.support.ping import PingServicer
from tests.support.ping_calls import NOT_FOUND, channel
from tests.support.poll import eventually

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
SPAN_ID = 0xB7AD6B7169203331
HEADER = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]")
NEVER = sampling.TraceIdRatioBased.TRACE_ID_LIMIT + 1


def provider(sampler: sampling.Sampler, **kw: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=sampler, **kw)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return tp, exporter


def spy_start_span(monkeypatch: pytest.MonkeyPatch, tracer: Any) -> list[str]:
    """Names of the spans `tracer.start_span` is asked for from now on."""
    started: list[str] = []
    real = tracer.start_span

    def spy(name: str, *args: Any, **kwargs: Any) -> Any:
        started.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(tracer, "start_span", spy)
    return started


def sent_headers(servicer: PingServicer) -> list[dict[str, Any]]:
    return [dict(md) for md in servicer.metadata_seen]


@pytest.fixture
def current_parent() -> Iterator[Any]:
    """Make a given span context the current (parent) span for the test's calls."""
    tokens: list[object] = []

    def use(ctx: SpanContext) -> None:
        tokens.append(otel_context.attach(trace.set_span_in_context(NonRecordingSpan(ctx))))

    yield use
    for token in reversed(tokens):
        otel_context.detach(token)  # type: ignore[arg-type]


async def ping_n(address: str, interceptor: Any, n: int = 1) -> None:
    async with channel(address, interceptor) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        for _ in range(n):
            await stub.Ping(ping_pb2.PingRequest())


# --- which samplers take the shortcut ----------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "bounds"),
    [
        (sampling.ALWAYS_OFF, (0, 0, 0, 0, 0)),
        (sampling.ALWAYS_ON, (NEVER,) * 5),
        (sampling._AlwaysOff(None), (0, 0, 0, 0, 0)),  # type: ignore[no-untyped-call]
        (sampling.TraceIdRatioBased(0.25), (1 << 62,) * 5),
        (sampling.ParentBased(sampling.ALWAYS_OFF), (0, NEVER, 0, NEVER, 0)),
        (sampling.ParentBased(sampling.ALWAYS_ON), (NEVER, NEVER, 0, NEVER, 0)),
        (sampling.ParentBasedTraceIdRatio(0.5), (1 << 63, NEVER, 0, NEVER, 0)),
    ],
)
def test_drop_bounds_of_the_sdk_samplers(sampler, bounds):
    assert _fastpath._private_sampler_bounds(sampler) == bounds


class DropsOddIds(sampling.Sampler):
    def should_sample(self, parent_context, trace_id, name, *args, **kwargs):  # type: ignore[no-untyped-def]
        decision = sampling.Decision.DROP if trace_id % 2 else sampling.Decision.RECORD_AND_SAMPLE
        return sampling.SamplingResult(decision)

    def get_description(self) -> str:
        return "DropsOddIds"


class SubclassedOff(sampling.StaticSampler):
    def should_sample(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE)


@pytest.mark.parametrize(
    "sampler",
    [
        DropsOddIds(),
        SubclassedOff(sampling.Decision.DROP),
        sampling.ParentBased(DropsOddIds()),
        sampling.ParentBased(sampling.ALWAYS_OFF, remote_parent_sampled=DropsOddIds()),
        sampling.ParentBased(sampling.ParentBased(sampling.ALWAYS_OFF)),
    ],
)
def test_other_samplers_get_no_shortcut(sampler):
    assert _fastpath._private_sampler_bounds(sampler) is None
    assert not SpanShortcut(TracerProvider(sampler=sampler).get_tracer("t")).active


def test_no_shortcut_when_the_sdk_counts_spans_or_for_other_tracers(monkeypatch):
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    counted = TracerProvider(sampler=sampling.ALWAYS_OFF, meter_provider=MeterProvider())
    assert not SpanShortcut(counted.get_tracer("t")).active
    assert not SpanShortcut(trace.NoOpTracer()).active


# --- client side ------------------------------------------------------------------


async def test_unsampled_root_starts_no_span_and_sends_a_fresh_unsampled_traceparent(
    start_server, monkeypatch
):
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_OFF))
    client = TracingClientInterceptor(tp)
    started = spy_start_span(monkeypatch, client._tracer)
    srv = await start_server()
    await ping_n(srv.address, client, n=3)
    headers = sent_headers(srv.servicer)
    assert all(HEADER.fullmatch(h["traceparent"]) for h in headers)
    sent = [parse_traceparent(h["traceparent"]) for h in headers]
    assert all(ctx is not None and not ctx.trace_flags.sampled for ctx in sent)
    assert len({ctx.trace_id for ctx in sent if ctx}) == 3  # a new trace per root call
    assert all("tracestate" not in h for h in headers)
    assert started == []
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("shortcut", [True, False])
async def test_unsampled_parent_is_propagated_as_the_sdk_would(
    start_server, monkeypatch, current_parent, shortcut
):
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_ON))
    client = TracingClientInterceptor(tp)
    if not shortcut:
        monkeypatch.setattr(client._spans, "_bounds", None)  # the SDK decides
    started = spy_start_span(monkeypatch, client._tracer)
    srv = await start_server()
    current_parent(
        SpanContext(
            TRACE_ID,
            SPAN_ID,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.DEFAULT),
            trace_state=TraceState([("vendor", "abc")]),
        )
    )
    await ping_n(srv.address, client)
    [headers] = sent_headers(srv.servicer)
    sent = parse_traceparent(headers["traceparent"])
    assert sent is not None
    assert (sent.trace_id, sent.trace_flags.sampled) == (TRACE_ID, False)
    assert sent.span_id != SPAN_ID  # a span of its own, even unrecorded
    assert headers["tracestate"] == "vendor=abc"
    assert exporter.get_finished_spans() == ()
    assert len(started) == (0 if shortcut else 1)


async def test_sampled_parent_still_gets_a_recorded_child_span(
    start_server, monkeypatch, current_parent
):
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_OFF))
    client = TracingClientInterceptor(tp)
    started = spy_start_span(monkeypatch, client._tracer)
    srv = await start_server()
    current_parent(
        SpanContext(TRACE_ID, SPAN_ID, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    )
    await ping_n(srv.address, client)
    [span] = exporter.get_finished_spans()
    assert span.kind is SpanKind.CLIENT and span.parent is not None
    assert (span.context.trace_id, span.parent.span_id) == (TRACE_ID, SPAN_ID)
    assert span.attributes is not None and dict(span.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "shop.testing.v1.PingService",
        "rpc.method": "Ping",
        "rpc.grpc.status_code": 0,
    }
    sent = parse_traceparent(sent_headers(srv.servicer)[0]["traceparent"])
    assert sent is not None and sent.trace_flags.sampled
    assert (sent.trace_id, sent.span_id) == (TRACE_ID, span.context.span_id)
    assert started == []  # recorded by a LeanSpan: the SDK's start_span is not called


class StartWatcher(SimpleSpanProcessor):
    """A processor that looks at spans as they start: the SDK's Span is then needed."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self.started = getattr(self, "started", 0) + 1


def exported(lean: bool, root: bool, watcher: bool = False) -> Any:
    """One SERVER span made through SpanShortcut.start_span, used as the interceptors and a
    handler might, ended; the lean path or the SDK's; its exported ReadableSpan."""
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_ON))
    if watcher:
        tp.add_span_processor(StartWatcher(InMemorySpanExporter()))
    shortcut = SpanShortcut(tp.get_tracer("t"))
    if not lean:
        shortcut._parts = None  # the SDK's start_span
    parent = (
        trace.INVALID_SPAN_CONTEXT
        if root
        else SpanContext(
            TRACE_ID,
            SPAN_ID,
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=TraceState([("vendor", "abc")]),
        )
    )
    assert shortcut.drop(parent) is None
    attributes = {"rpc.system": "grpc", "rpc.method": "Ping"}
    span = shortcut.start_span("S/Ping", parent, SpanKind.SERVER, attributes, remote=True)
    span.set_attribute("handler.items", [1, 2])  # not a plain value: BoundedAttributes
    span.add_event("picked", {"n": 3})
    span.add_link(SpanContext(TRACE_ID, 5, is_remote=False), {"why": "batch"})
    span.update_name("S/Ping2")
    span.set_attribute("rpc.grpc.status_code", 13)
    span.set_status(trace.Status(trace.StatusCode.ERROR, "INTERNAL"))
    span.record_exception(ValueError("bad"))
    span.end()
    span.set_attribute("late", 1)  # ignored, as by the SDK
    assert attributes == {"rpc.system": "grpc", "rpc.method": "Ping"}  # never written
    [out] = exporter.get_finished_spans()
    return span, out


@pytest.mark.parametrize("root", [True, False])
def test_lean_span_exports_what_the_sdks_span_would(root: bool) -> None:
    def fields(out: Any) -> Any:
        ctx = out.context
        return (
            out.name,
            out.kind,
            dict(out.attributes),
            (out.status.status_code, out.status.description),
            [(e.name, dict(e.attributes) if e.name != "exception" else sorted(e.attributes))
             for e in out.events],
            [(link.context.span_id, dict(link.attributes)) for link in out.links],
            (ctx.trace_flags, ctx.trace_state, ctx.is_remote, ctx.trace_id if not root else 0),
            out.parent,
            out.resource.attributes,
            out.instrumentation_scope,
            (out.dropped_attributes, out.dropped_events, out.dropped_links),
            out.end_time >= out.start_time,
        )  # fmt: skip

    lean_span, lean = exported(True, root)
    sdk_span, sdk = exported(False, root)
    assert type(lean_span).__name__ == "LeanSpan" and type(sdk_span).__name__ == "_Span"
    assert fields(lean) == fields(sdk)
    assert lean.to_json()  # as an exporter would serialise it


def test_a_processor_watching_starts_gets_the_sdks_span() -> None:
    span, _ = exported(True, False, watcher=True)
    assert type(span).__name__ == "_Span"


class ListedIds(IdGenerator):
    """Trace ids from a list, span ids counting up."""

    def __init__(self, trace_ids: list[int]) -> None:
        self.trace_ids = iter(trace_ids)
        self.span_id = 0

    def generate_trace_id(self) -> int:
        return next(self.trace_ids)

    def generate_span_id(self) -> int:
        self.span_id += 1
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True


async def test_ratio_sampler_decides_on_the_trace_id_the_span_then_gets(start_server):
    # Low 64 bits below the bound (2**63 at ratio 0.5) are sampled. Were the SDK to
    # draw a new id for the span it starts, the second call would come out dropped
    # (it would get `dropped_2`) and the sampled rate would be ratio squared.
    sampled, dropped_1, dropped_2 = 5, (1 << 63) + 7, (1 << 63) + 9
    tp, exporter = provider(
        sampling.TraceIdRatioBased(0.5), id_generator=ListedIds([dropped_1, sampled, dropped_2])
    )
    srv = await start_server()
    await ping_n(srv.address, TracingClientInterceptor(tp), n=3)
    sent = [parse_traceparent(h["traceparent"]) for h in sent_headers(srv.servicer)]
    assert [(c.trace_id, c.trace_flags.sampled) for c in sent if c] == [
        (dropped_1, False),
        (sampled, True),
        (dropped_2, False),
    ]
    [span] = exporter.get_finished_spans()
    assert span.context.trace_id == sampled


async def test_unsupported_sampler_goes_through_the_sdk(start_server, monkeypatch):
    tp, exporter = provider(DropsOddIds(), id_generator=ListedIds([3, 4]))
    client = TracingClientInterceptor(tp)
    started = spy_start_span(monkeypatch, client._tracer)
    srv = await start_server()
    await ping_n(srv.address, client, n=2)
    sent = [parse_traceparent(h["traceparent"]) for h in sent_headers(srv.servicer)]
    assert [(c.trace_id, c.trace_flags.sampled) for c in sent if c] == [(3, False), (4, True)]
    assert len(started) == 2 and len(exporter.get_finished_spans()) == 1


async def test_disabled_tracer_sends_no_trace_headers(start_server):
    tp, _ = provider(sampling.ALWAYS_OFF, _tracer_configurator=_disable_tracer_configurator)
    srv = await start_server()
    await ping_n(srv.address, TracingClientInterceptor(tp))
    assert "traceparent" not in sent_headers(srv.servicer)[0]


# --- server side ------------------------------------------------------------------


class SeesCurrentSpan(PingServicer):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[SpanContext] = []

    async def Ping(self, request, context):  # type: ignore[override]
        self.seen.append(trace.get_current_span().get_span_context())
        return ping_pb2.PingResponse()


async def server_span_context(
    start_server: Any, monkeypatch: pytest.MonkeyPatch, shortcut: bool, metadata: Any
) -> tuple[SpanContext, list[str]]:
    """The current span context the handler sees, and the spans started for it."""
    tp, exporter = provider(sampling.ParentBased(sampling.ALWAYS_OFF))
    server = TracingServerInterceptor(tp)
    if not shortcut:
        monkeypatch.setattr(server._spans, "_bounds", None)
    started = spy_start_span(monkeypatch, server._tracer)
    servicer = SeesCurrentSpan()
    srv = await start_server(servicer, interceptors=[server])
    async with channel(srv.address) as ch:
        await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(), metadata=metadata)
    assert exporter.get_finished_spans() == ()
    [seen] = servicer.seen
    return seen, started


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (
            ("traceparent", f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-00"),
            ("tracestate", "vendor=abc"),
        ),
    ],
    ids=["root", "unsampled-parent"],
)
async def test_unsampled_server_span_is_the_sdks_without_the_sdk(
    start_server, monkeypatch, metadata
):
    fast, fast_started = await server_span_context(start_server, monkeypatch, True, metadata)
    slow, slow_started = await server_span_context(start_server, monkeypatch, False, metadata)
    assert (fast_started, len(slow_started)) == ([], 1)

    def fields(ctx: SpanContext) -> tuple[Any, ...]:
        return (ctx.is_valid, ctx.is_remote, ctx.trace_flags, dict(ctx.trace_state))

    assert fields(fast) == fields(slow)
    assert fast.span_id != SPAN_ID
    if metadata:
        assert fast.trace_id == slow.trace_id == TRACE_ID
        assert dict(fast.trace_state) == {"vendor": "abc"}
    else:
        assert fast.trace_flags.random_trace_id  # as the SDK marks a root it drew


# --- one done callback per call ---------------------------------------------------


async def test_observers_share_one_done_callback_in_order_each_isolated(start_server):
    srv = await start_server()
    seen: list[tuple[str, grpc.StatusCode, str]] = []

    def failing(code: grpc.StatusCode, details: str) -> None:
        seen.append(("failing", code, details))
        raise RuntimeError("observer bug")

    async with channel(srv.address) as ch:
        call: Any = ping_pb2_grpc.PingServiceStub(ch).Ping(
            ping_pb2.PingRequest(value="v", error_code=NOT_FOUND)
        )
        registered: list[Any] = []
        real_add = call.add_done_callback

        def add_done_callback(callback: Any) -> None:
            registered.append(callback)
            real_add(callback)

        call.add_done_callback = add_done_callback
        when_done(call, failing)
        when_done(call, lambda code, details: seen.append(("second", code, details)))
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        await eventually(lambda: len(seen) == 2)
    assert len(registered) == 1
    assert seen == [
        ("failing", grpc.StatusCode.NOT_FOUND, "asked to fail (v)"),
        ("second", grpc.StatusCode.NOT_FOUND, "asked to fail (v)"),
    ]


@pytest.mark.parametrize("outcome", ["ok", "error", "cancelled"])
async def test_status_read_without_a_coroutine_is_grpcs_own(start_server, outcome):
    # Guards the fenced status read (grpc.aio internals) against grpcio upgrades.
    srv = await start_server()
    async with channel(srv.address) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        if outcome == "cancelled":
            call: Any = stub.Ping(ping_pb2.PingRequest(sleep_ms=5000))
            await asyncio.sleep(0)  # poll: one loop turn, so the call has started when cancelled
            call.cancel()
        else:
            error = NOT_FOUND if outcome == "error" else 0
            call = stub.Ping(ping_pb2.PingRequest(value="v", error_code=error))
        try:
            await call
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            assert outcome != "ok"
        else:
            assert outcome == "ok"
        assert call.done()
        assert _fastpath._private_status_now(call) == (await call.code(), await call.details())


# --- metrics children updated directly --------------------------------------------


def test_series_observe_exposes_what_the_public_api_would():
    fast, public = RpcMetrics(CollectorRegistry()), RpcMetrics(CollectorRegistry())
    series = fast.client_series("svc", "/pkg.Svc/M")
    observations = [
        (grpc.StatusCode.OK, 0.0),
        (grpc.StatusCode.OK, 0.0005),  # exactly on a bucket bound
        (grpc.StatusCode.NOT_FOUND, 0.00050001),
        (grpc.StatusCode.OK, 0.3),
        (grpc.StatusCode.UNAVAILABLE, 10.0),
        (grpc.StatusCode.OK, 11.0),  # +Inf only
        (grpc.StatusCode.NOT_FOUND, 0.002),
    ]
    for code, seconds in observations:
        series.observe(code, seconds)
        public.client_handled.labels("svc", "pkg.Svc", "M", code.name).inc()
        public.client_handling_seconds.labels("svc", "pkg.Svc", "M").observe(seconds)
    assert samples(fast.registry) == samples(public.registry)


def samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    """Every sample but the creation times (they differ by when the children were made)."""
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    )


# --- interceptors the mesh's runner calls directly --------------------------------


def test_marked_interceptors_are_folded_without_a_link():
    metrics = MetricsClientInterceptor(RpcMetrics(CollectorRegistry()), "svc")

    class Answering(MetricsClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
            return ping_pb2.PingResponse()  # a response: needs the link

    answering = Answering(RpcMetrics(CollectorRegistry()), "svc")

    async def terminal(details: Any, request: Any) -> Any:
        raise AssertionError("not called")

    direct = fold_chain([metrics.intercept_unary_unary], terminal, unary_link)
    assert isinstance(direct, functools.partial)
    assert direct.func == metrics.intercept_unary_unary and direct.args == (terminal,)
    assert not getattr(answering.intercept_unary_unary, RETURNS_CALL, False)
    linked = fold_chain([answering.intercept_unary_unary], terminal, unary_link)
    assert not isinstance(linked, functools.partial)
