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

A span the sampler keeps (every call under the default `parentbased_always_on`)
is a `LeanSpan` when, in addition, every span processor ignores a span's start
(the SDK's batch and simple processors): it ends by handing the processors the
same `ReadableSpan` the SDK's Span would, for about a quarter of the CPU (the
SDK's Span sets up limits, a lock and cleaned attributes per span). Otherwise,
the SDK's `start_span`.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Mapping, Sequence
from random import getrandbits
from time import time_ns
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    TraceFlags,
    set_span_in_context,
)
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AnyValue, Attributes

from interceptors import _fastpath

# TraceIdRatioBased decides on the low 64 bits: sampled iff (id & LIMIT) < bound.
_LIMIT = 0xFFFFFFFFFFFFFFFF
_NEVER_DROPS = _fastpath.NEVER_DROPS
_ALWAYS_DROPS = _fastpath.ALWAYS_DROPS
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
_RANDOM_ID = TraceFlags(TraceFlags.RANDOM_TRACE_ID)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM_ID = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_UNSET = Status(StatusCode.UNSET)
_EMPTY = Context()
# Values BoundedAttributes keeps as they are (no limit on their length set): stored directly.
_PLAIN = frozenset({str, bool, int, float})

log = logging.getLogger(__name__)


class _PresetTraceIds(IdGenerator):
    """The tracer's id generator, except that the next trace id may be given in advance."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._next = threading.local()

    def preset(self, trace_id: int) -> None:
        self._next.trace_id = trace_id

    def clear(self) -> None:
        self._next.trace_id = None

    def take(self) -> int | None:
        """The preset trace id, cleared (None: none was set)."""
        preset: int | None = getattr(self._next, "trace_id", None)
        self._next.trace_id = None
        return preset

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

    __slots__ = ("_bounds", "_ids", "_parts", "_plain", "_preset", "_random_ids", "_tracer")

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer: Any = tracer
        self._bounds: tuple[int, int, int, int, int] | None = None
        self._preset: _PresetTraceIds | None = None
        self._random_ids = False
        self._parts: _fastpath.SpanParts | None = None
        self._plain: tuple[Any, ...] | None = None
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
        # A sampled span without the SDK's Span object, where the fence allows it.
        self._parts = _fastpath.span_parts(tracer)

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

    def drop_remote(self, trace_id: int, sampled: bool) -> int | None:
        """`drop` for a remote parent known by its trace id and sampled flag (no SpanContext
        made for it): the dropped span's id, or None: make the parent, call `drop` again
        (it answers alike) then `start_span`."""
        bounds = self._bounds
        if bounds is None or not _fastpath.tracer_enabled(self._tracer):
            return None
        if trace_id & _LIMIT < (bounds[1] if sampled else bounds[2]):
            return None
        span_id = getrandbits(64) if self._random_ids else self._ids.generate_span_id()
        while not span_id:
            span_id = self._ids.generate_span_id()
        return span_id

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
        parent: SpanContext,
        kind: SpanKind,
        attributes: Mapping[str, AnyValue],
        *,
        remote: bool,
    ) -> Span:
        """The span the SDK's start_span would give (call it only when `drop` returned None).

        `parent`: the new span's parent (invalid: a root); `remote`: the caller's (server
        side), else the current span's. A root gets the trace id `drop` drew, if it drew
        one. When the tracer is one `drop` answers for, the sampler therefore records
        this span, and every span processor ignores a span's start (the SDK's batch and
        simple processors), the span is a `LeanSpan`, else the SDK's.
        """
        parts = self._parts
        # Bounds known and the tracer enabled: `drop` said the sampler keeps this span.
        if (
            parts is not None
            and self._bounds is not None
            and _fastpath.tracer_enabled(self._tracer)
        ):
            processors = _fastpath.span_processors(self._tracer)
            if processors is self._plain or self._check_plain(processors):
                return self._lean(parts, name, parent, kind, attributes)
        context: Context | None = None
        if remote:
            context = (
                set_span_in_context(NonRecordingSpan(parent), _EMPTY) if parent.is_valid else _EMPTY
            )
        try:
            span: Span = self._tracer.start_span(
                name, context=context, kind=kind, attributes=attributes
            )
        finally:
            if self._preset is not None:
                self._preset.clear()
        return span

    def span(
        self,
        name: str,
        parent: SpanContext,
        kind: SpanKind,
        attributes: Mapping[str, AnyValue],
        *,
        remote: bool,
    ) -> Span:
        """`drop`, then either the SDK's non-recording span for the dropped ids or
        `start_span`: for a caller that wants a span object whether or not it is sampled
        (a root server span, a message consumer's span)."""
        dropped = self.drop(parent)
        if dropped is not None:
            return NonRecordingSpan(self.dropped_context(parent, *dropped))
        return self.start_span(name, parent, kind, attributes, remote=remote)

    def _check_plain(self, processors: tuple[Any, ...]) -> bool:
        if _fastpath.plain_processors(processors):
            self._plain = processors
            return True
        return False

    def _lean(
        self,
        parts: _fastpath.SpanParts,
        name: str,
        parent: SpanContext,
        kind: SpanKind,
        attributes: Mapping[str, AnyValue],
    ) -> LeanSpan:
        # What the SDK's Tracer.start_span does for a span its sampler records and samples.
        ids = self._ids
        if parent.is_valid:
            trace_id: int = parent.trace_id
            random_id: bool = parent.trace_flags.random_trace_id
            state = parent.trace_state
            parent_context: SpanContext | None = parent
        else:
            preset = self._preset.take() if self._preset is not None else None
            if preset is not None:
                trace_id = preset
            else:
                trace_id = getrandbits(128) if self._random_ids else ids.generate_trace_id()
                while not trace_id:
                    trace_id = ids.generate_trace_id()
            random_id = ids.is_trace_id_random()
            state = None
            parent_context = None
        span_id = getrandbits(64) if self._random_ids else ids.generate_span_id()
        while not span_id:
            span_id = ids.generate_span_id()
        context = SpanContext(
            trace_id,
            span_id,
            is_remote=False,
            trace_flags=_SAMPLED_RANDOM_ID if random_id else _SAMPLED,
            trace_state=state,
        )
        return LeanSpan(parts, name, context, parent_context, kind, attributes)


class LeanSpan(Span):
    """A recording span that ends as the SDK's `Span` does — the same `ReadableSpan` (name,
    context, parent, kind, attributes, events, links, status, times, resource, scope)
    handed to the tracer's span processor's `on_end` — without the SDK span's start-up:
    no span limits object per span, no attribute cleaning for the plain values the mesh
    sets (str, bool, int, float: kept as they are, copied on the first write), no lock.

    Limits: only made when every span processor ignores `on_start` and `_on_ending`
    (`SpanShortcut.start_span`); not thread-safe (a call's span is used on its event
    loop); the SDK's attribute limits apply as the SDK's (`BoundedAttributes` takes
    over for any other value, or when a limit could bite).
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_links",
        "_mode",
        "_name",
        "_parent",
        "_parts",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        parts: _fastpath.SpanParts,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: Mapping[str, AnyValue],
    ) -> None:
        self._parts = parts
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._events: BoundedList[Event] | None = None
        self._links: BoundedList[Link] | None = None
        self._status = _UNSET
        self._end_time: int | None = None
        limits = parts.limits
        cap = limits.max_span_attributes
        # 0: `attributes` shared (the caller's, read only); 1: our dict; 2: BoundedAttributes.
        self._attributes: Any = attributes
        self._mode = 0
        if limits.max_span_attribute_length is not None or (
            cap is not None and len(attributes) >= cap
        ):
            self._bounded()
        self._start_time = time_ns()

    def _bounded(self) -> BoundedAttributes:
        limits = self._parts.limits
        bounded = BoundedAttributes(
            limits.max_span_attributes,
            self._attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )
        self._attributes, self._mode = bounded, 2
        return bounded

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end_time is None

    def _ended(self, what: str) -> bool:
        if self._end_time is None:
            return False
        log.warning("Tried calling %s on an ended span.", what)
        return True

    def set_attribute(self, key: str, value: AnyValue) -> None:
        if self._end_time is not None:
            log.warning("Setting attribute on ended span.")
            return
        mode = self._mode
        if mode != 2 and type(key) is str and key and type(value) in _PLAIN:
            cap = self._parts.limits.max_span_attributes
            attributes = self._attributes
            if cap is None or len(attributes) < cap or key in attributes:
                if mode == 0:
                    attributes = self._attributes = dict(attributes)
                    self._mode = 1
                attributes[key] = value
                return
        bounded = self._bounded() if mode != 2 else self._attributes
        bounded[key] = value

    def set_attributes(self, attributes: Mapping[str, AnyValue]) -> None:
        if self._end_time is not None:
            log.warning("Setting attribute on ended span.")
            return
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        limits = self._parts.limits
        bounded = _bounded(limits.max_event_attributes, limits, attributes)
        if self._ended("add_event"):
            return
        if self._events is None:
            self._events = BoundedList(limits.max_events)
        self._events.append(Event(name=name, attributes=bounded, timestamp=timestamp))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if not (context and (context.is_valid or (attributes or context.trace_state))):
            return
        limits = self._parts.limits
        bounded = _bounded(limits.max_link_attributes, limits, attributes)
        if self._ended("add_link"):
            return
        if self._links is None:
            self._links = BoundedList(limits.max_links)
        self._links.append(Link(context=context, attributes=bounded))

    def update_name(self, name: str) -> None:
        if not self._ended("update_name"):
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK's Span.set_status: OK is final, UNSET ignored.
        if self._ended("set_status"):
            return
        current = self._status.status_code
        if isinstance(status, Status):
            if current is StatusCode.OK or status.status_code is StatusCode.UNSET:
                return
            if description is not None:
                log.warning(
                    "Description %s ignored. Use either `Status` or `(StatusCode, Description)`",
                    description,
                )
            self._status = status
        elif isinstance(status, StatusCode):
            if current is StatusCode.OK or status is StatusCode.UNSET:
                return
            self._status = Status(status, description)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # As the SDK's Span.record_exception.
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, AnyValue] = {
            "exception.type": f"{module}.{qualname}"
            if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event(name="exception", attributes=recorded, timestamp=timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            log.warning("Calling end() on an ended span.")
            return
        self._end_time = end_time if end_time is not None else time_ns()
        parts = self._parts
        empty: Sequence[Any] = ()
        # Positional (the constructor's order): a third cheaper than keywords.
        parts.on_end(
            ReadableSpan(
                self._name,
                self._context,
                self._parent,
                parts.resource,
                self._attributes,
                self._events if self._events is not None else empty,
                self._links if self._links is not None else empty,
                self._kind,
                parts.instrumentation_info,
                self._status,
                self._start_time,
                self._end_time,
                parts.instrumentation_scope,
            )
        )


def _bounded(max_count: int | None, limits: Any, attributes: Attributes) -> BoundedAttributes:
    """An event's or a link's attributes under the span limits, as the SDK bounds them."""
    return BoundedAttributes(
        max_count, attributes, max_value_len=limits.max_attribute_length, immutable=True
    )
