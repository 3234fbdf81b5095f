"""The order saga and the cancel saga, orchestrated by orders on `mesh.saga`.

Placing an order (`order.place.v1`), each step idempotent by the saga id:

    validate_user       users.GetUser, once per user here     (nothing to undo)
    create_order    L   order row PENDING                     ↩ order FAILED / CANCELLED
    reserve_stock       inventory.ReserveItems(saga id)       ↩ ReleaseReservation
    record_prices   L   unit prices + total, RESERVED
    charge              payments.Charge(saga id)              ↩ Refund
    record_payment  L   payment id, PAID
    confirm_stock   L   nothing since 6 Dec 2026 (inventory confirms on `order.completed`)
    complete_order  L   COMPLETED + `order.completed` (outbox, same transaction)

L = local: runs in the transaction that records the saga's progress; consecutive
local steps share one (record_payment, confirm_stock, complete_order). Each local
step's first statement writes (`writes_first`: the runner adds no statement before
it; the advances of record_prices and record_payment carry the cancellation check
in their WHERE, the order row is read only when they match nothing). When the
saga ends COMPENSATED, `order.compensation.completed` is written to the outbox
in the transaction of that last transition.

A user users confirmed once is not asked for again by this process
(`KnownUsers`): `create_order` refuses a user whose `user.deleted` orders has
handled, in the transaction that inserts the order (NOT_FOUND, as users would
answer).

Local steps up to `record_payment` refuse to go on once the order has been
flagged for cancellation (its user was deleted): the saga then compensates and
the order ends CANCELLED. Once the payment is recorded the sale stands.

The reservation is confirmed by inventory when it handles the order's
`order.completed` (its saga id names the reservation), in the transaction that
records the sale: the order does not wait for inventory's bookkeeping, and the
units stay held (never available to another order) until then. Upgrading a running
shop: inventory first, so that no completed order's reservation stays HELD.

Cards are never stored: the card travels in memory (`CardVault`) from the
CreateOrder call to the charge step. A saga resumed after a restart has no card;
its charge step then only looks for a payment made before the crash.

Cancelling a completed order (`order.cancel.v1`, forward only): refund the
payment, return the sold units to stock (inventory.ReturnReservation of the
order's saga: once, however often it runs, and never refused by AddStock's stock
limit), mark the order CANCELLED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
from shop.common.v1 import money_pb2
from shop.events.v1 import events_pb2
from shop.inventory.v1 import inventory_pb2
from shop.payments.v1 import payments_pb2
from shop.users.v1 import users_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from base.errors import Aborted, FailedPrecondition, NotFound
from mesh.db_sessions import after_commit
from mesh.events import Outbox, new_envelope
from mesh.saga import (
    SagaContext,
    SagaDefinition,
    SagaStatus,
    SagaTransition,
    Step,
    StepRetry,
    TransitionEvent,
)
from services.common.event_types import EVENTS
from services.common.money import Amount, MoneyError, total
from services.common.validation import printable
from services.orders.config import OrdersConfig
from services.orders.known_users import KnownUsers
from services.orders.model import IN_FLIGHT, Address, Card, Line, OrderStatus
from services.orders.store import NewOrder, OrdersStore, now_us
from services.orders.upstream import Upstreams, call, has_reason

log = logging.getLogger(__name__)

PLACE = "order.place.v1"
CANCEL = "order.cancel.v1"
SOURCE = "orders"

# Remote steps: a few quick retries of transient errors, then compensate.
REMOTE_RETRY = StepRetry(max_attempts=3, initial_backoff_s=0.1, max_backoff_s=1.0)
# Payments retries nothing itself and the mesh client retries UNAVAILABLE already;
# each charge attempt may take the whole (long) charge deadline.
CHARGE_RETRY = StepRetry(max_attempts=2, initial_backoff_s=0.1, max_backoff_s=1.0)
# The cancel saga's steps (a cancelled order's refund and restock): giving up would
# leave it half undone.
CANCEL_RETRY = StepRetry(max_attempts=8, initial_backoff_s=0.1, max_backoff_s=2.0)
# A refund or release that cannot reach its service keeps trying (for minutes, with
# the default `undo_backoff_max_s`) before the saga parks: nothing is given up
# while money may be captured.
UNDO_ATTEMPTS = 20
LOCAL_RETRY = StepRetry(max_attempts=5, initial_backoff_s=0.05, max_backoff_s=1.0)


class CardVault:
    """Cards of the sagas this process started, until their charge step is done."""

    def __init__(self) -> None:
        self._cards: dict[str, Card] = {}

    def put(self, saga_id: str, card: Card) -> None:
        self._cards[saga_id] = card

    def get(self, saga_id: str) -> Card | None:
        return self._cards.get(saga_id)

    def drop(self, saga_id: str) -> None:
        self._cards.pop(saga_id, None)

    def __len__(self) -> int:
        return len(self._cards)


def place_data(
    order_id: str,
    user_id: str,
    lines: tuple[Line, ...],
    currency: str,
    card_last4: str,
    shipping: Address | None,
    api_version: int,
    key: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The saga's initial data (JSON; no card number). `key` (idempotency key,
    fingerprint) is recorded by the CREATED hook, in the saga row's transaction."""
    data: dict[str, Any] = {
        "order_id": order_id,
        "user_id": user_id,
        "lines": [[line.product_id, line.quantity] for line in lines],
        "currency": currency,
        "card_last4": card_last4,
        "shipping": None
        if shipping is None
        else {"recipient": shipping.recipient, "lines": list(shipping.lines),
              "city": shipping.city, "postal_code": shipping.postal_code,
              "country_code": shipping.country_code},
        "api_version": api_version,
    }  # fmt: skip
    if key is not None:
        data["idempotency_key"], data["fingerprint"] = key
    return data


