"""Lean OpenTelemetry tracing for gRPC calls, client and server, all four arities.

Spans follow the RPC semantic conventions: name `pkg.Service/Method`, kind
CLIENT or SERVER, `rpc.system=grpc`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`; a client span is an error for any non-OK status, a
server span only for server faults (UNKNOWN, DEADLINE_EXCEEDED,
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS). Context travels as W3C
`traceparent`/`tracestate` metadata.

Why not opentelemetry-instrumentation-grpc: it costs ~22% of throughput
unsampled and ~40% sampled. Here, per call: the sampling decision first,
and for a span the sampler drops (most calls) no `start_span` at all when the
tracer is the SDK's with one of its own samplers (`interceptors._spans`):
client side only the `traceparent` header (new ids, the parent's trace id
when there is one, flag 00, the parent's `tracestate`), server side a
non-recording span made current, exactly what the SDK's would be. Otherwise
`start_span` with the attributes (the sampler sees them; no setting after); a
span the SDK's sampler would record is a `LeanSpan` where the fence allows (the
same exported span as the SDK's, made for a quarter of the CPU).
Status and `end()` happen only for recording spans; header formatting and
parsing are done directly rather than through the propagator API; per-method
names and attributes are computed once.

Health checks (interceptors/plumbing.py) that carry no trace of their caller's
start none: the probes arrive every few seconds per instance whether anyone uses
the service or not, and would be most of an idle process's spans. Sent with a
`traceparent` (a person debugging with grpcurl), one is traced like any call.

The tracer comes from the TracerProvider given (never the global one), e.g.
`make_tracer_provider(service, os.environ)`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.version import __version__ as sdk_version
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.status import Status, StatusCode

from interceptors import _fastpath
from interceptors._call import split_method, when_done
from interceptors._client import ClientInterceptor, Continuation, returns_call
from interceptors._handler import ObservingServerInterceptor
from interceptors._spans import SpanShortcut
from interceptors.plumbing import is_health_check

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACE_KEYS = (TRACEPARENT, TRACESTATE)
# Incoming flags keep only the sampled bit: index 0 unsampled, 1 sampled.
_FLAGS = (TraceFlags(TraceFlags.DEFAULT), TraceFlags(TraceFlags.SAMPLED))
_TRACER_NAME = "shop_mesh.interceptors"
_EMPTY = Context()
_HEX_DASH = "0123456789abcdef-"
_ODD_HEX = frozenset("13579bdf")
_SAMPLED_TRACEPARENT = "00-%032x-%016x-01"
_UNSAMPLED_TRACEPARENT = "00-%032x-%016x-00"
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


@dataclass(frozen=True, slots=True)
class _Method:
    span_name: str
    attributes: Mapping[str, str]
    probe: bool = False  # a health check: no root span of its own


def _method(full_method: str) -> _Method:
    service, method = split_method(full_method)
    return _Method(
        f"{service}/{method}",
        {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        is_health_check(full_method),
    )


def format_traceparent(span_context: SpanContext) -> str:
    """The W3C `traceparent` value for a span context."""
    # %-formatting: the fastest way to format it (measured against an f-string's specs).
    return (
        _SAMPLED_TRACEPARENT if span_context.trace_flags.sampled else _UNSAMPLED_TRACEPARENT
    ) % (
        span_context.trace_id,
        span_context.span_id,
    )


def _traceparent_fields(traceparent: str) -> tuple[int, int, bool] | None:
    """(trace id, span id, sampled) of a W3C `traceparent`, None if invalid.

    The canonical version-00 form (55 characters, every call from a W3C tracer) is
    checked by slicing (the three dashes in place, nothing but hex digits and them),
    several times cheaper than the regular expression other forms go through.
    """
    tp = traceparent
    if (
        len(tp) == 55
        and tp[2] == "-"
        and tp[35] == "-"
        and tp[52] == "-"
        and tp[0] == "0"
        and tp[1] == "0"
        and tp.count("-") == 3
        and not tp.strip(_HEX_DASH)
    ):
        trace_id, span_id = int(tp[3:35], 16), int(tp[36:52], 16)
        sampled = tp[54] in _ODD_HEX  # flags' low bit: the sampled flag
    else:
        match = _TRACEPARENT_RE.fullmatch(tp.strip())
        if match is None:
            return None
        version, trace_hex, span_hex, flags, rest = match.groups()
        # Version ff is forbidden; version 00 has exactly four fields.
        if version == "ff" or (version == "00" and rest):
            return None
        trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
        sampled = bool(int(flags, 16) & TraceFlags.SAMPLED)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, sampled


def parse_traceparent(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """The remote span context of a W3C `traceparent` (+ `tracestate`), None if invalid."""
    fields = _traceparent_fields(traceparent)
    if fields is None:
        return None
    trace_id, span_id, sampled = fields
    state = TraceState.from_header([tracestate]) if tracestate else None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=_FLAGS[sampled], trace_state=state
    )


def end_client_span(span: Span, code: grpc.StatusCode, details: str) -> None:
    """Status code attribute, error status for any non-OK code, then end."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK:
        description = f"{code.name}: {details}" if details else code.name
        span.set_status(Status(StatusCode.ERROR, description))
    span.end()


