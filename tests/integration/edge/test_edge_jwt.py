"""End-user JWTs at the real Envoy edge, with a stand-in issuer whose key the test holds.

The JWKS is served by a small HTTP server registered as the `users` instance's admin
port (as the real users service publishes it), so the test can sign every kind of
token: valid, another key under the same kid, `alg: none`, expired, tampered, wrong
audience or issuer, unknown kid. The upstreams record the metadata they receive, so
what a service sees (`x-mesh-user-id`, `x-mesh-roles`, no `authorization`) is asserted
directly. The real users service and shop are exercised by tests/e2e/test_edge_auth.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from mesh.discovery.registry import Instance
from mesh.edge.jwt_authn import JWKS_CLUSTER, NO_ISSUER
from tests.support.edge_stand_ins import FixedRegistry, running_edge, start_upstream
from tests.support.envoy import EnvoyProcess
from tests.support.poll import eventually
from tests.support.ports import free_port

ISSUER = "shop-mesh/users"
AUDIENCE = "shop-mesh"


Seen = list[dict[str, str]]


def _metadata(context: Any) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}


class Orders(orders_pb2_grpc.OrderServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetOrder(self, request: Any, context: Any) -> orders_pb2.Order:
        self.seen.append(_metadata(context))
        return orders_pb2.Order(order_id=request.order_id)

    async def CreateOrder(self, request: Any, context: Any) -> orders_pb2.Order:
        self.seen.append(_metadata(context))
        return orders_pb2.Order(order_id="o1", user_id=request.user_id)


class Inventory(inventory_pb2_grpc.InventoryServiceServicer):
    def __init__(self, seen: Seen) -> None:
        self.seen = seen

    async def GetProduct(self, request: Any, context: Any) -> inventory_pb2.Product:
        self.seen.append(_metadata(context))
        return inventory_pb2.Product(product_id=request.product_id)

    async def CreateProduct(self, request: Any, context: Any) -> inventory_pb2.Product:
        self.seen.append(_metadata(context))
        return inventory_pb2.Product(product_id="p1", sku=request.sku)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Issuer:
    """An Ed25519 key published as a JWKS; signs whatever a test asks."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.kid = uuid.uuid4().hex

    def jwks(self) -> dict[str, Any]:
        public = self.key.public_key().public_bytes_raw()
        return {
            "keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": _b64(public), "kid": self.kid,
                 "alg": "EdDSA", "use": "sig"}
            ]
        }  # fmt: skip

    def claims(self, sub: str = "user-a", roles: list[str] | None = None, **over: Any) -> Any:
        now = int(time.time())
        base = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "roles": roles or [],
                "iat": now, "exp": now + 900, "jti": uuid.uuid4().hex}  # fmt: skip
        base.update(over)
        return base

    def token(self, claims: dict[str, Any] | None = None, **headers: Any) -> str:
        key = headers.pop("key", self.key)
        kid = headers.pop("kid", self.kid)
        return jwt.encode(claims or self.claims(), key, algorithm="EdDSA", headers={"kid": kid})


class Edge:
    def __init__(self, envoy: EnvoyProcess, port: int, issuer: Issuer, seen: Seen) -> None:
        self.envoy = envoy
        self.port = port
        self.issuer = issuer
        self.seen = seen

    def http(
        self, method: str, path: str, doc: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, response headers, parsed JSON body) of one REST request."""
        body = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=body, method=method, headers=headers or {}
        )
        if body is not None:
            req.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read()
                return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(raw)
        except urllib.error.HTTPError as err:
            raw = err.read()
            hdrs = {k.lower(): v for k, v in err.headers.items()}
            try:
                return err.code, hdrs, json.loads(raw)
            except ValueError:
                return err.code, hdrs, raw.decode()

    async def get_order(self, *metadata: tuple[str, str]) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            try:
                await orders_pb2_grpc.OrderServiceStub(ch).GetOrder(
                    orders_pb2.GetOrderRequest(order_id="o1"), metadata=metadata, timeout=10
                )
            except grpc.aio.AioRpcError as err:
                return err.code()
        return grpc.StatusCode.OK


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@contextlib.asynccontextmanager
async def stand_in_edge(tmp_path: Path, **options: Any) -> AsyncIterator[Edge]:
    """The real Envoy edge (rendered with `options`, e.g. `auth=`) before stand-in orders
    and inventory servers that record what they see, and a `users` instance whose admin
    port serves the test issuer's JWKS."""
    seen: Seen = []
    issuer = Issuer()
    app = web.Application()

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response(issuer.jwks(), headers={"Cache-Control": "max-age=300"})

    app.router.add_get("/.well-known/jwks.json", jwks)
    runner = web.AppRunner(app)
    await runner.setup()
    jwks_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", jwks_port).start()
    orders, orders_i = await start_upstream(
        "orders", [(orders_pb2_grpc.add_OrderServiceServicer_to_server, Orders(seen))]
    )
    inventory, inventory_i = await start_upstream(
        "inventory", [(inventory_pb2_grpc.add_InventoryServiceServicer_to_server, Inventory(seen))]
    )
    # No users gRPC server: only its admin port (the JWKS) is registered and used.
    registry = FixedRegistry(
        [
            orders_i,
            inventory_i,
            Instance(id="users-1", service="users", host="127.0.0.1", port=1,
                     meta={"admin_port": str(jwks_port)}),
        ]
    )  # fmt: skip
    try:
        async with running_edge(tmp_path, registry, **options) as running:
            for cluster in ("orders", "inventory"):
                await asyncio.to_thread(running.envoy.wait_healthy, cluster)
            yield Edge(running.envoy, running.port, issuer, seen)
    finally:
        await registry.close()
        await orders.stop(None)
        await inventory.stop(None)
        await runner.cleanup()


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    async with stand_in_edge(tmp_path) as e:
        await _jwks_fetched(e)
        yield e


