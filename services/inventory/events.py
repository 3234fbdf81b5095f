"""Events inventory consumes: `order.completed`.

Each completed order is recorded as a sale (`sales` ledger, one row per line) and,
for each of its products, stock is checked against INVENTORY_LOW_STOCK_THRESHOLD:
an `inventory.low_stock` still due for this crossing goes to the outbox in the
same transaction (ConfirmReservation normally reported it already; the flag on the
product keeps it to one event per crossing, whoever gets there first).

The handler runs through the inbox (`mesh_inbox`, consumer "inventory"): the
event id commits with the sale, so a redelivery (lost ack, relay republish after
a crash, NATS restart) records nothing twice. The subscription is a durable
consumer shared by every inventory instance, so each event is handled by one of
them. The consume loop runs the handler in a span continuing the producer's
trace (`traceparent` header); the handler's own span is its child, and the log
line and the sale rows carry that trace id: a sale leads back to its CreateOrder.

NATS is optional: until it is reachable the subscriber keeps trying in the
background (the outbox relay reports the service degraded meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, TracerProvider
from shop.events.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.events import EventBus, Handler, Inbox, SubscribeOptions, extract_context
from services.inventory.store import InventoryStore, Sale

log = logging.getLogger(__name__)

# The inbox's consumer name; the durable consumers' names start with it.
CONSUMER = "inventory"
ORDER_COMPLETED = "order.completed"
ORDER_COMPLETED_DURABLE = "inventory-order-completed"


def trace_context(env: events_pb2.Envelope) -> Context | None:
    """The context to parent the handler's span on: the consume loop's span when it
    continues a trace, else the envelope's own trace context (a handler called
    outside the loop, e.g. replaying a dead letter)."""
    if trace.get_current_span().get_span_context().is_valid:
        return None  # the current context
    return extract_context(None, env)


class InventoryEventHandlers:
    def __init__(
        self, store: InventoryStore, tracer_provider: TracerProvider | None = None
    ) -> None:
        self.store = store
        provider = tracer_provider or trace.get_tracer_provider()
        self.tracer = provider.get_tracer("services.inventory.events")

    async def order_completed(self, env: events_pb2.Envelope, session: AsyncSession) -> None:
        if env.WhichOneof("payload") != "order_completed":
            log.warning("event %s on %s carries %s; ignored", env.id, ORDER_COMPLETED,
                        env.WhichOneof("payload"))  # fmt: skip
            return
        order = env.order_completed
        with self.tracer.start_as_current_span(
            "inventory.record_sale",
            context=trace_context(env),
            kind=SpanKind.INTERNAL,
            attributes={"shop.order_id": order.order_id, "messaging.message.id": env.id},
        ) as span:
            span_context = span.get_span_context()
            trace_id = f"{span_context.trace_id:032x}" if span_context.is_valid else ""
            lines = sale_lines(env.id, order.items)
            await self.store.record_sale(
                session,
                Sale(event_id=env.id, order_id=order.order_id, lines=lines, trace_id=trace_id),
            )
            log.info(
                "sale of order %s: %s (event %s, trace %s)",
                order.order_id,
                ", ".join(f"{q} x {p}" for p, q in lines) or "no lines",
                env.id,
                trace_id or "-",
            )


def sale_lines(event_id: str, items: Sequence[events_pb2.EventLine]) -> tuple[tuple[str, int], ...]:
    """(product, units) per product, merged; lines with no units are dropped (retrying a
    malformed event would not make it any better)."""
    merged: dict[str, int] = {}
    for item in items:
        if not item.product_id or item.quantity <= 0:
            log.warning("event %s: line %r/%d ignored", event_id, item.product_id, item.quantity)
            continue
        merged[item.product_id] = merged.get(item.product_id, 0) + item.quantity
    return tuple(sorted(merged.items()))


@dataclass(frozen=True, slots=True)
class Subscribe:
    """One durable consumer of the service: its subject, name and handler."""

    subject: str
    durable: str
    handler: Handler


class EventSubscriber:
    """Connects to NATS in the background (retrying forever) and subscribes the handlers."""

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        handlers: InventoryEventHandlers,
        *,
        name: str,
        tracer_provider: TracerProvider | None = None,
        options: SubscribeOptions | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.inbox = Inbox(sessions, CONSUMER)
        self.name = name
        self.tracer_provider = tracer_provider
        self.options = options
        self.subscriptions = (
            Subscribe(
                ORDER_COMPLETED,
                ORDER_COMPLETED_DURABLE,
                self.inbox.idempotent(handlers.order_completed),
            ),
        )
        self.bus: EventBus | None = None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        """Begin subscribing in the background; never waits for NATS."""
        if self.nats_url and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-subscriber")

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                bus = self.bus = await EventBus.connect(
                    self.nats_url, name=f"{self.name}-sub", tracer_provider=self.tracer_provider
                )
                await bus.ensure_streams()
                for sub in self.subscriptions:
                    await bus.subscribe(
                        sub.subject, sub.handler, durable=sub.durable, options=self.options
                    )
                self.subscribed.set()
                log.info("%s: consuming %s", self.name,
                         ", ".join(s.subject for s in self.subscriptions))  # fmt: skip
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # JetStream not ready yet: try again
                log.warning("%s: subscribing failed (%r); retrying in %.1fs", self.name, exc,
                            delay)  # fmt: skip
                if self.bus is not None:
                    with contextlib.suppress(Exception):
                        await self.bus.close()
                    self.bus = None
                await asyncio.sleep(delay)  # backoff between attempts
                delay = min(delay * 2, 5.0)

    async def stop(self) -> None:
        """Stop consuming: the event in hand finishes, unacked ones are redelivered later."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close()
        self.subscribed.clear()
