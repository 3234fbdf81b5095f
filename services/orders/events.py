"""Events orders consumes: `user.deleted` and `payment.completed`.

- `user.deleted`: the id is recorded (no new order of it is created, see
  services/orders/known_users.py) and the user's orders still being placed are
  flagged; their sagas see the flag at their next local step, compensate
  (refund, release) and end CANCELLED. Completed orders stay as they are.
- `payment.completed`: the saga's order is marked PAID. The saga does the same
  itself, so whichever comes first wins and the other changes nothing.

Both run through the inbox (consumer "orders"): a redelivered event has no
second effect. The subscriptions are durable consumers shared by every orders
instance, so each event is handled by one of them. Connecting, subscribing and
stopping is `EventSubscriber`'s job (services/common/events.py).
"""

from __future__ import annotations

import logging

from meshproto.events.v1.envelope_pb2 import Envelope
from shop.events.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from mesh.events import unpack
from mesh.events.errors import UnknownEventError
from services.common.events import SubscriptionSpec
from services.orders.store import OrdersStore

log = logging.getLogger(__name__)

# The inbox's consumer name; the durable consumers' names start with it.
CONSUMER = "orders"
USER_DELETED_REASON = "the user was deleted"


class OrderEventHandlers:
    def __init__(self, store: OrdersStore) -> None:
        self.store = store

    def subscriptions(self) -> tuple[SubscriptionSpec, ...]:
        return (
            SubscriptionSpec("user.deleted", "orders-user-deleted", self.user_deleted),
            SubscriptionSpec(
                "payment.completed", "orders-payment-completed", self.payment_completed
            ),
        )

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

    async def payment_completed(self, env: Envelope, session: AsyncSession) -> None:
        try:
            p = unpack(env, events_pb2.PaymentCompleted)
        except UnknownEventError as exc:
            log.warning("event on payment.completed ignored: %s", exc)
            return
        await self.store.mark_paid_by_saga(session, p.saga_id, p.payment_id)