async def _jwks_fetched(e: Edge) -> None:
    """A valid token passes once Envoy has the JWKS (fetched in the background)."""
    token = e.issuer.token()

    async def passes() -> bool:
        status, _, _ = await asyncio.to_thread(
            e.http, "GET", "/api/v2/orders/o1", None, bearer(token)
        )
        return status == 200

    await eventually(passes, 20, "the edge to fetch the JWKS")
    e.seen.clear()


async def test_the_jwks_cluster_has_the_issuers_admin_port(edge: Edge) -> None:
    stats = json.loads(await asyncio.to_thread(edge.envoy.admin, "/clusters?format=json"))
    jwks = next(c for c in stats["cluster_statuses"] if c["name"] == JWKS_CLUSTER)
    assert len(jwks["host_statuses"]) == 1


async def test_anonymous_write_is_401_with_a_json_status_and_www_authenticate(
    edge: Edge,
) -> None:
    status, headers, body = await asyncio.to_thread(
        edge.http, "POST", "/api/v2/orders", {"user_id": "x"}
    )
    assert status == 401, body
    assert body["code"] == 16 and body["message"], body  # google.rpc.Status, UNAUTHENTICATED
    assert headers["www-authenticate"].startswith("Bearer"), headers
    assert headers["content-type"].startswith("application/json"), headers
    status, _, body = await asyncio.to_thread(edge.http, "GET", "/api/v2/orders/o1")
    assert status == 401 and body["code"] == 16
    assert await edge.get_order() == grpc.StatusCode.UNAUTHENTICATED
    assert edge.seen == []  # nothing reached a service


async def test_a_valid_token_passes_as_its_user_and_roles(edge: Edge) -> None:
    token = edge.issuer.token(edge.issuer.claims(sub="user-a", roles=["admin", "ops"]))
    status, _, body = await asyncio.to_thread(
        edge.http, "POST", "/api/v1/products", {"sku": "S1"}, bearer(token)
    )
    assert status == 200, body
    assert await edge.get_order(("authorization", f"Bearer {token}")) == grpc.StatusCode.OK
    assert len(edge.seen) == 2
    for md in edge.seen:
        assert md["x-mesh-user-id"] == "user-a"
        assert md["x-mesh-roles"] == "admin,ops"
        assert "authorization" not in md  # forward: false


async def test_client_supplied_end_user_headers_never_reach_a_service(edge: Edge) -> None:
    forged = {"x-mesh-user-id": "user-b", "x-mesh-roles": "admin"}
    token = edge.issuer.token(edge.issuer.claims(sub="user-a", roles=[]))
    status, _, _ = await asyncio.to_thread(
        edge.http, "GET", "/api/v2/orders/o1", None, {**bearer(token), **forged}
    )
    assert status == 200
    # A public route without a token: the forged headers are removed too.
    status, _, _ = await asyncio.to_thread(edge.http, "GET", "/api/v1/products/p1", None, forged)
    assert status == 200
    code = await edge.get_order(("authorization", f"Bearer {token}"), ("x-mesh-user-id", "user-b"))
    assert code == grpc.StatusCode.OK
    assert len(edge.seen) == 3
    assert edge.seen[0]["x-mesh-user-id"] == "user-a" and "x-mesh-roles" not in edge.seen[0]
    assert "x-mesh-user-id" not in edge.seen[1] and "x-mesh-roles" not in edge.seen[1]
    assert edge.seen[2]["x-mesh-user-id"] == "user-a"


