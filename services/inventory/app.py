"""Assembly of the inventory service: database, store, the two servicers, definition."""

from __future__ import annotations

from typing import Any

from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.server import AddServicer, ServiceDefinition
from mesh.settings import Settings
from services.common.bootstrap import open_database, service_definition
from services.inventory import store
from services.inventory.config import InventoryConfig
from services.inventory.servicer import InventoryServicer, ReservationServicer

NAME = "inventory"
SERVICE_NAMES = tuple(
    inventory_pb2.DESCRIPTOR.services_by_name[s].full_name
    for s in ("InventoryService", "ReservationService")
)


async def build(
    settings: Settings,
    runtime: object,
    *,
    engine: AsyncEngine | None = None,
    config: InventoryConfig | None = None,
) -> ServiceDefinition:
    """The inventory service (it calls no other service: `runtime` is unused).

    `engine` replaces the one made from settings (tests pass one with its own
    PostgreSQL schema); `config` replaces `InventoryConfig.from_env()`.
    """
    cfg = config or InventoryConfig.from_env()
    db = await open_database(settings, store.migrations(), engine=engine)
    inventory = store.InventoryStore(
        db.sessions, db.outbox, low_stock_threshold=cfg.low_stock_threshold
    )
    servicers: list[tuple[AddServicer, Any]] = [
        (inventory_pb2_grpc.add_InventoryServiceServicer_to_server, InventoryServicer(inventory)),
        (
            inventory_pb2_grpc.add_ReservationServiceServicer_to_server,
            ReservationServicer(inventory),
        ),
    ]
    return service_definition(NAME, settings, db, servicers, SERVICE_NAMES)
