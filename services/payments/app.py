"""Assembly of the payments service: database, simulated processor, servicer, definition."""

from __future__ import annotations

from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.server import ServiceDefinition
from mesh.settings import Settings
from services.common.bootstrap import open_database, service_definition
from services.payments import store
from services.payments.charges import Payments
from services.payments.config import PaymentsConfig
from services.payments.processor import SimulatedProcessor
from services.payments.servicer import PaymentServicer

NAME = "payments"
SERVICE_NAMES = (payments_pb2.DESCRIPTOR.services_by_name["PaymentService"].full_name,)


async def build(
    settings: Settings,
    runtime: object,
    *,
    engine: AsyncEngine | None = None,
    config: PaymentsConfig | None = None,
) -> ServiceDefinition:
    """The payments service (it calls no other service: `runtime` is unused).

    `engine` replaces the one made from settings (tests pass one with its own
    PostgreSQL schema); `config` replaces `PaymentsConfig.from_env()`.
    """
    cfg = config or PaymentsConfig.from_env()
    db = await open_database(settings, store.migrations(), engine=engine)
    payments = Payments(
        store.PaymentsStore(db.sessions, db.outbox), SimulatedProcessor(cfg.slow_card_delay_s), cfg
    )
    return service_definition(
        NAME,
        settings,
        db,
        [(payments_pb2_grpc.add_PaymentServiceServicer_to_server, PaymentServicer(payments))],
        SERVICE_NAMES,
    )
