"""The rendered edge config in a real Envoy, in front of real gRPC upstreams.

The upstreams are small servicers of the public contracts (the shop's real
services are exercised by tests/e2e); what is under test here is the edge:
routing by gRPC path, REST transcoding, version pinning, reflection and
health through the edge, and that internal services are unreachable.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from shop.orders.v1 import orders_pb2 as orders_v1
from shop.orders.v1 import orders_pb2_grpc as orders_v1_grpc
from shop.orders.v2 import orders_pb2 as orders_v2
from shop.orders.v2 import orders_pb2_grpc as orders_v2_grpc
from shop.payments.v1 import payments_pb2, payments_pb2_grpc
from shop.users.v1 import users_pb2, users_pb2_grpc

from mesh.discovery.registry import Instance
from mesh.edge.jwt_authn import JWKS_CLUSTER, EdgeAuthOptions
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import write_endpoints
from tests.support import pki
from tests.support.edge import EdgeClient
from tests.support.edge_stand_ins import FixedRegistry, running_edge, start_upstream
from tests.support.envoy import EnvoyProcess, validate
from tests.support.poll import eventually
from tests.support.ports import free_port
from tests.support.reflection import file_containing_symbol_v1, list_services_v1

# Routing is under test here, with stand-in upstreams and no token issuer: end-user
# auth is off (it has its own tests in test_edge_jwt.py).
NO_END_USER_AUTH = EdgeAuthOptions(enabled=False)


class Users(users_pb2_grpc.UserServiceServicer):
    async def GetUser(self, request: Any, context: Any) -> users_pb2.User:
        if request.user_id == "missing":
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such user")
        if request.user_id == "dependency-down":  # the service's own answer, not a dead host
            await context.abort(grpc.StatusCode.UNAVAILABLE, "a dependency is unavailable")
        return users_pb2.User(user_id=request.user_id, email="a@example.com")

    async def CreateUser(self, request: Any, context: Any) -> users_pb2.User:
        if request.email == "taken@example.com":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "email taken")
        return users_pb2.User(user_id="u1", email=request.email)


class OrdersV1(orders_v1_grpc.OrderServiceServicer):
    async def GetOrder(self, request: Any, context: Any) -> orders_v1.Order:
        return orders_v1.Order(order_id=request.order_id, total_cents=100)


class OrdersV2(orders_v2_grpc.OrderServiceServicer):
    async def GetOrder(self, request: Any, context: Any) -> orders_v2.Order:
        return orders_v2.Order(order_id=request.order_id, card_last4="4242")


class Payments(payments_pb2_grpc.PaymentServiceServicer):
    async def GetPayment(self, request: Any, context: Any) -> payments_pb2.Payment:
        return payments_pb2.Payment(payment_id="leaked")


class Edge(EdgeClient):
    def __init__(self, envoy: EnvoyProcess, port: int, tls_port: int) -> None:
        super().__init__(port)
        self.envoy = envoy
        self.tls_port = tls_port


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    # Two users instances: enough for the edge to eject one (at most half may be).
    users, users_i = await start_upstream(
        "users", [(users_pb2_grpc.add_UserServiceServicer_to_server, Users())]
    )
    users2, users2_i = await start_upstream(
        "users", [(users_pb2_grpc.add_UserServiceServicer_to_server, Users())], index=2
    )
    orders, orders_i = await start_upstream(
        "orders",
        [
            (orders_v1_grpc.add_OrderServiceServicer_to_server, OrdersV1()),
            (orders_v2_grpc.add_OrderServiceServicer_to_server, OrdersV2()),
        ],
    )
    payments, payments_i = await start_upstream(
        "payments", [(payments_pb2_grpc.add_PaymentServiceServicer_to_server, Payments())]
    )
    servers = [users, users2, orders, payments]
    registry = FixedRegistry([users_i, users2_i, orders_i, payments_i])
    try:
        async with running_edge(tmp_path, registry, auth=NO_END_USER_AUTH) as running:
            await asyncio.to_thread(running.envoy.wait_healthy, "users", 2)
            await asyncio.to_thread(running.envoy.wait_healthy, "orders")
            yield Edge(running.envoy, running.port, running.tls_port)
    finally:
        await registry.close()
        for s in servers:
            await s.stop(None)


def test_rendered_config_validates(tmp_path: Path) -> None:
    options = local_options(tmp_path, listen_port=free_port(), **pki.edge_options())
    config, _ = render_files(tmp_path, options)
    model = build_model(load_descriptor_set(DESCRIPTORS).file)
    for cluster in [*model.clusters, JWKS_CLUSTER]:  # Envoy checks the EDS files exist
        write_endpoints(Path(options.eds_dir), cluster, [])
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


def test_checked_in_config_is_rendered_from_the_protos(tmp_path: Path) -> None:
    from mesh.edge.render import COMPOSE_OPTIONS, ENVOY_DIR

    render_files(tmp_path, COMPOSE_OPTIONS)
    for name in ("envoy.yaml", "edge_descriptors.binpb", "edge_sds.yaml"):
        assert (tmp_path / name).read_bytes() == (ENVOY_DIR / name).read_bytes(), (
            f"envoy/{name} is out of date with protos/: run `make protos`"
        )


async def test_grpcurl_lists_only_public_services(edge: Edge) -> None:
    out = await asyncio.to_thread(edge.grpcurl, f"127.0.0.1:{edge.port}", "list")
    assert out.returncode == 0, out.stderr
    listed = set(out.stdout.split())
    assert {
        "shop.users.v1.UserService",
        "shop.orders.v1.OrderService",
        "shop.orders.v2.OrderService",
        "shop.inventory.v1.InventoryService",
    } <= listed
    assert not any("Payment" in s or "Reservation" in s or "Ping" in s for s in listed), listed


async def test_reflection_v1_through_edge_lists_and_describes_public_only(edge: Edge) -> None:
    target = f"127.0.0.1:{edge.port}"
    listed = await list_services_v1(target)
    assert "shop.orders.v2.OrderService" in listed
    assert "grpc.reflection.v1.ServerReflection" in listed
    assert not any("Payment" in s or "Reservation" in s or "Ping" in s for s in listed), listed
    files = await file_containing_symbol_v1(target, "shop.orders.v2.OrderService")
    assert files[0].package == "shop.orders.v2"
    assert [m.name for m in files[0].service[0].method][:1] == ["CreateOrder"]
    with pytest.raises(AssertionError):  # internal: not in the edge's pool
        await file_containing_symbol_v1(target, "shop.payments.v1.PaymentService")


async def test_grpcurl_describe_and_call_through_edge(edge: Edge) -> None:
    described = await asyncio.to_thread(
        edge.grpcurl, f"127.0.0.1:{edge.port}", "describe", "shop.orders.v2.OrderService"
    )
    assert "rpc CreateOrder" in described.stdout, described.stderr
    call = await asyncio.to_thread(
        edge.grpcurl,
        "-d",
        '{"user_id": "u7"}',
        f"127.0.0.1:{edge.port}",
        "shop.users.v1.UserService/GetUser",
    )
    assert call.returncode == 0, call.stderr
    assert json.loads(call.stdout)["userId"] == "u7"


async def test_internal_service_unreachable_by_grpc(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        stub = payments_pb2_grpc.PaymentServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetPayment(payments_pb2.GetPaymentRequest(payment_id="x"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_internal_service_unreachable_by_rest(edge: Edge) -> None:
    for path in (
        "/api/v1/payments",
        "/api/payments/x",
        "/shop.payments.v1.PaymentService/GetPayment",
    ):
        status, _ = await asyncio.to_thread(edge.http, "POST", path, b"{}")
        assert status == 404, path


async def test_health_through_edge_follows_registry(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        ok = await stub.Check(health_pb2.HealthCheckRequest(service="shop.orders.v2.OrderService"))
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Check(
                health_pb2.HealthCheckRequest(service="shop.payments.v1.PaymentService")
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_live_host_answering_unavailable_is_not_ejected(edge: Edge) -> None:
    """A service's own UNAVAILABLE (one of its dependencies is down) is an answer, not a
    dead host: the edge retries it on the other host but ejects neither. Envoy counts
    such an answer as a 503: with 5xx ejection on, a live instance was ejected, and when
    the other one was dead the edge had no healthy host left (the chaos test's reads)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        stub = users_pb2_grpc.UserServiceStub(ch)
        for _ in range(4):  # each is tried three times (an idempotent read): 12 in a row
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetUser(users_pb2.GetUserRequest(user_id="dependency-down"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "dependency" in (err.value.details() or ""), err.value.details()
        got = await stub.GetUser(users_pb2.GetUserRequest(user_id="u9"), timeout=5)
        assert got.user_id == "u9"
    stats = await asyncio.to_thread(edge.envoy.admin, "/stats?filter=cluster.users.outlier")
    assert "ejections_enforced_total: 0" in stats, stats
    assert edge.envoy.healthy_hosts("users") == 2


async def test_the_access_log_says_how_many_tries_a_call_took_and_why_it_failed(
    edge: Edge,
) -> None:
    """A call the edge retried to the end carries its tries and Envoy's response flags
    (URX: the retry limit reached), one answered at once a single try and no flag, so a
    failed read in a log can be told from the service's own error (the chaos test's
    kill of an instance: which host, how many tries, why) without Envoy's debug log."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        stub = users_pb2_grpc.UserServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUser(users_pb2.GetUserRequest(user_id="dependency-down"), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        await stub.GetUser(users_pb2.GetUserRequest(user_id="u7"), timeout=5)

    def lines() -> list[dict[str, Any]] | None:
        got = [x for x in edge.envoy.access_lines() if x["path"].endswith("/GetUser")]
        return got if len(got) >= 2 else None

    failed, answered = await eventually(lambda: asyncio.to_thread(lines), what="two GetUser lines")
    assert (failed["grpc_status"], failed["attempts"]) == ("14", 3), failed
    assert "URX" in failed["flags"], failed
    assert (answered["grpc_status"], answered["attempts"], answered["flags"]) == ("0", 1, "-")
    assert answered["upstream"].startswith("127.0.0.1:"), answered


async def test_grpc_by_versioned_path(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        v1 = await orders_v1_grpc.OrderServiceStub(ch).GetOrder(
            orders_v1.GetOrderRequest(order_id="o1")
        )
        v2 = await orders_v2_grpc.OrderServiceStub(ch).GetOrder(
            orders_v2.GetOrderRequest(order_id="o1")
        )
    assert v1.total_cents == 100
    assert v2.card_last4 == "4242"


async def test_grpc_unversioned_path_pinned_by_accept_version(edge: Edge) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        call = ch.unary_unary(
            "/shop.orders.OrderService/GetOrder",
            request_serializer=orders_v2.GetOrderRequest.SerializeToString,
            response_deserializer=orders_v2.Order.FromString,
        )
        latest = await call(orders_v2.GetOrderRequest(order_id="o1"))
        assert latest.card_last4 == "4242"
        pinned = ch.unary_unary(
            "/shop.orders.OrderService/GetOrder",
            request_serializer=orders_v1.GetOrderRequest.SerializeToString,
            response_deserializer=orders_v1.Order.FromString,
        )
        v1 = await pinned(
            orders_v1.GetOrderRequest(order_id="o1"), metadata=(("accept-version", "v1"),)
        )
        assert v1.total_cents == 100


async def test_rest_versioned_and_unversioned(edge: Edge) -> None:
    status, body = await asyncio.to_thread(edge.http, "GET", "/api/v1/users/u9")
    assert (status, body["userId"]) == (200, "u9")
    status, body = await asyncio.to_thread(edge.http, "GET", "/api/orders/o5")
    assert status == 200 and body["cardLast4"] == "4242"  # latest: v2
    status, body = await asyncio.to_thread(
        edge.http, "GET", "/api/orders/o5", None, {"accept-version": "v1"}
    )
    assert status == 200 and body["totalCents"] == "100"  # int64 as a JSON string
    status, body = await asyncio.to_thread(
        edge.http, "GET", "/api/orders/o5", None, {"accept-version": "v9"}
    )
    # One JSON Status, not one inside another's message (seen before 7 Dec 2026).
    assert status == 400, body
    assert body == {"code": 3, "message": "accept-version must be one of v1, v2"}, body


async def test_rest_errors(edge: Edge) -> None:
    status, body = await asyncio.to_thread(edge.http, "GET", "/api/v1/users/missing")
    assert status == 404 and body["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    status, body = await asyncio.to_thread(
        edge.http, "POST", "/api/v1/users", b'{"email": "taken@example.com"}'
    )
    assert status == 400 and body["code"] == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert body["message"] == "email taken"
    status, _ = await asyncio.to_thread(edge.http, "POST", "/api/v1/users", b'{"email": ')
    assert status == 400
    status, _ = await asyncio.to_thread(edge.http, "GET", "/api/v1/nothing-here")
    assert status == 404
    status, _ = await asyncio.to_thread(edge.http, "GET", "/api/v1/users/u1?bogus=1")
    assert status == 400


# (path, HTTP status) of the access lines the test below waits for.
LOGGED = [
    ("/api/v1/users/missing", "404"),
    ("/api/v1/users", "400"),
    ("/api/v1/users/u1", "200"),
    ("/shop.users.v1.UserService/GetUser", "200"),
]


async def test_the_access_log_carries_the_services_grpc_status_for_rest_calls(
    edge: Edge,
) -> None:
    """The transcoder turns a REST call's grpc-status into the JSON body; Envoy's own
    reading of the HTTP status logged NOT_FOUND (404) as 12 and FAILED_PRECONDITION (400)
    as 13. The line carries the service's code, for gRPC and REST alike, and the
    client's method (the transcoder sends every REST call upstream as a POST)."""
    missing = await asyncio.to_thread(edge.http, "GET", "/api/v1/users/missing")
    taken = await asyncio.to_thread(
        edge.http, "POST", "/api/v1/users", b'{"email": "taken@example.com"}'
    )
    found = await asyncio.to_thread(edge.http, "GET", "/api/v1/users/u1")
    assert (missing[0], taken[0], found[0]) == (404, 400, 200)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await users_pb2_grpc.UserServiceStub(ch).GetUser(
                users_pb2.GetUserRequest(user_id="missing"), timeout=5
            )
    assert denied.value.code() is grpc.StatusCode.NOT_FOUND

    def logged() -> dict[tuple[str, str], str] | None:
        seen = {
            (x["path"], str(x["status"])): str(x["grpc_status"]) for x in edge.envoy.access_lines()
        }
        return seen if all(k in seen for k in LOGGED) else None

    seen = await eventually(lambda: asyncio.to_thread(logged), what="the four access lines")
    methods = {(x["path"], x["method"]) for x in edge.envoy.access_lines()}
    # The client's method, not the POST the transcoder turned it into.
    assert ("/api/v1/users/missing", "GET") in methods
    assert ("/api/v1/users", "POST") in methods
    assert seen[("/api/v1/users/missing", "404")] == "5"  # NOT_FOUND, not 12
    assert seen[("/api/v1/users", "400")] == "9"  # FAILED_PRECONDITION, not 13
    assert seen[("/api/v1/users/u1", "200")] == "0"
    assert seen[("/shop.users.v1.UserService/GetUser", "200")] == "5"


async def test_the_tls_listener_serves_grpc_and_rest_with_the_mesh_ca(edge: Edge) -> None:
    # grpc: verifying the edge certificate by the name a local client uses (localhost).
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem())
    async with grpc.aio.secure_channel(f"localhost:{edge.tls_port}", creds) as ch:
        v2 = await orders_v2_grpc.OrderServiceStub(ch).GetOrder(
            orders_v2.GetOrderRequest(order_id="o1"), timeout=5
        )
    assert v2.card_last4 == "4242"
    # REST over HTTPS, as `curl --cacert .run/pki/ca.crt https://127.0.0.1:8443/...`
    # (in a thread: the upstreams answer on this event loop).
    url = f"https://127.0.0.1:{edge.tls_port}/api/v1/users/u9"
    trusted = ssl.create_default_context(cafile=pki.store().ca_cert_path)
    body = await asyncio.to_thread(_https_get, url, trusted)
    assert json.loads(body)["userId"] == "u9"
    # A client that does not trust the mesh CA does not get through.
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_https_get, url, ssl.create_default_context())


def _https_get(url: str, context: ssl.SSLContext) -> bytes:
    with urllib.request.urlopen(url, context=context, timeout=5) as resp:
        return bytes(resp.read())


async def test_the_edge_refuses_an_upstream_holding_another_identity(tmp_path: Path) -> None:
    # A "users" endpoint serving with the orders certificate: Envoy's SAN check fails the
    # handshake, so the active health check never passes and no request is routed there.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    users_pb2_grpc.add_UserServiceServicer_to_server(Users(), server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_secure_port("127.0.0.1:0", pki.identity("orders").server_credentials())
    await server.start()
    registry = FixedRegistry([Instance(id="rogue", service="users", host="127.0.0.1", port=port)])
    try:
        async with running_edge(tmp_path, registry, auth=NO_END_USER_AUTH) as running:
            status, _ = await asyncio.to_thread(
                EdgeClient(running.port).http, "GET", "/api/v1/users/u1", None
            )
            assert status == 503

            def san_failures() -> int:
                stats = running.envoy.admin("/stats?filter=cluster.users.ssl.fail_verify_san")
                return int(stats.rsplit(":", 1)[-1].strip() or 0)

            assert await eventually(san_failures) >= 1
            assert running.envoy.healthy_hosts("users") == 0
    finally:
        await registry.close()
        await server.stop(None)


async def test_a_renewed_edge_certificate_is_served_without_a_restart(edge: Edge) -> None:
    from mesh.security.pki import describe

    def served_serials() -> set[int]:
        """As numbers: Envoy prints a serial's hex zero-padded to whole bytes, so one whose
        top nibble is 0 (1 in 8 of them) never equals Python's `format(n, "x")`. Compared as
        text, that made this test fail about 1 run in 4, read until 7 Dec 2026 as Envoy
        missing renewals."""
        certs = json.loads(edge.envoy.admin("/certs"))
        return {
            int(c["serial_number"], 16)
            for entry in certs.get("certificates", [])
            for c in entry.get("cert_chain", [])
        }

    store = pki.store()
    before = store.load("edge").certificate.serial_number
    # The TLS listener's secret arrives by SDS, possibly after the clusters are healthy.
    assert await eventually(lambda: before in served_serials())
    renewed = store.issue("edge", extra_dns=["localhost"], extra_ips=["127.0.0.1"])
    serial = renewed.certificate.serial_number
    assert await eventually(lambda: serial in served_serials() and before not in served_serials())
    assert describe(renewed.cert_pem).identity == "spiffe://mesh.local/svc/edge"
    creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_pem())
    async with grpc.aio.secure_channel(f"localhost:{edge.tls_port}", creds) as ch:
        v2 = await orders_v2_grpc.OrderServiceStub(ch).GetOrder(
            orders_v2.GetOrderRequest(order_id="o2"), timeout=5
        )
    assert v2.card_last4 == "4242"
