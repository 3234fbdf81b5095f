"""Browsers at the real Envoy edge (mesh/edge/browsers.py): CORS and gRPC-Web.

A page is served from 127.0.0.1:<page port>, the origin the edge allows; the same
server answers as `localhost:<page port>` too, another origin the edge does not
allow. Debian's chromium loads both and calls the edge with `fetch`: the browser
enforces CORS, so what a page may read is what a user's browser would let it. The
upstreams are servicers of the public contracts that count what reaches them, so a
call a browser must not send is checked where it matters.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from mesh.edge.browsers import EdgeCors
from mesh.edge.limits import EdgeLimits
from tests.support import grpc_web
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium
from tests.support.edge_stand_ins import (
    FixedRegistry,
    running_edge,
    start_public_upstreams,
    start_upstream,
)
from tests.support.envoy import EnvoyProcess
from tests.support.poll import eventually
from tests.support.ports import free_port
from tests.support.raw_http import RawResponse, request

pytestmark = pytest.mark.asyncio(loop_scope="module")

BODY_LIMIT = 64 * 1024
GET_PRODUCT = "/shop.inventory.v1.InventoryService/GetProduct"
CHARGE = "/shop.payments.v1.PaymentService/Charge"


class Inventory(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, seen: Counter[str]) -> None:
        self.seen = seen

    async def GetProduct(self, request: Any, context: Any) -> inventory_pb2.Product:
        self.seen["GetProduct"] += 1
        if request.product_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such product")
        return inventory_pb2.Product(product_id=request.product_id, name="Teapot")


class Users(users_pb2_grpc.UserServiceServicer):
    def __init__(self, seen: Counter[str]) -> None:
        self.seen = seen

    async def CreateUser(self, request: Any, context: Any) -> users_pb2.User:
        self.seen[f"CreateUser {request.email}"] += 1
        return users_pb2.User(user_id="u1", email=request.email)


class Payments(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, seen: Counter[str]) -> None:
        self.seen = seen

    async def Charge(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.seen["Charge"] += 1
        return payments_pb2.Payment()


class Edge:
    def __init__(self, envoy: EnvoyProcess, port: int, page_port: int, seen: Counter[str]) -> None:
        self.envoy = envoy
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.page = f"http://127.0.0.1:{page_port}"  # allowed
        self.other_page = f"http://localhost:{page_port}"  # the same page, not allowed
        self.seen = seen


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    tmp = tmp_path_factory.mktemp("browsers")
    seen: Counter[str] = Counter()
    app = web.Application()

    async def page(_request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>shop</title>", content_type="text/html")

    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    page_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", page_port).start()
    upstreams = await start_public_upstreams(Inventory(seen), Users(seen), Payments(seen))
    registry = FixedRegistry([instance for _, instance in upstreams])
    try:
        async with running_edge(
            tmp,
            registry,
            cors=EdgeCors((f"http://127.0.0.1:{page_port}", "https://shop.example.com")),
            limits=EdgeLimits(max_request_body_bytes=BODY_LIMIT),
        ) as running:
            for cluster in ("inventory", "users"):
                await asyncio.to_thread(running.envoy.wait_healthy, cluster)
            yield Edge(running.envoy, running.port, page_port, seen)
    finally:
        await registry.close()
        for server, _ in upstreams:
            await server.stop(None)
        await runner.cleanup()


async def _preflight(port: int, origin: str) -> RawResponse:
    """A browser's preflight of a JSON POST to sign-up."""
    return await asyncio.to_thread(
        request,
        port,
        "OPTIONS",
        "/api/v1/users",
        headers={"origin": origin, "access-control-request-method": "POST"},
    )


# What a page runs: each call's HTTP status and what it could read, or the browser's error.
_PAGE_CALLS = """async ([edge, email, grpcWebBody]) => {
  const out = {};
  const read = async (name, call) => {
    try {
      const r = await call();
      out[name] = {status: r.status, body: await r.text(),
                   grpc: r.headers.get('grpc-status'), auth: r.headers.get('www-authenticate')};
    } catch (e) { out[name] = {error: String(e)}; }
  };
  // A simple request (no preflight): the browser sends it and shows the answer or not.
  await read('product', () => fetch(edge + '/api/v1/products/p1'));
  // JSON: preflighted. Sign-up is public: what stops another origin is the browser.
  await read('signUp', () => fetch(edge + '/api/v1/users', {method: 'POST',
      headers: {'content-type': 'application/json'},
      body: JSON.stringify({email: email, password: 'correct horse battery staple'})}));
  // A token the edge refuses: the 401 and its reason must be readable.
  await read('refused', () => fetch(edge + '/api/v2/orders/o1',
      {headers: {authorization: 'Bearer not.a.token'}}));
  // gRPC-Web, as a browser library sends it: the trailers come in the body.
  await read('grpcWeb', async () => {
    const r = await fetch(edge + '/shop.inventory.v1.InventoryService/GetProduct', {
      method: 'POST', body: new Uint8Array(grpcWebBody),
      headers: {'content-type': 'application/grpc-web+proto', 'x-grpc-web': '1'}});
    const bytes = new Uint8Array(await r.arrayBuffer());
    const text = async () => JSON.stringify(Array.from(bytes));
    return {status: r.status, headers: r.headers, text: text};
  });
  return out;
}"""


