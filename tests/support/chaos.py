"""What the chaos suite does to the shop through the edge, and how it reads the books.

Calls go over one grpc.aio channel to the Envoy edge (as a client would); the books are
read from the services' own SQLite files in the run dir (payments has no list RPC, and the
sales ledger is what the `order.completed` consumer writes), read-only.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v2 import orders_pb2, orders_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from tests.support.local_mesh import Stack
from tests.support.poll import eventually

GOOD_CARD = "4242424242424242"
PRICE_MINOR = 1999
TERMINAL = {
    orders_pb2.ORDER_STATUS_COMPLETED,
    orders_pb2.ORDER_STATUS_FAILED,
    orders_pb2.ORDER_STATUS_CANCELLED,
}
# gRPC codes the edge answers with a 5xx HTTP status (Envoy's gRPC→HTTP mapping).
SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,  # 503
    grpc.StatusCode.DEADLINE_EXCEEDED,  # 504
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}


@dataclass
class Shopper:
    """A user and a product with a known stock, created through the edge."""

    channel: grpc.aio.Channel
    user_id: str = ""
    product_id: str = ""
    # The user's access token as call metadata (the edge requires it on orders calls).
    auth: tuple[tuple[str, str], ...] = ()
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def orders(self) -> orders_pb2_grpc.OrderServiceAsyncStub:
        return orders_pb2_grpc.OrderServiceStub(self.channel)

    @property
    def inventory(self) -> inventory_pb2_grpc.InventoryServiceAsyncStub:
        return inventory_pb2_grpc.InventoryServiceStub(self.channel)

    async def setup(self, stock: int, admin: tuple[tuple[str, str], ...]) -> None:
        """Sign up and log in (public calls), then create the product as `admin`
        (an admin's access token as call metadata)."""
        tag = uuid.uuid4().hex[:10]
        users = users_pb2_grpc.UserServiceStub(self.channel)
        email, password = f"chaos.{tag}@example.com", "correct horse battery staple"
        user = await users.CreateUser(
            users_pb2.CreateUserRequest(
                email=email, password=password, profile=users_pb2.Profile(display_name="Chaos")
            ),
            timeout=10,
        )
        self.user_id = user.user_id
        session = await users.Authenticate(
            users_pb2.AuthenticateRequest(email=email, password=password), timeout=10
        )
        self.auth = (("authorization", f"Bearer {session.access_token}"),)
        product = await self.inventory.CreateProduct(
            inventory_pb2.CreateProductRequest(
                sku=f"CHAOS-{tag}",
                name="Teapot",
                price=money_pb2.Money(currency_code="USD", amount_minor=PRICE_MINOR),
                initial_stock=stock,
            ),
            metadata=admin,
            timeout=10,
        )
        self.product_id = product.product_id

    def order_request(self, key: str) -> orders_pb2.CreateOrderRequest:
        return orders_pb2.CreateOrderRequest(
            idempotency_key=key,
            user_id=self.user_id,
            items=[orders_pb2.OrderItem(product_id=self.product_id, quantity=1)],
            currency_code="USD",
            card=orders_pb2.PaymentCard(number=GOOD_CARD, exp_month=12, exp_year=2035, cvc="123"),
            shipping_address=orders_pb2.Address(
                recipient="Ada Lovelace",
                lines=["12 St James's Square"],
                city="London",
                postal_code="SW1Y 4JH",
                country_code="GB",
            ),
        )

    async def place(self, key: str) -> grpc.StatusCode:
        """One CreateOrder; its status code (OK, or the error's)."""
        try:
            await self.orders.CreateOrder(self.order_request(key), metadata=self.auth, timeout=90)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as err:
            code = err.code()
        self.outcomes[code.name] += 1
        return code

    async def settle(self, keys: list[str], within_s: float = 60.0) -> None:
        """Repeat CreateOrder with the same keys, as a client does after UNAVAILABLE, until
        each has a definite answer (an order, or a business error)."""
        deadline = time.monotonic() + within_s
        pending = list(keys)
        while pending:
            codes = await asyncio.gather(*(self.place(k) for k in pending))
            pending = [k for k, c in zip(pending, codes, strict=True) if c in SERVER_ERRORS]
            assert time.monotonic() < deadline, f"{len(pending)} orders never got an answer"

    async def all_orders(self) -> list[orders_pb2.Order]:
        out: list[orders_pb2.Order] = []
        token = ""
        while True:
            page = await self.orders.ListOrders(
                orders_pb2.ListOrdersRequest(user_id=self.user_id, page_size=100, page_token=token),
                metadata=self.auth,
                timeout=10,
            )
            out.extend(page.orders)
            token = page.next_page_token
            if not token:
                return out

    async def product(self) -> inventory_pb2.Product:
        return await self.inventory.GetProduct(
            inventory_pb2.GetProductRequest(product_id=self.product_id),
            metadata=self.auth,
            timeout=10,
        )


def _query(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return list(con.execute(sql, args))
    finally:
        con.close()


def captured(data_dir: Path, order_ids: list[str]) -> tuple[int, int]:
    """(count, money) of CAPTURED payments for these orders (a payment's saga is its order)."""
    if not order_ids:
        return 0, 0
    marks = ",".join("?" * len(order_ids))
    [(count, money)] = _query(
        data_dir / "payments.db",
        f"SELECT count(*), coalesce(sum(amount_minor), 0) FROM payments"
        f" WHERE status = 'CAPTURED' AND saga_id IN ({marks})",
        *order_ids,
    )
    return int(str(count)), int(str(money))


def sales(data_dir: Path, product_id: str) -> Counter[str]:
    """Sales ledger rows per order for a product: what the order.completed consumer wrote."""
    rows = _query(
        data_dir / "inventory.db", "SELECT order_id FROM sales WHERE product_id = ?", product_id
    )
    return Counter(str(r[0]) for r in rows)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def books_balance(stack: Stack, shopper: Shopper, stock: int) -> list[orders_pb2.Order]:
    """Every order terminal; stock (`stock` at the start), sales ledger and captured
    payments agree with them; each `order.completed` handled once. The orders."""

    async def all_terminal() -> list[orders_pb2.Order] | None:
        orders = await shopper.all_orders()
        return orders if orders and all(o.status in TERMINAL for o in orders) else None

    orders: list[orders_pb2.Order] = await eventually(
        all_terminal, 30, "every order to reach a terminal status"
    )
    completed = [o for o in orders if o.status == orders_pb2.ORDER_STATUS_COMPLETED]
    assert 0 < len(completed) <= stock
    data = stack.base / "data"

    def ledger_complete() -> Counter[str] | None:
        got = sales(data, shopper.product_id)
        return got if sum(got.values()) >= len(completed) else None

    ledger = await eventually(ledger_complete, 30, "the sales ledger to record every order")
    assert set(ledger) == {o.order_id for o in completed}
    assert set(ledger.values()) == {1}, "an order.completed was handled more than once"
    # Each sale's transaction also confirmed its order's reservation.
    product = await shopper.product()
    assert product.reserved == 0
    assert product.available + len(completed) == stock
    count, money = captured(data, [o.order_id for o in orders])
    assert (count, money) == (len(completed), sum(o.total.amount_minor for o in completed))
    assert money == len(completed) * PRICE_MINOR
    return orders


def meshctl_status(run_dir: Path) -> dict[str, list[str]]:
    """`meshctl status --run-dir run_dir` run as a person runs it: its rows (instances,
    then the mesh's own processes) by their first column."""
    r = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "status", "--run-dir", str(run_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    return {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.strip()}
