"""End users in the shop, on SQLite and PostgreSQL: ownership and roles decided by the
services from the end-user context (never from request fields), the context travelling
from orders to the services it calls, signed page tokens, format characters refused.

Calls go straight to the services holding the edge's (or orders') identity, with the
end user as the edge would pass it (tests/support/end_user.py)."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.common.v1 import money_pb2
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2
from shop.orders.v2 import orders_pb2_grpc as v2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from interceptors.end_user import EndUser, current_end_user
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from mesh.security.end_user import end_user_policy
from tests.support import pki
from tests.support.end_user import as_admin, as_user
from tests.support.shop import ShopStack
from tests.support.shop_calls import create_v1, create_v2, fails, new_product, new_user

pytestmark = pytest.mark.asyncio(loop_scope="package")

NOT_FOUND = grpc.StatusCode.NOT_FOUND
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def anonymous(shop: ShopStack, service: str) -> grpc.aio.Channel:
    """A channel to `service` with the edge's identity and no end user at all."""
    return pki.mtls_channel(shop.address(service), service, end_user=None)


async def test_users_see_and_cancel_only_their_own_orders(shop: ShopStack) -> None:
    alice, bob = await new_user(shop), await new_user(shop)
    product = await new_product(shop, stock=10, price=100)
    o2, o1 = shop.orders_v2(), shop.orders_v1()
    mine = await o2.CreateOrder(create_v2(alice, [(product, 1)]), metadata=as_user(alice))
    mine_v1 = await o1.CreateOrder(create_v1(alice, [(product, 1)]), metadata=as_user(alice))
    assert mine.status == v2.ORDER_STATUS_COMPLETED and mine.user_id == alice
    assert mine_v1.user_id == alice

    # Bob: someone else's order is "not found", as an order that does not exist.
    missing = str(uuid.uuid4())
    for order_id in (mine.order_id, mine_v1.order_id, missing):
        f = await fails(o2.GetOrder(v2.GetOrderRequest(order_id=order_id), metadata=as_user(bob)))
        assert (f.code, f.reason) == (NOT_FOUND, "ORDER_NOT_FOUND"), order_id
        f = await fails(o1.GetOrder(v1.GetOrderRequest(order_id=order_id), metadata=as_user(bob)))
        assert (f.code, f.reason) == (NOT_FOUND, "ORDER_NOT_FOUND"), order_id
        f = await fails(
            o2.CancelOrder(v2.CancelOrderRequest(order_id=order_id), metadata=as_user(bob))
        )
        assert (f.code, f.reason) == (NOT_FOUND, "ORDER_NOT_FOUND"), order_id
        f = await fails(
            o1.CancelOrder(v1.CancelOrderRequest(order_id=order_id), metadata=as_user(bob))
        )
        assert f.code == NOT_FOUND, order_id
    for call in (
        o2.ListOrders(v2.ListOrdersRequest(user_id=alice), metadata=as_user(bob)),
        o1.ListOrders(v1.ListOrdersRequest(user_id=alice), metadata=as_user(bob)),
    ):
        assert (await fails(call)).code == NOT_FOUND
    assert not (await o2.ListOrders(v2.ListOrdersRequest(), metadata=as_user(bob))).orders
    assert not (await o1.ListOrders(v1.ListOrdersRequest(), metadata=as_user(bob))).orders

    # Alice sees hers (an empty user_id means herself) and cancels one; an admin sees any.
    listed = await o2.ListOrders(v2.ListOrdersRequest(), metadata=as_user(alice))
    assert {o.order_id for o in listed.orders} == {mine.order_id, mine_v1.order_id}
    listed_v1 = await o1.ListOrders(v1.ListOrdersRequest(user_id=alice), metadata=as_user(alice))
    assert {o.order_id for o in listed_v1.orders} == {mine.order_id, mine_v1.order_id}
    got = await o2.GetOrder(v2.GetOrderRequest(order_id=mine.order_id), metadata=as_user(alice))
    assert got.status == v2.ORDER_STATUS_COMPLETED  # bob's cancel did nothing
    admin = as_admin(str(uuid.uuid4()))
    await o1.GetOrder(v1.GetOrderRequest(order_id=mine.order_id), metadata=admin)
    listed = await o2.ListOrders(v2.ListOrdersRequest(user_id=alice), metadata=admin)
    assert len(listed.orders) == 2
    cancelled = await o2.CancelOrder(
        v2.CancelOrderRequest(order_id=mine.order_id, reason="changed my mind"),
        metadata=as_user(alice),
    )
    assert cancelled.status == v2.ORDER_STATUS_CANCELLED


