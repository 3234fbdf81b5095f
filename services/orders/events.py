"""Events orders consumes: `user.deleted` and `payment.completed`.

- `user.deleted`: the user's orders still being placed are flagged; their sagas
  see the flag at their next local step, compensate (refund, release) and end
  CANCELLED. Completed orders stay as they are.
- `payment.completed`: the saga's order is marked PAID. The saga does the same
  itself, so whichever comes first wins and the other changes nothing.

Both run through the inbox: a redelivered event has no second effect. The
subscriptions are durable consumers shared by every orders instance, so each
event is handled by one of them. NATS is optional: until it is reachable the
subscriber keeps trying in the background (the outbox relay reports the
service degraded meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shop.events.v1 import events_pb2
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.events import EventBus, Inbox, SubscribeOptions
from services.orders.store import OrdersStore

log = logging.getLogger(__name__)

CONSUMER = "orders"
USER_DELETED_REASON = "the user was deleted"


class OrderEventHandlers:
    def __init__(self, store: OrdersStore) -> None:
        self.store = store

    async def user_deleted(self, env: events_pb2.Envelope, session: AsyncSession) -> None:
        if env.WhichOneof("payload") != "user_deleted":
            log.warning("event %s on user.deleted carries %s; ignored", env.id,
                        env.WhichOneof("payload"))  # fmt: skip
            return
        flagged = await self.store.request_cancel_of_user(
            session, env.user_deleted.user_id, USER_DELETED_REASON
        )
        if flagged:
            log.info("user %s deleted: cancelling %d order(s) in flight",
                     env.user_deleted.user_id, len(flagged))  # fmt: skip

    async def payment_completed(self, env: events_pb2.Envelope, session: AsyncSession) -> None:
        if env.WhichOneof("payload") != "payment_completed":
            log.warning("event %s on payment.completed carries %s; ignored", env.id,
                        env.WhichOneof("payload"))  # fmt: skip
            return
        p = env.payment_completed
        await self.store.mark_paid_by_saga(session, p.saga_id, p.payment_id)


class EventSubscriber:
    """Connects to NATS in the background (retrying forever) and subscribes the handlers."""

    def __init__(
        self,
        nats_url: str,
        sessions: async_sessionmaker[AsyncSession],
        handlers: OrderEventHandlers,
        *,
        name: str,
        options: SubscribeOptions | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.inbox = Inbox(sessions, CONSUMER)
        self.handlers = handlers
        self.name = name
        self.options = options
        self.bus: EventBus | None = None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def start(self) -> None:
        if self.nats_url and self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self.name}-subscriber")

    async def _run(self) -> None:
        delay = 0.2
        while True:
            try:
                bus = self.bus = await EventBus.connect(self.nats_url, name=f"{self.name}-sub")
                await bus.ensure_streams()
                await bus.subscribe(
                    "user.deleted",
                    self.inbox.idempotent(self.handlers.user_deleted),
                    durable="orders-user-deleted",
                    options=self.options,
                )
                await bus.subscribe(
                    "payment.completed",
                    self.inbox.idempotent(self.handlers.payment_completed),
                    durable="orders-payment-completed",
                    options=self.options,
                )
                self.subscribed.set()
                log.info("%s: consuming user.deleted and payment.completed", self.name)
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
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        bus, self.bus = self.bus, None
        if bus is not None:
            await bus.close()
