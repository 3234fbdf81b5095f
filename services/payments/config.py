"""Settings of the payments service beyond the mesh-wide ones (`PAYMENTS_*`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import env_float

DEFAULT_SLOW_CARD_DELAY_S = 2.0
DEFAULT_STALE_CLAIM_S = 60.0


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    # How long the processor takes for the "slow" test card (4000000000000259).
    slow_card_delay_s: float = DEFAULT_SLOW_CARD_DELAY_S
    # A charge claimed by an instance that then died is taken over by a retry after this.
    stale_claim_s: float = DEFAULT_STALE_CLAIM_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaymentsConfig:
        e = os.environ if env is None else env
        return cls(
            slow_card_delay_s=env_float(
                e, "PAYMENTS_SLOW_CARD_DELAY_S", DEFAULT_SLOW_CARD_DELAY_S, minimum=0.0
            ),
            stale_claim_s=env_float(
                e, "PAYMENTS_STALE_CLAIM_S", DEFAULT_STALE_CLAIM_S, minimum=1.0
            ),
        )
