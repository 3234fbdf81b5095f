"""Finished spans as an OTLP `ExportTraceServiceRequest`, encoded straight to protobuf bytes.

Why hand-written: the OTLP exporter's own encoder
(`opentelemetry.exporter.otlp.proto.common.trace_encoder.encode_spans`) builds one
protobuf object per span, per attribute and per attribute value from Python keyword
arguments, and groups spans by their `Resource`, whose `__hash__` JSON-encodes the
resource's attributes for every span. It runs on each service's span export thread,
holding the GIL the event loop needs. Measured on the 2-core box (6 Dec 2026): 29.7 µs
of CPU per typical mesh server span (ten attributes, one of them new per span) against
6.9 µs here, parsing and re-serialising included; a traced GetProduct read through the
edge spent ~6 % of inventory's GIL time exporting its span (py-spy `--gil`), and an
order's seven exported spans ~1.5 % of the shop's CPU. No library encodes OTLP faster:
the alternatives are the same encoder or the collector's Go one.

What: `encode_export_request(spans)` gives the bytes of the request OTel's encoder
would build for the same spans: resources and scopes grouped as it groups them (equal
`Resource`s and scopes share one entry, first seen first), every field it sets (ids,
trace state, parent, name, kind, times, attributes, events, links, status, dropped
counts, the span flags' is-remote bits), values typed as it types them (bool before
int; sequences as arrays, mappings as key-value lists, None as an empty value), and an
attribute it cannot encode (an int beyond int64, a string that is not valid Unicode)
skipped with a logged error, as it does. Equality is checked, not assumed: parsed back,
the bytes must equal `encode_spans`' message (tests/unit/interceptors/test_otlp_spans.py
on random spans of every shape; `interceptors._fastpath` checks a probe batch when the
process makes its first OTLP exporter and keeps the SDK's encoder if they differ, as
after an OTel upgrade that changed what is sent).

How it stays cheap: plain loops over the spans' public `ReadableSpan` properties, no
message objects; an attribute of a plain type (str, bool, int) is encoded once
per (key, type, value) and its bytes reused (`MEMO_ENTRIES` kept, all dropped when full:
per-span values such as ids churn it, the method names and codes of a service's spans
stay). Grouping compares a span's resource and scope by identity first (every span of
a tracer shares them), so `Resource.__hash__` runs once per distinct object per batch.

Limits: only traces (OTLP metrics and logs keep the SDK's encoders); trace state is
written as OTel writes it (`key=value` pairs joined by commas, no validation).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

MEMO_ENTRIES: Final = 4096
"""Encoded plain attributes kept for reuse; past it the memo starts again empty."""

_KIND: Final = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_UINT64: Final = (1 << 64) - 1
# SpanFlags: the context-has-is-remote bit, and with it the is-remote bit.
_LOCAL: Final = struct.pack("<I", 0x100)
_REMOTE: Final = struct.pack("<I", 0x300)
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
# Attribute types whose encodings are kept for reuse. Not float: 0.0 == -0.0 (one key),
# but they encode differently.
_KEPT: Final = frozenset({str, bool, int})

# One byte each: (field number << 3) | wire type.
_T_RESOURCE_SPANS = 0x0A  # ExportTraceServiceRequest.resource_spans
_T_RESOURCE, _T_SCOPE_SPANS, _T_SCHEMA_URL = 0x0A, 0x12, 0x1A  # ResourceSpans; ScopeSpans alike
_T_SPAN = 0x12  # ScopeSpans.spans
_T_ATTRIBUTE = 0x0A  # Resource.attributes, KeyValueList.values, ArrayValue.values
_T_SCOPE_NAME, _T_SCOPE_VERSION, _T_SCOPE_ATTRIBUTE = 0x0A, 0x12, 0x1A


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (one-byte tag)."""
    n = len(payload)
    if n < 0x80:
        return bytes((tag, n)) + payload
    return bytes((tag,)) + _varint(n) + payload


def _value(value: Any) -> bytes:
    """The fields of an `AnyValue` (empty for None), typed as OTel's encoder types them."""
    kind = type(value)
    if kind is str:
        return _field(0x0A, value.encode())
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{value} does not fit an int64")
        return b"\x18" + _varint(value & _UINT64)
    if kind is float:
        return b"\x21" + _double(value)
    if value is None:
        return b""
    # Subclasses (bool has none), in OTel's order.
    if isinstance(value, str):
        return _value(str(value))
    if isinstance(value, int):
        return _value(int(value))
    if isinstance(value, float):
        return _value(float(value))
    if isinstance(value, bytes):
        return _field(0x3A, bytes(value))
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join([_field(0x0A, _value(v)) for v in value]))
    if isinstance(value, Mapping):
        pairs = [_field(0x0A, _key_value(str(k), v)) for k, v in value.items()]
        return _field(0x32, b"".join(pairs))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    name = key.encode()
    return (_field(0x0A, name) if name else b"") + _field(0x12, _value(value))


