"""Events inventory consumes: `order.completed`.

Each completed order confirms its reservation (HELD -> CONFIRMED: the held units
are sold; the saga no longer calls ConfirmReservation) and is recorded as a sale
(`sales` ledger, one row per line); for each of its products, stock is checked
against INVENTORY_LOW_STOCK_THRESHOLD: an `inventory.low_stock` still due for this
crossing goes to the outbox in the same transaction (the confirmation reports it
first; the flag on the product keeps it to one event per crossing).

The handler runs through the inbox (`mesh_inbox`, consumer "inventory"): the
event id commits with the sale, so a redelivery (lost ack, relay republish after
a crash, NATS restart) records nothing twice. The subscription is a durable
consumer shared by every inventory instance, so each event is handled by one of
them. The consume loop runs the handler in a span continuing the producer's
trace (`traceparent` header); the handler's own span is its child, and the log
line and the sale rows carry that trace id: a sale leads back to its CreateOrder.

Connecting, subscribing and stopping is `EventSubscriber`'s job
(mesh/events/service.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from meshproto.events.v1.envelope_pb2 import Envelope
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, TracerProvider
from shop.events.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.events import extract_context, unpack
from mesh.events.errors import UnknownEventError
from mesh.events.service import SubscriptionSpec
from services.inventory.store import RELEASED, InventoryStore, Sale

log = logging.getLogger(__name__)

# The inbox's consumer name; the durable consumers' names start with it.
CONSUMER = "inventory"
ORDER_COMPLETED = "order.completed"
ORDER_COMPLETED_DURABLE = "inventory-order-completed"


def trace_context(env: Envelope) -> Context | None:
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

    def subscriptions(self) -> tuple[SubscriptionSpec, ...]:
        return (SubscriptionSpec(ORDER_COMPLETED, ORDER_COMPLETED_DURABLE, self.order_completed),)

    async def order_completed(self, env: Envelope, session: AsyncSession) -> None:
        try:
            order = unpack(env, events_pb2.OrderCompleted)
        except UnknownEventError as exc:
            log.warning("event on %s ignored: %s", ORDER_COMPLETED, exc)
            return
        with self.tracer.start_as_current_span(
            "inventory.record_sale",
            context=trace_context(env),
            kind=SpanKind.INTERNAL,
            attributes={"shop.order_id": order.order_id, "messaging.message.id": env.id},
        ) as span:
            span_context = span.get_span_context()
            trace_id = f"{span_context.trace_id:032x}" if span_context.is_valid else ""
            if order.saga_id:  # every order's event has one; a hand-made event may not
                await self._confirm(session, order)
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

    async def _confirm(self, session: AsyncSession, order: events_pb2.OrderCompleted) -> None:
        """The order's reservation HELD -> CONFIRMED, in the inbox transaction: a completed
        order's units are sold. Nothing to refuse here: the order is complete whatever
        inventory holds, so a missing or released reservation is logged, and the sale is
        recorded as the order says (also when the order was cancelled before this event
        was handled: its reservation is RETURNED, and stays so)."""
        reservation = await self.store.confirm_in(session, order.saga_id)
        if reservation is None:
            log.warning("order %s completed without a reservation of saga %s here",
                        order.order_id, order.saga_id)  # fmt: skip
        elif reservation.status == RELEASED:
            log.warning("order %s completed, but its reservation (saga %s) was released",
                        order.order_id, order.saga_id)  # fmt: skip


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