def _traced_details(
    details: grpc.aio.ClientCallDetails, traceparent: str, tracestate: TraceState | None
) -> grpc.aio.ClientCallDetails:
    """`details` with new Metadata carrying these trace headers instead of any the caller set."""
    caller = details.metadata
    if caller:
        md = grpc.aio.Metadata(*(kv for kv in caller if kv[0] not in _TRACE_KEYS))
        md.add(TRACEPARENT, traceparent)
    else:
        md = grpc.aio.Metadata((TRACEPARENT, traceparent))
    if tracestate:
        md.add(TRACESTATE, tracestate.to_header())
    # Positional: the cheapest way to build grpc.aio's ClientCallDetails (a namedtuple).
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, md, details.credentials, details.wait_for_ready
    )


class TracingClientInterceptor(ClientInterceptor):
    def __init__(self, tracer_provider: trace.TracerProvider) -> None:
        self._tracer = tracer_provider.get_tracer(_TRACER_NAME)
        self._spans = SpanShortcut(self._tracer)
        self._methods: dict[Any, _Method] = {}

    def begin(self, details: grpc.aio.ClientCallDetails) -> tuple[grpc.aio.ClientCallDetails, Any]:
        """The details to send (with the trace headers) and the recording span to end when
        the call finishes, or None when nothing is recorded (only the ids propagate).

        Shared by `intercept` and the mesh's fused client chain (mesh/client/fused.py)."""
        method = self._methods.get(details.method)
        if method is None:
            raw: str | bytes = details.method
            name = raw.decode() if isinstance(raw, bytes) else raw
            method = self._methods[details.method] = _method(name)
        parent = trace.get_current_span().get_span_context()
        dropped = self._spans.drop(parent)
        if dropped is not None:
            # Not sampled: no span object at all, only the ids propagated (flag 00).
            details = _traced_details(
                details,
                "00-%032x-%016x-00" % dropped,  # noqa: UP031 - the fastest way to format it
                parent.trace_state if parent.is_valid else None,
            )
            return details, None
        span = self._spans.start_span(
            method.span_name, parent, SpanKind.CLIENT, method.attributes, remote=False
        )
        span_context = span.get_span_context()
        if span_context.is_valid:
            details = _traced_details(
                details, format_traceparent(span_context), span_context.trace_state
            )
        if not span.is_recording():
            return details, None
        return details, span

    @returns_call
    async def intercept(
        self,
        continuation: Continuation,
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details, span = self.begin(client_call_details)
        if span is None:
            return await continuation(details, request)
        try:
            call = await continuation(details, request)
        except grpc.aio.AioRpcError as err:
            end_client_span(span, err.code(), err.details() or "")
            raise
        except BaseException as exc:
            span.record_exception(exc)
            end_client_span(span, grpc.StatusCode.CANCELLED, "")
            raise
        when_done(call, lambda code, text: end_client_span(span, code, text))
        return call

    intercept_unary_unary = intercept_unary_stream = intercept
    # grpc passes arguments positionally: `request` stands for `request_iterator` too.
    intercept_stream_unary = intercept_stream_stream = intercept  # type: ignore[assignment]


def _trace_headers(metadata: Any) -> tuple[str | None, str | None]:
    """The caller's `traceparent` and `tracestate` values (None where absent)."""
    traceparent = tracestate = None
    for key, value in metadata or ():
        if key == TRACEPARENT:
            traceparent = value
        elif key == TRACESTATE:
            tracestate = value
    return traceparent, tracestate


# (span, context token, the task that attached it): a tuple, the cheapest per-call record.
_ServerCall = tuple[Span, object, "asyncio.Task[Any] | None"]


class TracingServerInterceptor(ObservingServerInterceptor[_Method, _ServerCall]):
    """A SERVER span per call, child of the caller's `traceparent`, current while handling."""

    def __init__(self, tracer_provider: trace.TracerProvider) -> None:
        super().__init__()
        self._tracer = tracer_provider.get_tracer(_TRACER_NAME)
        self._spans = SpanShortcut(self._tracer)

    def prepare(self, method: str) -> _Method:
        return _method(method)

    def begin(self, prepared: _Method, context: grpc.aio.ServicerContext[Any, Any]) -> _ServerCall:
        traceparent, tracestate = _trace_headers(context.invocation_metadata())
        fields = None if traceparent is None else _traceparent_fields(traceparent)
        span: Span
        if fields is not None:
            trace_id, span_id, sampled = fields
            state = TraceState.from_header([tracestate]) if tracestate else None
            dropped_id = self._spans.drop_remote(trace_id, sampled)
            if dropped_id is not None:
                # Not sampled: the SDK's non-recording span, made without the SDK and
                # without the caller's span context (a remote parent's flags keep only
                # the sampled bit: no random-id flag to inherit).
                span = NonRecordingSpan(
                    SpanContext(
                        trace_id, dropped_id, is_remote=False, trace_flags=_FLAGS[0],
                        trace_state=state,
                    )
                )  # fmt: skip
            else:
                remote = SpanContext(
                    trace_id, span_id, is_remote=True, trace_flags=_FLAGS[sampled],
                    trace_state=state,
                )  # fmt: skip
                span = self._spans.start_span(
                    prepared.span_name, remote, SpanKind.SERVER, prepared.attributes, remote=True
                )
        elif prepared.probe:
            span = INVALID_SPAN  # a probe with no caller trace: untraced (module docstring)
        else:
            # No (valid) caller trace: a root.
            span = self._spans.span(
                prepared.span_name,
                INVALID_SPAN_CONTEXT,
                SpanKind.SERVER,
                prepared.attributes,
                remote=True,
            )
        # The parent context held only the caller's span, which this one replaces.
        token = otel_context.attach(trace.set_span_in_context(span, _EMPTY))
        return span, token, asyncio.current_task()

    def end(self, state: _ServerCall, code: grpc.StatusCode, error: BaseException | None) -> None:
        # A streaming behaviour may be finalised by the loop in another task,
        # where the token means nothing (and detaching would log an error).
        span, token, task = state
        if asyncio.current_task() is task:
            otel_context.detach(token)  # type: ignore[arg-type]
        if not span.is_recording():
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_FAULTS:
            span.set_status(Status(StatusCode.ERROR, code.name))
        if isinstance(error, Exception) and not isinstance(error, grpc.aio.AbortError):
            span.record_exception(error)
        span.end()


# --- TracerProvider from the standard OTEL_* variables ------------------------

_SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)