async def test_public_reads_need_no_token_and_unknown_paths_fail_closed(edge: Edge) -> None:
    for path in ("/api/v1/products/p1", "/api/products/p1"):  # versioned and unversioned
        status, _, body = await asyncio.to_thread(edge.http, "GET", path)
        assert status == 200 and body["productId"] == "p1", path
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        unversioned = ch.unary_unary(
            "/shop.inventory.InventoryService/GetProduct",
            request_serializer=inventory_pb2.GetProductRequest.SerializeToString,
            response_deserializer=inventory_pb2.Product.FromString,
        )
        got = await unversioned(inventory_pb2.GetProductRequest(product_id="p2"), timeout=10)
        assert got.product_id == "p2"
    assert len(edge.seen) == 3
    # A path no rule names needs a token, whether or not a route exists for it (a REST
    # path that no binding has is answered 404 by the transcoder, before auth).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{edge.port}") as ch:
        for path in ("/shop.inventory.v1.InventoryService/Nope", "/no.such.Service/Call"):
            call = ch.unary_unary(path, request_serializer=bytes, response_deserializer=bytes)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, path
    status, _, _ = await asyncio.to_thread(edge.http, "GET", "/api/inventory/products/p1")
    assert status in (401, 404)
    assert len(edge.seen) == 3


def _forged(issuer: Issuer) -> dict[str, str]:
    other = Ed25519PrivateKey.generate()
    now = int(time.time())
    good = issuer.token()
    head, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    tampered = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    none_head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": issuer.kid}).encode())
    alg_none = f"{none_head}.{_b64(json.dumps(issuer.claims()).encode())}."
    return {
        "other key, same kid": issuer.token(key=other),
        "alg none": alg_none,
        "expired": issuer.token(issuer.claims(iat=now - 3600, exp=now - 600)),
        "tampered payload": tampered,
        "wrong audience": issuer.token(issuer.claims(aud="someone-else")),
        "wrong issuer": issuer.token(issuer.claims(iss="evil")),
        "unknown kid": issuer.token(key=other, kid="not-published"),
        "not a jwt": "not.a.jwt",
    }


async def test_forged_tokens_are_401_on_rest_and_unauthenticated_on_grpc(edge: Edge) -> None:
    for what, token in _forged(edge.issuer).items():
        status, headers, body = await asyncio.to_thread(
            edge.http, "GET", "/api/v2/orders/o1", None, bearer(token)
        )
        assert status == 401, f"{what}: {status} {body}"
        assert body["code"] == 16, what
        assert 'error="invalid_token"' in headers.get("www-authenticate", ""), (what, headers)
        code = await edge.get_order(("authorization", f"Bearer {token}"))
        assert code == grpc.StatusCode.UNAUTHENTICATED, what
        # Public route: a token that is sent must verify (documented choice).
        status, _, _ = await asyncio.to_thread(
            edge.http, "GET", "/api/v1/products/p1", None, bearer(token)
        )
        assert status == 401, what
    assert edge.seen == []


async def test_an_edge_with_no_issuer_verifies_no_token_and_fetches_nothing(
    tmp_path: Path,
) -> None:
    """A project's `[edge]` without `[edge.auth]` (`NO_ISSUER`): public methods answer
    anyone, every other one is 401, a token (even one the registered `users` instance's
    JWKS would have verified) is refused everywhere, and Envoy has no key to fetch: no
    JWKS cluster and no failed fetch in its log."""
    async with stand_in_edge(tmp_path, auth=NO_ISSUER) as e:
        token = bearer(e.issuer.token())
        status, _, body = await asyncio.to_thread(e.http, "GET", "/api/v1/products/p1")
        assert (status, body["productId"]) == (200, "p1")
        for headers in ({}, token):
            status, hdrs, _ = await asyncio.to_thread(
                e.http, "GET", "/api/v2/orders/o1", None, headers
            )
            assert status == 401 and "www-authenticate" in hdrs
        status, _, _ = await asyncio.to_thread(e.http, "GET", "/api/v1/products/p1", None, token)
        assert status == 401  # a token sent must verify, even on a public route
        assert await e.get_order(("authorization", token["authorization"])) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert [s.get("x-mesh-user-id") for s in e.seen] == [None]  # only the public read
        stats = json.loads(await asyncio.to_thread(e.envoy.admin, "/clusters?format=json"))
        assert JWKS_CLUSTER not in {c["name"] for c in stats["cluster_statuses"]}
        log = e.envoy.log_path.read_text(errors="replace")
        assert "jwks" not in log.lower(), log[-2000:]  # no fetch, so no failed fetch
