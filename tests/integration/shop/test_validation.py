"""Bad requests answer INVALID_ARGUMENT naming every bad field; a property test throws
arbitrary requests at every orders RPC: only defined codes, and the server stays up."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shop.orders.v1 import orders_pb2 as v1
from shop.orders.v2 import orders_pb2 as v2

from tests.support.pki import mtls_channel
from tests.support.shop import ShopStack
from tests.support.shop_calls import address, card, create_v2, fails, new_product, new_user

pytestmark = pytest.mark.asyncio(loop_scope="package")

GOOD_ID = "11111111-1111-4111-8111-111111111111"
ANOTHER_ID = "22222222-2222-4222-8222-222222222222"


def _v2(**changes: object) -> v2.CreateOrderRequest:
    req = create_v2(GOOD_ID, [(ANOTHER_ID, 1)], key="k")
    for name, value in changes.items():
        if value is None:
            req.ClearField(name)  # type: ignore[arg-type]
        elif isinstance(value, list):
            del getattr(req, name)[:]
            getattr(req, name).extend(value)
        else:
            setattr(req, name, value)
    return req


def _items(*pairs: tuple[str, int]) -> list[v2.OrderItem]:
    return [v2.OrderItem(product_id=p, quantity=q) for p, q in pairs]


def _bad_card(**fields: object) -> Callable[[v2.CreateOrderRequest], None]:
    def apply(req: v2.CreateOrderRequest) -> None:
        for k, value in fields.items():
            setattr(req.card, k, value)

    return apply


def _bad_address(**fields: object) -> Callable[[v2.CreateOrderRequest], None]:
    def apply(req: v2.CreateOrderRequest) -> None:
        for k, value in fields.items():
            if k == "lines":
                del req.shipping_address.lines[:]
                req.shipping_address.lines.extend(value)  # type: ignore[arg-type]
            else:
                setattr(req.shipping_address, k, value)

    return apply


CASES: list[tuple[str, v2.CreateOrderRequest, set[str]]] = [
    ("no items", _v2(items=[]), {"items"}),
    ("101 items", _v2(items=_items(*[(GOOD_ID, 1)] * 101)), {"items"}),
    ("duplicate product", _v2(items=_items((GOOD_ID, 1), (GOOD_ID, 2))), {"items[1].product_id"}),
    ("quantity 0", _v2(items=_items((GOOD_ID, 0))), {"items[0].quantity"}),
    ("quantity negative", _v2(items=_items((GOOD_ID, -5))), {"items[0].quantity"}),
    ("malformed ids", _v2(user_id="nope", items=_items(("x", 1))),
     {"user_id", "items[0].product_id"}),
    ("unknown currency", _v2(currency_code="XYZ"), {"currency_code"}),
    ("lower-case currency", _v2(currency_code="usd"), {"currency_code"}),
    ("empty key", _v2(idempotency_key=""), {"idempotency_key"}),
    ("key too long", _v2(idempotency_key="k" * 129), {"idempotency_key"}),
    ("no card", _v2(card=None), {"card"}),
    ("no address", _v2(shipping_address=None), {"shipping_address"}),
]  # fmt: skip

MUTATIONS: list[tuple[str, Callable[[v2.CreateOrderRequest], None], set[str]]] = [
    ("card number", _bad_card(number="4242424242424241"), {"card.number"}),
    ("card expiry", _bad_card(exp_month=13, exp_year=99), {"card.exp_month", "card.exp_year"}),
    ("expired card", _bad_card(exp_month=1, exp_year=2001), {"card.exp_year"}),
    ("cvc", _bad_card(cvc="12a"), {"card.cvc"}),
    ("address fields", _bad_address(recipient="", lines=[], city=" ", country_code="germany"),
     {"shipping_address.recipient", "shipping_address.lines", "shipping_address.city",
      "shipping_address.country_code"}),
    ("control characters", _bad_address(recipient="Ada\x00"), {"shipping_address.recipient"}),
]  # fmt: skip


@pytest.mark.parametrize(("case", "request_", "fields"), CASES, ids=[c[0] for c in CASES])
async def test_create_order_v2_names_every_bad_field(
    shop: ShopStack, case: str, request_: v2.CreateOrderRequest, fields: set[str]
) -> None:
    f = await fails(shop.orders_v2().CreateOrder(request_))
    assert f.code is grpc.StatusCode.INVALID_ARGUMENT, case
    assert set(f.violations) == fields, case


@pytest.mark.parametrize(("case", "mutate", "fields"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
async def test_create_order_v2_card_and_address(
    shop: ShopStack, case: str, mutate: Callable[[v2.CreateOrderRequest], None], fields: set[str]
) -> None:
    req = _v2()
    mutate(req)
    f = await fails(shop.orders_v2().CreateOrder(req))
    assert f.code is grpc.StatusCode.INVALID_ARGUMENT, case
    assert set(f.violations) == fields, case


async def test_list_get_cancel_validation(shop: ShopStack) -> None:
    o2, o1 = shop.orders_v2(), shop.orders_v1()
    for size in (-1, 101):
        f = await fails(o2.ListOrders(v2.ListOrdersRequest(user_id=GOOD_ID, page_size=size)))
        assert f.code is grpc.StatusCode.INVALID_ARGUMENT and set(f.violations) == {"page_size"}
    f = await fails(o2.ListOrders(v2.ListOrdersRequest(user_id=GOOD_ID, page_token="garbage!")))
    assert set(f.violations) == {"page_token"}
    f = await fails(o1.ListOrders(v1.ListOrdersRequest(user_id="not-a-uuid")))
    assert set(f.violations) == {"user_id"}
    f = await fails(o2.GetOrder(v2.GetOrderRequest(order_id="123")))
    assert set(f.violations) == {"order_id"}
    f = await fails(o1.CancelOrder(v1.CancelOrderRequest(order_id=GOOD_ID, reason="x" * 501)))
    assert set(f.violations) == {"reason"}
    f = await fails(o1.CreateOrder(v1.CreateOrderRequest(user_id=GOOD_ID, items=[
        v1.OrderItem(product_id=ANOTHER_ID, quantity=1)], card_number="12")))  # fmt: skip
    assert set(f.violations) == {"card_number"}


async def test_valid_requests_still_work_after_all_that(shop: ShopStack) -> None:
    user = await new_user(shop)
    product = await new_product(shop)
    order = await shop.orders_v2().CreateOrder(create_v2(user, [(product, 1)]))
    assert order.status == v2.ORDER_STATUS_COMPLETED
    assert order.shipping_address == address() and order.card_last4 == card().number[-4:]


# -- property test -------------------------------------------------------------------------

DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
ids = st.one_of(st.just(GOOD_ID), st.uuids().map(str), st.text(max_size=40))
texts = st.text(max_size=150)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
items_v2 = st.lists(st.builds(v2.OrderItem, product_id=ids, quantity=int64), max_size=4)
cards = st.builds(v2.PaymentCard, number=st.one_of(st.just("4242424242424242"), texts),
                  exp_month=int32, exp_year=int32, cvc=texts)  # fmt: skip
addresses = st.builds(v2.Address, recipient=texts, lines=st.lists(texts, max_size=7), city=texts,
                      postal_code=texts, country_code=texts)  # fmt: skip
create_v2_requests = st.builds(
    v2.CreateOrderRequest, idempotency_key=texts, user_id=ids, items=items_v2,
    currency_code=st.one_of(st.just("USD"), texts), card=cards, shipping_address=addresses,
)  # fmt: skip
calls = st.one_of(
    create_v2_requests.map(lambda r: ("v2", "CreateOrder", r)),
    st.builds(v1.CreateOrderRequest, user_id=ids, card_number=texts,
              items=st.lists(st.builds(v1.OrderItem, product_id=ids, quantity=int64), max_size=4),
              ).map(lambda r: ("v1", "CreateOrder", r)),
    st.builds(v2.GetOrderRequest, order_id=ids).map(lambda r: ("v2", "GetOrder", r)),
    st.builds(v1.GetOrderRequest, order_id=ids).map(lambda r: ("v1", "GetOrder", r)),
    st.builds(v2.ListOrdersRequest, user_id=ids, page_size=int32, page_token=texts
              ).map(lambda r: ("v2", "ListOrders", r)),
    st.builds(v1.ListOrdersRequest, user_id=ids).map(lambda r: ("v1", "ListOrders", r)),
    st.builds(v2.CancelOrderRequest, order_id=ids, reason=texts
              ).map(lambda r: ("v2", "CancelOrder", r)),
    st.builds(v1.CancelOrderRequest, order_id=ids, reason=texts
              ).map(lambda r: ("v1", "CancelOrder", r)),
)  # fmt: skip


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(call=calls)
async def test_arbitrary_requests_get_defined_codes(
    shop_sqlite_only: ShopStack, call: tuple[str, str, object]
) -> None:
    version, method, request = call
    stub = shop_sqlite_only.orders_v2() if version == "v2" else shop_sqlite_only.orders_v1()
    try:
        await getattr(stub, method)(request, timeout=10)
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        code = err.code()
    assert code in DEFINED, f"{version}.{method}({request!r}) -> {code}"


async def test_orders_still_serving_after_the_property_test(shop_sqlite_only: ShopStack) -> None:
    async with mtls_channel(shop_sqlite_only.address("orders"), "orders") as ch:
        reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert shop_sqlite_only.processes["orders"].running


@pytest.fixture
def shop_sqlite_only(shop: ShopStack, request: pytest.FixtureRequest) -> ShopStack:
    # Validation does not depend on the database: one backend is enough for the fuzzing.
    if "sqlite" not in request.node.callspec.id:
        pytest.skip("property test runs on the SQLite stack only")
    return shop
