"""Build, encode and decode `shop.events.v1.Envelope`, and carry trace context.

The envelope's `type` equals the NATS subject (`<domain>.<event>`), its `id` is
the JetStream `Nats-Msg-Id` (server-side dedupe) and the consumers' inbox key.
Trace context is W3C: copied from the current OpenTelemetry context into the
envelope and into message headers, so a consumer can continue the trace without
decoding the body (and tools that only see headers, like `nats sub`, show it).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from google.protobuf.message import Message
from opentelemetry.context import Context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from shop.events.v1 import events_pb2

from mesh.events.errors import UnknownEventError

CONTENT_TYPE = "application/protobuf"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_CONTENT_TYPE = "Content-Type"
HDR_EVENT_TYPE = "Shop-Event-Type"
HDR_TRACEPARENT = "traceparent"
HDR_TRACESTATE = "tracestate"

# Event type (= subject) -> name of the Envelope oneof field carrying it. Written
# out rather than derived from field names: "order_compensation_completed" has no
# unambiguous split into domain and event. A unit test checks it covers the oneof.
EVENT_FIELDS: Mapping[str, str] = {
    "user.created": "user_created",
    "user.deleted": "user_deleted",
    "order.completed": "order_completed",
    "order.compensation.completed": "order_compensation_completed",
    "payment.completed": "payment_completed",
    "payment.refunded": "payment_refunded",
    "inventory.reserved": "inventory_reserved",
    "inventory.released": "inventory_released",
    "inventory.low_stock": "inventory_low_stock",
}


def _propagator() -> TraceContextTextMapPropagator:
    # W3C explicitly, not the globally configured propagator: the envelope
    # fields are named traceparent/tracestate whatever the process uses.
    return TraceContextTextMapPropagator()


def event_type_of(payload: Message) -> str:
    """The event type (subject) of a typed payload message, e.g. `UserCreated` -> `user.created`."""
    full_name = payload.DESCRIPTOR.full_name
    for event_type, field in EVENT_FIELDS.items():
        f = events_pb2.Envelope.DESCRIPTOR.fields_by_name[field]
        if f.message_type is not None and f.message_type.full_name == full_name:
            return event_type
    raise UnknownEventError(f"{full_name} is not an event payload of shop.events.v1.Envelope")


def new_envelope(
    payload: Message,
    *,
    source: str,
    subject: str,
    context: Context | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
) -> events_pb2.Envelope:
    """An envelope for `payload` with a fresh id, now, and the trace context of `context`.

    `subject` is the id of the entity the event is about (CloudEvents' subject),
    not the NATS subject, which is the type.
    """
    event_type = event_type_of(payload)
    env = events_pb2.Envelope(
        id=event_id or str(uuid.uuid4()), type=event_type, source=source, subject=subject
    )
    env.time.FromDatetime(time or datetime.now(UTC))
    getattr(env, EVENT_FIELDS[event_type]).CopyFrom(payload)
    carrier: dict[str, str] = {}
    _propagator().inject(carrier, context=context)
    env.traceparent = carrier.get(HDR_TRACEPARENT, "")
    env.tracestate = carrier.get(HDR_TRACESTATE, "")
    return env


def payload_of(envelope: events_pb2.Envelope) -> Message:
    """The typed payload message set in the envelope's oneof."""
    field = envelope.WhichOneof("payload")
    if field is None:
        raise UnknownEventError(f"event {envelope.id} has no payload")
    msg: Message = getattr(envelope, field)
    return msg


def headers_for(envelope: events_pb2.Envelope) -> dict[str, str]:
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


def encode(envelope: events_pb2.Envelope) -> tuple[bytes, dict[str, str]]:
    """(body, headers) to publish on subject `envelope.type`."""
    if envelope.type not in EVENT_FIELDS:
        raise UnknownEventError(f"unknown event type {envelope.type!r}")
    return envelope.SerializeToString(), headers_for(envelope)


def decode(data: bytes) -> events_pb2.Envelope:
    env = events_pb2.Envelope()
    env.ParseFromString(data)
    return env


def extract_context(
    headers: Mapping[str, str] | None, envelope: events_pb2.Envelope | None = None
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
