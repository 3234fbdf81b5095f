"""Envelope building, encoding and trace context; event type registries; stream layout;
backoff."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf import wrappers_pb2
from meshproto.events.v1 import envelope_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from shop.events.v1 import events_pb2

from base.backoff import Backoff
from mesh.events.consumer import SubscribeOptions, Subscription
from mesh.events.envelope import decode, encode, extract_context, new_envelope, new_event_id
from mesh.events.errors import EventsTimeoutError, PublishTimeoutError, UnknownEventError
from mesh.events.streams import default_streams, dlq_subject
from mesh.events.types import EventTypes, load_event_types, unpack
from services.common.event_types import EVENTS

# A registry of another project: the mesh needs no shop message to carry events.
NOTES = EventTypes(
    {"note.written": wrappers_pb2.StringValue, "note.counted": wrappers_pb2.Int64Value}
)


def test_the_shop_registers_every_payload_of_its_events_package() -> None:
    payloads = {m.full_name for m in events_pb2.DESCRIPTOR.message_types_by_name.values()} - {
        "shop.events.v1.EventLine"
    }  # a part of payloads, not one itself
    assert {cls.DESCRIPTOR.full_name for cls in EVENTS.values()} == payloads
    assert EVENTS.domains == ("user", "order", "payment", "inventory")


def test_new_envelope_fills_every_attribute() -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    payload = events_pb2.OrderCompensationCompleted(order_id="o1", reason="card declined")
    env = new_envelope(payload, types=EVENTS, source="orders", subject="o1", time=when)
    assert env.type == "order.compensation.completed"
    assert env.source == "orders" and env.subject == "o1"
    assert env.data_content_type == "application/protobuf"
    assert env.data.type_url.endswith("/shop.events.v1.OrderCompensationCompleted")
    assert len(env.id) == 36
    assert env.time.ToDatetime(tzinfo=UTC) == when
    assert EVENTS.payload(env) == payload
    assert unpack(env, events_pb2.OrderCompensationCompleted) == payload
    assert env.traceparent == ""  # no active span


def test_event_ids_are_time_ordered_version_7_uuids_in_canonical_form() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(2000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text  # lower-case, hyphenated: what str(UUID) gives
        assert before_ms <= parsed.int >> 80 <= after_ms  # unix_ts_ms, the first 48 bits
    # Ordered by their millisecond (the text sorts as the number does).
    assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)
    # Every bit after the timestamp but the six fixed ones varies (a constant or biased
    # bit would not).
    bits = [int(i.replace("-", ""), 16) for i in ids]
    fixed = {76, 77, 78, 79, 62, 63}  # version (bits 76-79) and variant (62-63), from the LSB
    for bit in set(range(80)) - fixed:
        ones = sum((b >> bit) & 1 for b in bits)
        assert 800 < ones < 1200, bit


def test_a_new_envelope_is_stamped_now_in_utc() -> None:
    before = time.time_ns()
    env = new_envelope(wrappers_pb2.StringValue(value="x"), types=NOTES, source="n", subject="s")
    after = time.time_ns()
    assert before <= env.time.ToNanoseconds() <= after
    assert env.time.ToDatetime(tzinfo=UTC).tzinfo is UTC


def test_any_project_registers_its_own_payloads() -> None:
    env = new_envelope(wrappers_pb2.StringValue(value="hi"), types=NOTES, source="n", subject="1")
    assert env.type == "note.written" and NOTES.domains == ("note",)
    assert decode(encode(env)[0]) == env
    assert NOTES.payload(env) == wrappers_pb2.StringValue(value="hi")


def test_encode_headers_and_roundtrip() -> None:
    env = new_envelope(
        events_pb2.UserDeleted(user_id="u1"), types=EVENTS, source="users", subject="u1"
    )
    body, headers = encode(env)
    assert headers["Nats-Msg-Id"] == env.id
    assert headers["Content-Type"] == "application/protobuf"
    assert headers["Mesh-Event-Type"] == "user.deleted"
    assert "traceparent" not in headers
    assert decode(body) == env


def test_trace_context_from_the_current_span_travels_both_ways() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("op") as span:
        env = new_envelope(
            events_pb2.UserCreated(user_id="u"), types=EVENTS, source="users", subject="u"
        )
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
        EVENTS.type_of(events_pb2.EventLine())
    with pytest.raises(UnknownEventError):
        new_envelope(wrappers_pb2.StringValue(), types=EVENTS, source="x", subject="y")
    with pytest.raises(UnknownEventError):  # no payload: never reaches a stream
        encode(envelope_pb2.Envelope(id="x", type="user.exploded"))
    mislabelled = new_envelope(
        events_pb2.UserCreated(user_id="u"), types=EVENTS, source="users", subject="u"
    )
    mislabelled.type = "user.deleted"
    with pytest.raises(UnknownEventError, match=r"shop\.events\.v1\.UserCreated"):
        EVENTS.payload(mislabelled)
    mislabelled.type = "user.exploded"
    with pytest.raises(UnknownEventError, match="unknown event type"):
        EVENTS.payload(mislabelled)


def test_registries_refuse_bad_types_and_shared_payloads() -> None:
    with pytest.raises(ValueError, match=r"<domain>\.<event>"):
        EventTypes({"Created": wrappers_pb2.StringValue})
    with pytest.raises(ValueError, match=r"<domain>\.<event>"):  # not even before a newline
        EventTypes({"a.created\n": wrappers_pb2.StringValue})
    with pytest.raises(ValueError, match="one message per event type"):
        EventTypes({"a.b": wrappers_pb2.StringValue, "a.c": wrappers_pb2.StringValue})


def test_registry_loaded_by_reference() -> None:
    assert load_event_types("services.common.event_types:EVENTS") is EVENTS
    for ref, problem in (
        ("services.common.event_types", "expected 'package.module:NAME'"),
        ("no.such.module:EVENTS", "cannot import"),
        ("services.common.event_types:shop_streams", "is not a mesh.events.EventTypes"),
    ):
        with pytest.raises(ValueError, match=problem):
            load_event_types(ref)


def test_stream_layout() -> None:
    specs = {s.name: s for s in default_streams(EVENTS.domains)}
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