@needs_chromium
async def test_a_listed_origins_page_calls_the_edge_and_another_origins_page_cannot(
    edge: Edge,
) -> None:
    from playwright.async_api import async_playwright

    body = list(grpc_web.frame(inventory_pb2.GetProductRequest(product_id="p1")))
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            results = {}
            for name, origin in (("allowed", edge.page), ("other", edge.other_page)):
                page = await browser.new_page()
                await page.goto(f"{origin}/")
                results[name] = await page.evaluate(
                    _PAGE_CALLS, [edge.url, f"{name}@example.com", body]
                )
        finally:
            await browser.close()

    allowed = results["allowed"]
    assert allowed["product"]["status"] == 200, allowed
    assert json.loads(allowed["product"]["body"])["name"] == "Teapot"
    assert allowed["signUp"]["status"] == 200, allowed
    assert edge.seen["CreateUser allowed@example.com"] == 1
    assert allowed["refused"]["status"] == 401, allowed
    assert "Jwt" in json.loads(allowed["refused"]["body"])["message"]
    assert allowed["refused"]["auth"] is not None  # www-authenticate is exposed
    assert allowed["grpcWeb"]["status"] == 200, allowed
    messages, trailers = grpc_web.parse(bytes(json.loads(allowed["grpcWeb"]["body"])))
    assert inventory_pb2.Product.FromString(messages[0]).name == "Teapot"
    assert trailers["grpc-status"] == "0"

    other = results["other"]
    for call in ("product", "signUp", "refused", "grpcWeb"):
        assert other[call] == {"error": "TypeError: Failed to fetch"}, other
    # The preflight failed, so the browser never sent the sign-up.
    assert edge.seen["CreateUser other@example.com"] == 0


async def test_a_preflight_is_answered_for_a_listed_origin_only(edge: Edge) -> None:
    for path in ("/api/v1/users", "/api/users", GET_PRODUCT):
        res = await asyncio.to_thread(
            request,
            edge.port,
            "OPTIONS",
            path,
            headers={
                "origin": edge.page,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-grpc-web",
            },
        )
        assert res.status == 200, (path, res.status, res.body)
        assert res.headers["access-control-allow-origin"] == edge.page
        # The contracts' verbs and gRPC-Web's POST, the shop's headers, and a cache time.
        assert res.headers["access-control-allow-methods"] == "DELETE, GET, POST"
        allowed = res.headers["access-control-allow-headers"].split(", ")
        assert {"authorization", "content-type", "accept-version", "x-grpc-web"} <= set(allowed)
        assert res.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in res.headers
    other = await _preflight(edge.port, edge.other_page)
    assert other.status == 200 and "access-control-allow-origin" not in other.headers


async def test_answers_name_the_listed_origin_only(edge: Edge) -> None:
    ok = await asyncio.to_thread(
        request, edge.port, "GET", "/api/v1/products/p1", headers={"origin": edge.page}
    )
    assert ok.status == 200
    assert ok.headers["access-control-allow-origin"] == edge.page
    assert "grpc-status" in ok.headers["access-control-expose-headers"]
    other = await asyncio.to_thread(
        request, edge.port, "GET", "/api/v1/products/p1", headers={"origin": edge.other_page}
    )
    # Answered (CORS is the browser's rule, not access control), but nothing allows
    # another origin's page to read it.
    assert other.status == 200 and "access-control-allow-origin" not in other.headers


