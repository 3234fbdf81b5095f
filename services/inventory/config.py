"""Settings of the inventory service beyond the mesh-wide ones (`INVENTORY_*`).

Declared like the mesh's (`base/settings.py`): one `setting(...)` per variable,
read by `InventoryConfig.from_env`, listed in the README by
`python -m services.settings_tables --markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import load, setting, whole


@dataclass(frozen=True, slots=True)
class InventoryConfig:
    low_stock_threshold: int = setting(
        "INVENTORY_LOW_STOCK_THRESHOLD",
        5,
        whole(minimum=0),
        "`inventory.low_stock` when a confirmed sale leaves fewer available units "
        "(once per crossing; restocking above re-arms it)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InventoryConfig:
        return load(cls, env)
