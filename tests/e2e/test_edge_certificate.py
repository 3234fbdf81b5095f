"""The edge's certificate outlives its first lifetime on the stack `meshctl up` runs.

Envoy reads `edge.crt`/`edge.key` from files; `up` renews them when a third of their
lifetime is left (mesh/security/identity_files.py). Here the lifetime is 15 s (the
default is 24 h): the test sees the TLS listener serve a renewed certificate before the
first one expires (and Envoy reload the pair once, without a mismatched key and
certificate in between), then, past that expiry, an instance refusing the first certificate
(the control: what the edge would present without the renewal) and accepting the
current one, and a call through the edge that needs a new connection to a restarted
instance, made with the edge's current client certificate, answered.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import ssl
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from shop.inventory.v1 import inventory_pb2, inventory_pb2_grpc

from mesh.security.pki import describe
from tests.support.local_mesh import free_port_shop, local_mesh
from tests.support.poll import eventually

pytestmark = pytest.mark.asyncio(loop_scope="function")

LIFETIME_S = 15


def _served_certificate(port: int, ca: Path) -> bytes:
    """The certificate the edge's TLS listener presents now (PEM), verified by the CA."""
    context = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return ssl.DER_cert_to_PEM_cert(der).encode()


async def _get_product(address: str, ca: bytes, key: bytes, cert: bytes) -> grpc.StatusCode:
    """A call to an inventory instance as the edge, with this certificate and key: OK or
    the service's refusal when the handshake passed, UNAVAILABLE when it did not."""
    credentials = grpc.ssl_channel_credentials(ca, key, cert)
    options = (("grpc.ssl_target_name_override", "inventory.mesh.local"),)
    async with grpc.aio.secure_channel(address, credentials, options) as channel:
        stub = inventory_pb2_grpc.InventoryServiceStub(channel)
        try:
            await stub.ListProducts(inventory_pb2.ListProductsRequest(page_size=1), timeout=5)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def _https_status(url: str, ca: Path) -> int:
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(url, context=context, timeout=10) as res:
        json.loads(res.read())
        return int(res.status)


@pytest.mark.timeout(180)
async def test_the_edge_keeps_serving_past_its_first_certificate_s_lifetime(
    tmp_path: Path,
) -> None:
    shop = {s.name: s for s in free_port_shop()}
    services = (shop["users"], replace(shop["inventory"], instances=1))
    env = {"MESH_CERT_LIFETIME_S": str(LIFETIME_S)}
    async with local_mesh(tmp_path, services, env=env, warm_spares=False) as stack:
        pki = tmp_path / "pki"
        ca, tls_port = pki / "ca.crt", stack.mesh.o.edge_tls_port
        first_pem, first_key = (pki / "edge.crt").read_bytes(), (pki / "edge.key").read_bytes()
        first = describe(first_pem)
        assert describe(await asyncio.to_thread(_served_certificate, tls_port, ca)) == first

        def renewed_and_served() -> bytes | None:
            served = _served_certificate(tls_port, ca)
            return served if describe(served).not_after > first.not_after else None

        served = await eventually(renewed_and_served, LIFETIME_S, "a renewed edge certificate")
        assert dt.datetime.now(dt.UTC) < first.not_after  # renewed before it expired
        assert "localhost" in describe(served).dns_names
        # Envoy reloaded once, with the new pair: never the new key with the old certificate.
        log = (tmp_path / "stack.log").read_text()
        assert "Failed to reload certificates" not in log, log[-3000:]

        def first_expired() -> bool:
            return dt.datetime.now(dt.UTC) > first.not_after + dt.timedelta(seconds=1)

        await eventually(first_expired, LIFETIME_S + 5, "the first certificate's expiry")
        address = stack.instances["inventory"][0].address
        ca_pem = ca.read_bytes()
        # The control: an instance refuses the edge's first certificate now ...
        refused = await _get_product(address, ca_pem, first_key, first_pem)
        assert refused == grpc.StatusCode.UNAVAILABLE
        # ... and accepts the one the edge holds.
        current = (pki / "edge.key").read_bytes(), (pki / "edge.crt").read_bytes()
        assert await _get_product(address, ca_pem, *current) == grpc.StatusCode.OK

        # A new connection from the edge: the instance restarted, reached over 8443.
        child = stack.child("inventory-1")
        child.proc.kill()
        url = f"https://127.0.0.1:{tls_port}/api/v1/products?page_size=1"

        async def served_by_the_restarted_instance() -> bool:
            if child.restarts < 1 or not child.running:
                return False
            try:
                return await asyncio.to_thread(_https_status, url, ca) == 200
            except OSError:  # 503 until the edge routes to it again
                return False

        await eventually(served_by_the_restarted_instance, 30, "a call through the edge")
