"""Envelope building, encoding and trace context; stream layout; backoff."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from shop.events.v1 import events_pb2

from base.backoff import Backoff
from mesh.events.consumer import SubscribeOptions, Subscription
from mesh.events.envelope import (
    EVENT_FIELDS,
    decode,
    encode,
    event_type_of,
    extract_context,
    new_envelope,
    payload_of,
)
from mesh.events.errors import EventsTimeoutError, PublishTimeoutError, UnknownEventError
from mesh.events.streams import default_streams, dlq_subject


def test_event_table_covers_the_envelope_oneof() -> None:
    oneof = events_pb2.Envelope.DESCRIPTOR.oneofs_by_name["payload"]
    assert sorted(f.name for f in oneof.fields) == sorted(EVENT_FIELDS.values())


def test_new_envelope_fills_every_attribute() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    payload = events_pb2.OrderCompensationCompleted(order_id="o1", reason="card declined")
    env = new_envelope(payload, source="orders", subject="o1", time=when)
    assert env.type == "order.compensation.completed"
    assert env.source == "orders" and env.subject == "o1"
    assert len(env.id) == 36
    assert env.time.ToDatetime(tzinfo=UTC) == when
    assert payload_of(env) == payload
    assert env.traceparent == ""  # no active span


def test_encode_headers_and_roundtrip() -> None:
    env = new_envelope(events_pb2.UserDeleted(user_id="u1"), source="users", subject="u1")
    body, headers = encode(env)
    assert headers["Nats-Msg-Id"] == env.id
    assert headers["Content-Type"] == "application/protobuf"
    assert headers["Shop-Event-Type"] == "user.deleted"
    assert "traceparent" not in headers
    assert decode(body) == env


def test_trace_context_from_the_current_span_travels_both_ways() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("op") as span:
        env = new_envelope(events_pb2.UserCreated(user_id="u"), source="users", subject="u")
    _, headers = encode(env)
    sc = span.get_span_context()
    assert headers["traceparent"] == env.traceparent
    assert env.traceparent.split("-")[1] == f"{sc.trace_id:032x}"
    for carrier in ((headers, None), (None, env)):
        remote = trace.get_current_span(extract_context(*carrier)).get_span_context()
        assert remote.trace_id == sc.trace_id and remote.span_id == sc.span_id
        assert remote.is_remote


def test_unknown_payloads_and_types_are_refused() -> None:
    with pytest.raises(UnknownEventError):
        event_type_of(events_pb2.EventLine())
    with pytest.raises(UnknownEventError):
        encode(events_pb2.Envelope(id="x", type="user.exploded"))


def test_stream_layout() -> None:
    specs = {s.name: s for s in default_streams()}
    assert set(specs) == {"USER", "ORDER", "PAYMENT", "INVENTORY", "DLQ"}
    assert specs["ORDER"].subjects == ("order.>",)  # order.compensation.completed too
    cfg = specs["USER"].config()
    assert cfg.storage is not None and cfg.storage.value == "file"
    assert cfg.duplicate_window == 120.0
    assert dlq_subject("user.created") == "dlq.user.created"


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    b = Backoff(initial_s=0.1, max_s=1.0)
    delays = [b.next() for _ in range(8)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0.5 <= d <= 1.0 for d in delays[4:])
    b.reset()
    assert b.next() <= 0.1


def test_nak_delay_follows_the_delivery_count() -> None:
    sub = Subscription(
        None,  # type: ignore[arg-type]
        subject="user.*",
        durable="d",
        handler=None,  # type: ignore[arg-type]
        options=SubscribeOptions(backoff_s=(1.0, 5.0)),
    )
    assert [sub._nak_delay(n) for n in (1, 2, 3, 9)] == [1.0, 5.0, 5.0, 5.0]
    cfg = sub.consumer_config()
    assert cfg.max_deliver == -1 and cfg.durable_name == "d" and cfg.filter_subject == "user.*"


def test_timeouts_are_asyncio_timeouts() -> None:
    assert issubclass(PublishTimeoutError, EventsTimeoutError)
    assert issubclass(EventsTimeoutError, TimeoutError)
