"""Assembly of the orders service: database, saga runner, upstream stubs, servicers."""

from __future__ import annotations

from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from shop.inventory.v1 import inventory_pb2_grpc
from shop.orders.v1 import orders_pb2 as orders_v1
from shop.orders.v1 import orders_pb2_grpc as orders_v1_grpc
from shop.orders.v2 import orders_pb2 as orders_v2
from shop.orders.v2 import orders_pb2_grpc as orders_v2_grpc
from shop.payments.v1 import payments_pb2_grpc
from shop.users.v1 import users_pb2_grpc
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.discovery.registry import Registry
from mesh.events.service import EventSubscriber
from mesh.health import registry_upstream_check
from mesh.saga import SagaRunner, SagaStore
from mesh.saga.admin import saga_admin_routes
from mesh.server import ServiceDefinition
from mesh.service_db import service_engine
from mesh.settings import Settings
from services.common.bootstrap import open_database, service_definition
from services.common.events import bus_access
from services.common.pagination import set_key
from services.common.secrets import service_key
from services.orders import store
from services.orders.config import OrdersConfig
from services.orders.events import CONSUMER, OrderEventHandlers
from services.orders.orders import Orders
from services.orders.saga import CardVault, OrderSagas
from services.orders.servicer_v1 import OrderServicerV1
from services.orders.servicer_v2 import OrderServicerV2
from services.orders.upstream import Upstreams

NAME = "orders"
SERVICE_NAMES = (
    orders_v1.DESCRIPTOR.services_by_name["OrderService"].full_name,
    orders_v2.DESCRIPTOR.services_by_name["OrderService"].full_name,
)
UPSTREAMS = ("users", "inventory", "payments")


class Runtime(Protocol):
    """What orders uses of `mesh.client.runtime.MeshRuntime`."""

    @property
    def registry(self) -> Registry | None: ...
    @property
    def prometheus(self) -> CollectorRegistry: ...

    async def connect(self, service: str, stub_cls: Any, **options: Any) -> Any: ...


def sqlite_busy_timeout(engine: AsyncEngine, timeout_ms: int) -> None:
    """Orders is the shop's busiest writer (every saga step is a transaction): with
    hundreds of sagas in flight on SQLite, a writer can lose the lock race for longer
    than the default 5 s busy timeout. Set after mesh.db's own pragmas, so it wins."""
    if engine.dialect.name != "sqlite":
        return

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(timeout_ms)}")
        cur.close()

    event.listen(engine.sync_engine, "connect", on_connect)


async def build(
    settings: Settings,
    runtime: Runtime,
    *,
    engine: AsyncEngine | None = None,
    config: OrdersConfig | None = None,
) -> ServiceDefinition:
    """The orders service, serving v1 and v2 from one store.

    `engine` replaces the one made from settings (tests pass one with its own
    PostgreSQL schema); `config` replaces `OrdersConfig.from_env()`.
    """
    cfg = config or OrdersConfig.from_env()
    set_key(service_key(NAME, "page-token"))
    owned = engine is None
    if engine is None:
        engine = service_engine(settings)
        sqlite_busy_timeout(engine, cfg.sqlite_busy_timeout_ms)
    try:
        db = await open_database(settings, store.migrations(), engine=engine)
    except BaseException:
        if owned:
            await engine.dispose()
        raise
    db.owns_engine = owned
    orders_store = store.OrdersStore(db.sessions)
    upstreams = Upstreams(
        users=await runtime.connect("users", users_pb2_grpc.UserServiceStub),
        inventory=await runtime.connect("inventory", inventory_pb2_grpc.InventoryServiceStub),
        reservations=await runtime.connect("inventory", inventory_pb2_grpc.ReservationServiceStub),
        payments=await runtime.connect("payments", payments_pb2_grpc.PaymentServiceStub),
    )
    sagas = OrderSagas(orders_store, db.outbox, upstreams, CardVault(), cfg)
    runner = SagaRunner(
        SagaStore(db.sessions),
        sagas.definitions(),
        runtime.prometheus,
        # Stable per instance: restarted with the same MESH_INSTANCE_ID, an instance
        # takes its own unfinished sagas back at once instead of after the lease.
        owner=settings.instance_id or None,
        lease_s=cfg.saga_lease_s,
    )
    orders = Orders(orders_store, runner, sagas, cfg)
    subscriber = EventSubscriber(
        settings.nats_url,
        db.sessions,
        CONSUMER,
        OrderEventHandlers(orders_store).subscriptions(),
        name=settings.instance_id or NAME,
        access=bus_access(settings),
    )
    definition = service_definition(
        NAME,
        settings,
        db,
        [
            (orders_v1_grpc.add_OrderServiceServicer_to_server, OrderServicerV1(orders)),
            (orders_v2_grpc.add_OrderServiceServicer_to_server, OrderServicerV2(orders)),
        ],
        SERVICE_NAMES,
    )

    async def start_recovery() -> None:
        # In the background: the server comes up while unfinished sagas resume.
        runner.start(recover_every_s=cfg.recover_every_s)

    async def stop_sagas() -> None:
        await orders.close(grace_s=settings.drain_grace_s / 2)
        await runner.close(grace_s=settings.drain_grace_s / 2)

    checks = list(definition.checks)
    if runtime.registry is not None:
        checks += [registry_upstream_check(runtime.registry, name) for name in UPSTREAMS]
    definition.checks = checks
    definition.admin_routes = saga_admin_routes(runner, settings.admin_token)
    definition.on_start = [*definition.on_start, subscriber.start, start_recovery]
    # Sagas and consumers stop before the outbox relay and the database close.
    definition.on_stop = [stop_sagas, subscriber.stop, *definition.on_stop]
    return definition