_memo: dict[tuple[str, type, Any], bytes] = {}


def _attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    """Each attribute as a `KeyValue` field `tag`; one that cannot be encoded is logged
    and left out, as OTel's encoder does."""
    if not attributes:
        return b""
    memo = _memo
    parts = []
    for key, value in attributes.items():
        kind = type(value)
        # The type is part of the key: True == 1 == 1.0, but they encode differently.
        index = (key, kind, value) if kind in _KEPT else None
        encoded = memo.get(index) if index is not None else None
        if encoded is None:
            try:
                encoded = _field(tag, _key_value(key, value))
            except Exception as error:
                log.error("Failed to encode key %s: %s", key, error)
                continue
            if index is not None:
                if len(memo) >= MEMO_ENTRIES:
                    memo.clear()
                memo[index] = encoded
        parts.append(encoded)
    return b"".join(parts)


def _status(span: ReadableSpan) -> bytes:
    status = span.status
    if status is None:
        return b""
    code = status.status_code.value
    body = (_field(0x12, status.description.encode()) if status.description else b"") + (
        b"\x18" + _varint(code) if code else b""
    )
    return _field(0x7A, body)


def _span(span: ReadableSpan) -> bytes:
    context = span.get_span_context()
    assert context is not None  # a finished SDK span always has one
    parent = span.parent
    out = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    trace_state = context.trace_state
    if trace_state:
        text = ",".join([f"{k}={v}" for k, v in trace_state.items()])
        out.append(_field(0x1A, text.encode()))
    if parent:
        out += (b"\x22\x08", parent.span_id.to_bytes(8, "big"))
    if span.name:
        out.append(_field(0x2A, span.name.encode()))
    out += (
        b"\x30",
        bytes((_KIND[span.kind],)),
        b"\x39",
        _fixed64(span.start_time or 0),
        b"\x41",
        _fixed64(span.end_time or 0),
        _attributes(0x4A, span.attributes),
    )
    if span.dropped_attributes:
        out += (b"\x50", _varint(span.dropped_attributes))
    for event in span.events:
        body = b"\x09" + _fixed64(event.timestamp)
        if event.name:
            body += _field(0x12, event.name.encode())
        body += _attributes(0x1A, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        out.append(_field(0x5A, body))
    if span.dropped_events:
        out += (b"\x60", _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = (
            b"\x0a\x10"
            + linked.trace_id.to_bytes(16, "big")
            + b"\x12\x08"
            + linked.span_id.to_bytes(8, "big")
            + _attributes(0x22, link.attributes)
        )
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        out.append(_field(0x6A, body + b"\x35" + (_REMOTE if linked.is_remote else _LOCAL)))
    if span.dropped_links:
        out += (b"\x70", _varint(span.dropped_links))
    out.append(_status(span))
    out += (b"\x85\x01", _REMOTE if parent is not None and parent.is_remote else _LOCAL)
    return _field(_T_SPAN, b"".join(out))


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    return (
        (_field(_T_SCOPE_NAME, scope.name.encode()) if scope.name else b"")
        + (_field(_T_SCOPE_VERSION, scope.version.encode()) if scope.version else b"")
        + _attributes(_T_SCOPE_ATTRIBUTE, scope.attributes)
    )


def encode_export_request(spans: Sequence[ReadableSpan]) -> bytes:
    """The serialised `ExportTraceServiceRequest` of `spans` (see the module's doc)."""
    groups: dict[Any, dict[Any, list[bytes]]] = {}
    by_identity: dict[tuple[int, int], list[bytes]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        index = (id(resource), id(scope))
        encoded = by_identity.get(index)
        if encoded is None:
            scopes = groups.setdefault(resource, {})
            encoded = by_identity[index] = scopes.setdefault(scope, [])
        encoded.append(_span(span))
    out = []
    for resource, scopes in groups.items():
        body = [_field(_T_RESOURCE, _attributes(_T_ATTRIBUTE, resource.attributes))]
        for scope, encoded in scopes.items():
            scope_spans = _field(0x0A, _scope(scope)) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_spans += _field(_T_SCHEMA_URL, scope.schema_url.encode())
            body.append(_field(_T_SCOPE_SPANS, scope_spans))
        if resource.schema_url:
            body.append(_field(_T_SCHEMA_URL, resource.schema_url.encode()))
        out.append(_field(_T_RESOURCE_SPANS, b"".join(body)))
    return b"".join(out)


def forget_encoded() -> None:
    """Drop the encoded attributes kept for reuse (tests)."""
    _memo.clear()
