"""Settings of the orders service beyond the mesh-wide ones (`ORDERS_*`).

Declared like the mesh's (`base/settings.py`): one `setting(...)` per variable,
read by `OrdersConfig.from_env`, listed in the README by
`python -m services.settings_tables --markdown`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from base.settings import load, number, setting, whole


@dataclass(frozen=True, slots=True)
class OrdersConfig:
    call_timeout_s: float = setting(
        "ORDERS_CALL_TIMEOUT_S",
        3.0,
        number(minimum=0.01),
        "deadline of each saga call to users and inventory",
    )
    # Card processors are slow (the slow test card takes seconds).
    charge_timeout_s: float = setting(
        "ORDERS_CHARGE_TIMEOUT_S", 15.0, number(minimum=0.01), "deadline of a charge"
    )
    # After a restart the card of a saga that had not been charged is gone (cards
    # are never stored). Recovery then asks payments for the saga's payment for
    # this long, in case a charge sent before the crash is still being processed.
    payment_settle_s: float = setting(
        "ORDERS_PAYMENT_SETTLE_S",
        10.0,
        number(minimum=0.0),
        "after a restart, how long to look for an in-flight charge",
    )
    # The instance id is the lease owner, so a restarted instance with the same
    # MESH_INSTANCE_ID resumes its own sagas at once.
    saga_lease_s: float = setting(
        "ORDERS_SAGA_LEASE_S",
        30.0,
        number(minimum=0.5),
        "saga lease: another instance takes over a saga whose runner was silent this long",
    )
    recover_every_s: float = setting(
        "ORDERS_SAGA_RECOVER_EVERY_S",
        30.0,
        number(minimum=0.1),
        "period of the background recovery round (sagas of dead instances)",
    )
    # If undoing takes longer (a dependency is down), CreateOrder answers with the
    # failure and the compensation goes on in the background.
    compensation_reply_s: float = setting(
        "ORDERS_COMPENSATION_REPLY_S",
        3.0,
        number(minimum=0.0),
        "answer a failed CreateOrder while compensation still runs after this",
    )
    undo_backoff_max_s: float = setting(
        "ORDERS_UNDO_BACKOFF_MAX_S",
        30.0,
        number(minimum=0.2),
        "longest pause between refund/release attempts (20 attempts, then PARKED)",
    )
    sqlite_busy_timeout_ms: int = setting(
        "ORDERS_SQLITE_BUSY_TIMEOUT_MS",
        30_000,
        whole(minimum=1),
        "SQLite lock wait (orders is the busiest writer)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OrdersConfig:
        return load(cls, env)
