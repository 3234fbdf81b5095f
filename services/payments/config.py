"""Settings of the payments service beyond the mesh-wide ones (`PAYMENTS_*`).

Declared like the mesh's (`base/settings.py`): one `setting(...)` per variable,
read by `PaymentsConfig.from_env`, listed in the README by
`python -m services.settings_tables --markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import load, number, setting


@dataclass(frozen=True, slots=True)
class PaymentsConfig:
    slow_card_delay_s: float = setting(
        "PAYMENTS_SLOW_CARD_DELAY_S",
        2.0,
        number(minimum=0.0),
        "processing time of the slow test card (4000000000000259)",
    )
    stale_claim_s: float = setting(
        "PAYMENTS_STALE_CLAIM_S",
        60.0,
        number(minimum=1.0),
        "after this, a dead process's charge claim is taken over by a retry or voided by a refund",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PaymentsConfig:
        return load(cls, env)
