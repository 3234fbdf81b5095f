"""A project's event types: each type (= NATS subject) and the payload message it carries.

The mesh owns the envelope (`meshproto.events.v1.Envelope`); an application owns its
payload messages and tells the mesh which one each event type carries:

    EVENTS = EventTypes({
        "user.created": events_pb2.UserCreated,
        "order.compensation.completed": events_pb2.OrderCompensationCompleted,
    })

Types are `<domain>.<event>` (the event part may have more tokens); the first
token is the domain, which names the JetStream stream (`EVENTS.domains` feeds
`default_streams`). Written out rather than derived from message names:
"order_compensation_completed" has no unambiguous split into domain and event.

Tools that do not import the application (`meshctl events tail`) load the
registry by reference, `"package.module:NAME"`, from the topology file
(`load_event_types`).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping
from typing import TypeVar

from google.protobuf.message import Message
from meshproto.events.v1 import envelope_pb2

from mesh.events.errors import UnknownEventError

M = TypeVar("M", bound=Message)

_TOKEN = r"[a-z][a-z0-9_]*"
_EVENT_TYPE = re.compile(rf"^{_TOKEN}(\.{_TOKEN})+$")


class EventTypes(Mapping[str, type[Message]]):
    """Event type -> payload message class, and back; immutable."""

    def __init__(self, types: Mapping[str, type[Message]]) -> None:
        self._types = dict(types)
        self._by_message: dict[str, str] = {}
        for event_type, cls in self._types.items():
            if not _EVENT_TYPE.fullmatch(event_type):
                raise ValueError(f"event type {event_type!r} is not <domain>.<event> (lower case)")
            full_name = cls.DESCRIPTOR.full_name
            if full_name in self._by_message:
                raise ValueError(
                    f"{full_name} is the payload of both {self._by_message[full_name]!r} "
                    f"and {event_type!r}: one message per event type"
                )
            self._by_message[full_name] = event_type

    def __getitem__(self, event_type: str) -> type[Message]:
        return self._types[event_type]

    def __iter__(self) -> Iterator[str]:
        return iter(self._types)

    def __len__(self) -> int:
        return len(self._types)

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains (first tokens of the types), in first-seen order."""
        return tuple(dict.fromkeys(t.split(".", 1)[0] for t in self._types))

    def type_of(self, payload: Message) -> str:
        """The event type of a payload message, e.g. `UserCreated` -> `user.created`."""
        full_name = payload.DESCRIPTOR.full_name
        try:
            return self._by_message[full_name]
        except KeyError:
            raise UnknownEventError(f"{full_name} is not a registered event payload") from None

    def payload(self, envelope: envelope_pb2.Envelope) -> Message:
        """The envelope's payload as the message registered for its type."""
        cls = self._types.get(envelope.type)
        if cls is None:
            raise UnknownEventError(f"unknown event type {envelope.type!r}")
        return unpack(envelope, cls)


def unpack(envelope: envelope_pb2.Envelope, cls: type[M]) -> M:
    """The envelope's payload as a `cls`; UnknownEventError if it carries another type."""
    if not envelope.HasField("data"):
        raise UnknownEventError(f"event {envelope.id} has no payload")
    payload = cls()
    if not envelope.data.Unpack(payload):
        raise UnknownEventError(
            f"event {envelope.id} ({envelope.type}) carries {envelope.data.type_url}, "
            f"not {cls.DESCRIPTOR.full_name}"
        )
    return payload


def load_event_types(ref: str) -> EventTypes:
    """The registry named by `"package.module:NAME"` (imported now; errors name the ref)."""
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"event types {ref!r}: expected 'package.module:NAME'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"event types {ref!r}: cannot import {module_name}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, EventTypes):
        raise ValueError(f"event types {ref!r}: {attr} is not a mesh.events.EventTypes")
    return found
