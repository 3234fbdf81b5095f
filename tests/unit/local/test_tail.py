"""`meshctl events tail` lines: decoded with the project's registry, honest without one."""

from __future__ import annotations

from shop.events.v1 import events_pb2

from mesh.events import encode, new_envelope
from mesh.local.tail import format_event
from services.common.event_types import EVENTS


def _body() -> bytes:
    env = new_envelope(
        events_pb2.UserCreated(user_id="u1", email="u1@example.com"),
        types=EVENTS,
        source="users",
        subject="u1",
    )
    return encode(env)[0]


def test_payload_decoded_with_the_registry() -> None:
    line = format_event("user.created", _body(), EVENTS)
    assert "user.created" in line and "source=users" in line
    assert '"user_id": "u1"' in line and '"email": "u1@example.com"' in line


def test_without_a_registry_the_type_url_and_size_show() -> None:
    line = format_event("user.created", _body())
    assert "user.created" in line and "source=users" in line
    assert "<type.googleapis.com/shop.events.v1.UserCreated, " in line
    assert '"user_id"' not in line


def test_garbage_is_reported_not_raised() -> None:
    assert "<undecodable: " in format_event("user.created", b"\xff\xff\xff", EVENTS)
