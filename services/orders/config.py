"""Settings of the orders service beyond the mesh-wide ones (`ORDERS_*`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.config import env_float, env_int


@dataclass(frozen=True, slots=True)
class OrdersConfig:
    # Deadline of each saga call to users and inventory.
    call_timeout_s: float = 3.0
    # Deadline of a charge: card processors are slow (the slow test card takes seconds).
    charge_timeout_s: float = 15.0
    # After a restart the card of a saga that had not been charged is gone (cards
    # are never stored). Recovery then asks payments for the saga's payment for
    # this long, in case a charge sent before the crash is still being processed.
    payment_settle_s: float = 10.0
    # Saga lease: another instance takes over a saga whose runner has been silent
    # this long. The instance id is the lease owner, so a restarted instance with
    # the same MESH_INSTANCE_ID resumes its own sagas at once.
    saga_lease_s: float = 30.0
    # Period of the background recovery round (sagas of dead instances).
    recover_every_s: float = 30.0
    # CreateOrder answers once the saga is fully compensated; if undoing takes
    # longer than this (a dependency is down), it answers with the failure and
    # the compensation goes on in the background.
    compensation_reply_s: float = 3.0
    # Longest pause between two attempts of a refund or release that fails (its
    # service is down); the saga parks after 20 attempts.
    undo_backoff_max_s: float = 30.0
    # SQLite only: how long a writer waits for the database lock.
    sqlite_busy_timeout_ms: int = 30_000

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OrdersConfig:
        e = os.environ if env is None else env
        return cls(
            call_timeout_s=env_float(e, "ORDERS_CALL_TIMEOUT_S", 3.0, minimum=0.01),
            charge_timeout_s=env_float(e, "ORDERS_CHARGE_TIMEOUT_S", 15.0, minimum=0.01),
            payment_settle_s=env_float(e, "ORDERS_PAYMENT_SETTLE_S", 10.0),
            saga_lease_s=env_float(e, "ORDERS_SAGA_LEASE_S", 30.0, minimum=0.5),
            recover_every_s=env_float(e, "ORDERS_SAGA_RECOVER_EVERY_S", 30.0, minimum=0.1),
            compensation_reply_s=env_float(e, "ORDERS_COMPENSATION_REPLY_S", 3.0),
            undo_backoff_max_s=env_float(e, "ORDERS_UNDO_BACKOFF_MAX_S", 30.0, minimum=0.2),
            sqlite_busy_timeout_ms=env_int(e, "ORDERS_SQLITE_BUSY_TIMEOUT_MS", 30_000, minimum=1),
        )