def _lines(data: Mapping[str, Any]) -> list[tuple[str, int]]:
    return [(str(p), int(q)) for p, q in data["lines"]]


def _priced(data: Mapping[str, Any]) -> tuple[dict[str, int], int]:
    """The unit prices inventory reserved at, by product, and the order total (minor
    units); FailedPrecondition when a price is in another currency or a sum overflows."""
    currency = data["currency"]
    prices: dict[str, int] = {}
    amounts: list[Amount] = []
    for product_id, quantity, price_currency, minor in data.get("reserved", []):
        if price_currency != currency:
            raise FailedPrecondition(
                f"product {product_id} is priced in {price_currency}, the order is in {currency}",
                reason="CURRENCY_MISMATCH",
                metadata={"product_id": product_id},
            )
        prices[product_id] = int(minor)
        try:
            amounts.append(Amount(currency, int(minor)).times(int(quantity)))
        except MoneyError as exc:
            raise FailedPrecondition(str(exc), reason="AMOUNT_TOO_LARGE") from exc
    try:
        return prices, total(amounts, currency).minor
    except MoneyError as exc:
        raise FailedPrecondition(
            f"the order total is too large: {exc}", reason="AMOUNT_TOO_LARGE"
        ) from exc


def _compensated(ctx: SagaContext) -> dict[str, Any]:
    """Update recording that ctx.step was undone (the order of undoing is kept)."""
    return {"compensated": [*ctx.data.get("compensated", []), ctx.step]}


def _failure_text(ctx: SagaContext) -> str:
    """Why the saga failed, as the reason an undo passes on (at most 500 characters, and
    printable: a multi-line error message would be refused by the service undoing)."""
    if ctx.failure is None:
        return "the order was not completed"
    text = ctx.failure.message or f"step {ctx.failure.step} failed ({ctx.failure.code})"
    return printable(text, 500)


