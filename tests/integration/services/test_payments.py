"""The payments service over gRPC on loopback, against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from shop.common.v1 import money_pb2
from shop.events.v1 import events_pb2
from shop.payments.v1 import payments_pb2 as pay
from shop.payments.v1 import payments_pb2_grpc
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.events import unpack
from services.common.cards import CardInput
from services.common.money import Amount
from services.payments.app import build
from services.payments.charges import Payments
from services.payments.config import PaymentsConfig
from services.payments.processor import (
    APPROVE,
    DECLINE,
    INSUFFICIENT_FUNDS,
    PROCESSOR_ERROR,
    SLOW,
    Decision,
    SimulatedProcessor,
)
from services.payments.store import PaymentRow, PaymentsStore, Settled
from tests.support.services import (
    Served,
    dump_text,
    outbox_events,
    rpc_error_details,
    serve,
    service_settings,
)

SLOW_DELAY_S = 0.3
NEXT_YEAR = datetime.now(UTC).year + 1


@pytest.fixture
async def served(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Served]:
    s = await serve(
        build,
        service_settings("payments", tmp_path),
        engine=engine,
        config=PaymentsConfig(slow_card_delay_s=SLOW_DELAY_S),
    )
    yield s
    await s.close()


def payments(s: Served) -> payments_pb2_grpc.PaymentServiceAsyncStub:
    return payments_pb2_grpc.PaymentServiceStub(s.channel)  # type: ignore[return-value]


def card(number: str = APPROVE, **kw: object) -> pay.PaymentCard:
    fields: dict[str, object] = {"number": number, "exp_month": 12, "exp_year": NEXT_YEAR,
                                 "cvc": "123"}  # fmt: skip
    fields.update(kw)
    return pay.PaymentCard(**fields)  # type: ignore[arg-type]


def eur(minor: int, currency: str = "EUR") -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=minor)


def charge_req(saga_id: str, number: str = APPROVE, minor: int = 4200) -> pay.ChargeRequest:
    return pay.ChargeRequest(saga_id=saga_id, amount=eur(minor), card=card(number))


def saga() -> str:
    return str(uuid.uuid4())


async def test_charge_captures_once_per_saga(served: Served, engine: AsyncEngine) -> None:
    sid = saga()
    p = await payments(served).Charge(charge_req(sid))
    assert (p.saga_id, p.status, p.card_last4, p.amount) == (
        sid, pay.PAYMENT_STATUS_CAPTURED, "4242", eur(4200))  # fmt: skip
    assert p.decline_reason == "" and p.create_time.seconds > 0
    assert await payments(served).Charge(charge_req(sid)) == p
    assert await payments(served).GetPayment(pay.GetPaymentRequest(payment_id=p.payment_id)) == p
    assert await payments(served).GetPayment(pay.GetPaymentRequest(saga_id=sid)) == p
    events = await outbox_events(engine)
    assert [e.type for e in events] == ["payment.completed"]
    done = unpack(events[0], events_pb2.PaymentCompleted)
    assert (done.payment_id, done.saga_id, done.amount, done.card_last4) == (
        p.payment_id, sid, eur(4200), "4242")  # fmt: skip
    # Same saga, another amount: refused, not charged twice.
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(sid, minor=4300))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(err.value).reason == "IDEMPOTENCY_MISMATCH"
    # Any other Luhn-valid number is approved.
    other = await payments(served).Charge(charge_req(saga(), "5555 5555 5555 4444"))
    assert other.status == pay.PAYMENT_STATUS_CAPTURED and other.card_last4 == "4444"


async def test_number_only_cards_are_charged_and_half_cards_refused(served: Served) -> None:
    # Orders v1 carries a card number only: no expiry, no CVC.
    bare = pay.PaymentCard(number=APPROVE)
    p = await payments(served).Charge(pay.ChargeRequest(saga_id=saga(), amount=eur(100), card=bare))
    assert p.status == pay.PAYMENT_STATUS_CAPTURED and p.card_last4 == "4242"
    half = pay.PaymentCard(number=APPROVE, exp_month=12)
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(pay.ChargeRequest(saga_id=saga(), amount=eur(100), card=half))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_declines_are_recorded_and_replayed(served: Served, engine: AsyncEngine) -> None:
    sid = saga()
    seen = []
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            await payments(served).Charge(charge_req(sid, DECLINE))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = rpc_error_details(err.value)
        assert details.reason == "CARD_DECLINED"
        assert details.metadata["decline_code"] == "card_declined"
        seen.append(details.metadata["payment_id"])
    assert seen[0] == seen[1]  # the retry got the recorded decline, not a new attempt
    p = await payments(served).GetPayment(pay.GetPaymentRequest(saga_id=sid))
    assert (p.status, p.decline_reason, p.payment_id) == (
        pay.PAYMENT_STATUS_DECLINED, "card_declined", seen[0])  # fmt: skip
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(saga(), INSUFFICIENT_FUNDS))
    assert rpc_error_details(err.value).metadata["decline_code"] == "insufficient_funds"
    # Refunding a declined charge is a no-op; nothing was published.
    refunded = await payments(served).Refund(pay.RefundRequest(saga_id=sid))
    assert refunded.status == pay.PAYMENT_STATUS_DECLINED
    assert await outbox_events(engine) == []


async def test_processor_error_is_unavailable_every_time(served: Served) -> None:
    sid = saga()
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as err:
            await payments(served).Charge(charge_req(sid, PROCESSOR_ERROR))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_error_details(err.value).reason == "PROCESSOR_UNAVAILABLE"
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).GetPayment(pay.GetPaymentRequest(saga_id=sid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # Nothing was kept: the saga can still be charged with a working card.
    p = await payments(served).Charge(charge_req(sid))
    assert p.status == pay.PAYMENT_STATUS_CAPTURED


async def test_slow_card_and_deadlines(served: Served, engine: AsyncEngine) -> None:
    started = time.monotonic()
    p = await payments(served).Charge(charge_req(saga(), SLOW))
    assert p.status == pay.PAYMENT_STATUS_CAPTURED
    assert time.monotonic() - started >= SLOW_DELAY_S
    # A caller that gives up first: nothing captured, and a retry charges.
    sid = saga()
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(sid, SLOW), timeout=SLOW_DELAY_S / 3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 5
    while True:  # the server drops the claim when its handler is cancelled
        try:
            again = await payments(served).Charge(charge_req(sid, SLOW))
            break
        except grpc.RpcError as exc:
            assert rpc_error_details(exc).reason == "CHARGE_IN_PROGRESS", exc
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)  # poll
    assert again.status == pay.PAYMENT_STATUS_CAPTURED
    assert [e.type for e in await outbox_events(engine)] == ["payment.completed"] * 2


async def test_concurrent_duplicate_charges_capture_once(
    served: Served, engine: AsyncEngine
) -> None:
    sid = saga()
    results = await asyncio.gather(
        *(payments(served).Charge(charge_req(sid, SLOW)) for _ in range(5)),
        return_exceptions=True,
    )
    captured = [r for r in results if isinstance(r, pay.Payment)]
    busy = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(captured) >= 1 and len({c.payment_id for c in captured}) == 1
    for b in busy:
        assert b.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_error_details(b).reason == "CHARGE_IN_PROGRESS"
    assert [e.type for e in await outbox_events(engine)] == ["payment.completed"]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT COUNT(*) FROM payments")) == 1


async def _stale_claim(engine: AsyncEngine, saga_id: str) -> None:
    """The PENDING row of a charge that claimed the saga an hour ago and died."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO payments (payment_id, saga_id, status, currency, amount_minor,"
                " card_last4, decline_reason, refund_reason, created_at, updated_at)"
                " VALUES (:p, :s, 'PENDING', 'EUR', 4200, '4242', '', '', :t, :t)"
            ),
            {"p": str(uuid.uuid4()), "s": saga_id, "t": datetime.now(UTC) - timedelta(hours=1)},
        )


