"""The payments service's database: one payment row per saga, and its events.

The full card number and the CVC never reach this module: a payment keeps the
card's last four digits only.

`payments.saga_id` is unique, and that one key serialises everything that can
happen to a saga's payment:

- `claim` inserts a PENDING row before the processor is called, so two
  concurrent charges of one saga cannot both reach the processor; the loser
  sees the claim (CHARGE_IN_PROGRESS, retryable) or, after it settled, the result;
- `settle` turns the claim into CAPTURED (with `payment.completed` in the same
  transaction) or DECLINED (recorded too: a retry gets the same decline);
- `unclaim` deletes the claim when the processor failed or the call was
  cancelled, so a retry charges afresh;
- `void` records a saga refunded before any charge (a compensation that
  overtook its charge) as VOIDED, and `void_stale` a saga refunded after its
  charge died (a claim older than the stale limit): a later charge of it finds the row and is
  refused instead of capturing money nobody will refund.

PENDING and VOIDED are internal: the API shows them as "no payment" (NOT_FOUND).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shop.events.v1 import events_pb2
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from mesh.db import Migration, schema
from mesh.db_lean import lean
from mesh.events import Outbox, new_envelope, outbox_migrations
from services.common.event_types import EVENTS
from services.common.money import Amount
from services.common.timestamps import as_utc, utcnow

SOURCE = "payments"

PENDING = "PENDING"
CAPTURED = "CAPTURED"
DECLINED = "DECLINED"
REFUNDED = "REFUNDED"
VOIDED = "VOIDED"

# Frozen: a released migration is never edited (see mesh/db.py); the store's
# table is the replay of these (`Tables`).


def _payments_v1(md: MetaData) -> Table:
    return Table(
        "payments",
        md,
        Column("payment_id", String(36), primary_key=True),
        Column("saga_id", String(36), nullable=False, unique=True),
        Column("status", String(16), nullable=False),
        Column("currency", String(3), nullable=False),
        Column("amount_minor", BigInteger, nullable=False),
        Column("card_last4", String(4), nullable=False),
        Column("decline_reason", String(64), nullable=False, server_default=""),
        Column("refund_reason", String(500), nullable=False, server_default=""),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="payments",
        creates=(_payments_v1,),
        compatible_with_previous=True,  # a new table
    ),
)


def migrations() -> list[Migration]:
    return [*MIGRATIONS, *outbox_migrations()]


class Tables:
    """The payments table as the migrations leave it."""

    def __init__(self) -> None:
        self.payments = schema(MIGRATIONS).tables["payments"]


@dataclass(frozen=True, slots=True)
class PaymentRow:
    payment_id: str
    saga_id: str
    status: str
    amount: Amount | None  # None for VOIDED: no amount was ever asked for
    card_last4: str
    decline_reason: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Settled:
    """A settle's outcome: the payment row as it now is, and whether this settle set it."""

    row: PaymentRow
    applied: bool


class PaymentsStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], outbox: Outbox) -> None:
        self._sessions = sessions
        self._outbox = outbox
        self._t = Tables()
        # Every order's Charge claims and settles: both statements are built once, with
        # bound parameters (building a Core statement and its cache key per call cost
        # about as much CPU as running it).
        p = self._t.payments.c
        # Marked lean (mesh.db_lean): compiled once, run as driver SQL; rows read by name.
        self._insert = lean(insert(self._t.payments))
        # RETURNING only the key: the settled row is the claim with what the UPDATE set
        # (a PENDING payment's other columns never change). Returning its DateTime
        # columns made SQLite convert them, which kept it off the lean path there.
        self._settle = lean(
            update(self._t.payments)
            .where(p.payment_id == bindparam("pid"), p.status == PENDING)
            .values(
                status=bindparam("new_status"),
                decline_reason=bindparam("reason"),
                updated_at=bindparam("now"),
            )
            .returning(p.payment_id)
        )

    @staticmethod
    def _row(r: Any) -> PaymentRow:
        amount = None if r.status == VOIDED else Amount(r.currency, r.amount_minor)
        return PaymentRow(r.payment_id, r.saga_id, r.status, amount, r.card_last4,
                          r.decline_reason, as_utc(r.created_at), as_utc(r.updated_at))  # fmt: skip

    async def _get(self, s: AsyncSession, column: str, value: str) -> PaymentRow | None:
        p = self._t.payments
        found = (await s.execute(select(p).where(p.c[column] == value))).first()
        return None if found is None else self._row(found)

    async def by_saga(self, saga_id: str) -> PaymentRow | None:
        async with self._sessions() as s:
            return await self._get(s, "saga_id", saga_id)

    async def by_id(self, payment_id: str) -> PaymentRow | None:
        async with self._sessions() as s:
            return await self._get(s, "payment_id", payment_id)

    async def claim(self, saga_id: str, amount: Amount, last4: str) -> PaymentRow | None:
        """Insert the saga's PENDING payment; None when the saga has a row already."""
        now = utcnow()
        row = PaymentRow(str(uuid.uuid4()), saga_id, PENDING, amount, last4, "", now, now)
        try:
            async with self._sessions.begin() as s:
                await s.execute(self._insert, {
                    "payment_id": row.payment_id, "saga_id": saga_id, "status": PENDING,
                    "currency": amount.currency, "amount_minor": amount.minor,
                    "card_last4": last4, "decline_reason": "", "refund_reason": "",
                    "created_at": now, "updated_at": now})  # fmt: skip
        except IntegrityError:
            return None
        return row

    async def take_over_stale(self, saga_id: str, older_than_s: float) -> bool:
        """Re-claim a PENDING payment left by a crashed charge; True if this caller got it."""
        return await self._update_stale(saga_id, older_than_s)

    async def void_stale(self, saga_id: str, older_than_s: float, reason: str) -> bool:
        """PENDING -> VOIDED for a claim whose charge died long ago (the refund of a saga
        whose charge crashed); True if this caller voided it. A later charge is refused."""
        return await self._update_stale(saga_id, older_than_s, status=VOIDED, refund_reason=reason)

    async def _update_stale(self, saga_id: str, older_than_s: float, **values: str) -> bool:
        """Touch (and change) the saga's PENDING row if it is older than `older_than_s`;
        the update's condition decides between concurrent callers."""
        p = self._t.payments.c
        now = utcnow()
        async with self._sessions.begin() as s:
            res = await s.execute(
                update(self._t.payments)
                .where(p.saga_id == saga_id, p.status == PENDING)
                .where(p.updated_at < now - timedelta(seconds=older_than_s))
                .values(updated_at=now, **values)
            )
        return bool(getattr(res, "rowcount", 0))

    async def unclaim(self, payment_id: str) -> None:
        p = self._t.payments.c
        async with self._sessions.begin() as s:
            await s.execute(
                delete(self._t.payments).where(p.payment_id == payment_id, p.status == PENDING)
            )

    async def settle(self, claim: PaymentRow, decline_reason: str) -> Settled:
        """PENDING -> CAPTURED (publishing `payment.completed`) or DECLINED.

        Only a claim still PENDING is settled. One that is not any more was voided by a
        refund (the claim had gone stale while the processor took its time) or settled
        by a charge that took it over: the row is left as it is, no event is written,
        and `Settled.applied` is False so the caller can undo what the processor did."""
        status = DECLINED if decline_reason else CAPTURED
        amount = _amount_of(claim)
        now = utcnow()
        async with self._sessions.begin() as s:
            changed = (
                await s.execute(self._settle, {"pid": claim.payment_id, "new_status": status,
                                               "reason": decline_reason, "now": now})
            ).first()  # fmt: skip
            if changed is None:
                current = await self._get(s, "payment_id", claim.payment_id)
                if current is None:
                    raise LookupError(f"payment {claim.payment_id} vanished while settling")
                return Settled(current, applied=False)
            if status == CAPTURED:
                await self._outbox.add(s, new_envelope(
                    events_pb2.PaymentCompleted(
                        payment_id=claim.payment_id, saga_id=claim.saga_id,
                        amount=amount.to_proto(), card_last4=claim.card_last4),
                    types=EVENTS, source=SOURCE, subject=claim.payment_id))  # fmt: skip
        row = replace(claim, status=status, decline_reason=decline_reason, updated_at=now)
        return Settled(row, applied=True)

    async def void(self, saga_id: str, reason: str) -> bool:
        """Record an uncharged saga as VOIDED; False when it has a payment row already."""
        now = utcnow()
        try:
            async with self._sessions.begin() as s:
                await s.execute(insert(self._t.payments).values(
                    payment_id=str(uuid.uuid4()), saga_id=saga_id, status=VOIDED, currency="",
                    amount_minor=0, card_last4="", decline_reason="", refund_reason=reason,
                    created_at=now, updated_at=now))  # fmt: skip
        except IntegrityError:
            return False
        return True

    async def refund(self, payment: PaymentRow, reason: str) -> PaymentRow | None:
        """CAPTURED -> REFUNDED with `payment.refunded`; None if it was not CAPTURED any more."""
        p = self._t.payments.c
        amount = _amount_of(payment)
        async with self._sessions.begin() as s:
            res = await s.execute(
                update(self._t.payments)
                .where(p.payment_id == payment.payment_id, p.status == CAPTURED)
                .values(status=REFUNDED, refund_reason=reason, updated_at=utcnow())
            )
            if not getattr(res, "rowcount", 0):
                return None
            await self._outbox.add(s, new_envelope(
                events_pb2.PaymentRefunded(
                    payment_id=payment.payment_id, saga_id=payment.saga_id,
                    amount=amount.to_proto(), reason=reason),
                types=EVENTS, source=SOURCE, subject=payment.payment_id))  # fmt: skip
            refunded = await self._get(s, "payment_id", payment.payment_id)
        return refunded


def _amount_of(payment: PaymentRow) -> Amount:
    if payment.amount is None:
        raise ValueError(f"payment {payment.payment_id} ({payment.status}) has no amount")
    return payment.amount