async def test_a_user_places_orders_only_for_themself(shop: ShopStack) -> None:
    alice, bob = await new_user(shop), await new_user(shop)
    product = await new_product(shop, stock=10, price=100)
    f = await fails(
        shop.orders_v2().CreateOrder(create_v2(alice, [(product, 1)]), metadata=as_user(bob))
    )
    assert f.code == DENIED
    f = await fails(
        shop.orders_v1().CreateOrder(create_v1(alice, [(product, 1)]), metadata=as_user(bob))
    )
    assert f.code == DENIED
    # No user_id: the order is the caller's own.
    own = await shop.orders_v2().CreateOrder(create_v2("", [(product, 1)]), metadata=as_user(bob))
    assert own.user_id == bob and own.status == v2.ORDER_STATUS_COMPLETED
    own_v1 = await shop.orders_v1().CreateOrder(
        create_v1("", [(product, 1)]), metadata=as_user(bob)
    )
    assert own_v1.user_id == bob
    # An admin may place one for someone else.
    other = await shop.orders_v2().CreateOrder(
        create_v2(alice, [(product, 1)]), metadata=as_admin(bob)
    )
    assert other.user_id == alice


async def test_user_methods_without_an_end_user_are_unauthenticated(shop: ShopStack) -> None:
    alice = await new_user(shop)
    product = await new_product(shop)
    async with anonymous(shop, "orders") as orders_ch, anonymous(shop, "users") as users_ch:
        orders = v2_grpc.OrderServiceStub(orders_ch)
        users = users_pb2_grpc.UserServiceStub(users_ch)
        for call in (
            orders.CreateOrder(create_v2(alice, [(product, 1)])),
            orders.GetOrder(v2.GetOrderRequest(order_id=str(uuid.uuid4()))),
            orders.ListOrders(v2.ListOrdersRequest(user_id=alice)),
            users.GetUser(users_pb2.GetUserRequest(user_id=alice)),
            users.DeleteUser(users_pb2.DeleteUserRequest(user_id=alice)),
        ):
            assert (await fails(call)).code == UNAUTHENTICATED
        # An empty id is no end user either.
        f = await fails(
            orders.GetOrder(
                v2.GetOrderRequest(order_id=str(uuid.uuid4())), metadata=(("x-mesh-user-id", ""),)
            )
        )
        assert f.code == UNAUTHENTICATED
    async with anonymous(shop, "inventory") as inventory_ch:
        # Product reads and availability stay public.
        inventory = inventory_pb2_grpc.InventoryServiceStub(inventory_ch)
        await inventory.GetProduct(inventory_pb2.GetProductRequest(product_id=product))
        await inventory.ListProducts(inventory_pb2.ListProductsRequest(page_size=1))
        await inventory.CheckAvailability(
            inventory_pb2.CheckAvailabilityRequest(
                items=[inventory_pb2.LineItem(product_id=product, quantity=1)]
            )
        )
    # The same call with an end user works.
    await shop.users().GetUser(users_pb2.GetUserRequest(user_id=alice), metadata=as_user(alice))


def _product() -> inventory_pb2.CreateProductRequest:
    return inventory_pb2.CreateProductRequest(
        sku=f"SKU-{uuid.uuid4().hex[:12]}",
        name="Lamp",
        price=money_pb2.Money(currency_code="USD", amount_minor=1999),
        initial_stock=3,
    )


