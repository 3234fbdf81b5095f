"""Validation of the payments service's requests: INVALID_ARGUMENT with every field violation.

The card number and CVC are checked but never echoed back in a violation.
"""

from __future__ import annotations

from dataclasses import dataclass

from shop.payments.v1 import payments_pb2

from base.errors import FieldViolation, InvalidArgument, Violations
from services.common.cards import CardInput, card_number_field, cvc_field, expiry_fields
from services.common.money import Amount
from services.common.validation import money_field, text_field, uuid_field

MAX_REASON = 500


@dataclass(frozen=True, slots=True)
class ChargeInput:
    saga_id: str
    amount: Amount
    card: CardInput


def charge(req: payments_pb2.ChargeRequest) -> ChargeInput:
    v = Violations()
    saga_id = uuid_field(v, "saga_id", req.saga_id)
    amount = money_field(v, "amount", req.amount, present=req.HasField("amount"))
    if not req.HasField("card"):
        v.add("card", "is required")
        card = None
    else:
        c = req.card
        number = card_number_field(v, "card.number", c.number)
        if c.exp_month == 0 and c.exp_year == 0 and not c.cvc:
            # A number-only card: what orders v1's contract carries (no expiry, no
            # CVC). The simulated processor authorises it on the number alone.
            cvc = ""
        else:
            expiry_fields(v, "card", c.exp_month, c.exp_year)
            cvc = cvc_field(v, "card.cvc", c.cvc)
        card = CardInput(number, c.exp_month, c.exp_year, cvc)
    v.raise_if_any()
    if amount is None or card is None:  # raise_if_any() has raised already
        raise AssertionError("validated charge without amount or card")
    return ChargeInput(saga_id, amount, card)


def refund(req: payments_pb2.RefundRequest) -> tuple[str, str]:
    v = Violations()
    saga_id = uuid_field(v, "saga_id", req.saga_id)
    reason = text_field(v, "reason", req.reason, min_len=0, max_len=MAX_REASON)
    v.raise_if_any()
    return saga_id, reason


def get_payment(req: payments_pb2.GetPaymentRequest) -> tuple[str, str]:
    """("payment_id", id) or ("saga_id", id)."""
    key = req.WhichOneof("key")
    if key is None:
        raise InvalidArgument([FieldViolation("key", "set payment_id or saga_id")])
    v = Violations()
    value = uuid_field(v, key, getattr(req, key))
    v.raise_if_any()
    return key, value