async def test_the_edges_rules_hold_for_a_request_with_an_origin(edge: Edge) -> None:
    """The route that lets CORS act on REST paths keeps the body limit (a body over the
    connection's 32 KiB buffer but under the limit passes, one over it is 413) and
    never routes anything itself: an unknown path is still 404, gRPC to an internal
    service still reaches nothing."""
    email = "b" * (BODY_LIMIT * 3 // 4)
    fits = await asyncio.to_thread(
        request,
        edge.port,
        "POST",
        "/api/v1/users",
        body=json.dumps({"email": email}).encode(),
        headers={"origin": edge.page, "content-type": "application/json"},
    )
    assert fits.status == 200, fits.body
    assert edge.seen[f"CreateUser {email}"] == 1
    big = await asyncio.to_thread(
        request,
        edge.port,
        "POST",
        "/api/v1/users",
        body=b'{"email": "' + b"a" * (2 * BODY_LIMIT) + b'"}',
        headers={"origin": edge.page, "content-type": "application/json"},
    )
    assert big.status == 413 and big.headers["access-control-allow-origin"] == edge.page
    unknown = await asyncio.to_thread(
        request, edge.port, "GET", "/api/v1/nothing", headers={"origin": edge.page}
    )
    assert unknown.status == 404, unknown.body
    assert unknown.headers["access-control-allow-origin"] == edge.page
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as channel:
        charge = channel.unary_unary(
            CHARGE, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await charge(b"", metadata=[("origin", edge.page)], timeout=10)
    assert err.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAUTHENTICATED)
    refused = await grpc_web.call(
        edge.url, CHARGE, payments_pb2.ChargeRequest(), {"origin": edge.page}
    )
    assert refused.grpc_status in (12, 16), refused  # UNIMPLEMENTED or UNAUTHENTICATED
    assert edge.seen["Charge"] == 0


async def test_grpc_web_reaches_what_grpc_reaches(edge: Edge) -> None:
    reply = await grpc_web.call(
        edge.url, GET_PRODUCT, inventory_pb2.GetProductRequest(product_id="p7")
    )
    assert reply.http_status == 200 and reply.grpc_status == 0, reply
    assert inventory_pb2.Product.FromString(reply.messages[0]).product_id == "p7"
    assert "access-control-allow-origin" not in reply.headers  # no origin, no CORS
    # A method that needs a login refuses gRPC-Web without a token, as it refuses gRPC.
    refused = await grpc_web.call(
        edge.url,
        "/shop.users.v1.UserService/GetUser",
        users_pb2.GetUserRequest(user_id="u1"),
    )
    assert refused.grpc_status == grpc.StatusCode.UNAUTHENTICATED.value[0], refused


async def test_an_edge_without_origins_has_no_cors_and_still_speaks_grpc_web(
    tmp_path: Path, edge: Edge
) -> None:
    seen: Counter[str] = Counter()
    server, instance = await start_upstream(
        "inventory", [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, Inventory(seen))]
    )
    registry = FixedRegistry([instance])
    try:
        async with running_edge(tmp_path, registry) as running:
            await asyncio.to_thread(running.envoy.wait_healthy, "inventory")
            preflight = await _preflight(running.port, edge.page)
            assert "access-control-allow-origin" not in preflight.headers
            reply = await grpc_web.call(
                f"http://127.0.0.1:{running.port}",
                GET_PRODUCT,
                inventory_pb2.GetProductRequest(product_id="p9"),
                {"origin": edge.page},
            )
            assert reply.grpc_status == 0 and seen["GetProduct"] == 1, reply
            assert "access-control-allow-origin" not in reply.headers
    finally:
        await registry.close()
        await server.stop(None)


async def test_the_access_log_has_no_made_up_status_for_grpc_web_or_preflights(
    edge: Edge,
) -> None:
    """A gRPC-Web call's trailers are in the body by the time Envoy logs it, and a
    preflight has no gRPC status: Envoy's fallback logged both as 2 (UNKNOWN), a success
    included. They are logged without one; an error answered in the headers keeps its."""
    ok = await grpc_web.call(
        edge.url, GET_PRODUCT, inventory_pb2.GetProductRequest(product_id="logged-ok")
    )
    missing = await grpc_web.call(
        edge.url, GET_PRODUCT, inventory_pb2.GetProductRequest(product_id="missing")
    )
    assert (ok.grpc_status, missing.grpc_status) == (0, 5)
    await _preflight(edge.port, edge.page)

    def lines() -> list[dict[str, Any]] | None:
        found = [
            x
            for x in edge.envoy.access_lines()
            if x["method"] == "OPTIONS" or x["path"] == GET_PRODUCT
        ]
        return found if len(found) >= 3 else None

    logged = await eventually(lambda: asyncio.to_thread(lines), what="the access lines")
    statuses = {(x["method"], x["grpc_status"]) for x in logged}
    assert ("POST", None) in statuses and ("POST", "5") in statuses, logged
    assert ("OPTIONS", None) in statuses and ("OPTIONS", "2") not in statuses, logged
    assert ("POST", "2") not in statuses, logged
