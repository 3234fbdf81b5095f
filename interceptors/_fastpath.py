"""Every private API of grpc, OpenTelemetry and prometheus-client the mesh reads: here only.

The per-call path is a few microseconds cheaper when it reads a library's
internals instead of going through its public API. Such reads break silently
when the library is upgraded, so they are fenced here, each behind a public-
API fallback that gives the same results (tests/integration/client/
test_fastpath.py runs both chains and compares statuses, metrics, spans).
One difference is visible on the public path: a call's status reaches its
observers (metrics, breaker, spans, the balancer) from a task, one loop turn
after the caller's `await` resumed, instead of before it; results are the
same once the loop has run. Each use, its private read, its public
fallback, and what it measured
(µs per use, private vs public):

- `status_now`: a finished grpc.aio call's `_cython_call._status`, else its
  `code()`/`details()` coroutines stepped by hand (they finish without
  suspending). Public: None, the caller awaits them in a task.
  0.15 (stepped: 0.85) vs 6.2.
- `CALL_TYPES`: the concrete classes of `grpc.aio._call`, for a `type(x) in`
  test before the ABC `isinstance`. Public: the `isinstance` only.
  0.035 vs 0.11 per chain link.
- `counter_inc`: a counter child's `_value.inc`. Public: `child.inc`.
  0.18 vs 0.27.
- `histogram_raw`: a histogram child's `_sum`, `_buckets`, `_upper_bounds`
  (bucket found by bisection). Public: `child.observe`. 0.40 vs 0.55.
- `span_drop_bounds`, `tracer_enabled`: the SDK samplers' `_root`,
  `_decision`...; `Tracer._tracer_metrics`, `_tracer_config`. Public: the
  SDK's `Tracer.start_span`. 0.25 vs 2.8 per unsampled span.
- `span_parts`, `span_processors`: a sampled span as `interceptors._spans.LeanSpan`
  (the same `ReadableSpan` handed to the processor's `on_end` as the SDK's
  Span would), needing the tracer's `_instrumentation_scope`, `_span_limits`
  and its processors (`_span_processors`: each must ignore `on_start` and
  `_on_ending`, as the SDK's batch and simple processors do). Public: the
  SDK's `start_span`. 3.8 vs 14.3 per sampled span (start, status code, end,
  into a BatchSpanProcessor), 2026-12-02.

- `otlp_span_exporter`: the OTLP/gRPC span exporter's private `_translate_data`,
  overridden to parse the batch from `interceptors.otlp_spans`' bytes (checked when the
  first OTLP exporter is made: its request must equal the SDK encoder's for a probe
  batch of every shape). Public: the SDK's exporter as it is. 6.9 vs 29.7 per exported mesh span,
  2026-12-06, opentelemetry-exporter-otlp-proto-grpc 1.45.2.

- `MEMO_CALLER` (no private read, switched with them): the server's caller
  policy reads the peer's SPIFFE id once per connection (peer address, checked
  against the call's `peer_identity_key()` and `peer_identities()`) and keeps
  its verdicts per (method, identity). Off: `auth_context()` and the decision
  on every call; tests/unit/interceptors/test_policy.py requires the same
  decisions both ways. ~0.6 vs 2.9-3.8 µs per read hot (`python -m bench policy`).

- `MULTICALLABLE_OPTIONS`: `_registered_method=True` when the balancer makes
  an instance's multicallables (what grpc's own generated stubs pass: core
  registers the method once instead of per call). Public: no argument. No
  difference measurable on this box (±20 % noise on 2000-call runs).

(grpc's private `_compression.augment_metadata` is no longer used: the mesh
channel writes core's documented compression key itself, no saving lost.)

The mesh client chain (deadline, retry, breaker, tracing sampled off,
metrics; no network) costs 9.6 µs per call with these reads, 30.4 µs with
the public fallbacks (most of it the task each call's status then needs).
Figures: `python -m bench fastpath`, 2026-12-02, 2 shared cores, grpcio
1.85.3, opentelemetry-sdk 1.45.2, prometheus-client 0.26.0.

Where: `interceptors/` is the lowest layer every user can import (the
interceptors themselves, and `mesh/client`, `mesh/balancer` above them);
`base/` stays a dependency-free bottom (errors, backoff) with no grpc,
OpenTelemetry or prometheus-client import.

Selection: each use is switched on at import only if its capability check
passes against the installed library: the check builds the real objects
(a finished-call status class, a counter and a histogram in a throwaway
registry whose raw increments must show in `collect()`, a tracer of the SDK
with the SDK's samplers) and looks for exactly the shape read here. A failed
check costs only the saving (logged once at INFO). `MESH_FASTPATH=0` at import, or
`use_fastpath(False)` (tests), forces the public path for every use; objects
built afterwards (channels, interceptors) use what is selected when they are
built, and the module-level functions are looked up per call.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, Final

import grpc

ENV_VAR: Final = "MESH_FASTPATH"

log = logging.getLogger(__name__)

# Status numbers as gRPC core reports them -> grpc.StatusCode.
_BY_NUMBER: Final[dict[int, grpc.StatusCode]] = {code.value[0]: code for code in grpc.StatusCode}
_OK: Final = grpc.StatusCode.OK

Status = tuple[grpc.StatusCode, str]
HistogramRaw = tuple[Callable[[float], None], list[Callable[[float], None]], list[float]]
Bounds = tuple[int, int, int, int, int]


# -- grpc.aio: a finished call's status without awaiting ------------------------------------


class _Pending(Exception):
    """The coroutine needed the event loop: its result is not ready yet."""


def _step(coro: Coroutine[Any, Any, Any]) -> Any:
    # A finished call's code()/details() are coroutines that complete without
    # suspending (grpc.aio internals, not a promise): one step gets the value.
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise _Pending


def _private_status_now(call: Any) -> Status | None:
    status = getattr(getattr(call, "_cython_call", None), "_status", None)
    if status is not None:
        code = _BY_NUMBER.get(status.code())
        if code is not None:
            return code, "" if code is _OK else (status.details() or "")
    try:
        code = _step(call.code())
        details = "" if code is _OK else _step(call.details())
    except _Pending:
        return None
    return code, details or ""


def _public_status_now(call: Any) -> Status | None:
    return None


def _grpc_status_capable() -> bool:
    try:
        from grpc._cython import cygrpc

        return hasattr(cygrpc._AioCall, "_status") and hasattr(cygrpc.AioRpcStatus, "code")
    except (ImportError, AttributeError):  # pragma: no cover - depends on grpcio
        return False


def _grpc_call_types() -> frozenset[type]:
    try:
        from grpc.aio import _call

        return frozenset(
            {
                _call.UnaryUnaryCall,
                _call.UnaryStreamCall,
                _call.StreamUnaryCall,
                _call.StreamStreamCall,
            }
        )
    except (ImportError, AttributeError):  # pragma: no cover - depends on grpcio
        return frozenset()


def _registered_method_capable() -> bool:
    import inspect

    try:
        return "_registered_method" in inspect.signature(grpc.aio.Channel.unary_unary).parameters
    except (TypeError, ValueError):  # pragma: no cover - depends on grpcio
        return False


# -- prometheus-client: a labelled child's value updated directly ---------------------------


def _private_counter_inc(child: Any) -> Callable[[float], None]:
    inc: Callable[[float], None] = child._value.inc
    return inc


def _public_counter_inc(child: Any) -> Callable[[float], None]:
    inc: Callable[[float], None] = child.inc
    return inc


def _private_histogram_raw(child: Any) -> HistogramRaw | None:
    buckets = child._buckets
    bounds = list(child._upper_bounds)
    if len(buckets) != len(bounds):
        return None
    return child._sum.inc, [bucket.inc for bucket in buckets], bounds


def _public_histogram_raw(child: Any) -> HistogramRaw | None:
    return None


def _prometheus_capable() -> bool:
    """A counter and a histogram updated the private way read back as the public way would."""
    try:
        from bisect import bisect_left

        from prometheus_client import CollectorRegistry, Counter, Histogram

        registry = CollectorRegistry()
        counter = Counter("c", "c", ["l"], registry=registry).labels("x")
        histogram = Histogram("h", "h", ["l"], buckets=(1.0, 2.0), registry=registry).labels("x")
        _private_counter_inc(counter)(1)
        raw = _private_histogram_raw(histogram)
        if raw is None:
            return False
        total, buckets, bounds = raw
        total(1.5)
        buckets[bisect_left(bounds, 1.5)](1)
        seen = {
            (s.name, s.labels.get("le")): s.value for m in registry.collect() for s in m.samples
        }
        return (
            seen.get(("c_total", None)) == 1.0
            and seen.get(("h_sum", None)) == 1.5
            and seen.get(("h_bucket", "1.0")) == 0.0
            and seen.get(("h_bucket", "2.0")) == 1.0
            and seen.get(("h_count", None)) == 1.0
        )
    except Exception:  # pragma: no cover - depends on prometheus-client
        return False


# -- OpenTelemetry SDK: the sampler's decision as arithmetic --------------------------------

_LIMIT: Final = 0xFFFFFFFFFFFFFFFF  # TraceIdRatioBased decides on the low 64 bits
NEVER_DROPS: Final = _LIMIT + 1
ALWAYS_DROPS: Final = 0


def _leaf_bound(sampler: Any) -> int | None:
    from opentelemetry.sdk.trace import sampling

    kind = type(sampler)
    if kind in (sampling.StaticSampler, sampling._AlwaysOff, sampling._AlwaysOn):
        return ALWAYS_DROPS if sampler._decision is sampling.Decision.DROP else NEVER_DROPS
    if kind is sampling.TraceIdRatioBased:
        bound: int = sampler.bound
        return bound
    return None


def _private_sampler_bounds(sampler: Any) -> Bounds | None:
    from opentelemetry.sdk.trace import sampling

    parent_based = (
        sampling.ParentBased,
        sampling.ParentBasedTraceIdRatio,
        sampling._ParentBasedAlwaysOff,
        sampling._ParentBasedAlwaysOn,
    )
    if type(sampler) in parent_based:
        delegates = (
            sampler._root,
            sampler._remote_parent_sampled,
            sampler._remote_parent_not_sampled,
            sampler._local_parent_sampled,
            sampler._local_parent_not_sampled,
        )
        bounds = [_leaf_bound(d) for d in delegates]
        if any(b is None for b in bounds):
            return None
        root, rs, rn, ls, ln = (b for b in bounds if b is not None)
        return root, rs, rn, ls, ln
    leaf = _leaf_bound(sampler)
    return None if leaf is None else (leaf,) * 5


def _private_span_drop_bounds(tracer: Any) -> Bounds | None:
    from opentelemetry.sdk import trace as sdk_trace

    try:
        from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
    except ImportError:  # pragma: no cover - SDKs before self-metrics
        return None
    if not (
        type(tracer) is sdk_trace.Tracer
        and type(getattr(tracer, "_tracer_metrics", None)) is NoOpTracerMetrics
        and hasattr(tracer, "_tracer_config")
    ):
        return None
    return _private_sampler_bounds(tracer.sampler)


def _public_span_drop_bounds(tracer: Any) -> Bounds | None:
    return None


def tracer_enabled(tracer: Any) -> bool:
    """Whether an SDK tracer `span_drop_bounds` answered for is enabled (per call)."""
    enabled: bool = tracer._tracer_config.is_enabled
    return enabled


def _otel_capable() -> bool:
    try:
        from opentelemetry.sdk.trace import TracerProvider, sampling

        assert sampling.TraceIdRatioBased.TRACE_ID_LIMIT == _LIMIT
        sampler = sampling.ParentBased(sampling.TraceIdRatioBased(0.5))
        tracer = TracerProvider(sampler=sampler).get_tracer("mesh.fastpath.check")
        bounds = _private_span_drop_bounds(tracer)
        return (
            bounds is not None
            and bounds[0] == sampler._root.bound  # type: ignore[attr-defined]
            and bounds[1:] == (NEVER_DROPS, ALWAYS_DROPS, NEVER_DROPS, ALWAYS_DROPS)
            and tracer_enabled(tracer) is True
        )
    except Exception:  # pragma: no cover - depends on opentelemetry-sdk
        return False


# -- OpenTelemetry SDK: a sampled span without the SDK's Span object -----------------------


class SpanParts:
    """What a lean recording span (`interceptors._spans.LeanSpan`) needs of its SDK tracer:
    the tracer's own resource, scope and limits, and its span processor's `on_end`."""

    __slots__ = ("instrumentation_info", "instrumentation_scope", "limits", "on_end", "resource")

    def __init__(self, tracer: Any) -> None:
        self.on_end: Callable[[Any], None] = tracer.span_processor.on_end
        self.resource: Any = tracer.resource
        self.instrumentation_info: Any = tracer.instrumentation_info
        self.instrumentation_scope: Any = tracer._instrumentation_scope
        self.limits: Any = tracer._span_limits


def _noop_hooks() -> tuple[frozenset[Any], frozenset[Any]]:
    """The `on_start` / `_on_ending` functions of the SDK's own span processors that do
    nothing (checked by calling them with a bare object: anything they touched would raise)."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    starts, endings = set(), set()
    for kind in (SpanProcessor, BatchSpanProcessor, SimpleSpanProcessor):
        probe = object.__new__(kind)
        if kind.on_start(probe, object()) is None:  # type: ignore[arg-type]
            starts.add(kind.on_start)
        if kind._on_ending(probe, object()) is None:  # type: ignore[arg-type]
            endings.add(kind._on_ending)
    return frozenset(starts), frozenset(endings)


