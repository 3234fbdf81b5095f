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

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

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


def _propagator() -> TraceContextTextMapPropagator:
    # W3C explicitly, not the globally configured propagator: the envelope
    # fields are named traceparent/tracestate whatever the process uses.
    return TraceContextTextMapPropagator()


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
        id=event_id or str(uuid.uuid4()),
        type=types.type_of(payload),
        source=source,
        subject=subject,
        data_content_type=CONTENT_TYPE,
    )
    env.time.FromDatetime(time or datetime.now(UTC))
    env.data.Pack(payload)
    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context=context)
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
    return _propagator().extract(carrier, context=Context())