class OrderSagas:
    """The steps of both sagas, over the orders store and the upstream services."""

    def __init__(
        self,
        store: OrdersStore,
        outbox: Outbox,
        upstreams: Upstreams,
        cards: CardVault,
        config: OrdersConfig,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.up = upstreams
        self.cards = cards
        self.config = config
        self.known_users = KnownUsers()
        # Sagas of this process that failed forward (set in the transition hook):
        # CreateOrder answers from it when compensation takes long.
        self.failures: dict[str, asyncio.Future[tuple[str, str, str]]] = {}

    def definitions(self) -> dict[str, SagaDefinition]:
        undo = StepRetry(
            max_attempts=UNDO_ATTEMPTS,
            initial_backoff_s=min(0.2, self.config.undo_backoff_max_s),
            max_backoff_s=self.config.undo_backoff_max_s,
        )
        place = SagaDefinition(
            PLACE,
            [
                Step("validate_user", self.validate_user, retry=REMOTE_RETRY),
                Step("create_order", self.create_order, self.fail_order, local=True,
                     retry=LOCAL_RETRY, writes_first=True),
                Step("reserve_stock", self.reserve_stock, self.release_stock, retry=REMOTE_RETRY,
                     compensation_retry=undo),
                Step("record_prices", self.record_prices, local=True, retry=LOCAL_RETRY,
                     writes_first=True),
                Step("charge", self.charge, self.refund, retry=CHARGE_RETRY,
                     compensation_retry=undo),
                Step("record_payment", self.record_payment, local=True, retry=LOCAL_RETRY,
                     writes_first=True),
                Step("confirm_stock", self.confirm_stock, local=True, retry=LOCAL_RETRY,
                     writes_first=True),
                Step("complete_order", self.complete_order, local=True, retry=LOCAL_RETRY,
                     writes_first=True),
            ],
            on_transition=self.on_place_transition,
        )  # fmt: skip
        cancel = SagaDefinition(
            CANCEL,
            [
                Step("refund_payment", self.cancel_refund, retry=CANCEL_RETRY),
                Step("return_stock", self.cancel_restock, retry=CANCEL_RETRY),
                Step("mark_cancelled", self.mark_cancelled, local=True, retry=LOCAL_RETRY,
                     writes_first=True),
            ],
        )  # fmt: skip
        return {place.name: place, cancel.name: cancel}

    # -- the place saga ------------------------------------------------------------------

    async def validate_user(self, ctx: SagaContext) -> None:
        user_id = ctx.data["user_id"]
        if user_id in self.known_users:
            return  # a deletion since is refused by create_order
        req = users_pb2.GetUserRequest(user_id=user_id)
        await call("users", functools.partial(
            self.up.users.GetUser, req, timeout=self.config.call_timeout_s))  # fmt: skip
        self.known_users.add(user_id)

    async def create_order(self, ctx: SagaContext) -> None:
        d = ctx.data
        shipping = d.get("shipping")
        await self.store.insert_order(
            ctx.tx,
            NewOrder(
                order_id=d["order_id"],
                saga_id=ctx.saga_id,
                user_id=d["user_id"],
                lines=[Line(p, q) for p, q in _lines(d)],
                currency=d["currency"],
                card_last4=d["card_last4"],
                shipping=None
                if shipping is None
                else Address(shipping["recipient"], tuple(shipping["lines"]), shipping["city"],
                             shipping["postal_code"], shipping["country_code"]),
            ),
            now_us(),
        )  # fmt: skip
        if await self.store.user_deleted(ctx.tx, d["user_id"]):
            # Rolls the order back; nothing before this step needs undoing.
            raise NotFound(f"user {d['user_id']} not found", reason="USER_NOT_FOUND")

    async def fail_order(self, ctx: SagaContext) -> dict[str, Any]:
        """Compensation of create_order: the order ends FAILED (CANCELLED when it was
        flagged for cancellation), with the reason."""
        order_id = ctx.data["order_id"]
        head = await self.store.head(ctx.tx, order_id)
        if head is not None and head.status.in_flight:
            to = OrderStatus.CANCELLED if head.cancel_reason else OrderStatus.FAILED
            await self.store.transition(
                ctx.tx, order_id, to, allowed_from=IN_FLIGHT, reason=_failure_text(ctx)
            )
        return _compensated(ctx)

    async def reserve_stock(self, ctx: SagaContext) -> dict[str, Any]:
        req = inventory_pb2.ReserveItemsRequest(
            saga_id=ctx.saga_id,
            items=[inventory_pb2.LineItem(product_id=p, quantity=q) for p, q in _lines(ctx.data)],
        )
        reserve = self.up.reservations.ReserveItems
        reservation = await call(
            "inventory", functools.partial(reserve, req, timeout=self.config.call_timeout_s)
        )
        if reservation.status == inventory_pb2.RESERVATION_STATUS_RELEASED:
            # Released before it was taken (a compensation of an earlier attempt):
            # inventory keeps the saga released and reserves nothing any more.
            raise FailedPrecondition(
                "the stock reservation of this order was released", reason="RESERVATION_RELEASED"
            )
        return {
            "reserved": [
                [x.product_id, x.quantity, x.unit_price.currency_code, x.unit_price.amount_minor]
                for x in reservation.items
            ]
        }

    async def release_stock(self, ctx: SagaContext) -> dict[str, Any]:
        req = inventory_pb2.ReleaseReservationRequest(
            saga_id=ctx.saga_id, reason=_failure_text(ctx)
        )
        try:
            await call("inventory", functools.partial(
                self.up.reservations.ReleaseReservation, req,
                timeout=self.config.call_timeout_s))  # fmt: skip
        except Exception as exc:
            if not has_reason(exc, grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CONFIRMED"):
                raise
            # Confirmed by a confirm call whose answer was lost: the units were sold,
            # so undoing the order puts them back into stock.
            await self.restock(ctx.data["order_id"], ctx.saga_id, _lines(ctx.data),
                               reason=req.reason)  # fmt: skip
        return _compensated(ctx)

    async def record_prices(self, ctx: SagaContext) -> dict[str, Any]:
        order_id = ctx.data["order_id"]
        try:
            prices, total_minor = _priced(ctx.data)
        except FailedPrecondition:
            await self._refuse_if_cancelled(ctx.tx, order_id)  # that reason comes first
            raise
        await self.store.set_item_prices(ctx.tx, order_id, prices)
        await self._progress(ctx.tx, order_id, OrderStatus.RESERVED, {"total_minor": total_minor})
        return {"total_minor": total_minor}

    async def charge(self, ctx: SagaContext) -> dict[str, Any]:
        card = self.cards.get(ctx.saga_id)
        if card is None:
            found = await self._payment_made_before_restart(ctx)
            if found is not None:
                return self._charged(found)
            card = self.cards.get(ctx.saga_id)
        if card is not None:
            req = payments_pb2.ChargeRequest(
                saga_id=ctx.saga_id,
                amount=money_pb2.Money(
                    currency_code=ctx.data["currency"], amount_minor=ctx.data["total_minor"]
                ),
                card=payments_pb2.PaymentCard(
                    number=card.number, exp_month=card.exp_month, exp_year=card.exp_year,
                    cvc=card.cvc,
                ),
            )  # fmt: skip
            payment = await call("payments", functools.partial(
                self.up.payments.Charge, req, timeout=self.config.charge_timeout_s))  # fmt: skip
            return self._charged(payment)
        raise AssertionError("unreachable: no card and no payment")

    @staticmethod
    def _charged(payment: payments_pb2.Payment) -> dict[str, Any]:
        if payment.status == payments_pb2.PAYMENT_STATUS_CAPTURED:
            return {"payment_id": payment.payment_id}
        if payment.status == payments_pb2.PAYMENT_STATUS_DECLINED:
            raise FailedPrecondition(
                f"the card was declined: {payment.decline_reason or 'declined'}",
                reason="CARD_DECLINED",
            )
        raise FailedPrecondition(
            f"the payment of this order is {payments_pb2.PaymentStatus.Name(payment.status)}",
            reason="PAYMENT_NOT_CAPTURED",
        )

    async def _payment_made_before_restart(self, ctx: SagaContext) -> payments_pb2.Payment | None:
        """The saga's payment, for a saga resumed without its card. A charge sent before
        the crash may still be in flight at payments: look for `payment_settle_s`.
        None when the card turned up meanwhile (the client retried with its key)."""
        req = payments_pb2.GetPaymentRequest(saga_id=ctx.saga_id)
        # Only the first attempt waits: later ones (transient retries) look once.
        settle = self.config.payment_settle_s if ctx.attempt == 1 else 0.0
        deadline = time.monotonic() + settle
        delay = 0.1
        while True:
            try:
                return await call("payments", functools.partial(
                    self.up.payments.GetPayment, req,
                    timeout=self.config.call_timeout_s))  # fmt: skip
            except Exception as exc:
                if not has_reason(exc, grpc.StatusCode.NOT_FOUND, "PAYMENT_NOT_FOUND") and not (
                    getattr(exc, "code", None) == grpc.StatusCode.NOT_FOUND
                ):
                    raise
            if self.cards.get(ctx.saga_id) is not None:
                return None
            if time.monotonic() >= deadline:
                # ABORTED is transient to the saga: the step is compensated as well,
                # so a charge landing after this still gets refunded.
                raise Aborted(
                    "the card details were lost in a restart before the charge; "
                    "place the order again",
                    reason="CARD_DETAILS_LOST",
                )
            await asyncio.sleep(delay)  # polling payments for an in-flight charge
            delay = min(delay * 2, 1.0)

    async def refund(self, ctx: SagaContext) -> dict[str, Any]:
        req = payments_pb2.RefundRequest(saga_id=ctx.saga_id, reason=_failure_text(ctx))
        try:
            await call("payments", functools.partial(
                self.up.payments.Refund, req, timeout=self.config.call_timeout_s))  # fmt: skip
        except Exception as exc:
            # Never charged (declined, or the charge never arrived): nothing to give back.
            if getattr(exc, "code", None) not in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.FAILED_PRECONDITION,
            ):
                raise
            log.info("saga %s: nothing to refund (%s)", ctx.saga_id, exc)
        return _compensated(ctx)

    async def record_payment(self, ctx: SagaContext) -> None:
        order_id = ctx.data["order_id"]
        await self._progress(ctx.tx, order_id, OrderStatus.PAID,
                             {"payment_id": ctx.data["payment_id"]})  # fmt: skip
        self.cards.drop(ctx.saga_id)

    async def confirm_stock(self, ctx: SagaContext) -> None:
        """Nothing to do any more: inventory confirms the reservation when it handles the
        order's `order.completed` (with the sale, in one transaction), so an order no
        longer waits for a call whose only effect is inventory's bookkeeping.

        The step stays in its place: a saga's progress is recorded as a count of steps
        done, so a saga recorded by an earlier release resumes at the right step. It is
        local, so the runner chains record_payment, it and complete_order into one
        transaction."""

    async def complete_order(self, ctx: SagaContext) -> None:
        d = ctx.data
        order_id = d["order_id"]
        await self.store.advance(ctx.tx, order_id, OrderStatus.COMPLETED)
        payload = events_pb2.OrderCompleted(
            order_id=order_id,
            user_id=d["user_id"],
            saga_id=ctx.saga_id,
            total=money_pb2.Money(currency_code=d["currency"], amount_minor=d["total_minor"]),
            items=[events_pb2.EventLine(product_id=p, quantity=q) for p, q in _lines(d)],
        )
        await self.outbox.add(
            ctx.tx, new_envelope(payload, types=EVENTS, source=SOURCE, subject=order_id)
        )

    async def _progress(
        self, s: AsyncSession, order_id: str, to: OrderStatus, values: Mapping[str, Any]
    ) -> None:
        """Advance the order to `to` with `values` unless it was flagged for cancellation
        (then FailedPrecondition ORDER_CANCELLED). One UPDATE in the usual case: the flag is
        a condition of the advance, and the order row is read only when nothing matched
        (flagged; or already at `to` or further, which nothing in the shop does since
        orders stopped consuming `payment.completed`: the values are then set on their
        own)."""
        if await self.store.advance(s, order_id, to, values=values, uncancelled=True):
            return
        await self._refuse_if_cancelled(s, order_id)
        await self.store.set_values(s, order_id, values)

    async def _refuse_if_cancelled(self, s: AsyncSession, order_id: str) -> None:
        head = await self.store.head(s, order_id)
        if head is not None and head.cancel_reason:
            raise FailedPrecondition(
                f"the order was cancelled: {head.cancel_reason}", reason="ORDER_CANCELLED"
            )

    async def on_place_transition(self, session: AsyncSession, t: SagaTransition) -> None:
        saga = t.saga
        if t.event is TransitionEvent.CREATED and "idempotency_key" in saga.data:
            # With the saga row, or not at all: KeyTaken rolls the row back.
            d = saga.data
            await self.store.insert_key(
                session, d["user_id"], d["idempotency_key"], saga.saga_id, d["fingerprint"]
            )
            return
        if t.event is TransitionEvent.STEP_FAILED and saga.failure is not None:
            waiter = self.failures.get(saga.saga_id)
            if waiter is not None:
                f = saga.failure
                outcome = (f.code, f.message, f.reason)

                def tell() -> None:
                    # Only once the failure is recorded: a failure that did not commit
                    # is retried by recovery and may still end well.
                    if not waiter.done():
                        waiter.set_result(outcome)

                after_commit(session, tell)
        if saga.status is SagaStatus.COMPENSATED and t.event in (
            TransitionEvent.STEP_FAILED,
            TransitionEvent.STEP_COMPENSATED,
        ):
            d = saga.data
            payload = events_pb2.OrderCompensationCompleted(
                order_id=d["order_id"],
                user_id=d["user_id"],
                saga_id=saga.saga_id,
                reason=(saga.failure.message if saga.failure else "")[:2000],
                compensated_steps=list(d.get("compensated", [])),
            )
            await self.outbox.add(
                session, new_envelope(payload, types=EVENTS, source=SOURCE, subject=d["order_id"])
            )

    # -- the cancel saga -------------------------------------------------------------------

    async def cancel_refund(self, ctx: SagaContext) -> None:
        req = payments_pb2.RefundRequest(
            saga_id=ctx.data["order_saga_id"], reason=ctx.data["reason"] or "order cancelled"
        )
        try:
            await call("payments", functools.partial(
                self.up.payments.Refund, req, timeout=self.config.call_timeout_s))  # fmt: skip
        except Exception as exc:
            if getattr(exc, "code", None) is not grpc.StatusCode.NOT_FOUND:
                raise
            # A completed order was paid; a payment payments does not know is not ours
            # to give back, and must not keep the order from being cancelled.
            log.warning("cancel %s: payments knows no payment of saga %s",
                        ctx.saga_id, ctx.data["order_saga_id"])  # fmt: skip

    async def cancel_restock(self, ctx: SagaContext) -> None:
        d = ctx.data
        await self.restock(d["order_id"], d["order_saga_id"], _lines(d),
                           reason=d["reason"] or "order cancelled")  # fmt: skip

    async def mark_cancelled(self, ctx: SagaContext) -> None:
        await self.store.transition(
            ctx.tx,
            ctx.data["order_id"],
            OrderStatus.CANCELLED,
            allowed_from=[OrderStatus.COMPLETED],
            reason=ctx.data["reason"] or "cancelled by the customer",
        )

    async def restock(
        self, order_id: str, saga_id: str, lines: list[tuple[str, int]], *, reason: str
    ) -> None:
        """Put an order's sold units back: one ReturnReservation of its saga's reservation,
        which inventory carries out once however often it is asked.

        A cancel begun before ReturnReservation existed returned its units with one
        AddStock per line, each recorded right after its call (`restocked_us`); such an
        order finishes that way, or its recorded lines would come back twice."""
        done = await self.store.restocked(order_id)
        if not done:
            back = inventory_pb2.ReturnReservationRequest(saga_id=saga_id, reason=reason[:500])
            await call("inventory", functools.partial(
                self.up.reservations.ReturnReservation, back,
                timeout=self.config.call_timeout_s))  # fmt: skip
            return
        for product_id, quantity in lines:
            if product_id in done:
                continue
            req = inventory_pb2.AddStockRequest(product_id=product_id, quantity=quantity)
            await call("inventory", functools.partial(
                self.up.inventory.AddStock, req, timeout=self.config.call_timeout_s))  # fmt: skip
            await self.store.mark_restocked(order_id, product_id)
