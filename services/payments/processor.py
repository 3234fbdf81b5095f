"""A payment processor simulator with deterministic test cards.

In the style of public payment test cards: each listed number always behaves
the same way, so tests and demos can pick an outcome. Any other Luhn-valid
number is approved.

| number             | outcome                                                  |
|--------------------|----------------------------------------------------------|
| 4242424242424242   | approved                                                 |
| 4000000000000002   | declined: card_declined                                  |
| 4000000000009995   | declined: insufficient_funds                             |
| 4000000000000069   | declined: expired_card                                   |
| 4000000000000119   | processor error, every time (UNAVAILABLE, retryable)     |
| 4000000000000259   | approved after `slow_card_delay_s` (default 2 s)         |
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from base.errors import Unavailable
from services.common.cards import CardInput
from services.common.money import Amount

APPROVE = "4242424242424242"
DECLINE = "4000000000000002"
INSUFFICIENT_FUNDS = "4000000000009995"
EXPIRED = "4000000000000069"
PROCESSOR_ERROR = "4000000000000119"
SLOW = "4000000000000259"

_DECLINES = {
    DECLINE: "card_declined",
    INSUFFICIENT_FUNDS: "insufficient_funds",
    EXPIRED: "expired_card",
}


@dataclass(frozen=True, slots=True)
class Decision:
    approved: bool
    decline_code: str = ""


class ProcessorUnavailable(Unavailable):
    def __init__(self) -> None:
        super().__init__(
            "the payment processor is unavailable; retry later", reason="PROCESSOR_UNAVAILABLE"
        )


class SimulatedProcessor:
    """Authorises and captures in one step, by the test-card table above."""

    def __init__(self, slow_card_delay_s: float = 2.0) -> None:
        self.slow_card_delay_s = slow_card_delay_s

    async def charge(self, card: CardInput, amount: Amount) -> Decision:
        if card.number == PROCESSOR_ERROR:
            raise ProcessorUnavailable()
        if card.number == SLOW:
            await asyncio.sleep(self.slow_card_delay_s)  # simulated processor latency
        decline = _DECLINES.get(card.number)
        if decline is not None:
            return Decision(False, decline)
        return Decision(True)

    async def reverse(self, card: CardInput, amount: Amount) -> None:
        """Give back an approved charge the shop does not keep: a real processor's void
        of the authorisation (or its refund once captured). The simulator holds no money,
        so there is nothing to give back here."""
