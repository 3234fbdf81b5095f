"""Charging and refunding, idempotent by saga id, between the servicer and the store.

Charge: the saga's payment row is claimed (PENDING) before the processor is
called, then settled as CAPTURED or DECLINED. A repeat of a settled charge
returns the first result (a decline is raised again); a repeat with another
amount or card is refused. A processor outage or a cancelled call (deadline, or
the caller's process killed) drops the claim, so the charge can be retried; a
claim left behind by a crashed payments process goes stale after
`PAYMENTS_STALE_CLAIM_S`, and then a charge takes it over and a refund voids it.
Only the card's last four digits are ever logged or stored.
"""

from __future__ import annotations

import asyncio
import logging

from base.errors import Aborted, FailedPrecondition, NotFound, Unavailable
from services.payments.config import PaymentsConfig
from services.payments.processor import SimulatedProcessor
from services.payments.store import (
    DECLINED,
    PENDING,
    REFUNDED,
    VOIDED,
    PaymentRow,
    PaymentsStore,
)
from services.payments.validation import ChargeInput

log = logging.getLogger(__name__)

_ATTEMPTS = 3


def _in_progress(saga_id: str) -> Unavailable:
    return Unavailable(
        f"a charge of saga {saga_id} is in progress; retry shortly",
        reason="CHARGE_IN_PROGRESS",
        metadata={"saga_id": saga_id},
    )


def _not_found(key: str, value: str) -> NotFound:
    return NotFound(f"no payment with {key} {value}", reason="PAYMENT_NOT_FOUND",
                    metadata={key: value})  # fmt: skip


def _voided(saga_id: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"saga {saga_id} was refunded before a charge of it completed; it cannot be charged",
        reason="SAGA_VOIDED",
        metadata={"saga_id": saga_id},
    )


def _declined(p: PaymentRow) -> FailedPrecondition:
    return FailedPrecondition(
        f"the card was declined ({p.decline_reason})",
        reason="CARD_DECLINED",
        metadata={"decline_code": p.decline_reason, "payment_id": p.payment_id,
                  "saga_id": p.saga_id},
    )  # fmt: skip