_NOOP_STARTS: frozenset[Any] = frozenset()
_NOOP_ENDINGS: frozenset[Any] = frozenset()


def _private_span_parts(tracer: Any) -> SpanParts | None:
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor

    if (
        _private_span_drop_bounds(tracer) is None
        or type(tracer.span_processor) is not SynchronousMultiSpanProcessor
        or not hasattr(tracer, "_instrumentation_scope")
        or not hasattr(tracer, "_span_limits")
    ):
        return None
    return SpanParts(tracer)


def _public_span_parts(tracer: Any) -> SpanParts | None:
    return None


def span_processors(tracer: Any) -> tuple[Any, ...]:
    """The processors behind a tracer `span_parts` answered for (per sampled span: they
    may be added after the tracer was made)."""
    processors: tuple[Any, ...] = tracer.span_processor._span_processors
    return processors


def plain_processors(processors: tuple[Any, ...]) -> bool:
    """Whether every processor ignores a span's start and ending (only `on_end` matters):
    then a lean span that calls `on_end` alone is seen exactly as the SDK's."""
    return all(
        type(p).on_start in _NOOP_STARTS and type(p)._on_ending in _NOOP_ENDINGS for p in processors
    )


def _lean_span_capable() -> bool:
    global _NOOP_STARTS, _NOOP_ENDINGS
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _NOOP_STARTS, _NOOP_ENDINGS = _noop_hooks()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        tracer = provider.get_tracer("mesh.fastpath.check")
        parts = _private_span_parts(tracer)
        sdk_span: Any = tracer.start_span("check")
        return (
            parts is not None
            and plain_processors(span_processors(tracer))
            and parts.resource is sdk_span.resource
            and parts.instrumentation_scope == sdk_span.instrumentation_scope
            and parts.limits is sdk_span._limits
        )
    except Exception:  # pragma: no cover - depends on opentelemetry-sdk
        return False