async def test_products_and_stock_need_the_admin_role(shop: ShopStack) -> None:
    bob = await new_user(shop)
    inventory = shop.inventory()
    product = await new_product(shop)
    for roles in ((), ("buyer",)):
        f = await fails(inventory.CreateProduct(_product(), metadata=as_user(bob, *roles)))
        assert f.code == DENIED
        f = await fails(
            inventory.AddStock(
                inventory_pb2.AddStockRequest(product_id=product, quantity=5),
                metadata=as_user(bob, *roles),
            )
        )
        assert f.code == DENIED
    created = await inventory.CreateProduct(_product(), metadata=as_admin(bob))
    stocked = await inventory.AddStock(
        inventory_pb2.AddStockRequest(product_id=created.product_id, quantity=5),
        metadata=as_admin(bob),
    )
    assert stocked.available == 8


async def test_accounts_are_read_and_deleted_by_their_owner_or_an_admin(shop: ShopStack) -> None:
    alice, bob = await new_user(shop), await new_user(shop)
    users = shop.users()
    me = await users.GetUser(users_pb2.GetUserRequest(user_id=alice), metadata=as_user(alice))
    assert me.user_id == alice
    for call in (
        users.GetUser(users_pb2.GetUserRequest(user_id=bob), metadata=as_user(alice)),
        users.DeleteUser(users_pb2.DeleteUserRequest(user_id=bob), metadata=as_user(alice)),
        # Denied before the lookup: the answer does not tell whether the account exists.
        users.GetUser(users_pb2.GetUserRequest(user_id=str(uuid.uuid4())), metadata=as_user(alice)),
    ):
        f = await fails(call)
        assert (f.code, f.reason) == (DENIED, "NOT_YOUR_ACCOUNT")
    admin = as_admin()
    assert (await users.GetUser(users_pb2.GetUserRequest(user_id=bob), metadata=admin)).user_id
    await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=alice), metadata=as_user(alice))
    f = await fails(users.GetUser(users_pb2.GetUserRequest(user_id=alice), metadata=admin))
    assert f.code == NOT_FOUND
    await users.DeleteUser(users_pb2.DeleteUserRequest(user_id=bob), metadata=admin)


async def test_an_identity_outside_the_mesh_gets_nothing_for_its_metadata(
    shop: ShopStack,
) -> None:
    alice = await new_user(shop)
    ch = pki.mtls_channel(shop.address("users"), "users", caller="intruder", end_user=None)
    async with ch:
        f = await fails(
            users_pb2_grpc.UserServiceStub(ch).GetUser(
                users_pb2.GetUserRequest(user_id=alice), metadata=as_admin(alice)
            )
        )
    assert f.code in (DENIED, UNAUTHENTICATED)


class SpyPayments(payments_pb2_grpc.PaymentServiceServicer):
    """Records the end user each call acts for, as the mesh's interceptor sets it; declines."""

    def __init__(self) -> None:
        self.end_users: list[EndUser | None] = []

    async def Charge(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.end_users.append(current_end_user.get())
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "declined by the spy")
        raise AssertionError  # pragma: no cover

    async def Refund(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.end_users.append(current_end_user.get())
        await context.abort(grpc.StatusCode.NOT_FOUND, "nothing charged")
        raise AssertionError  # pragma: no cover


async def test_the_end_user_travels_from_orders_to_the_services_it_calls(
    shop: ShopStack,
) -> None:
    alice = await new_user(shop)
    product = await new_product(shop, stock=10, price=100)
    spy = SpyPayments()
    health = health_aio.HealthServicer()

    def add(server: grpc.aio.Server) -> None:
        payments_pb2_grpc.add_PaymentServiceServicer_to_server(spy, server)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)

    # The real payments' identity and the mesh's end-user interceptor: it believes
    # orders' metadata because orders is a mesh identity its contract names.
    policy = end_user_policy(
        "payments", ["shop.payments.v1.PaymentService"], pki.session_pki().trust_domain
    )
    server, port = await pki.mtls_server(add, "payments", interceptors=[policy])
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    registry = EmbeddedRegistry(shop.registry.directory, health_check=False)
    spy_instance = Instance(id="payments-spy", service="payments", host="127.0.0.1", port=port)
    await shop.stop("payments")  # the spy is the only payments instance
    await registry.register(spy_instance)
    try:
        f = await fails(
            shop.orders_v2().CreateOrder(create_v2(alice, [(product, 1)]), metadata=as_user(alice))
        )
        assert f.code == grpc.StatusCode.FAILED_PRECONDITION
        assert spy.end_users and spy.end_users[0] == EndUser(alice)
    finally:
        await registry.deregister(spy_instance.id)
        await registry.close()
        await server.stop(None)
        await shop.start("payments")


