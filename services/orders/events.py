"""The event orders consumes: `user.deleted`.

The id is recorded (no new order of it is created, see
services/orders/known_users.py) and the user's orders still being placed are
flagged; their sagas see the flag at their next local step, compensate (refund,
release) and end CANCELLED. Completed orders stay as they are.

It runs through the inbox (consumer "orders"): a redelivered event has no second
effect. The subscription is a durable consumer shared by every orders instance,
so each event is handled by one of them. Connecting, subscribing and stopping is
`EventSubscriber`'s job (mesh/events/service.py).

Why not `payment.completed` (consumed until 6 Dec 2026, marking the saga's order PAID):
the saga records the payment itself, in the transaction of its `record_payment` step, so
the handler only ever raced the saga to the same state. It cost an event delivery, a
consume, an inbox transaction of four statements and two more statements in the saga's
step whenever it won (most of the time), about a tenth of an order's CPU across the shop
(`python -m bench orders`, 16 clients, nine alternating pairs: 10.5 % less CPU per order
and 13 % more orders/s at the medians; docs/performance-log.md, "Orders no longer
consume `payment.completed`"). A charge whose answer is lost is found again by the
resumed saga (`OrderSagas.charge` asks payments for the saga's payment). Payments still
publishes the event, for integrations.
"""

from __future__ import annotations

import logging

from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.events import unpack
from mesh.events.errors import UnknownEventError
from mesh.events.service import SubscriptionSpec
from services.orders.store import OrdersStore

log = logging.getLogger(__name__)

# The inbox's consumer name; the durable consumers' names start with it.
CONSUMER = "orders"
USER_DELETED_REASON = "the user was deleted"


class OrderEventHandlers:
    def __init__(self, store: OrdersStore) -> None:
        self.store = store

    def subscriptions(self) -> tuple[SubscriptionSpec, ...]:
        return (SubscriptionSpec("user.deleted", "orders-user-deleted", self.user_deleted),)

    async def user_deleted(self, env: Envelope, session: AsyncSession) -> None:
        try:
            deleted = unpack(env, events_pb2.UserDeleted)
        except UnknownEventError as exc:
            log.warning("event on user.deleted ignored: %s", exc)
            return
        await self.store.record_user_deleted(session, deleted.user_id)
        flagged = await self.store.request_cancel_of_user(
            session, deleted.user_id, USER_DELETED_REASON
        )
        if flagged:
            log.info("user %s deleted: cancelling %d order(s) in flight",
                     deleted.user_id, len(flagged))  # fmt: skip
