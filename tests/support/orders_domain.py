"""The orders domain over a fake shop (in-process users/inventory/payments answers), for
the orders unit tests (fixture `domain`: tests/unit/orders/conftest.py) and the orders
store's integration tests on SQLite and PostgreSQL (`open_domain` over a given engine)."""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from prometheus_client import CollectorRegistry
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2
from shop.payments.v1 import payments_pb2
from shop.users.v1 import users_pb2
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mesh.db import migrate, session_factory
from mesh.events import Outbox, decode
from mesh.saga import SagaRunner, SagaStore
from services.orders import store
from services.orders.config import OrdersConfig
from services.orders.model import Card, Line, PlaceOrder
from services.orders.orders import Orders
from services.orders.saga import CardVault, OrderSagas
from services.orders.upstream import UpstreamError, Upstreams

# Short timeouts and backoffs: the fake shop answers at once, and the failure paths
# should not make the tests wait.
CONFIG = OrdersConfig(
    call_timeout_s=1, charge_timeout_s=1, payment_settle_s=0.2, saga_lease_s=5,
    compensation_reply_s=2, undo_backoff_max_s=0.05,
)  # fmt: skip

Fault = Callable[[Any], None]


def fail(service: str, code: grpc.StatusCode, reason: str = "", message: str = "") -> Fault:
    def raise_it(_req: Any) -> None:
        raise UpstreamError(service, code, message or f"{service} says {code.name}", reason=reason)

    return raise_it


@dataclass
class FakeShop:
    """users, inventory (reservations) and payments in memory."""

    users: set[str] = field(default_factory=set)
    prices: dict[str, int] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    faults: dict[str, list[Fault]] = field(default_factory=dict)
    reservations: dict[str, str] = field(default_factory=dict)
    payments: dict[str, payments_pb2.Payment] = field(default_factory=dict)
    added: list[tuple[str, int]] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)  # sagas whose units came back, once each
    on_charge: Callable[[str], Any] | None = None

    def _enter(self, method: str, req: Any) -> None:
        self.calls[method] += 1
        pending = self.faults.get(method)
        if pending:
            pending.pop(0)(req)

    async def GetUser(self, req: users_pb2.GetUserRequest, **_call: Any) -> users_pb2.User:
        self._enter("GetUser", req)
        if req.user_id not in self.users:
            raise UpstreamError("users", grpc.StatusCode.NOT_FOUND, "no such user",
                                reason="USER_NOT_FOUND")  # fmt: skip
        return users_pb2.User(user_id=req.user_id)

    async def ReserveItems(
        self, req: inventory_pb2.ReserveItemsRequest, **_call: Any
    ) -> inventory_pb2.Reservation:
        self._enter("ReserveItems", req)
        self.reservations.setdefault(req.saga_id, "HELD")
        return inventory_pb2.Reservation(
            saga_id=req.saga_id,
            status=inventory_pb2.RESERVATION_STATUS_HELD,
            items=[
                inventory_pb2.ReservedItem(
                    product_id=x.product_id, quantity=x.quantity,
                    unit_price=money_pb2.Money(currency_code="USD",
                                               amount_minor=self.prices[x.product_id]),
                )
                for x in req.items
            ],
        )  # fmt: skip

    async def ConfirmReservation(self, req: Any, **_call: Any) -> inventory_pb2.Reservation:
        self._enter("ConfirmReservation", req)
        self.reservations[req.saga_id] = "CONFIRMED"
        return inventory_pb2.Reservation(saga_id=req.saga_id)

    async def ReleaseReservation(self, req: Any, **_call: Any) -> inventory_pb2.Reservation:
        self._enter("ReleaseReservation", req)
        if self.reservations.get(req.saga_id) == "CONFIRMED":
            raise UpstreamError("inventory", grpc.StatusCode.FAILED_PRECONDITION, "confirmed",
                                reason="RESERVATION_CONFIRMED")  # fmt: skip
        self.reservations[req.saga_id] = "RELEASED"
        return inventory_pb2.Reservation(saga_id=req.saga_id)

    async def ReturnReservation(self, req: Any, **_call: Any) -> inventory_pb2.Reservation:
        self._enter("ReturnReservation", req)
        status = self.reservations.get(req.saga_id)
        if status is None:
            raise UpstreamError("inventory", grpc.StatusCode.NOT_FOUND, "no reservation",
                                reason="RESERVATION_NOT_FOUND")  # fmt: skip
        if status in ("HELD", "CONFIRMED"):
            self.reservations[req.saga_id] = "RETURNED"
            self.returned.append(req.saga_id)
        return inventory_pb2.Reservation(saga_id=req.saga_id)

    async def AddStock(self, req: inventory_pb2.AddStockRequest, **_call: Any) -> Any:
        self._enter("AddStock", req)
        self.added.append((req.product_id, req.quantity))
        return inventory_pb2.Product(product_id=req.product_id)

    async def Charge(self, req: payments_pb2.ChargeRequest, **_call: Any) -> payments_pb2.Payment:
        self._enter("Charge", req)
        if self.on_charge is not None:
            await self.on_charge(req.saga_id)
        new = payments_pb2.Payment(
            payment_id=str(uuid.uuid4()), saga_id=req.saga_id, amount=req.amount,
            status=payments_pb2.PAYMENT_STATUS_CAPTURED, card_last4=req.card.number[-4:],
        )  # fmt: skip
        return self.payments.setdefault(req.saga_id, new)

    async def Refund(self, req: payments_pb2.RefundRequest, **_call: Any) -> Any:
        self._enter("Refund", req)
        p = self.payments.get(req.saga_id)
        if p is None:
            raise UpstreamError("payments", grpc.StatusCode.NOT_FOUND, "never charged",
                                reason="PAYMENT_NOT_FOUND")  # fmt: skip
        p.status = payments_pb2.PAYMENT_STATUS_REFUNDED
        return p

    async def GetPayment(self, req: payments_pb2.GetPaymentRequest, **_call: Any) -> Any:
        self._enter("GetPayment", req)
        p = self.payments.get(req.saga_id)
        if p is None:
            raise UpstreamError("payments", grpc.StatusCode.NOT_FOUND, "none",
                                reason="PAYMENT_NOT_FOUND")  # fmt: skip
        return p


