"""The README's tables of the shop's own settings (`USERS_*`, `INVENTORY_*`, `PAYMENTS_*`,
`ORDERS_*`), generated from the services' config dataclasses.

`python -m services.settings_tables --markdown` prints them; `--write README.md`
replaces them between their markers (`make readme-settings` writes these and
the mesh's). `tests/contract/test_settings_tables.py` fails when the
README is stale.
"""

from __future__ import annotations

import sys

from base.settings import main, markdown_table
from services.common.secrets import SecretsConfig
from services.inventory.config import InventoryConfig
from services.orders.config import OrdersConfig
from services.payments.config import PaymentsConfig
from services.users.config import UsersConfig


def readme_tables() -> dict[str, str]:
    """The shop's tables, by marker name."""
    return {
        "shop": markdown_table([SecretsConfig, UsersConfig, InventoryConfig, PaymentsConfig]),
        "orders": markdown_table([OrdersConfig]),
    }


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], readme_tables()))