# -- OpenTelemetry OTLP exporter: span batches encoded by interceptors.otlp_spans ----------


def _probe_spans() -> list[Any]:
    """Finished SDK spans of every shape `otlp_spans` encodes (for the capability check)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
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

    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource({"service.name": "probe"}, "https://probe"), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("probe", "1.0", "https://scope", {"scope.k": 1})
    remote = SpanContext(
        1 << 100, 1 << 60, is_remote=True, trace_flags=TraceFlags(1),
        trace_state=TraceState([("k", "v")]),
    )  # fmt: skip
    attributes: dict[str, Any] = {
        "s": "é", "b": False, "i": -(1 << 40), "f": 0.5, "y": b"\x00", "l": ["a", 1],
    }  # fmt: skip
    with tracer.start_as_current_span(
        "probe/server", set_span_in_context(NonRecordingSpan(remote)), SpanKind.SERVER,
        attributes, [Link(remote, {"l": True})],
    ) as span:  # fmt: skip
        span.add_event("event", {"e": 2})
        span.set_status(Status(StatusCode.ERROR, "failed"))
        with tracer.start_as_current_span("probe/client", kind=SpanKind.CLIENT):
            pass
    return list(memory.get_finished_spans())


def _lean_otlp_exporter() -> type[Any] | None:
    """The SDK's OTLP/gRPC span exporter with its batch encoded by `interceptors.otlp_spans`,
    or None when the exporter is not shaped as expected or the requests would differ."""
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        from interceptors.otlp_spans import encode_export_request

        class LeanOTLPSpanExporter(OTLPSpanExporter):
            """`OTLPSpanExporter` whose batches are encoded by `interceptors.otlp_spans`."""

            def _translate_data(self, data: Any) -> Any:
                return ExportTraceServiceRequest.FromString(encode_export_request(data))

        LeanOTLPSpanExporter.__qualname__ = LeanOTLPSpanExporter.__name__
        probe = _probe_spans()
        translate = OTLPSpanExporter.__dict__.get("_translate_data")
        if not callable(translate) or len(probe) != 2:
            return None
        sdk = translate(None, probe)
        ours = LeanOTLPSpanExporter._translate_data(None, probe)  # type: ignore[arg-type]
        return LeanOTLPSpanExporter if type(sdk) is type(ours) and sdk == ours else None
    except Exception:  # pragma: no cover - depends on the installed exporter
        return None


@functools.cache
def _checked_lean_otlp_exporter() -> type[Any] | None:
    """`_lean_otlp_exporter`'s answer, checked once per process (it imports the exporter)."""
    lean = _lean_otlp_exporter()
    if lean is None:
        log.info("fast path otlp_encoder off: the installed exporter is not shaped as expected")
    return lean