@dataclass
class Domain:
    fake: FakeShop
    store: store.OrdersStore
    sagas: OrderSagas
    runner: SagaRunner
    orders: Orders
    engine: Any

    def order(self, user: str, lines: list[tuple[str, int]], *, key: str = "",
              number: str = "4242424242424242") -> PlaceOrder:  # fmt: skip
        """A v2 command; its fingerprint is a digest of key and lines, as long as the
        real one (the column holds 64 characters)."""
        return PlaceOrder(
            user, tuple(Line(p, q) for p, q in lines), "USD", Card(number, 12, 2040, "123"),
            None, key, hashlib.sha256(f"{key}-{lines}".encode()).hexdigest(), 2,
        )  # fmt: skip

    async def events(self) -> list[Any]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT payload FROM mesh_outbox ORDER BY seq"))).all()
        return [decode(bytes(r[0])) for r in rows]


@contextlib.asynccontextmanager
async def open_domain(engine: AsyncEngine, *, lease_s: float = 5) -> AsyncIterator[Domain]:
    """The orders domain (store, sagas, runner) over `engine`, migrated here, with a fresh
    `FakeShop` as users, inventory and payments. The engine stays the caller's. No
    recovery loop runs; the lease heartbeat writes every `lease_s / 3` while a saga runs
    (a test counting statements wants that longer than the test)."""
    await migrate(engine, store.migrations())
    sessions = session_factory(engine)
    fake = FakeShop()
    orders_store = store.OrdersStore(sessions)
    up = Upstreams(users=cast(Any, fake), inventory=cast(Any, fake),
                   reservations=cast(Any, fake), payments=cast(Any, fake))  # fmt: skip
    sagas = OrderSagas(orders_store, Outbox(), up, CardVault(), CONFIG)
    runner = SagaRunner(
        SagaStore(sessions), sagas.definitions(), CollectorRegistry(), lease_s=lease_s
    )
    orders = Orders(orders_store, runner, sagas, CONFIG)
    try:
        yield Domain(fake, orders_store, sagas, runner, orders, engine)
    finally:
        await orders.close(1)
        await runner.close(1)
