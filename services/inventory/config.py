"""Settings of the inventory service beyond the mesh-wide ones (`INVENTORY_*`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import env_int

DEFAULT_LOW_STOCK_THRESHOLD = 5


@dataclass(frozen=True, slots=True)
class InventoryConfig:
    # `inventory.low_stock` is published when a confirmed sale leaves a product
    # with fewer available units than this (once per crossing).
    low_stock_threshold: int = DEFAULT_LOW_STOCK_THRESHOLD

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InventoryConfig:
        e = os.environ if env is None else env
        return cls(
            low_stock_threshold=env_int(
                e, "INVENTORY_LOW_STOCK_THRESHOLD", DEFAULT_LOW_STOCK_THRESHOLD, minimum=0
            )
        )
