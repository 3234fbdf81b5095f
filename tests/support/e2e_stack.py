"""Calls through the edge of the whole mesh the e2e tests start (`tests.support.local_mesh`)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from tests.support.local_mesh import Stack

GOOD_CARD = "4242424242424242"


def v2_order_request(
    user_id: str, product_id: str, card: str = GOOD_CARD, qty: int = 1
) -> dict[str, Any]:
    return {
        "idempotency_key": uuid.uuid4().hex,
        "user_id": user_id,
        "items": [{"product_id": product_id, "quantity": qty}],
        "currency_code": "USD",
        "card": {"number": card, "exp_month": 12, "exp_year": 2035, "cvc": "123"},
        "shipping_address": {
            "recipient": "Ada Lovelace",
            "lines": ["12 St James's Square"],
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country_code": "GB",
        },
    }


async def call_ok(
    stack: Stack, method: str, request: dict[str, Any], *headers: str
) -> dict[str, Any]:
    res = await stack.call(method, request, *headers)
    assert res.returncode == 0, f"{method}: {res.stderr}"
    out: dict[str, Any] = json.loads(res.stdout) if res.stdout.strip() else {}
    return out


Ctx = dict[str, str]
# (method, request built from what earlier calls returned, what to remember)
GRPC_CALLS: list[
    tuple[str, Callable[[Ctx], dict[str, Any]], Callable[[Ctx, dict[str, Any]], None]]
] = [
    (
        "shop.users.v1.UserService/CreateUser",
        lambda c: {
            "email": f"e2e.{c['tag']}@example.com",
            "password": "correct horse battery staple",
            "profile": {"display_name": "E2E"},
        },
        lambda c, r: c.update(user_id=r["userId"]),
    ),
    ("shop.users.v1.UserService/GetUser", lambda c: {"user_id": c["user_id"]}, lambda c, r: None),
    (
        "shop.users.v1.UserService/Authenticate",
        lambda c: {
            "email": f"e2e.{c['tag']}@example.com",
            "password": "correct horse battery staple",
        },
        lambda c, r: c.update(token=r["sessionToken"], refresh=r["refreshToken"]),
    ),
    (
        "shop.users.v1.UserService/ValidateSession",
        lambda c: {"session_token": c["token"]},
        lambda c, r: None,
    ),
    (
        "shop.inventory.v1.InventoryService/CreateProduct",
        lambda c: {
            "sku": f"E2E-{c['tag']}",
            "name": "Teapot",
            "price": {"currency_code": "USD", "amount_minor": 1999},
            "initial_stock": 20,
        },
        lambda c, r: c.update(product_id=r["productId"]),
    ),
    (
        "shop.inventory.v1.InventoryService/GetProduct",
        lambda c: {"product_id": c["product_id"]},
        lambda c, r: None,
    ),
    (
        "shop.inventory.v1.InventoryService/ListProducts",
        lambda c: {"page_size": 5},
        lambda c, r: None,
    ),
    (
        "shop.inventory.v1.InventoryService/AddStock",
        lambda c: {"product_id": c["product_id"], "quantity": 5},
        lambda c, r: None,
    ),
    (
        "shop.inventory.v1.InventoryService/CheckAvailability",
        lambda c: {"items": [{"product_id": c["product_id"], "quantity": 2}]},
        lambda c, r: None,
    ),
    (
        "shop.orders.v1.OrderService/CreateOrder",
        lambda c: {
            "user_id": c["user_id"],
            "items": [{"product_id": c["product_id"], "quantity": 1}],
            "card_number": GOOD_CARD,
        },
        lambda c, r: c.update(order_v1=r["orderId"]),
    ),
    (
        "shop.orders.v1.OrderService/GetOrder",
        lambda c: {"order_id": c["order_v1"]},
        lambda c, r: None,
    ),
    (
        "shop.orders.v1.OrderService/ListOrders",
        lambda c: {"user_id": c["user_id"]},
        lambda c, r: None,
    ),
    (
        "shop.orders.v1.OrderService/CancelOrder",
        lambda c: {"order_id": c["order_v1"], "reason": "e2e"},
        lambda c, r: None,
    ),
    (
        "shop.orders.v2.OrderService/CreateOrder",
        lambda c: v2_order_request(c["user_id"], c["product_id"]),
        lambda c, r: c.update(order_v2=r["orderId"]),
    ),
    (
        "shop.orders.v2.OrderService/GetOrder",
        lambda c: {"order_id": c["order_v2"]},
        lambda c, r: None,
    ),
    (
        "shop.orders.v2.OrderService/ListOrders",
        lambda c: {"user_id": c["user_id"], "page_size": 10},
        lambda c, r: None,
    ),
    (
        "shop.orders.v2.OrderService/CancelOrder",
        lambda c: {"order_id": c["order_v2"], "reason": "e2e"},
        lambda c, r: None,
    ),
    (
        "shop.users.v1.UserService/RefreshSession",
        lambda c: {"refresh_token": c["refresh"]},
        lambda c, r: c.update(refresh=r["refreshToken"], access=r["accessToken"]),
    ),
    (
        "shop.users.v1.UserService/RevokeSession",
        lambda c: {"refresh_token": c["refresh"]},
        lambda c, r: None,
    ),
    (
        "shop.users.v1.UserService/DeleteUser",
        lambda c: {"user_id": c["user_id"]},
        lambda c, r: None,
    ),
]