def _pairs(raw: str) -> dict[str, str]:
    """`k1=v1,k2=v2` (values percent-encoded, as in OTEL_RESOURCE_ATTRIBUTES)."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


def _sampler(env: Mapping[str, str]) -> sampling.Sampler:
    name = (env.get("OTEL_TRACES_SAMPLER") or "parentbased_always_on").strip().lower()
    if name not in _SAMPLERS:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER={name!r} is not supported: use one of {', '.join(_SAMPLERS)}"
        )
    ratio = 1.0
    if name.endswith("traceidratio") and env.get("OTEL_TRACES_SAMPLER_ARG"):
        raw = env["OTEL_TRACES_SAMPLER_ARG"]
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} must be a number from 0 to 1")
    root: sampling.Sampler
    base = name.removeprefix("parentbased_")
    if base == "always_on":
        root = sampling.ALWAYS_ON
    elif base == "always_off":
        root = sampling.ALWAYS_OFF
    else:
        root = sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBased(root) if name.startswith("parentbased_") else root


def _otlp_exporter(env: Mapping[str, str]) -> SpanExporter:
    # The SDK's OTLP/gRPC exporter, its batches encoded by interceptors.otlp_spans where
    # `_fastpath` selects it (imported there at the first call: the exporter pulls in its
    # own grpc channel machinery).
    exporter_class = _fastpath.otlp_span_exporter()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    insecure_raw = env.get("OTEL_EXPORTER_OTLP_TRACES_INSECURE") or env.get(
        "OTEL_EXPORTER_OTLP_INSECURE"
    )
    headers_raw = env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get(
        "OTEL_EXPORTER_OTLP_HEADERS"
    )
    exporter: SpanExporter = exporter_class(
        endpoint=endpoint or None,
        insecure=None if insecure_raw is None else insecure_raw.strip().lower() == "true",
        headers=_pairs(headers_raw) if headers_raw else None,
    )
    return exporter


def _int_var(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive whole number")
    return value


def make_tracer_provider(service_name: str, env: Mapping[str, str]) -> TracerProvider:
    """A TracerProvider configured from the standard variables in `env`.

    - OTEL_SERVICE_NAME (overrides `service_name`), OTEL_RESOURCE_ATTRIBUTES;
    - OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG (default parentbased_always_on);
    - OTEL_TRACES_EXPORTER: comma-separated `otlp`, `console`, `none` (default
      none: nothing leaves the process unless asked), each behind a
      BatchSpanProcessor (OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE,
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_EXPORT_TIMEOUT);
    - OTLP (gRPC): OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _INSECURE, _HEADERS;
    - OTEL_SDK_DISABLED=true: nothing sampled, nothing exported.

    Read from `env` only, so a test or a second runtime in one process can
    configure its own. Malformed values raise ValueError naming the variable.
    """
    attributes: dict[str, str] = {
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": sdk_version,
    }
    attributes.update(_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    attributes["service.name"] = env.get("OTEL_SERVICE_NAME") or service_name
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    provider = TracerProvider(
        resource=Resource(attributes), sampler=sampling.ALWAYS_OFF if disabled else _sampler(env)
    )
    if disabled:
        return provider
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "none").split(",")]
    batch = {
        "schedule_delay_millis": _int_var(env, "OTEL_BSP_SCHEDULE_DELAY"),
        "max_queue_size": _int_var(env, "OTEL_BSP_MAX_QUEUE_SIZE"),
        "max_export_batch_size": _int_var(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        "export_timeout_millis": _int_var(env, "OTEL_BSP_EXPORT_TIMEOUT"),
    }
    for name in names:
        exporter: SpanExporter
        if name in ("none", ""):
            continue
        if name == "otlp":
            exporter = _otlp_exporter(env)
        elif name == "console":
            exporter = ConsoleSpanExporter(service_name=attributes["service.name"])
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported: use otlp, console or none"
            )
        provider.add_span_processor(BatchSpanProcessor(exporter, **batch))  # type: ignore[arg-type]
    return provider
