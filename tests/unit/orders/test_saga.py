"""The order saga's paths against stand-in services: what is called, what is undone,
what the order and the outbox say afterwards."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from shop.events.v1 import events_pb2
from shop.payments.v1 import payments_pb2

from base.errors import FailedPrecondition, NotFound, Unavailable
from mesh.events import new_envelope, unpack
from mesh.saga import SagaStatus
from services.common.event_types import EVENTS
from services.orders.events import OrderEventHandlers
from services.orders.model import OrderStatus
from services.orders.saga import PLACE, place_data
from tests.support.orders_domain import Domain, fail

USER = str(uuid.uuid4())
P1, P2 = str(uuid.uuid4()), str(uuid.uuid4())


def setup(d: Domain) -> None:
    d.fake.users.add(USER)
    d.fake.prices.update({P1: 250, P2: 1000})


async def test_happy_path_completes_and_publishes(domain: Domain) -> None:
    setup(domain)
    order = await domain.orders.place(domain.order(USER, [(P1, 2), (P2, 1)]))
    assert order.status is OrderStatus.COMPLETED
    assert [c.status for c in order.history] == [
        OrderStatus.PENDING,
        OrderStatus.RESERVED,
        OrderStatus.PAID,
        OrderStatus.COMPLETED,
    ]
    assert order.total_minor == 1500 and order.payment_id
    assert [line.unit_price_minor for line in order.lines] == [250, 1000]
    [event] = await domain.events()
    assert (
        event.type == "order.completed"
        and unpack(event, events_pb2.OrderCompleted).saga_id == order.saga_id
    )
    assert len(domain.sagas.cards) == 0  # the card is gone once charged


async def test_unknown_user_compensates_nothing_and_still_tells(domain: Domain) -> None:
    setup(domain)
    with pytest.raises(NotFound) as exc:
        await domain.orders.place(domain.order(str(uuid.uuid4()), [(P1, 1)]))
    assert exc.value.reason == "USER_NOT_FOUND"
    assert domain.fake.calls["ReserveItems"] == 0
    [event] = await domain.events()
    assert event.type == "order.compensation.completed"
    assert list(unpack(event, events_pb2.OrderCompensationCompleted).compensated_steps) == []


async def test_a_user_users_confirmed_is_not_asked_for_again(domain: Domain) -> None:
    setup(domain)
    for _ in range(3):
        order = await domain.orders.place(domain.order(USER, [(P1, 1)]))
        assert order.status is OrderStatus.COMPLETED
    assert domain.fake.calls["GetUser"] == 1
    assert len(domain.sagas.known_users) == 1


async def test_a_deleted_user_this_process_knows_is_refused_without_asking(
    domain: Domain,
) -> None:
    """users still answers for the user here (the fake keeps it): only the recorded
    `user.deleted` stands between the remembered user and a new order."""
    setup(domain)
    await domain.orders.place(domain.order(USER, [(P1, 1)]))
    deleted = new_envelope(
        events_pb2.UserDeleted(user_id=USER), types=EVENTS, source="users", subject=USER
    )
    async with domain.store.sessions.begin() as s:
        await OrderEventHandlers(domain.store).user_deleted(deleted, s)

    with pytest.raises(NotFound) as exc:
        await domain.orders.place(domain.order(USER, [(P1, 1)]))
    assert exc.value.reason == "USER_NOT_FOUND"
    assert domain.fake.calls["GetUser"] == 1  # remembered, not asked
    assert domain.fake.calls["ReserveItems"] == 1  # the first order's only
    [kept] = await domain.store.list_for_user(USER)  # the refused order was not created
    assert kept.status is OrderStatus.COMPLETED
    refusal = (await domain.events())[-1]
    assert refusal.type == "order.compensation.completed"


async def test_an_order_completes_without_asking_inventory_to_confirm(domain: Domain) -> None:
    """Inventory confirms the reservation when it handles `order.completed` (the event
    names the saga): the order does not wait for a ConfirmReservation call."""
    setup(domain)
    order = await domain.orders.place(domain.order(USER, [(P1, 1)]))
    assert order.status is OrderStatus.COMPLETED
    assert domain.fake.calls["ConfirmReservation"] == 0
    assert domain.fake.reservations[order.saga_id] == "HELD"  # until the event is handled


def test_the_place_saga_keeps_its_steps_in_place(domain: Domain) -> None:
    """A saga's progress is recorded as a count of steps done: a saga recorded by an earlier
    release resumes at the step it reached only while every step keeps its position
    (`confirm_stock` stays, doing nothing)."""
    assert [step.name for step in domain.sagas.definitions()[PLACE].steps] == [
        "validate_user", "create_order", "reserve_stock", "record_prices", "charge",
        "record_payment", "confirm_stock", "complete_order"]  # fmt: skip


async def test_a_reservation_confirmed_elsewhere_is_undone_by_returning_it(
    domain: Domain,
) -> None:
    """The reservation was confirmed out of the saga's hands (an operator's
    ConfirmReservation, or a saga of an earlier release that confirmed before it failed)
    and the order then fails: undoing it returns the reservation (its units back once),
    retried after a failure."""
    setup(domain)
    domain.runner.definitions = domain.sagas.definitions()

    def confirmed_then_declined(req: object) -> None:
        domain.fake.reservations[req.saga_id] = "CONFIRMED"  # type: ignore[attr-defined]
        fail("payments", grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED")(req)

    domain.fake.faults["Charge"] = [confirmed_then_declined]
    domain.fake.faults["ReturnReservation"] = [fail("inventory", grpc.StatusCode.UNAVAILABLE)]
    with pytest.raises(FailedPrecondition):
        await domain.orders.place(domain.order(USER, [(P1, 2), (P2, 3)]))
    [order] = await domain.store.list_for_user(USER)

    # Compensation goes on in the background after the caller got its answer.
    for _ in range(500):  # poll with a deadline (10 s)
        current = await domain.store.get(order.order_id)
        if current is not None and current.status is OrderStatus.FAILED:
            break
        await asyncio.sleep(0.02)  # poll
    else:
        raise AssertionError("the order never reached FAILED")
    assert domain.fake.returned == [order.saga_id]
    assert domain.fake.calls["ReturnReservation"] == 2 and domain.fake.added == []
    assert domain.fake.calls["ReleaseReservation"] >= 1


async def test_resumed_without_card_uses_the_payment_made_before(domain: Domain) -> None:
    setup(domain)
    saga_id = str(uuid.uuid4())
    # As if charged before a crash: payments has the saga's payment, orders no card.
    domain.fake.payments[saga_id] = payments_pb2.Payment(
        payment_id="pay-1", saga_id=saga_id, status=payments_pb2.PAYMENT_STATUS_CAPTURED
    )
    data = place_data(saga_id, USER, domain.order(USER, [(P1, 1)]).lines, "USD", "4242", None, 2)
    result = await domain.runner.run(PLACE, saga_id, data)
    assert result.status is SagaStatus.COMPLETED and result.data["payment_id"] == "pay-1"
    assert domain.fake.calls["Charge"] == 0


async def test_resumed_without_card_and_without_payment_is_undone(domain: Domain) -> None:
    setup(domain)
    saga_id = str(uuid.uuid4())
    data = place_data(saga_id, USER, domain.order(USER, [(P1, 1)]).lines, "USD", "4242", None, 2)
    with pytest.raises(Exception) as exc:
        await domain.runner.run(PLACE, saga_id, data)
    assert getattr(exc.value, "reason", "") == "CARD_DETAILS_LOST"
    order = await domain.store.get(saga_id)
    assert order is not None and order.status is OrderStatus.FAILED
    # Transient: the charge step is undone too (a refund voids the saga at payments).
    assert domain.fake.calls["Refund"] == 1 and domain.fake.calls["Charge"] == 0


async def test_user_deleted_during_the_charge_cancels(domain: Domain) -> None:
    setup(domain)

    async def delete_user(saga_id: str) -> None:
        async with domain.store.sessions.begin() as s:
            await domain.store.request_cancel_of_user(s, USER, "the user was deleted")

    domain.fake.on_charge = delete_user
    with pytest.raises(FailedPrecondition) as exc:
        await domain.orders.place(domain.order(USER, [(P1, 1)]))
    assert exc.value.reason == "ORDER_CANCELLED"
    [order] = await domain.store.list_for_user(USER)
    assert order.status is OrderStatus.CANCELLED and "deleted" in order.failure_reason
    assert domain.fake.calls["Refund"] == 1


async def test_one_key_one_saga_even_concurrently(domain: Domain) -> None:
    setup(domain)
    cmd = domain.order(USER, [(P1, 1)], key="k1")
    orders = await asyncio.gather(*(domain.orders.place(cmd) for _ in range(6)))
    assert len({o.order_id for o in orders}) == 1
    assert domain.fake.calls["Charge"] == 1 and domain.fake.calls["ReserveItems"] == 1


async def test_key_of_a_transient_failure_may_try_again(domain: Domain) -> None:
    setup(domain)
    domain.fake.faults["ReserveItems"] = [fail("inventory", grpc.StatusCode.UNAVAILABLE)] * 3
    cmd = domain.order(USER, [(P1, 1)], key="k2")
    with pytest.raises(Unavailable):
        await domain.orders.place(cmd)
    again = await domain.orders.place(cmd)
    assert again.status is OrderStatus.COMPLETED
    statuses = sorted(o.status for o in await domain.store.list_for_user(USER))
    assert statuses == [OrderStatus.COMPLETED, OrderStatus.FAILED]


async def test_key_of_a_business_failure_replays_it(domain: Domain) -> None:
    setup(domain)
    domain.fake.faults["Charge"] = [
        fail("payments", grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED", "declined")
    ]
    cmd = domain.order(USER, [(P1, 1)], key="k3")
    with pytest.raises(FailedPrecondition) as first:
        await domain.orders.place(cmd)
    with pytest.raises(FailedPrecondition) as second:
        await domain.orders.place(cmd)
    assert (first.value.reason, first.value.message) == (second.value.reason, second.value.message)
    assert domain.fake.calls["Charge"] == 1


async def test_cancel_refunds_restocks_and_resumes_after_a_failure(domain: Domain) -> None:
    setup(domain)
    order = await domain.orders.place(domain.order(USER, [(P1, 2), (P2, 1)]))
    domain.fake.faults["ReturnReservation"] = [
        fail("inventory", grpc.StatusCode.FAILED_PRECONDITION, "SOMETHING_WRONG")
    ]
    with pytest.raises(FailedPrecondition):
        await domain.orders.cancel(order.order_id, "changed my mind")
    assert (await domain.store.get(order.order_id)).status is OrderStatus.COMPLETED  # type: ignore[union-attr]
    cancelled = await domain.orders.cancel(order.order_id, "changed my mind")
    assert cancelled.status is OrderStatus.CANCELLED
    assert domain.fake.returned == [order.saga_id] and domain.fake.added == []
    assert domain.fake.payments[order.saga_id].status == payments_pb2.PAYMENT_STATUS_REFUNDED
    assert await domain.orders.cancel(order.order_id, "again") == cancelled


async def test_a_cancel_begun_per_line_with_add_stock_finishes_that_way(domain: Domain) -> None:
    """A cancel interrupted before ReturnReservation existed had returned some lines with
    AddStock and recorded them: returning the whole reservation would add those twice,
    so the order finishes line by line (the lines not recorded yet)."""
    setup(domain)
    order = await domain.orders.place(domain.order(USER, [(P1, 2), (P2, 1)]))
    await domain.store.mark_restocked(order.order_id, P1)  # its AddStock done before the upgrade
    cancelled = await domain.orders.cancel(order.order_id, "changed my mind")
    assert cancelled.status is OrderStatus.CANCELLED
    assert domain.fake.added == [(P2, 1)] and domain.fake.returned == []


async def test_an_undo_passes_on_a_multi_line_failure_as_a_printable_reason(
    domain: Domain,
) -> None:
    """The failure's message becomes the release's and the refund's reason, which the
    services validate as text: a newline in it would have the undo refused (and retried
    until the saga parked) with INVALID_ARGUMENT."""
    setup(domain)
    reasons: list[str] = []
    domain.fake.faults["Charge"] = [
        fail("payments", grpc.StatusCode.FAILED_PRECONDITION, "CARD_DECLINED",
             message="declined\nby the bank\x00")
    ]  # fmt: skip
    domain.fake.faults["ReleaseReservation"] = [lambda req: reasons.append(req.reason)]
    with pytest.raises(FailedPrecondition):
        await domain.orders.place(domain.order(USER, [(P1, 1)]))
    for _ in range(500):  # poll with a deadline (10 s): compensation runs in the background
        if reasons:
            break
        await asyncio.sleep(0.02)  # poll
    assert reasons == ["declined by the bank "]