def otlp_span_exporter() -> type[Any]:
    """The OTLP/gRPC span exporter class to build: with the fast path (`LEAN_OTLP`) and a
    passing check (made at the first call), the lean one; else the SDK's
    `OTLPSpanExporter`."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    lean = _checked_lean_otlp_exporter() if LEAN_OTLP else None
    return lean or OTLPSpanExporter


# -- selection ------------------------------------------------------------------------------

CAPABLE: Final[dict[str, bool]] = {
    "grpc_status": _grpc_status_capable(),
    "grpc_call_types": bool(_grpc_call_types()),
    "grpc_registered_method": _registered_method_capable(),
    "prometheus": _prometheus_capable(),
    "otel_sampler": _otel_capable(),
    "otel_lean_span": _lean_span_capable(),
}
for _use, _ok in CAPABLE.items():
    if not _ok:
        log.info("fast path %s off: the installed library is not shaped as expected", _use)

# The selected implementations (rebound by use_fastpath).
status_now: Callable[[Any], Status | None] = _public_status_now
"""(code, details) of a finished call read without awaiting, or None: await in a task."""
CALL_TYPES: frozenset[type] = frozenset()
"""grpc.aio's concrete call classes (a cheap `type(x) in` before the ABC isinstance)."""
MULTICALLABLE_OPTIONS: dict[str, Any] = {}
"""Extra keyword arguments for a grpc.aio channel's multicallable factories."""
counter_inc: Callable[[Any], Callable[[float], None]] = _public_counter_inc
"""The increment of a labelled counter child."""
histogram_raw: Callable[[Any], HistogramRaw | None] = _public_histogram_raw
"""(sum inc, bucket incs, upper bounds) of a labelled histogram child, or None: observe()."""
span_drop_bounds: Callable[[Any], Bounds | None] = _public_span_drop_bounds
"""Per parent kind, the trace-id bound under which the tracer's sampler keeps a span, or
None: the SDK must decide (see interceptors/_spans.py)."""
span_parts: Callable[[Any], SpanParts | None] = _public_span_parts
"""What a sampled span needs of its tracer to be made without the SDK's Span, or None: the
SDK's `start_span` (see interceptors/_spans.py)."""