class Payments:
    def __init__(
        self, store: PaymentsStore, processor: SimulatedProcessor, config: PaymentsConfig
    ) -> None:
        self.store = store
        self.processor = processor
        self.config = config

    async def charge(self, req: ChargeInput) -> PaymentRow:
        # The usual charge is the saga's first: claim at once (the claim's unique saga id
        # is the check), and read the existing row only when the claim finds one.
        claim = await self._claim(req)
        if claim is not None:
            return await self._charge(claim, req)
        for _ in range(_ATTEMPTS):
            existing = await self.store.by_saga(req.saga_id)
            if existing is None:
                claim = await self._claim(req)
                if claim is None:
                    continue  # a concurrent call claimed it first: look again
                return await self._charge(claim, req)
            self._check_same_charge(existing, req)
            if existing.status == PENDING:
                if not await self.store.take_over_stale(req.saga_id, self.config.stale_claim_s):
                    raise _in_progress(req.saga_id)
                log.warning("saga %s: taking over a stale pending charge", req.saga_id)
                return await self._charge(existing, req)
            if existing.status == DECLINED:
                raise _declined(existing)
            return existing  # CAPTURED or REFUNDED: the first result
        raise Aborted(f"charge of saga {req.saga_id} kept conflicting; retry", reason="CONFLICT")

    async def _claim(self, req: ChargeInput) -> PaymentRow | None:
        """The claim's insert commits in a worker thread even when this call is
        cancelled while it waits for the commit (found by the chaos test: an orders
        instance SIGKILLed mid-charge left PENDING behind, and the saga's refund was
        told "in progress" until the claim went stale). So the insert runs shielded,
        and a cancelled caller deletes what it claimed before the cancellation goes on."""
        insert = asyncio.ensure_future(self.store.claim(req.saga_id, req.amount, req.card.last4))
        try:
            return await asyncio.shield(insert)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(insert))
            raise

    async def _release(self, insert: asyncio.Future[PaymentRow | None]) -> None:
        claim = await insert
        if claim is not None:
            await self.store.unclaim(claim.payment_id)

    def _check_same_charge(self, existing: PaymentRow, req: ChargeInput) -> None:
        if existing.status == VOIDED:
            raise _voided(req.saga_id)
        if existing.amount != req.amount or existing.card_last4 != req.card.last4:
            raise FailedPrecondition(
                f"saga {req.saga_id} was charged with another amount or card",
                reason="IDEMPOTENCY_MISMATCH",
                metadata={"saga_id": req.saga_id, "payment_id": existing.payment_id},
            )

    async def _charge(self, claim: PaymentRow, req: ChargeInput) -> PaymentRow:
        try:
            decision = await self.processor.charge(req.card, req.amount)
        except BaseException as exc:
            # Processor down, or the call was cancelled (deadline): nothing was
            # captured; free the saga so a retry charges again.
            await asyncio.shield(self.store.unclaim(claim.payment_id))
            log.info("saga %s: charge of card ****%s not done (%s)", req.saga_id,
                     req.card.last4, type(exc).__name__)  # fmt: skip
            raise
        # The processor has decided: the decision is recorded even if this call is
        # cancelled now (a cancelled settle would leave the claim PENDING, and the saga's
        # refund "in progress", until the claim went stale).
        outcome = await asyncio.shield(self.store.settle(claim, decision.decline_code))
        settled = outcome.row
        if not outcome.applied:
            await asyncio.shield(self._not_kept(req, decision.approved, settled))
        else:
            log.info("saga %s: payment %s of %s on card ****%s %s", req.saga_id,
                     settled.payment_id, req.amount, req.card.last4,
                     settled.status.lower())  # fmt: skip
        if settled.status == VOIDED:
            raise _voided(req.saga_id)
        if settled.status == DECLINED:
            raise _declined(settled)
        return settled

    async def _not_kept(self, req: ChargeInput, approved: bool, row: PaymentRow) -> None:
        """The processor decided after the claim stopped being this call's: a refund voided
        it (the charge outlived `PAYMENTS_STALE_CLAIM_S`) or a charge that took it over
        settled it first. An approval is given back, since nobody would ever refund it;
        the row's own outcome is the answer."""
        if approved:
            await self.processor.reverse(req.card, req.amount)
        log.warning("saga %s: the processor %s card ****%s after the payment became %s; %s",
                    req.saga_id, "approved" if approved else "declined", req.card.last4,
                    row.status, "approval reversed" if approved else "nothing to undo")  # fmt: skip

    async def refund(self, saga_id: str, reason: str) -> PaymentRow:
        for _ in range(_ATTEMPTS):
            payment = await self.store.by_saga(saga_id)
            if payment is None:
                if await self.store.void(saga_id, reason):
                    log.info("saga %s: refund before any charge; saga voided", saga_id)
                    raise _not_found("saga_id", saga_id)
                continue  # a charge claimed it meanwhile: look again
            if payment.status == VOIDED:
                raise _not_found("saga_id", saga_id)
            if payment.status == PENDING:
                if not await self.store.void_stale(saga_id, self.config.stale_claim_s, reason):
                    raise _in_progress(saga_id)
                log.warning("saga %s: a stale pending charge voided by its refund", saga_id)
                raise _not_found("saga_id", saga_id)
            if payment.status in (DECLINED, REFUNDED):
                return payment  # nothing captured, or refunded before: no-op
            refunded = await self.store.refund(payment, reason)
            if refunded is not None:
                log.info("saga %s: payment %s refunded", saga_id, payment.payment_id)
                return refunded
        raise Aborted(f"refund of saga {saga_id} kept conflicting; retry", reason="CONFLICT")

    async def get(self, key: str, value: str) -> PaymentRow:
        payment = await (self.store.by_id(value) if key == "payment_id"
                         else self.store.by_saga(value))  # fmt: skip
        if payment is None or payment.status in (PENDING, VOIDED):
            raise _not_found(key, value)
        return payment
