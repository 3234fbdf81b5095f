"""The hardened edge (mesh/edge/hardening.py) in a real Envoy, attacked as a client would.

Upstreams are small servicers of the public contracts that count what reaches
them, so "the trick did not get through" is checked where it matters: the
upstream, not only the status code. The tests use public methods (product
reads, sign-up, login) so that end-user auth at the edge does not change them.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2, status_pb2
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from mesh.edge.jwt_authn import jwks_sources
from mesh.edge.limits import EdgeLimits
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import EndpointSync, write_endpoints
from tests.support import pki
from tests.support.edge_stand_ins import start_public_upstreams
from tests.support.envoy import EnvoyProcess, start_envoy
from tests.support.poll import eventually
from tests.support.ports import free_port
from tests.support.raw_http import RawResponse, request
from tests.support.stand_ins import MemoryRegistry

pytestmark = pytest.mark.asyncio(loop_scope="module")

STRICT_PER_MIN = 6  # one call per 10 s once the burst is spent: retry-after 10
# Far above what the other tests send from one address in a second; a flood passes it.
CLIENT_PER_S = 200
SLOW_MS = 400


@dataclass
class Seen:
    """What reached the upstreams: (method, the id or email it was asked for)."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)


class Inventory(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetProduct(self, request: Any, context: Any) -> inventory_pb2.Product:
        self.seen.calls["GetProduct", request.product_id] += 1
        if request.product_id == "slow":
            await asyncio.sleep(SLOW_MS / 1000)  # poll: the stand-in's deliberate slowness
        if request.product_id == "p-missing":
            status = status_pb2.Status(code=5, message="no product p-missing")
            status.details.add().Pack(error_details_pb2.ErrorInfo(reason="PRODUCT_NOT_FOUND"))
            details = (("grpc-status-details-bin", status.SerializeToString()),)
            await context.abort(grpc.StatusCode.NOT_FOUND, status.message, details)
        return inventory_pb2.Product(product_id=request.product_id, name="thing")

    async def CreateProduct(self, request: Any, context: Any) -> inventory_pb2.Product:
        self.seen.calls["CreateProduct", request.name] += 1
        return inventory_pb2.Product(product_id="made", name=request.name)


class Users(users_pb2_grpc.UserServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def CreateUser(self, request: Any, context: Any) -> users_pb2.User:
        self.seen.calls["CreateUser", request.email] += 1
        return users_pb2.User(user_id="u1", email=request.email)

    async def Authenticate(self, request: Any, context: Any) -> users_pb2.AuthenticateResponse:
        self.seen.calls["Authenticate", request.email] += 1
        return users_pb2.AuthenticateResponse(user_id="u1", session_token="s")


class Payments(payments_pb2_grpc.PaymentServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetPayment(self, request: Any, context: Any) -> payments_pb2.Payment:
        self.seen.calls["GetPayment", request.saga_id] += 1
        return payments_pb2.Payment(payment_id="leaked")


@dataclass
class Edge:
    envoy: EnvoyProcess
    port: int
    seen: Seen

    def send(self, method: str, path: str, doc: Any = None, **kw: Any) -> RawResponse:
        body = json.dumps(doc).encode() if doc is not None else None
        return request(self.port, method, path, body, **kw)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    tmp_path: Path = tmp_path_factory.mktemp("hardened-edge")
    seen = Seen()
    started = await start_public_upstreams(Inventory(seen), Users(seen), Payments(seen))
    registry = MemoryRegistry()
    for _, instance in started:
        await registry.register(instance)
    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    listen = free_port()
    options = local_options(
        tmp_path,
        listen_port=listen,
        meta_port=free_port(),
        limits=EdgeLimits(
            strict_rate_limit_per_min=STRICT_PER_MIN, client_rate_limit_per_s=CLIENT_PER_S
        ),
        **pki.edge_options(tls_listen_port=free_port()),
    )
    config, _ = render_files(tmp_path, options)
    # End-user auth stays on (as in production); no users instance publishes a JWKS
    # here, so no token verifies: the public routes these tests use need none.
    sync = EndpointSync(
        registry, model.clusters, Path(options.eds_dir), port_clusters=jwks_sources(options.auth)
    )
    await sync.start()
    envoy = await asyncio.to_thread(
        start_envoy, config, options.admin_socket, tmp_path / "envoy.log"
    )
    try:
        for cluster in ("users", "inventory"):
            await asyncio.to_thread(envoy.wait_healthy, cluster)
        yield Edge(envoy, listen, seen)
    finally:
        envoy.stop()
        await sync.stop()
        for server, _ in started:
            await server.stop(None)


def _get(edge: Edge, path: str, **kw: Any) -> RawResponse:
    return edge.send("GET", path, **kw)


def _status_body(res: RawResponse) -> tuple[int, str]:
    """The code and message of a JSON `google.rpc.Status` answer (anything else fails)."""
    assert res.headers.get("content-type") == "application/json", res
    doc = res.json()
    assert set(doc) == {"code", "message"}, doc
    return doc["code"], doc["message"]


async def test_the_edges_own_rest_errors_are_status_json(edge: Edge) -> None:
    """What Envoy answers itself to a REST caller (the transcoder refusing the request, no
    route, no instance of the asked track) has the shape of a service's error: a JSON
    Status whose code matches the HTTP status; nothing reaches the upstream."""
    cases = [
        ("POST", "/api/v1/users", b'{"email": "bad-json@example.com",', {}, 400, 3, "Unexpected"),
        ("GET", "/api/v1/products?page_size=abc", None, {}, 400, 3, 'invalid value "abc"'),
        ("GET", "/api/v1/no-such-thing/1", None, {}, 404, 5, "Could not resolve"),
        ("GET", "/api/v1/products/p-purple", None, {"x-mesh-track": "purple"}, 503, 14,
         "no healthy upstream"),
        # No content type and refused before the transcoder runs (a plain `curl`).
        ("GET", "/api/orders/o-1", None, {"accept-version": "v9"}, 401, 16, "Jwt is missing"),
    ]  # fmt: skip
    for method, path, body, headers, status, code, text in cases:
        res = await asyncio.to_thread(request, edge.port, method, path, body, headers)
        assert res.status == status, (path, res)
        got_code, message = _status_body(res)
        assert got_code == code and text in message, (path, res)
    assert edge.seen.calls["GetProduct", "p-purple"] == 0
    assert not [c for c in edge.seen.calls if c[1] == "bad-json@example.com"]
    # A service's own error keeps its details (the transcoder's body, not a local reply).
    res = await asyncio.to_thread(_get, edge, "/api/v1/products/p-missing")
    assert res.status == 404 and res.json()["details"][0]["reason"] == "PRODUCT_NOT_FOUND", res


async def test_grpc_callers_still_get_grpc_statuses_from_the_edge(edge: Edge) -> None:
    """The control: the same refusals to a gRPC caller are trailers-only gRPC statuses
    with Envoy's text, not JSON."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        stub = inventory_pb2_grpc.InventoryServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetProduct(
                inventory_pb2.GetProductRequest(product_id="p-grpc-purple"),
                metadata=(("x-mesh-track", "purple"),),
                timeout=10,
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert caught.value.details() == "no healthy upstream", caught.value
        # A path no public route names needs a login first (default deny).
        unknown = ch.unary_unary(
            "/shop.inventory.v1.InventoryService/NoSuchMethod",
            request_serializer=bytes,
            response_deserializer=bytes,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unknown(b"", timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, caught.value
        assert caught.value.details() == "Jwt is missing", caught.value
    assert edge.seen.calls["GetProduct", "p-grpc-purple"] == 0


async def test_path_tricks_end_on_the_canonical_route(edge: Edge) -> None:
    """Slashes and dot segments are resolved before routing: the trick lands on the
    route of the path it spells (so it gets that route's rules), nowhere else."""
    canonical = await asyncio.to_thread(_get, edge, "/api/v1/products/p-canon")
    assert canonical.status == 200, canonical
    for n, trick in enumerate(
        [
            "//api/v1/products/p-trick{n}",
            "/api//v1///products/p-trick{n}",
            "/api/v1/users/../products/p-trick{n}",
            "/api/v1/users/%2e%2e/products/p-trick{n}",
            "/api/v1/users/%2E%2E/products/p-trick{n}",
            "/api/v1/./products/p-trick{n}",
        ]
    ):
        path = trick.format(n=n)
        res = await asyncio.to_thread(_get, edge, path)
        assert res.status == canonical.status, (path, res)
        assert res.json()["productId"] == f"p-trick{n}", (path, res)


ESCAPED_SLASH = "the path could not be normalised: an escaped slash or backslash is refused"


async def test_escaped_slashes_are_rejected(edge: Edge) -> None:
    for path in [
        "/api/v1/products/p%2Fx",
        "/api/v1/products/p%2fx",
        "/api%2Fv1/products/p-esc",
        "/api/v1/products/p%5Cx",
    ]:
        res = await asyncio.to_thread(_get, edge, path)
        assert res.status == 400, (path, res)
        # Envoy's own reply has no text: the edge says why.
        assert _status_body(res) == (3, ESCAPED_SLASH), (path, res)
    assert not [c for c in edge.seen.calls if c[1].startswith("p") and "x" in c[1]]
    assert edge.seen.calls["GetProduct", "p-esc"] == 0


async def test_case_trailing_slash_and_params_reach_no_other_method(edge: Edge) -> None:
    """Routes are case-sensitive: these either miss or reach the product read with
    the id as written, never another method or service."""
    before = sum(edge.seen.calls.values())
    for path in ["/API/V1/PRODUCTS/p-case", "/Api/v1/products/p-case"]:
        res = await asyncio.to_thread(_get, edge, path)
        assert res.status in (401, 404), (path, res)  # 401: an auth filter may deny first
    assert edge.seen.calls["GetProduct", "p-case"] == 0
    # The transcoder matches a trailing slash to the same binding, and `;x=1` is part
    # of the segment: both are the public product read, with these ids.
    for path, product_id in [
        ("/api/v1/products/p-slash/", "p-slash"),
        ("/api/v1/products/p-semi;x=1", "p-semi;x=1"),
    ]:
        res = await asyncio.to_thread(_get, edge, path)
        assert res.status == 200, (path, res)
        assert res.json()["productId"] == product_id, (path, res)
    reached = {m for m, _ in edge.seen.calls} - {"GetProduct"}
    assert sum(edge.seen.calls.values()) - before == 2
    assert "GetPayment" not in reached


async def test_path_tricks_do_not_bypass_the_login(edge: Edge) -> None:
    """An admin-only write without a token, however spelled, is refused before any
    upstream sees it (REST and gRPC): normalisation happens before the auth filter."""
    doc = {"name": "smuggled", "price": {"currencyCode": "EUR", "amountMinor": "100"}}
    for path in [
        "/api/v1/products",
        "//api/v1/products",
        "/api//v1//products",
        "/api/v1/users/../products",
        "/api/v1/users/%2e%2e/products",
        "/api/v1/./products",
        "/api/v1/products/",
        "/api/v1/products;x=1",
        "/API/V1/PRODUCTS",
    ]:
        res = await asyncio.to_thread(edge.send, "POST", path, doc)
        assert res.status in (400, 401, 404), (path, res)
        if ";" not in path and "%" not in path and not path.isupper():
            assert res.status == 401, (path, res)  # the route it spells, then the login
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    svc = "shop.inventory.v1.InventoryService"
    for path in [
        f"/{svc}/CreateProduct",
        f"//{svc}/CreateProduct",
        f"/shop.users.v1.UserService/../../{svc}/CreateProduct",
        f"/{svc}/CreateProduct/",
        "/shop.inventory.InventoryService/CreateProduct",
    ]:
        res = await asyncio.to_thread(edge.send, "POST", path, None, headers=grpc_headers)
        assert res.status != 200 or res.headers.get("grpc-status") not in (None, "0"), (path, res)
    assert not [c for c in edge.seen.calls if c[0] == "CreateProduct"]


async def test_payments_is_unreachable_by_any_spelling(edge: Edge) -> None:
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    svc = "shop.payments.v1.PaymentService"
    for path in [
        f"/{svc}/GetPayment",
        f"//{svc}/GetPayment",
        f"/shop.users.v1.UserService/../../{svc}/GetPayment",
        f"/shop.users.v1.UserService/%2e%2e/{svc}/GetPayment",
        f"/shop.users.v1.UserService%2F..%2F{svc}/GetPayment",
        f"/{svc.upper()}/GETPAYMENT",
        f"/{svc}/GetPayment/",
        f"/{svc}/GetPayment;x=1",
        "/shop.payments.PaymentService/GetPayment",
        "/api/v1/payments/s1",
        "//api/v1/payments/s1",
    ]:
        res = await asyncio.to_thread(edge.send, "POST", path, None, headers=grpc_headers)
        assert res.status != 200 or res.headers.get("grpc-status") not in (None, "0"), (path, res)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await payments_pb2_grpc.PaymentServiceStub(ch).GetPayment(
                payments_pb2.GetPaymentRequest(saga_id="s1"), timeout=10
            )
        # Unrouted: the end-user filter fails closed before the router answers.
        assert err.value.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.UNIMPLEMENTED,
        )
    assert not [c for c in edge.seen.calls if c[0] == "GetPayment"]


async def test_header_names_with_underscores_are_rejected(edge: Edge) -> None:
    ok = await asyncio.to_thread(
        _get, edge, "/api/v1/products/p-hdr-ok", headers={"x-mesh-hint": "1"}
    )
    assert ok.status == 200, ok
    bad = await asyncio.to_thread(
        _get, edge, "/api/v1/products/p-hdr-bad", headers={"x_mesh_user_id": "u1"}
    )
    assert bad.status == 400, bad
    assert edge.seen.calls["GetProduct", "p-hdr-bad"] == 0


async def test_oversized_body_is_refused_with_413(edge: Edge) -> None:
    limit = EdgeLimits().max_request_body_bytes
    fits = {"email": "big-ok@example.com", "password": "x" * (limit - 1024)}
    res = await asyncio.to_thread(edge.send, "POST", "/api/v1/users", fits, source="127.0.0.5")
    assert res.status == 200, res
    too_big = {"email": "big@example.com", "password": "x" * (limit + 1024)}
    res = await asyncio.to_thread(edge.send, "POST", "/api/v1/users", too_big, source="127.0.0.5")
    assert res.status == 413, res
    assert _status_body(res) == (8, "Payload Too Large"), res  # RESOURCE_EXHAUSTED, as gRPC
    assert edge.seen.calls["CreateUser", "big@example.com"] == 0


async def test_huge_request_headers_are_refused_with_431(edge: Edge) -> None:
    limit_kb = EdgeLimits().max_request_headers_kb
    ok = await asyncio.to_thread(
        _get, edge, "/api/v1/products/p-hdr-size", headers={"x-pad": "a" * 4096}
    )
    assert ok.status == 200, ok
    big = await asyncio.to_thread(
        _get, edge, "/api/v1/products/p-hdr-huge", headers={"x-pad": "a" * (limit_kb * 1024)}
    )
    assert big.status == 431, big
    assert edge.seen.calls["GetProduct", "p-hdr-huge"] == 0


async def test_external_x_envoy_timeout_header_is_ignored(edge: Edge) -> None:
    """Obeyed, `x-envoy-upstream-rq-timeout-ms: 50` would cut a 400 ms read (504)."""
    res = await asyncio.to_thread(
        _get,
        edge,
        "/api/v1/products/slow",
        headers={"x-envoy-upstream-rq-timeout-ms": "50", "x-envoy-retry-on": "5xx"},
    )
    assert res.status == 200, res


async def test_login_flood_from_one_address_gets_429_another_address_still_logs_in(
    edge: Edge,
) -> None:
    login = {"email": "flood@example.com", "password": "pw"}
    flood = "127.0.0.3"
    answers = []
    for _ in range(STRICT_PER_MIN + 2):
        res = await asyncio.to_thread(edge.send, "POST", "/api/v1/sessions", login, source=flood)
        answers.append(res)
    statuses = [r.status for r in answers]
    assert statuses.count(200) <= STRICT_PER_MIN + 1, statuses  # +1: a refill during the loop
    limited = [r for r in answers if r.status == 429]
    assert limited, statuses
    assert limited[0].headers["retry-after"] == str(60 // STRICT_PER_MIN), limited[0]
    assert _status_body(limited[0]) == (8, "local_rate_limited"), limited[0]  # RESOURCE_EXHAUSTED
    # The unversioned REST path, a spoofed x-forwarded-for and gRPC share the bucket.
    res = await asyncio.to_thread(edge.send, "POST", "/api/sessions", login, source=flood)
    assert res.status == 429, res
    res = await asyncio.to_thread(
        edge.send,
        "POST",
        "/api/v1/sessions",
        login,
        source=flood,
        headers={"x-forwarded-for": "127.0.0.77"},
    )
    assert res.status == 429, res
    # Another client logs in; sign-up from the flooding client has its own bucket.
    other = await asyncio.to_thread(
        edge.send, "POST", "/api/v1/sessions", login, source="127.0.0.4"
    )
    assert other.status == 200, other
    signup = await asyncio.to_thread(
        edge.send, "POST", "/api/v1/users", {"email": "new@example.com"}, source=flood
    )
    assert signup.status == 200, signup
    # Reads from the flooding client are not strict.
    read = await asyncio.to_thread(_get, edge, "/api/v1/products/p-after-flood", source=flood)
    assert read.status == 200, read


async def test_a_read_flood_from_one_address_gets_429_another_address_is_served(
    edge: Edge,
) -> None:
    """The per-client limit of every route (`client_rate_limit_per_s`, burst the same):
    three times the burst, twelve at a time, from one address."""
    flood = "127.0.0.5"

    def flood_reads() -> list[int]:
        with ThreadPoolExecutor(12) as pool:
            return list(
                pool.map(
                    lambda n: _get(edge, f"/api/v1/products/p-flood-{n}", source=flood).status,
                    range(3 * CLIENT_PER_S),
                )
            )

    statuses = await asyncio.to_thread(flood_reads)
    assert set(statuses) <= {200, 429}, Counter(statuses)
    assert statuses.count(429) > 0, Counter(statuses)
    other = await asyncio.to_thread(_get, edge, "/api/v1/products/p-other", source="127.0.0.6")
    assert other.status == 200, other


async def test_grpc_login_flood_gets_resource_exhausted_with_retry_after(edge: Edge) -> None:
    """gRPC clients come from 127.0.0.1 (grpc cannot pick a source address)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        stub = users_pb2_grpc.UserServiceStub(ch)
        req = users_pb2.AuthenticateRequest(email="grpc-flood@example.com", password="pw")
        codes = []
        for _ in range(STRICT_PER_MIN + 2):
            call = stub.Authenticate(req, timeout=10)
            try:
                await call
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    pairs: list[Any] = [
                        *(err.trailing_metadata() or ()),
                        *(err.initial_metadata() or ()),
                    ]
                    meta = {str(p[0]): p[1] for p in pairs}
                    assert meta.get("retry-after") == str(60 // STRICT_PER_MIN), meta
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes, codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
        # Reads are not strict.
        product = await inventory_pb2_grpc.InventoryServiceStub(ch).GetProduct(
            inventory_pb2.GetProductRequest(product_id="p-grpc"), timeout=10
        )
        assert product.product_id == "p-grpc"


async def test_overload_manager_watches_heap_and_connections(edge: Edge) -> None:
    stats = await asyncio.to_thread(edge.envoy.admin, "/stats?filter=overload")
    for name in [
        "envoy.resource_monitors.fixed_heap.pressure",
        "envoy.resource_monitors.global_downstream_max_connections.pressure",
        "envoy.overload_actions.stop_accepting_requests.active: 0",
    ]:
        assert name in stats, stats


async def test_an_edge_over_its_heap_budget_refuses_requests(tmp_path: Path) -> None:
    """A heap budget below what Envoy already uses: requests answer 503 at once."""
    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    listen = free_port()
    options = local_options(
        tmp_path,
        listen_port=listen,
        meta_port=free_port(),
        limits=EdgeLimits(max_heap_bytes=1024 * 1024),
        **pki.edge_options(tls_listen_port=free_port()),
    )
    config, _ = render_files(tmp_path, options)
    for cluster in [*model.clusters, *jwks_sources(options.auth)]:
        write_endpoints(Path(options.eds_dir), cluster, [])
    envoy = await asyncio.to_thread(
        start_envoy, config, options.admin_socket, tmp_path / "envoy.log"
    )
    try:

        def refused() -> bool:
            stats = envoy.admin("/stats?filter=stop_accepting_requests.active")
            return "stop_accepting_requests.active: 1" in stats

        await eventually(refused, 10, "the overload manager to stop accepting requests")
        res = await asyncio.to_thread(request, listen, "GET", "/api/v1/products/p1")
        assert res.status == 503, res
        assert b"overload" in res.body.lower() or "overload" in str(res.headers).lower(), res
    finally:
        envoy.stop()
