"""Events on NATS JetStream: envelopes, streams, transactional outbox, consumers, inbox.

The envelope is the mesh's (`meshproto.events.v1.Envelope`); the payloads, their
types and the stream domains are the application's, passed in as `EventTypes`.
"""

from mesh.events.bus import EventBus, connect_nats
from mesh.events.consumer import Handler, SubscribeOptions, Subscription
from mesh.events.envelope import decode, encode, extract_context, headers_for, new_envelope
from mesh.events.errors import EventsError, EventsTimeoutError, PublishTimeoutError
from mesh.events.inbox import Inbox, inbox_migrations
from mesh.events.outbox import Outbox, outbox_migrations
from mesh.events.relay import OutboxRelay, RelayConfig
from mesh.events.streams import StreamSpec, default_streams, ensure_streams
from mesh.events.types import EventTypes, load_event_types, unpack

__all__ = [
    "EventBus",
    "EventTypes",
    "EventsError",
    "EventsTimeoutError",
    "Handler",
    "Inbox",
    "Outbox",
    "OutboxRelay",
    "PublishTimeoutError",
    "RelayConfig",
    "StreamSpec",
    "SubscribeOptions",
    "Subscription",
    "connect_nats",
    "decode",
    "default_streams",
    "encode",
    "ensure_streams",
    "extract_context",
    "headers_for",
    "inbox_migrations",
    "load_event_types",
    "new_envelope",
    "outbox_migrations",
    "unpack",
]
