"""Assembly of the inventory service: database, store, the two servicers, the
`order.completed` subscriber, definition."""

from __future__ import annotations

from typing import Any, Protocol

from opentelemetry.trace import TracerProvider
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.events.service import EventSubscriber
from mesh.server import AddServicer, ServiceDefinition
from mesh.settings import Settings
from services.common.bootstrap import open_database, service_definition
from services.common.events import bus_access
from services.common.pagination import set_key
from services.common.secrets import service_key
from services.inventory import store
from services.inventory.config import InventoryConfig
from services.inventory.events import CONSUMER, InventoryEventHandlers
from services.inventory.servicer import InventoryServicer, ReservationServicer

NAME = "inventory"
SERVICE_NAMES = tuple(
    inventory_pb2.DESCRIPTOR.services_by_name[s].full_name
    for s in ("InventoryService", "ReservationService")
)


class Runtime(Protocol):
    """What inventory uses of `mesh.client.runtime.MeshRuntime`: only its tracer provider
    (None: event handling spans go to the global one)."""

    @property
    def tracer_provider(self) -> TracerProvider | None: ...


async def build(
    settings: Settings,
    runtime: Runtime,
    *,
    engine: AsyncEngine | None = None,
    config: InventoryConfig | None = None,
) -> ServiceDefinition:
    """The inventory service (it calls no other service: of `runtime` it uses only
    the tracer provider, for the spans of the events it handles).

    `engine` replaces the one made from settings (tests pass one with its own
    PostgreSQL schema); `config` replaces `InventoryConfig.from_env()`.
    """
    cfg = config or InventoryConfig.from_env()
    set_key(service_key(NAME, "page-token"))
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
    subscriber = EventSubscriber(
        settings.nats_url,
        db.sessions,
        CONSUMER,
        InventoryEventHandlers(inventory, runtime.tracer_provider).subscriptions(),
        name=settings.instance_id or NAME,
        access=bus_access(settings),
        tracer_provider=runtime.tracer_provider,
    )
    definition = service_definition(NAME, settings, db, servicers, SERVICE_NAMES)
    definition.on_start = [*definition.on_start, subscriber.start]
    # The consumers stop before the outbox relay and the database close.
    definition.on_stop = [subscriber.stop, *definition.on_stop]
    return definition
