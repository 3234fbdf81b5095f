"""Clients of a permission-checked `NatsServer` (tests/support/nats.py) as one identity:
a raw connection that records what the server refused it, an `EventBus` with the
identity's own streams, an anonymous attempt, and the `order.completed` event the suites
publish."""

from __future__ import annotations

from typing import Any

import nats
from meshproto.events.v1.envelope_pb2 import Envelope
from nats.aio.client import Client as NATS
from shop.events.v1 import events_pb2

from mesh.events import EventBus, new_envelope
from mesh.events.nats_auth import owned_streams
from services.common.event_identities import event_identity
from services.common.event_types import EVENTS, shop_streams
from tests.support.nats import NatsServer


class Client:
    """A raw connection as `identity`, collecting the errors the server reports to it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: NATS | None = None

    async def connect(self, srv: NatsServer, identity: str) -> NATS:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))

        self.nc = await nats.connect(
            srv.url, error_cb=on_error, allow_reconnect=False,
            **srv.auth_for(identity).connect_options(),
        )  # fmt: skip
        return self.nc

    def violation(self, text: str) -> bool:
        """Whether the server reported a permissions violation naming `text` (any case)."""
        wanted = text.lower()
        return any(
            "permissions violation" in e.lower() and wanted in e.lower() for e in self.errors
        )


async def bus_as(srv: NatsServer, identity: str, **kwargs: Any) -> EventBus:
    """An EventBus as `identity`, knowing the streams that identity declares."""
    ident = event_identity(identity)
    assert ident is not None
    streams = owned_streams(ident, shop_streams())
    return await EventBus.connect(
        srv.url, name=f"test-{identity}", auth=srv.auth_for(identity), streams=streams, **kwargs
    )


async def anonymous_refusal(url: str) -> str | None:
    """What an anonymous client gets from the NATS at `url` (its error), or None when it
    connects."""
    try:
        nc = await nats.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3
        )
    except Exception as exc:  # the refusal is the point: any error says it
        return f"{type(exc).__name__}: {exc}"
    await nc.close()
    return None


def order_completed(order_id: str = "o-1") -> Envelope:
    return new_envelope(
        events_pb2.OrderCompleted(order_id=order_id, user_id="u-1", saga_id="s-1"),
        types=EVENTS, source="test", subject=order_id,
    )  # fmt: skip
