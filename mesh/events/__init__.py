"""Events on NATS JetStream: envelopes, streams, transactional outbox, consumers, inbox."""

from mesh.events.bus import EventBus, connect_nats
from mesh.events.consumer import Handler, SubscribeOptions, Subscription
from mesh.events.envelope import decode, encode, extract_context, headers_for, new_envelope
from mesh.events.errors import EventsError, EventsTimeoutError, PublishTimeoutError
from mesh.events.inbox import Inbox, inbox_migrations
from mesh.events.outbox import Outbox, outbox_migrations
from mesh.events.relay import OutboxRelay, RelayConfig
from mesh.events.streams import StreamSpec, default_streams, ensure_streams

__all__ = [
    "EventBus",
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
    "new_envelope",
    "outbox_migrations",
]
