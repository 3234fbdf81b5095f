"""End-user tokens at the real edge in front of the real shop (users issues, Envoy verifies).

Anonymous writes and forged tokens are refused by the edge (REST 401 with a JSON
`google.rpc.Status` and `WWW-Authenticate`, gRPC UNAUTHENTICATED); tokens from the users
service pass; public reads need none. Forgeries that need the issuer's real key (expired,
wrong audience) are signed with the key read from the stack's users database, so what is
tested is Envoy's claim checks, not only its signature check. The header-level checks with
a stand-in issuer (what a service receives) are in tests/integration/edge/test_edge_jwt.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from google.protobuf import json_format
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc
from shop.orders.v2 import orders_pb2, orders_pb2_grpc

from tests.support.e2e_stack import v2_order_request
from tests.support.edge_tokens import User, admin, sign_up
from tests.support.local_mesh import Stack, clean_env

pytestmark = pytest.mark.asyncio(loop_scope="module")


class World:
    def __init__(self, user: User, admin: User, product_id: str) -> None:
        self.user = user
        self.admin = admin
        self.product_id = product_id


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(stack: Stack) -> World:
    user = await sign_up(stack)
    boss = await admin(stack)
    status, product = await stack.json(
        "POST",
        "/api/v1/products",
        {"sku": f"AUTH-{uuid.uuid4().hex[:8]}", "name": "Kettle",
         "price": {"currencyCode": "USD", "amountMinor": 2500}, "initialStock": 50},
        boss.headers,
    )  # fmt: skip
    assert status == 200, product
    return World(user, boss, product["productId"])


def _raw(
    stack: Stack, method: str, path: str, doc: Any, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    body = json.dumps(doc).encode() if doc is not None else None
    req = urllib.request.Request(
        f"http://{stack.edge.address}{path}", data=body, method=method, headers=headers
    )
    if body is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
    except urllib.error.HTTPError as err:
        raw = err.read()
        hdrs = {k.lower(): v for k, v in err.headers.items()}
        try:
            return err.code, hdrs, json.loads(raw)
        except ValueError:
            return err.code, hdrs, raw.decode()


async def _grpc_create(stack: Stack, w: World, *metadata: tuple[str, str]) -> grpc.StatusCode:
    req = json_format.ParseDict(
        v2_order_request(w.user.user_id, w.product_id), orders_pb2.CreateOrderRequest()
    )
    async with grpc.aio.insecure_channel(stack.edge.address) as ch:
        try:
            await orders_pb2_grpc.OrderServiceStub(ch).CreateOrder(
                req, metadata=metadata, timeout=15
            )
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_anonymous_writes_are_refused(stack: Stack, world: World) -> None:
    writes = [
        ("POST", "/api/v2/orders", v2_order_request(world.user.user_id, world.product_id)),
        ("POST", "/api/v1/products", {"sku": "X", "name": "x"}),
        ("POST", f"/api/v1/products/{world.product_id}/stock", {"quantity": 1}),
        ("DELETE", f"/api/v1/users/{world.user.user_id}", None),
        ("GET", f"/api/v2/orders?user_id={world.user.user_id}", None),
    ]
    for verb, path, doc in writes:
        status, headers, body = await asyncio.to_thread(_raw, stack, verb, path, doc, {})
        assert status == 401, (verb, path, body)
        assert body["code"] == 16 and isinstance(body["message"], str), body
        assert headers["www-authenticate"].startswith("Bearer "), headers
    assert await _grpc_create(stack, world) == grpc.StatusCode.UNAUTHENTICATED
    res = await stack.call("shop.users.v1.UserService/GetUser", {"user_id": world.user.user_id})
    assert res.returncode != 0 and "Unauthenticated" in res.stderr, res.stderr


def _signing_key(stack: Stack, kid: str) -> Ed25519PrivateKey:
    db = stack.base / "data" / "users.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT private_key_pem FROM signing_keys WHERE kid = ?", (kid,))
        (pem,) = row.fetchone()
    key = load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _forgeries(stack: Stack, good: str) -> dict[str, str]:
    header = jwt.get_unverified_header(good)
    claims = jwt.decode(good, options={"verify_signature": False})
    real = _signing_key(stack, header["kid"])
    other = Ed25519PrivateKey.generate()
    now = int(time.time())

    def sign(key: Ed25519PrivateKey, kid: str = header["kid"], **over: Any) -> str:
        return jwt.encode({**claims, **over}, key, algorithm="EdDSA", headers={"kid": kid})

    head, payload, sig = good.split(".")
    tampered = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered["roles"] = ["admin"]
    none_head = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": header["kid"]}).encode())
    return {
        "signed by another key": sign(other),
        "alg none": f"{none_head}.{payload}.",
        "expired": sign(real, iat=now - 3600, exp=now - 300),
        "tampered payload": f"{head}.{_b64(json.dumps(tampered).encode())}.{sig}",
        "wrong audience": sign(real, aud="another-api"),
        "unknown kid": sign(other, kid="no-such-kid"),
    }


async def test_forged_tokens_are_refused(stack: Stack, world: World) -> None:
    assert jwt.decode(world.user.access_token, options={"verify_signature": False})["sub"]
    path = f"/api/v2/orders?user_id={world.user.user_id}"
    for what, token in _forgeries(stack, world.user.access_token).items():
        auth = {"authorization": f"Bearer {token}"}
        status, headers, body = await asyncio.to_thread(_raw, stack, "GET", path, None, auth)
        assert status == 401, f"{what}: {status} {body}"
        assert body["code"] == 16, what
        assert "invalid_token" in headers.get("www-authenticate", ""), (what, headers)
        code = await _grpc_create(stack, world, ("authorization", f"Bearer {token}"))
        assert code == grpc.StatusCode.UNAUTHENTICATED, what


async def test_a_valid_token_passes_and_a_client_user_header_is_ignored(
    stack: Stack, world: World
) -> None:
    victim = await sign_up(stack)
    # The token's user orders for themself while claiming to be someone else by header:
    # the edge replaces the header with the token's `sub` (once the services enforce
    # ownership from it, a surviving forged header would make this PERMISSION_DENIED).
    forged = {**world.user.headers, "x-mesh-user-id": victim.user_id, "x-mesh-roles": "admin"}
    order = v2_order_request(world.user.user_id, world.product_id)
    status, _, body = await asyncio.to_thread(_raw, stack, "POST", "/api/v2/orders", order, forged)
    assert status == 200, body
    assert body["userId"] == world.user.user_id
    status, _, got = await asyncio.to_thread(
        _raw, stack, "GET", f"/api/v2/orders/{body['orderId']}", None, world.user.headers
    )
    assert status == 200 and got["userId"] == world.user.user_id
    code = await _grpc_create(stack, world, *world.user.metadata, ("x-mesh-user-id", "x"))
    assert code == grpc.StatusCode.OK


async def test_public_reads_need_no_token(stack: Stack, world: World) -> None:
    status, _, product = await asyncio.to_thread(
        _raw, stack, "GET", f"/api/v1/products/{world.product_id}", None, {}
    )
    assert status == 200 and product["productId"] == world.product_id
    status, _, avail = await asyncio.to_thread(
        _raw, stack, "POST", "/api/v1/availability",
        {"items": [{"productId": world.product_id, "quantity": 1}]}, {},
    )  # fmt: skip
    assert status == 200, avail
    async with grpc.aio.insecure_channel(stack.edge.address) as ch:
        got = await inventory_pb2_grpc.InventoryServiceStub(ch).GetProduct(
            inventory_pb2.GetProductRequest(product_id=world.product_id), timeout=10
        )
    assert got.product_id == world.product_id


async def test_the_demo_tells_the_story_with_tokens(stack: Stack) -> None:
    """`make demo`'s story against this stack: sign-up, login, the first admin, a refused
    anonymous call, orders with tokens (the demo exits 1 on any unexpected answer)."""
    env = {**clean_env(), "MESH_DATA_DIR": str(stack.base / "data")}
    # As a user runs it: `meshctl demo` watches the events as meshctl's read-only NATS
    # identity of the mesh in the run dir (the stack runs `up`'s own nats-server).
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "mesh.cli", "--run-dir", str(stack.base), "demo",
         "--edge-port", str(stack.edge.port)],
        env=env, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert 'grpcurl -plaintext -H "authorization: Bearer $TOKEN"' in res.stdout
    assert "(HTTP 401)" in res.stdout