FUSE_CLIENT_CHAIN: bool = True
"""Not a private read either: a mesh channel runs the standard client chain of its
unary-unary calls as one coroutine (`mesh/client/fused.py`) when True, as the six separate
interceptors when the fast paths are forced off. Read when a channel is made."""

FUSE_SERVER_CHAIN: bool = True
"""Not a private read, but switched with them: `mesh.server.server_interceptors` builds
the fused server chain (`interceptors/fused.py`) when True, the six separate interceptors
(the reference it is compared with) when the fast paths are forced off."""


LEAN_OTLP: bool = True
"""Whether `otlp_span_exporter` may answer with the lean exporter (the fast paths' switch;
its own capability check runs at its first call)."""


MEMO_CALLER: bool = True
"""Not a private read either (`context.peer()`, `peer_identity_key()` and `peer_identities()`
are public), switched with them: the caller's SPIFFE id is read from `auth_context()` once
per connection and the caller policy's verdict kept per (method, identity) when True
(`interceptors/policy.py`: `peer_identity`, `CallerPolicyServerInterceptor`); read and
decided on every call when the fast paths are forced off. `peer_identity` looks it up per
call, the policy interceptor when it wraps a method."""


def use_fastpath(enabled: bool) -> None:
    """Select the private reads (where capable) or force the public APIs everywhere."""
    global status_now, CALL_TYPES, MULTICALLABLE_OPTIONS, counter_inc, histogram_raw
    global span_drop_bounds, span_parts, FUSE_SERVER_CHAIN, FUSE_CLIENT_CHAIN, MEMO_CALLER
    global LEAN_OTLP
    LEAN_OTLP = enabled
    FUSE_SERVER_CHAIN = enabled
    FUSE_CLIENT_CHAIN = enabled
    MEMO_CALLER = enabled
    use = {name: enabled and capable for name, capable in CAPABLE.items()}
    status_now = _private_status_now if use["grpc_status"] else _public_status_now
    CALL_TYPES = _grpc_call_types() if use["grpc_call_types"] else frozenset()
    MULTICALLABLE_OPTIONS = {"_registered_method": True} if use["grpc_registered_method"] else {}
    counter_inc = _private_counter_inc if use["prometheus"] else _public_counter_inc
    histogram_raw = _private_histogram_raw if use["prometheus"] else _public_histogram_raw
    span_drop_bounds = (
        _private_span_drop_bounds if use["otel_sampler"] else _public_span_drop_bounds
    )
    lean = use["otel_sampler"] and use["otel_lean_span"]
    span_parts = _private_span_parts if lean else _public_span_parts


def selected() -> dict[str, bool]:
    """Which private reads are in use now (for /metrics-free diagnostics and tests)."""
    return {
        "grpc_status": status_now is _private_status_now,
        "grpc_call_types": bool(CALL_TYPES),
        "grpc_registered_method": bool(MULTICALLABLE_OPTIONS),
        "prometheus": counter_inc is _private_counter_inc,
        "otel_sampler": span_drop_bounds is _private_span_drop_bounds,
        "otel_lean_span": span_parts is _private_span_parts,
        "otlp_encoder": LEAN_OTLP and _checked_lean_otlp_exporter() is not None,
    }


def requested() -> bool:
    """Whether the environment asks for the fast paths now (`MESH_FASTPATH`, on unless
    0 / false / no / off): read at this import, and by `mesh.db_greenlets.install`."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in {"0", "false", "no", "off"}


use_fastpath(requested())
