"""Calls through the edge of the whole mesh the e2e tests start (`tests.support.local_mesh`).

Every call carries the access token its method's `(meshproto.api.v1.auth)` option asks
for (`auth_headers`): none for public methods, the context's user (`access`, set by
Authenticate) for user methods, an admin (`admin`, made by `new_ctx`) for role methods.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from mesh.api.options import Access
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS
from tests.support.edge_tokens import admin
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

_ACCESS = {
    f"{svc.full_name}/{m.name}": m.auth.access if m.auth else Access.USER
    for svc in build_model(load_descriptor_set(DESCRIPTORS).file).public
    for m in svc.methods
}


def bearer_for(ctx: Ctx, method: str) -> str | None:
    """The access token `method` (`pkg.Service/Method`) needs from this context, if any."""
    access = _ACCESS[method]
    if access is Access.PUBLIC:
        return None
    return ctx["admin"] if access is Access.ROLES else ctx["access"]


def auth_headers(ctx: Ctx, method: str) -> tuple[str, ...]:
    """grpcurl `-H` headers for `method`."""
    token = bearer_for(ctx, method)
    return (f"authorization: Bearer {token}",) if token else ()


def rest_auth_headers(ctx: Ctx, method: str) -> dict[str, str]:
    token = bearer_for(ctx, method)
    return {"authorization": f"Bearer {token}"} if token else {}


async def new_ctx(stack: Stack) -> Ctx:
    """A fresh context with a unique tag and an admin's access token."""
    return {"tag": uuid.uuid4().hex[:8], "admin": (await admin(stack)).access_token}


async def run_calls(stack: Stack, ctx: Ctx, count: int | None = None) -> Ctx:
    """The first `count` (all) GRPC_CALLS by grpcurl, each with the token it needs."""
    for method, build, remember in GRPC_CALLS[:count]:
        remember(ctx, await call_ok(stack, method, build(ctx), *auth_headers(ctx, method)))
    return ctx


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
    (
        "shop.users.v1.UserService/Authenticate",
        lambda c: {
            "email": f"e2e.{c['tag']}@example.com",
            "password": "correct horse battery staple",
        },
        lambda c, r: c.update(
            token=r["sessionToken"], refresh=r["refreshToken"], access=r["accessToken"]
        ),
    ),
    ("shop.users.v1.UserService/GetUser", lambda c: {"user_id": c["user_id"]}, lambda c, r: None),
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