async def test_a_crashed_claim_is_taken_over(served: Served, engine: AsyncEngine) -> None:
    sid = saga()
    await _stale_claim(engine, sid)  # a charge that claimed the saga and died, long ago
    p = await payments(served).Charge(charge_req(sid))
    assert p.status == pay.PAYMENT_STATUS_CAPTURED


async def test_a_charge_cancelled_while_claiming_leaves_no_claim(
    served: Served, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's insert commits in a worker thread; a caller cancelled while it waits
    for the commit (its deadline, or its process killed) must not leave PENDING behind,
    which would answer the saga's refund "in progress" until the claim went stale."""
    real_claim = PaymentsStore.claim
    caller_gone = asyncio.Event()

    async def slow_to_return(self: PaymentsStore, *args: Any) -> PaymentRow | None:
        row = await real_claim(self, *args)  # committed
        await caller_gone.wait()  # ... and returns only after the caller was cancelled
        return row

    # The client's deadline can fire before the server cancels the handler (the server
    # times the call from its own arrival): the claim must return only once the handler
    # was cancelled, or the charge just goes on and captures (seen under load).
    real_release = Payments._release
    handler_cancelled = asyncio.Event()

    async def noting_release(self: Payments, insert: asyncio.Future[PaymentRow | None]) -> None:
        handler_cancelled.set()
        await real_release(self, insert)

    monkeypatch.setattr(PaymentsStore, "claim", slow_to_return)
    monkeypatch.setattr(Payments, "_release", noting_release)
    sid = saga()
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(sid), timeout=SLOW_DELAY_S / 3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    async with asyncio.timeout(5):
        await handler_cancelled.wait()  # the server cancelled the handler mid-claim
    caller_gone.set()

    async def claims() -> int:
        async with engine.connect() as conn:
            query = text("SELECT COUNT(*) FROM payments WHERE saga_id = :s")
            return int(await conn.scalar(query, {"s": sid}) or 0)

    deadline = time.monotonic() + 5
    while await claims():
        assert time.monotonic() < deadline, "the cancelled charge's claim was left behind"
        await asyncio.sleep(0.05)  # poll
    monkeypatch.setattr(PaymentsStore, "claim", real_claim)
    assert (await payments(served).Charge(charge_req(sid))).status == pay.PAYMENT_STATUS_CAPTURED


async def test_a_charge_cancelled_after_the_processor_decided_is_recorded(
    served: Served, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the processor has answered, the outcome is recorded even if the caller is
    cancelled before the settle commits: a PENDING row left there would block the saga's
    refund until the claim went stale."""
    real_settle = PaymentsStore.settle
    settling = asyncio.Event()
    caller_gone = asyncio.Event()

    async def slow_to_settle(self: PaymentsStore, *args: Any) -> Settled:
        settling.set()  # the processor has decided
        await caller_gone.wait()  # the settle starts only after the caller was cancelled
        return await real_settle(self, *args)

    monkeypatch.setattr(PaymentsStore, "settle", slow_to_settle)
    sid = saga()
    # The deadline must fall after the processor decided: 1 s leaves the claim and the
    # processor room on a loaded CI box (0.1 s did not: the claim was still being made,
    # and rightly dropped). The settle waits for `caller_gone`, so the deadline fires in it.
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(sid), timeout=1.0)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert settling.is_set(), "the deadline fired before the processor decided"
    caller_gone.set()

    async def status() -> str | None:
        async with engine.connect() as conn:
            query = text("SELECT status FROM payments WHERE saga_id = :s")
            return await conn.scalar(query, {"s": sid})  # type: ignore[no-any-return]

    deadline = time.monotonic() + 5
    while await status() != "CAPTURED":
        assert time.monotonic() < deadline, f"the decided charge stayed {await status()}"
        await asyncio.sleep(0.05)  # poll


async def test_a_refund_voids_a_stale_claim(served: Served, engine: AsyncEngine) -> None:
    sid = saga()
    await _stale_claim(engine, sid)  # a charge that claimed the saga and died, long ago
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Refund(pay.RefundRequest(saga_id=sid, reason="compensation"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was captured
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(sid))
    assert rpc_error_details(err.value).reason == "SAGA_VOIDED"


class HeldProcessor:
    """The processor's first answer held until the test releases it (a charge outliving
    `PAYMENTS_STALE_CLAIM_S`); later charges are answered at once. Reversals are noted."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.at_processor = asyncio.Event()
        self.release = asyncio.Event()
        self.reversed: list[tuple[str, int]] = []
        real_charge = SimulatedProcessor.charge
        held = self

        async def charge(self: SimulatedProcessor, card: CardInput, amount: Amount) -> Decision:
            if not held.at_processor.is_set():
                held.at_processor.set()
                await held.release.wait()
            return await real_charge(self, card, amount)

        async def reverse(self: SimulatedProcessor, card: CardInput, amount: Amount) -> None:
            held.reversed.append((card.last4, amount.minor))

        monkeypatch.setattr(SimulatedProcessor, "charge", charge)
        monkeypatch.setattr(SimulatedProcessor, "reverse", reverse)


async def _charge_stuck_past_the_stale_limit(
    served: Served, engine: AsyncEngine, processor: HeldProcessor, saga_id: str
) -> asyncio.Future[pay.Payment]:
    """A Charge of `saga_id` held at the processor, its claim made an hour old (as a
    charge stuck that long leaves it); the call, still waiting for its answer."""
    charging = asyncio.ensure_future(payments(served).Charge(charge_req(saga_id)))
    async with asyncio.timeout(5):
        await processor.at_processor.wait()
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE payments SET updated_at = :t WHERE saga_id = :s AND status = 'PENDING'"),
            {"s": saga_id, "t": datetime.now(UTC) - timedelta(hours=1)},
        )
    return charging


