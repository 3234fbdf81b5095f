"""Build, encode and decode `meshproto.events.v1.Envelope`, and carry trace context.

The envelope's `type` equals the NATS subject (`<domain>.<event>`), its `id` is
the JetStream `Nats-Msg-Id` (server-side dedupe) and the consumers' inbox key.
Its payload is a `google.protobuf.Any` holding the application's message; which
message goes with which type is the application's `EventTypes` (mesh.events.types).
Trace context is W3C: copied from the current OpenTelemetry context into the
envelope and into message headers, so a consumer can continue the trace without
decoding the body (and tools that only see headers, like `nats sub`, show it).
"""

from __future__ import annotations

import os
import time as _time
from collections.abc import Mapping
from datetime import datetime

from google.protobuf.message import Message
from meshproto.events.v1 import envelope_pb2
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.events.errors import UnknownEventError
from mesh.events.types import EventTypes

CONTENT_TYPE = "application/protobuf"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_CONTENT_TYPE = "Content-Type"
HDR_EVENT_TYPE = "Mesh-Event-Type"
HDR_TRACEPARENT = "traceparent"
HDR_TRACESTATE = "tracestate"


# W3C explicitly, not the globally configured propagator: the envelope fields are named
# traceparent/tracestate whatever the process uses. Stateless: one serves every call.
_W3C = TraceContextTextMapPropagator()


def new_event_id() -> str:
    """A time-ordered (version 7) UUID in its canonical text form: the Unix time in
    milliseconds in the first 48 bits, then 74 random bits (RFC 9562 section 5.7).

    Why time-ordered: every consumer records the ids it handled in its inbox, whose
    primary key starts with the id, and a handler often keys its own rows by it. With
    random (version 4) ids a batch of 256 events lands on up to 256 leaf pages of each
    index, all rewritten to SQLite's WAL at the commit, and once the index outgrows the
    page cache each of those pages is read back first. Ids of one millisecond are
    neighbours, so a batch touches a few pages at the right edge. Measured with `python
    -m bench events` on the 2-core box (three alternating pairs, with
    `mesh.events.nats_writes` on both sides): the consumer's CPU per event 47-49 µs with
    random ids, 32-37 µs with these, and 10,750-11,314 events/s end to end against
    13,774-15,407 (docs/performance-log.md, "Time-ordered event ids"). Ordering is by
    millisecond only (within one, the random bits decide), and across machines only as
    good as their clocks: nothing may rely on it; the time is in the envelope anyway.

    Built by hand rather than with `uuid.UUID` (Python code: 6.1 µs for `str(uuid4())`
    against 2.5 µs for this on the 2-core box); `tests/unit/events/test_envelope.py`
    parses them back with `uuid.UUID`.
    """
    raw = bytearray(os.urandom(16))
    raw[0:6] = (_time.time_ns() // 1_000_000).to_bytes(6, "big")
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant: RFC 4122 / 9562
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_envelope(
    payload: Message,
    *,
    types: EventTypes,
    source: str,
    subject: str,
    context: Context | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> envelope_pb2.Envelope:
    """An envelope for `payload` with a fresh id, now, and the trace context of `context`.

    Its type is the one `types` registers for the payload's message
    (UnknownEventError if none). `subject` is the id of the entity the event is
    about (CloudEvents' subject), not the NATS subject, which is the type.
    """
    env = envelope_pb2.Envelope(
        id=event_id or new_event_id(),
        type=types.type_of(payload),
        source=source,
        subject=subject,
        data_content_type=CONTENT_TYPE,
    )
    if time is None:
        env.time.FromNanoseconds(_time.time_ns())  # now (UTC); 1.2 µs, FromDatetime 5.8
    else:
        env.time.FromDatetime(time)
    env.data.Pack(payload)
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=context)
    env.traceparent = carrier.get(HDR_TRACEPARENT, "")
    env.tracestate = carrier.get(HDR_TRACESTATE, "")
    return env


def headers_for(envelope: envelope_pb2.Envelope) -> dict[str, str]:
    """NATS headers for an envelope: dedupe id, content type, type, trace context."""
    headers = {
        HDR_MSG_ID: envelope.id,
        HDR_CONTENT_TYPE: CONTENT_TYPE,
        HDR_EVENT_TYPE: envelope.type,
    }
    if envelope.traceparent:
        headers[HDR_TRACEPARENT] = envelope.traceparent
    if envelope.tracestate:
        headers[HDR_TRACESTATE] = envelope.tracestate
    return headers


def encode(envelope: envelope_pb2.Envelope) -> tuple[bytes, dict[str, str]]:
    """(body, headers) to publish on subject `envelope.type`.

    Refuses an envelope without id, type or payload (UnknownEventError): it
    would be undeliverable or undeduplicable, so it never reaches a stream.
    """
    if not envelope.id or not envelope.type or not envelope.HasField("data"):
        raise UnknownEventError(
            f"incomplete envelope (id {envelope.id!r}, type {envelope.type!r}, "
            f"payload {'set' if envelope.HasField('data') else 'missing'})"
        )
    return envelope.SerializeToString(), headers_for(envelope)


def decode(data: bytes) -> envelope_pb2.Envelope:
    env = envelope_pb2.Envelope()
    env.ParseFromString(data)
    return env


def extract_context(
    headers: Mapping[str, str] | None, envelope: envelope_pb2.Envelope | None = None
) -> Context:
    """The remote trace context from message headers, else from the envelope fields."""
    carrier: dict[str, str] = {}
    if headers and headers.get(HDR_TRACEPARENT):
        carrier[HDR_TRACEPARENT] = headers[HDR_TRACEPARENT]
        if headers.get(HDR_TRACESTATE):
            carrier[HDR_TRACESTATE] = headers[HDR_TRACESTATE]
    elif envelope is not None and envelope.traceparent:
        carrier[HDR_TRACEPARENT] = envelope.traceparent
        if envelope.tracestate:
            carrier[HDR_TRACESTATE] = envelope.tracestate
    return _W3C.extract(carrier, context=Context())
