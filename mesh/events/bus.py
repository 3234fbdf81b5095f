"""The event bus of a process: one NATS connection, streams applied, subscriptions.

```python
bus = await EventBus.connect(settings.nats_url, name="orders",
                             streams=default_streams(EVENTS.domains))
await bus.ensure_streams()
await bus.subscribe("user.*", handler, durable="orders-user-events")
relay = bus.relay(sessions, outbox)      # publishes this service's outbox
relay.start()
...
await bus.close()
```
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import nats
from meshproto.events.v1 import envelope_pb2
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck
from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.events.consumer import BatchHandler, Handler, SubscribeOptions, Subscription
from mesh.events.envelope import encode
from mesh.events.nats_connect import NatsClientAuth
from mesh.events.outbox import Outbox
from mesh.events.relay import OutboxRelay, RelayConfig
from mesh.events.streams import StreamSpec, ensure_streams

log = logging.getLogger(__name__)


async def connect_nats(url: str, *, name: str, **options: Any) -> NATS:
    """A NATS connection that reconnects forever (events wait out an outage, never drop)."""

    async def on_error(exc: Exception) -> None:
        # A permission the server refused is a mistake to be seen (a subject or a durable
        # this identity was not granted): without this line the refused request only
        # times out. The rest (reconnects) is said by the callbacks below.
        if "permissions violation" in str(exc).lower():
            log.warning("nats %s: refused by the server: %s", name, exc)
        else:
            log.debug("nats %s: %r", name, exc)

    connected: list[NATS] = []  # the client, once connected (the callbacks are made first)

    async def on_disconnect() -> None:
        # nats-py calls this on our own close() too (marked closed by then): a service
        # shutting down is no lost connection to warn about.
        if connected and connected[0].is_closed:
            log.info("nats %s: connection closed", name)
        else:
            log.warning("nats %s: disconnected", name)

    async def on_reconnect() -> None:
        log.info("nats %s: reconnected", name)

    opts: dict[str, Any] = {
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.25,
        "connect_timeout": 2,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    opts.update(options)
    nc = await nats.connect(servers=[url], **opts)
    connected.append(nc)
    return nc


class EventBus:
    """Streams, subscriptions and relays over one NATS connection."""

    def __init__(
        self,
        nc: NATS,
        *,
        streams: Sequence[StreamSpec] = (),
        tracer_provider: TracerProvider | None = None,
        publish_async_max_pending: int = 4000,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(
            publish_async_max_pending=publish_async_max_pending
        )
        # The application's streams (`default_streams(types.domains)`), applied by
        # `ensure_streams`; none for a process that only uses streams others own.
        self.streams = list(streams)
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("mesh.events")
        self.subscriptions: list[Subscription] = []
        self.relays: list[OutboxRelay] = []

    @classmethod
    async def connect(
        cls, url: str, *, name: str, auth: NatsClientAuth | None = None, **kwargs: Any
    ) -> EventBus:
        """Connect as `auth`'s identity (anonymous without it) and wrap the connection."""
        options = auth.connect_options() if auth is not None else {}
        return cls(await connect_nats(url, name=name, **options), **kwargs)

    async def ensure_streams(self) -> dict[str, str]:
        return await ensure_streams(self.js, self.streams)

    async def publish(self, envelope: envelope_pb2.Envelope, timeout_s: float = 5.0) -> PubAck:
        """Publish directly, outside any transaction (tests, tools); services use the outbox."""
        body, headers = encode(envelope)
        return await self.js.publish(envelope.type, body, headers=headers, timeout=timeout_s)

    async def subscribe(
        self,
        subject: str,
        handler: Handler,
        *,
        durable: str,
        stream: str | None = None,
        options: SubscribeOptions | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> Subscription:
        """Create or update durable pull consumer `durable` on `subject` and start consuming."""
        sub = Subscription(self.js, subject=subject, durable=durable, handler=handler,
                           stream=stream, options=options, tracer=self.tracer,
                           batch_handler=batch_handler, nc=self.nc)  # fmt: skip
        await sub.start()
        self.subscriptions.append(sub)
        return sub

    def relay(
        self,
        sessions: async_sessionmaker[AsyncSession],
        outbox: Outbox,
        *,
        config: RelayConfig | None = None,
    ) -> OutboxRelay:
        """An outbox relay publishing through this bus (call `.start()`); stopped by `close()`."""
        r = OutboxRelay(sessions, self.js, outbox, config=config, nc=self.nc)
        self.relays.append(r)
        return r

    async def close(self) -> None:
        for sub in self.subscriptions:
            await sub.stop()
        for r in self.relays:
            await r.stop()
        self.subscriptions.clear()
        self.relays.clear()
        if not self.nc.is_closed:
            await self.nc.close()
