"""Through the real edge to the real shop: grpcurl and REST, every public RPC.

The lists of calls below are checked against the descriptor set: a public RPC
or HTTP binding added to the contracts without an end-to-end call here fails
`test_every_public_rpc_is_called_by_grpc` / `..._by_rest`.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import urllib.request
import uuid
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import json_format
from shop.orders.v1 import orders_pb2 as orders_v1
from shop.orders.v2 import orders_pb2 as orders_v2
from shop.payments.v1 import payments_pb2, payments_pb2_grpc

from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS
from mesh.tools import grpcurl_binary
from tests.support import grpc_web, raw_http
from tests.support.e2e_stack import (
    GRPC_CALLS,
    Ctx,
    call_ok,
    new_ctx,
    rest_auth_headers,
    run_calls,
    v2_order_request,
)
from tests.support.edge_tokens import sign_up
from tests.support.local_mesh import E2E_PAGE_ORIGIN, Stack

pytestmark = pytest.mark.asyncio(loop_scope="module")

DECLINED_CARD = "4000000000000002"
MODEL = build_model(load_descriptor_set(DESCRIPTORS).file)


def _public_methods() -> set[str]:
    return {f"{s.full_name}/{m.name}" for s in MODEL.public for m in s.methods}


async def test_every_public_rpc_is_called_by_grpc() -> None:
    assert {m for m, _, _ in GRPC_CALLS} == _public_methods()


async def test_grpcurl_list_shows_exactly_the_public_services(stack: Stack) -> None:
    res = await stack.grpcurl(stack.edge.address, "list")
    assert res.returncode == 0, res.stderr
    listed = set(res.stdout.split())
    assert {s.full_name for s in MODEL.public} <= listed
    assert listed - {s.full_name for s in MODEL.public} <= {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
    assert not any("Payment" in s or "Reservation" in s for s in listed)


async def test_grpcurl_describe(stack: Stack) -> None:
    res = await stack.grpcurl(stack.edge.address, "describe", "shop.orders.v2.OrderService")
    assert res.returncode == 0, res.stderr
    assert "rpc CreateOrder ( .shop.orders.v2.CreateOrderRequest )" in res.stdout


async def test_every_public_rpc_through_the_edge_by_grpc(stack: Stack) -> None:
    ctx = await run_calls(stack, await new_ctx(stack))
    order = await call_ok(
        stack,
        "shop.orders.v2.OrderService/GetOrder",
        {"order_id": ctx["order_v2"]},
        f"authorization: Bearer {ctx['access']}",
    )
    assert order["status"] == "ORDER_STATUS_CANCELLED"


async def test_payments_unreachable_from_the_edge(stack: Stack, shopper: Ctx) -> None:
    # With a valid token: what stops the call is the missing route, not authentication.
    token = (("authorization", f"Bearer {shopper['access']}"),)
    res = await stack.call("shop.payments.v1.PaymentService/GetPayment", {"saga_id": "x"})
    assert res.returncode != 0
    assert 'does not expose service "shop.payments.v1.PaymentService"' in res.stderr, res.stderr
    async with grpc.aio.insecure_channel(stack.edge.address) as ch:  # without reflection
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await payments_pb2_grpc.PaymentServiceStub(ch).GetPayment(
                payments_pb2.GetPaymentRequest(saga_id=str(uuid.uuid4())),
                metadata=token,
                timeout=10,
            )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    for path in ("/api/v1/payments", "/api/v1/payments/x", "/api/payments/x"):
        status, _ = await stack.json("POST", path, {}, dict(token))
        assert status == 404, path
        status, _ = await stack.json("POST", path, {})
        # Anonymous: the transcoder answers 404 for a path no binding has (before auth),
        # else the edge asks for a token; either way nothing is routed.
        assert status in (401, 404), path


def _binding(method: str) -> tuple[str, str, str]:
    svc_name, name = method.split("/")
    svc = next(s for s in MODEL.public if s.full_name == svc_name)
    m = next(m for m in svc.methods if m.name == name)
    assert m.bindings, f"{method} has no HTTP binding"
    b = m.bindings[0]
    return b.verb.upper(), b.path, b.body


def _rest_request(method: str, request: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None]:
    """The HTTP request that the binding of `method` maps `request` to."""
    verb, template, body = _binding(method)
    rest = dict(request)
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        field = path[start + 1 : end]
        path = path[:start] + str(rest.pop(field)) + path[end + 1 :]
    if body == "*":
        return verb, path, rest
    query = "&".join(f"{k}={v}" for k, v in rest.items() if not isinstance(v, dict | list))
    return verb, f"{path}?{query}" if query else path, None


async def test_every_http_binding_is_called_by_rest() -> None:
    bound = {f"{s.full_name}/{m.name}" for s in MODEL.public for m in s.methods if m.bindings}
    assert bound == {m for m, _, _ in GRPC_CALLS}


async def test_every_http_binding_through_the_edge_by_rest(stack: Stack) -> None:
    ctx = await new_ctx(stack)
    for method, build, remember in GRPC_CALLS:
        verb, path, body = _rest_request(method, build(ctx))
        status, doc = await stack.json(verb, path, body, rest_auth_headers(ctx, method))
        assert status == 200, f"{verb} {path}: {status} {doc}"
        remember(ctx, doc or {})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shopper(stack: Stack) -> Ctx:
    """A user (and their access token) and a product with stock, made through the edge."""
    return await run_calls(stack, await new_ctx(stack), 5)


def _as(ctx: Ctx, key: str = "access", **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {ctx[key]}", **extra}


async def test_rest_errors_are_json_statuses(stack: Stack, shopper: Ctx) -> None:
    status, body = await asyncio.to_thread(
        stack.edge.http, "POST", "/api/v2/orders", b'{"user_id": ', _as(shopper)
    )
    assert status == 400 and isinstance(body, dict | str)
    status, _ = await stack.json("GET", "/api/v1/no-such-thing", None, _as(shopper))
    assert status == 404
    status, body = await stack.json(
        "GET", f"/api/v1/users/{uuid.uuid4()}", None, _as(shopper, "admin")
    )
    assert status == 404 and body["code"] == 5  # NOT_FOUND as google.rpc.Status JSON
    status, body = await stack.json("POST", "/api/v1/users", {"email": "", "password": "x"})
    assert status == 400 and body["code"] == 3  # INVALID_ARGUMENT
    order = v2_order_request(shopper["user_id"], shopper["product_id"], card=DECLINED_CARD)
    status, body = await stack.json("POST", "/api/v2/orders", order, _as(shopper))
    assert status == 400 and body["code"] == 9, body  # FAILED_PRECONDITION -> 400
    assert "declined" in body["message"].lower()


async def test_accept_version_pins_unversioned_paths(stack: Stack, shopper: Ctx) -> None:
    status, order = await stack.json(
        "POST",
        "/api/orders",
        v2_order_request(shopper["user_id"], shopper["product_id"]),
        _as(shopper),
    )
    assert status == 200, order  # unversioned: the latest (v2) request shape
    oid = order["orderId"]
    status, latest = await stack.json("GET", f"/api/orders/{oid}", None, _as(shopper))
    assert status == 200 and latest["total"]["currencyCode"] == "USD"
    status, v1 = await stack.json(
        "GET", f"/api/orders/{oid}", None, _as(shopper, **{"accept-version": "v1"})
    )
    assert status == 200 and v1["totalCents"] == latest["total"]["amountMinor"]
    status, body = await stack.json(
        "GET", f"/api/orders/{oid}", None, _as(shopper, **{"accept-version": "v7"})
    )
    # One JSON Status, not one inside another's message (seen before 7 Dec 2026).
    assert status == 400, body
    assert body == {"code": 3, "message": "accept-version must be one of v1, v2"}, body
    async with grpc.aio.insecure_channel(stack.edge.address) as ch:
        pinned = ch.unary_unary(
            "/shop.orders.OrderService/GetOrder",
            request_serializer=orders_v1.GetOrderRequest.SerializeToString,
            response_deserializer=orders_v1.Order.FromString,
        )
        got = await pinned(
            orders_v1.GetOrderRequest(order_id=oid),
            metadata=(("accept-version", "v1"), ("authorization", f"Bearer {shopper['access']}")),
        )
    assert got.order_id == oid and got.total_cents == int(latest["total"]["amountMinor"])


async def test_the_tls_listener_with_the_mesh_ca(stack: Stack) -> None:
    """`grpcurl -cacert` and HTTPS with the mesh CA on the real stack's 8443 (a free port here)."""
    ca = str(stack.mesh.pki.edge_options["ca_cert_path"])  # the CA `meshctl up` made
    tls = f"localhost:{stack.mesh.o.edge_tls_port}"
    listed = await asyncio.to_thread(
        subprocess.run,
        [grpcurl_binary(), "-cacert", ca, tls, "list"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert "shop.orders.v2.OrderService" in listed.stdout.split()
    refused = await asyncio.to_thread(
        subprocess.run,
        [grpcurl_binary(), tls, "list"],  # the system roots do not know the mesh CA
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    # REST over HTTPS, as `curl --cacert .run/pki/ca.crt https://127.0.0.1:8443/...`.
    url = f"https://127.0.0.1:{stack.mesh.o.edge_tls_port}/api/v1/products"
    context = ssl.create_default_context(cafile=ca)
    body = await asyncio.to_thread(_https_get, url, context)
    assert isinstance(json.loads(body), dict)  # a JSON answer over TLS, verified by the CA


def _https_get(url: str, context: ssl.SSLContext) -> bytes:
    with urllib.request.urlopen(url, context=context, timeout=10) as resp:
        return bytes(resp.read())


async def test_a_page_of_the_listed_origin_orders_by_grpc_web(stack: Stack, shopper: Ctx) -> None:
    """The storefront's path: a browser page of the listed origin (`[edge.cors]`) places
    a v2 order by gRPC-Web with the user's token and can read every answer; a page of
    another origin gets no allow-origin, so its browser shows it nothing."""
    edge = f"http://{stack.edge.address}"
    page = {"origin": E2E_PAGE_ORIGIN}
    preflight = await asyncio.to_thread(
        raw_http.request,
        stack.edge.port,
        "OPTIONS",
        "/shop.orders.v2.OrderService/CreateOrder",
        headers={
            **page,
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-grpc-web",
        },
    )
    assert preflight.status == 200
    assert preflight.headers["access-control-allow-origin"] == E2E_PAGE_ORIGIN
    order = json_format.ParseDict(
        v2_order_request(shopper["user_id"], shopper["product_id"]), orders_v2.CreateOrderRequest()
    )
    placed = await grpc_web.call(
        edge, "/shop.orders.v2.OrderService/CreateOrder", order, {**page, **_as(shopper)}
    )
    assert placed.grpc_status == 0, placed
    assert placed.headers["access-control-allow-origin"] == E2E_PAGE_ORIGIN
    created = orders_v2.Order.FromString(placed.messages[0])
    assert created.status == orders_v2.ORDER_STATUS_COMPLETED, created
    # Ownership holds as for gRPC: another user's order is refused, and the page reads why.
    other = await sign_up(stack)
    refused = await grpc_web.call(
        edge,
        "/shop.orders.v2.OrderService/GetOrder",
        orders_v2.GetOrderRequest(order_id=created.order_id),
        {**page, **other.headers},
    )
    assert refused.grpc_status in (5, 7), refused  # NOT_FOUND or PERMISSION_DENIED
    assert refused.headers["access-control-allow-origin"] == E2E_PAGE_ORIGIN
    foreign = await asyncio.to_thread(
        raw_http.request,
        stack.edge.port,
        "OPTIONS",
        "/api/v2/orders",
        headers={"origin": "http://evil.test", "access-control-request-method": "POST"},
    )
    assert foreign.status == 200 and "access-control-allow-origin" not in foreign.headers
