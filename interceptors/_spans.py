"""Starting a span the OpenTelemetry SDK would drop, without the SDK.

`Tracer.start_span` costs ~3 µs even when the sampler drops the span (sampler
calls, a SamplingResult, SpanContext validation, a NonRecordingSpan), and
most calls are not sampled. For the SDK's own samplers the decision is plain
arithmetic on the trace id and the parent's flags, so `SpanShortcut.drop`
makes it here, and gives the ids of the dropped span: the caller propagates
them (flag 00) exactly as it would the SDK's non-recording span. When the
span might be recorded, the caller calls `SpanShortcut.start_span`, which is
the SDK's, a root reusing the trace id drawn for the decision (so a ratio
sampler's rate stays exact).

Only what is certainly equivalent takes the shortcut: the SDK's `Tracer`,
samplers among StaticSampler (ALWAYS_ON/OFF), TraceIdRatioBased and
ParentBased over those, no SDK self-metrics (a meter provider counting
started spans), tracer enabled. Anything else: `drop` returns None and the
SDK decides, as before. Reading the sampler's and tracer's internals is the
fence's job (`interceptors/_fastpath.py`): with the fast path off (or an SDK
whose internals moved) no tracer takes the shortcut.
"""

from __future__ import annotations

import threading
from random import getrandbits
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.util.types import Attributes

from interceptors import _fastpath

# TraceIdRatioBased decides on the low 64 bits: sampled iff (id & LIMIT) < bound.
_LIMIT = 0xFFFFFFFFFFFFFFFF
_NEVER_DROPS = _fastpath.NEVER_DROPS
_ALWAYS_DROPS = _fastpath.ALWAYS_DROPS
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM_ID = TraceFlags(TraceFlags.RANDOM_TRACE_ID)


class _PresetTraceIds(IdGenerator):
    """The tracer's id generator, except that the next trace id may be given in advance."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._next = threading.local()

    def preset(self, trace_id: int) -> None:
        self._next.trace_id = trace_id

    def clear(self) -> None:
        self._next.trace_id = None

    def generate_trace_id(self) -> int:
        preset: int | None = getattr(self._next, "trace_id", None)
        if preset is not None:
            self._next.trace_id = None
            return preset
        return self.inner.generate_trace_id()

    def generate_span_id(self) -> int:
        return self.inner.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return self.inner.is_trace_id_random()


class SpanShortcut:
    """`drop()` first; `start_span()` only when it returned None. One per tracer."""

    __slots__ = ("_bounds", "_ids", "_preset", "_random_ids", "_tracer")

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer: Any = tracer
        self._bounds: tuple[int, int, int, int, int] | None = None
        self._preset: _PresetTraceIds | None = None
        self._random_ids = False
        # The sampler's decision as arithmetic needs the SDK's internals: the
        # fence says whether it may read them (else None: the SDK decides).
        self._bounds = _fastpath.span_drop_bounds(tracer)
        if self._bounds is None:
            return
        sdk: Any = self._tracer  # an SDK Tracer: the fence answered for it
        self._ids: IdGenerator = sdk.id_generator
        # The SDK's default draws from `random` itself: so do we, minus two calls.
        self._random_ids = type(self._ids) is RandomIdGenerator
        if _ALWAYS_DROPS < self._bounds[0] < _NEVER_DROPS:
            # A root's decision depends on its trace id (ratio sampler): when it is
            # sampled, the SDK must use the id decided on. Only then is the
            # generator wrapped (this Tracer object is ours: get_tracer makes one per call).
            self._preset = sdk.id_generator = _PresetTraceIds(self._ids)

    @property
    def active(self) -> bool:
        """Whether `drop` can ever answer (the tracer and sampler are supported)."""
        return self._bounds is not None

    def drop(self, parent: SpanContext) -> tuple[int, int] | None:
        """(trace_id, span_id) of the span the SDK would start as a child of `parent`
        (an invalid one: a root) and drop, or None: call `start_span` now.

        A dropped span's trace state is the parent's (none for a root), its
        flags unsampled: as the SDK's non-recording span.
        """
        bounds = self._bounds
        if bounds is None or not _fastpath.tracer_enabled(self._tracer):
            return None
        if parent.is_valid:
            trace_id: int = parent.trace_id
            if parent.is_remote:
                bound = bounds[1] if parent.trace_flags.sampled else bounds[2]
            else:
                bound = bounds[3] if parent.trace_flags.sampled else bounds[4]
            if trace_id & _LIMIT < bound:
                return None
        else:
            bound = bounds[0]
            if bound == _NEVER_DROPS:
                return None  # sampled whatever the id: the SDK draws it
            trace_id = getrandbits(128) if self._random_ids else self._ids.generate_trace_id()
            while not trace_id:  # as RandomIdGenerator: 0 is the invalid id
                trace_id = self._ids.generate_trace_id()
            if trace_id & _LIMIT < bound:
                # The SDK will draw the root's trace id: make it this one.
                assert self._preset is not None
                self._preset.preset(trace_id)
                return None
        span_id = getrandbits(64) if self._random_ids else self._ids.generate_span_id()
        while not span_id:
            span_id = self._ids.generate_span_id()
        return trace_id, span_id

    def dropped_context(self, parent: SpanContext, trace_id: int, span_id: int) -> SpanContext:
        """The span context of the span `drop` gave ids for, as the SDK would make it."""
        if parent.is_valid:
            random_id = parent.trace_flags.random_trace_id
            state = parent.trace_state
        else:
            random_id = self._ids.is_trace_id_random()
            state = None
        return SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=_RANDOM_ID if random_id else _UNSAMPLED,
            trace_state=state,
        )

    def start_span(
        self,
        name: str,
        context: Context | None,
        kind: SpanKind,
        attributes: Attributes,
    ) -> Span:
        """The SDK's start_span (a root gets the trace id `drop` drew, if it drew one)."""
        try:
            span: Span = self._tracer.start_span(
                name, context=context, kind=kind, attributes=attributes
            )
        finally:
            if self._preset is not None:
                self._preset.clear()
        return span