def _forged(payload: dict[str, Any]) -> str:
    """A token in the old, unsigned format (what a client could forge before)."""
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_forged_or_tampered_page_tokens_are_invalid_arguments(shop: ShopStack) -> None:
    alice = await new_user(shop)
    product = await new_product(shop, stock=10, price=100)
    orders = shop.orders_v2()
    for _ in range(2):
        await orders.CreateOrder(create_v2(alice, [(product, 1)]), metadata=as_user(alice))
    page = await orders.ListOrders(v2.ListOrdersRequest(page_size=1), metadata=as_user(alice))
    token = page.next_page_token
    assert token
    nxt = await orders.ListOrders(
        v2.ListOrdersRequest(page_size=1, page_token=token), metadata=as_user(alice)
    )
    assert len(nxt.orders) == 1 and nxt.orders[0].order_id != page.orders[0].order_id
    body, _, tag = token.partition(".")
    await new_product(shop, stock=1)  # a second product: a page of one has a next page
    products = await shop.inventory().ListProducts(inventory_pb2.ListProductsRequest(page_size=1))
    assert products.next_page_token
    bad = [
        _forged({"v": 1, "k": "orders.v2.list", "c": {"u": alice, "t": 2**70, "i": "x"}}),
        _forged({"v": 2, "k": "orders.v2.list", "c": {"u": alice, "t": 2**70, "i": "x"}}),
        f"{_forged({'v': 2, 'k': 'orders.v2.list', 'c': {'u': alice, 't': 1, 'i': 'x'}})}.{tag}",
        f"{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}.{tag}",
        f"{body}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}",
        products.next_page_token,  # another listing's token
        "garbage!",
    ]
    for forged in bad:
        f = await fails(
            orders.ListOrders(
                v2.ListOrdersRequest(page_size=1, page_token=forged), metadata=as_user(alice)
            )
        )
        assert (f.code, set(f.violations)) == (INVALID, {"page_token"}), forged
    # Bob cannot continue alice's listing with her token either.
    bob = await new_user(shop)
    f = await fails(
        orders.ListOrders(v2.ListOrdersRequest(page_token=token), metadata=as_user(bob))
    )
    assert (f.code, set(f.violations)) == (INVALID, {"page_token"})
    f = await fails(
        shop.inventory().ListProducts(
            inventory_pb2.ListProductsRequest(page_token=_forged({"v": 2, "k": "x", "c": {}}))
        )
    )
    assert (f.code, set(f.violations)) == (INVALID, {"page_token"})


@pytest.mark.parametrize("char", ["\u202e", "\u200b", "\u2066", "\ufeff", "\u200d"])
async def test_text_fields_refuse_format_characters(shop: ShopStack, char: str) -> None:
    f = await fails(
        shop.users().CreateUser(
            users_pb2.CreateUserRequest(
                email=f"{uuid.uuid4().hex}@example.com",
                password="correct horse battery",
                profile=users_pb2.Profile(display_name=f"Ada{char}Lovelace"),
            )
        )
    )
    assert (f.code, set(f.violations)) == (INVALID, {"profile.display_name"})
    product = _product()
    product.name = f"moc.elgoog{char}"
    f = await fails(shop.inventory().CreateProduct(product, metadata=as_admin()))
    assert (f.code, set(f.violations)) == (INVALID, {"name"})
    alice = await new_user(shop)
    order = create_v2(alice, [(str(uuid.uuid4()), 1)])
    order.shipping_address.recipient = f"Ada{char}"
    order.shipping_address.city = f"{char}London"
    f = await fails(shop.orders_v2().CreateOrder(order, metadata=as_user(alice)))
    assert f.code == INVALID
    assert set(f.violations) == {"shipping_address.recipient", "shipping_address.city"}