async def test_an_approval_after_the_refund_voided_the_claim_is_reversed(
    served: Served, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The processor approves a charge whose claim a refund voided meanwhile (the charge
    took longer than the stale limit): nobody would ever refund that money, so the
    approval is given back, no `payment.completed` is written, and the charge answers
    SAGA_VOIDED (it used to answer OK with no status and publish the capture)."""
    processor = HeldProcessor(monkeypatch)
    sid = saga()
    charging = await _charge_stuck_past_the_stale_limit(served, engine, processor, sid)
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Refund(pay.RefundRequest(saga_id=sid, reason="compensation"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing captured: voided
    processor.release.set()
    with pytest.raises(grpc.RpcError) as err:
        await charging
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(err.value).reason == "SAGA_VOIDED"
    assert processor.reversed == [("4242", 4200)]
    assert await outbox_events(engine) == []
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).GetPayment(pay.GetPaymentRequest(saga_id=sid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_charge_settled_by_its_taker_over_reverses_its_own_approval(
    served: Served, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A charge stuck past the stale limit is taken over by a retry, which captures; when
    the stuck one's approval comes, it is reversed and the first capture is the answer:
    one capture, one `payment.completed` (there used to be two of each)."""
    processor = HeldProcessor(monkeypatch)
    sid = saga()
    stuck = await _charge_stuck_past_the_stale_limit(served, engine, processor, sid)
    retried = await payments(served).Charge(charge_req(sid))
    assert retried.status == pay.PAYMENT_STATUS_CAPTURED
    processor.release.set()
    first = await stuck
    assert (first.payment_id, first.status) == (retried.payment_id, retried.status)
    assert processor.reversed == [("4242", 4200)]
    assert [e.type for e in await outbox_events(engine)] == ["payment.completed"]


async def test_a_refund_of_a_fresh_claim_is_told_to_wait(
    served: Served, engine: AsyncEngine
) -> None:
    sid = saga()
    charging = asyncio.ensure_future(payments(served).Charge(charge_req(sid, SLOW)))
    deadline = time.monotonic() + 5
    while True:  # the slow charge has claimed the saga
        async with engine.connect() as conn:
            if await conn.scalar(text("SELECT status FROM payments WHERE saga_id = :s"),
                                 {"s": sid}) == "PENDING":  # fmt: skip
                break
        assert time.monotonic() < deadline, "the charge never claimed the saga"
        await asyncio.sleep(0.02)  # poll
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Refund(pay.RefundRequest(saga_id=sid))
    assert rpc_error_details(err.value).reason == "CHARGE_IN_PROGRESS"
    assert (await charging).status == pay.PAYMENT_STATUS_CAPTURED


async def test_refund_once_and_refund_before_charge(served: Served, engine: AsyncEngine) -> None:
    sid = saga()
    p = await payments(served).Charge(charge_req(sid))
    r = await payments(served).Refund(pay.RefundRequest(saga_id=sid, reason="out of stock"))
    assert (r.payment_id, r.status) == (p.payment_id, pay.PAYMENT_STATUS_REFUNDED)
    assert await payments(served).Refund(pay.RefundRequest(saga_id=sid)) == r
    events = await outbox_events(engine)
    assert [e.type for e in events] == ["payment.completed", "payment.refunded"]
    assert unpack(events[1], events_pb2.PaymentRefunded).reason == "out of stock"
    assert unpack(events[1], events_pb2.PaymentRefunded).amount == eur(4200)
    # Charging a refunded saga returns it, and does not charge again.
    assert (await payments(served).Charge(charge_req(sid))).status == pay.PAYMENT_STATUS_REFUNDED

    # A compensation that overtakes its charge: NOT_FOUND, and the late charge is refused.
    late = saga()
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Refund(pay.RefundRequest(saga_id=late, reason="compensating"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert rpc_error_details(err.value).reason == "PAYMENT_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(charge_req(late))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rpc_error_details(err.value).reason == "SAGA_VOIDED"
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).GetPayment(pay.GetPaymentRequest(saga_id=late))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(await outbox_events(engine)) == 2


@pytest.mark.parametrize(
    ("request_", "fields"),
    [
        (pay.ChargeRequest(), {"saga_id", "amount", "card"}),
        (
            pay.ChargeRequest(saga_id=str(uuid.uuid4()), amount=eur(0, "XYZ"),
                              card=card("4242424242424241", cvc="12", exp_month=13)),
            {"amount.currency_code", "amount.amount_minor", "card.number", "card.cvc",
             "card.exp_month"},
        ),
        (
            pay.ChargeRequest(saga_id="nope", amount=eur(2**63 - 1),
                              card=card(exp_year=2001, exp_month=1)),
            {"saga_id", "amount.amount_minor", "card.exp_year"},
        ),
        (
            pay.ChargeRequest(saga_id=str(uuid.uuid4()), amount=eur(-5, "usd"),
                              card=card("42424242abc", exp_year=99)),
            {"amount.currency_code", "amount.amount_minor", "card.number", "card.exp_year"},
        ),
    ],
)  # fmt: skip
async def test_charge_validation(
    served: Served, request_: pay.ChargeRequest, fields: set[str]
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        await payments(served).Charge(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = rpc_error_details(err.value)
    assert set(details.violations) == fields
    if request_.card.number:
        assert request_.card.number not in (err.value.details() or "")
        assert request_.card.number not in str(details)


async def test_other_requests_validation(served: Served) -> None:
    cases = [
        (payments(served).GetPayment, pay.GetPaymentRequest(), {"key"}),
        (payments(served).GetPayment, pay.GetPaymentRequest(payment_id="x"), {"payment_id"}),
        (payments(served).Refund, pay.RefundRequest(saga_id=""), {"saga_id"}),
        (payments(served).Refund, pay.RefundRequest(saga_id=saga(), reason="\x00"), {"reason"}),
    ]
    for call, req, fields in cases:
        with pytest.raises(grpc.RpcError) as err:
            await call(req)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(rpc_error_details(err.value).violations) == fields


async def test_card_numbers_never_stored_or_logged(
    served: Served, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    approved = [APPROVE, "5555555555554444", "5105105105105100"]
    refused = [DECLINE, PROCESSOR_ERROR, "4242424242424241"]  # declined, outage, not Luhn
    sids = []
    for number in approved:
        sids.append(saga())
        await payments(served).Charge(charge_req(sids[-1], number))
    for number in refused:
        with pytest.raises(grpc.RpcError) as err:
            await payments(served).Charge(charge_req(saga(), number))
        assert number not in (err.value.details() or "")
    await payments(served).Refund(pay.RefundRequest(saga_id=sids[0]))
    stored = await dump_text(engine)  # every table, the outbox's event bodies included
    logged = caplog.text
    assert "4444" in stored and "****4444" in logged  # the last four are kept and logged
    for number in approved + refused:
        assert number not in stored, number
        assert number not in logged, number
    async with engine.connect() as conn:
        columns = await conn.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("payments")}
        )
    assert not {"cvc", "number", "card_number", "exp_month", "exp_year"} & columns
