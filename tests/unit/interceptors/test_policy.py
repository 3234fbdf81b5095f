"""The caller-policy interceptor on real TLS handshakes, with an injected policy."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from interceptors import policy as policy_module
from interceptors.policy import CallerPolicyServerInterceptor, peer_identity
from interceptors.registered import chained_server
from mesh.security.pki import KeyPair, issue, service_of
from tests.support import pki
from tests.support.ping import PingServer, PingServicer, start_ping_server

PING = "/shop.testing.v1.PingService/Ping"
STREAM = "/shop.testing.v1.PingService/PingList"
POLICY = {PING: frozenset({"orders"}), STREAM: frozenset({"orders", "edge"})}


async def _server(denials: list[tuple[str, str, grpc.StatusCode]]) -> PingServer:
    interceptor = CallerPolicyServerInterceptor(
        POLICY.get,
        lambda peer: service_of(peer, "mesh.local"),
        on_denied=lambda m, c, code: denials.append((m, c, code)),
    )
    return await start_ping_server("p", interceptors=[interceptor], identity=pki.identity("ping"))


async def _ping(server: PingServer, caller: str) -> grpc.StatusCode:
    async with pki.mtls_channel(server.address, "ping", caller=caller) as ch:
        try:
            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(value="x"), timeout=3)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def test_allowed_callers_get_in_and_others_are_refused_before_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    server = await _server(denials)
    try:
        assert await _ping(server, "orders") == grpc.StatusCode.OK
        assert server.servicer.calls == 1
        with caplog.at_level(logging.WARNING, logger="interceptors.policy"):
            assert await _ping(server, "inventory") == grpc.StatusCode.PERMISSION_DENIED
        assert server.servicer.calls == 1  # the handler never ran
        assert denials == [(PING, "inventory", grpc.StatusCode.PERMISSION_DENIED)]
        assert "caller=inventory" in caplog.text and f"method={PING}" in caplog.text
        assert "trace_id=" in caplog.text
    finally:
        await server.stop(None)


async def test_streams_are_guarded_too() -> None:
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    server = await _server(denials)
    try:
        for caller, expected in (
            ("edge", grpc.StatusCode.OK),
            ("users", grpc.StatusCode.PERMISSION_DENIED),
        ):
            async with pki.mtls_channel(server.address, "ping", caller=caller) as ch:
                call = ping_pb2_grpc.PingServiceStub(ch).PingList(
                    ping_pb2.PingRequest(value="s", count=2), timeout=3
                )
                try:
                    replies = [r async for r in call]
                    code = grpc.StatusCode.OK
                    assert len(replies) == 2
                except grpc.aio.AioRpcError as err:
                    code = err.code()
            assert code == expected, caller
    finally:
        await server.stop(None)


async def test_an_identity_of_another_trust_domain_is_unauthenticated() -> None:
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    server = await _server(denials)
    try:
        # Signed by the mesh CA (the handshake succeeds) but naming another trust domain.
        foreign = issue(pki.store().load_ca(), "orders", "evil.local", dt.timedelta(hours=1))
        async with pki.mtls_channel(server.address, "ping", pair_=foreign) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert denials == [(PING, "unknown", grpc.StatusCode.UNAUTHENTICATED)]
    finally:
        await server.stop(None)


async def test_no_identity_is_unauthenticated_on_a_server_that_lets_it_in() -> None:
    # A plaintext server (TLS off for debugging) with the interceptor: no peer identity at all.
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    interceptor = CallerPolicyServerInterceptor(
        POLICY.get, lambda peer: "x", on_denied=lambda m, c, code: denials.append((m, c, code))
    )
    server = await start_ping_server("p", interceptors=[interceptor])
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(), timeout=3)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert denials == [(PING, "-", grpc.StatusCode.UNAUTHENTICATED)]
    finally:
        await server.stop(None)


class _Context:
    """A servicer context stand-in counting its auth-context reads (its connection: `address`
    and the certificate's identity values, as gRPC reports them)."""

    def __init__(self, peer: bytes | None, address: str = "ipv4:127.0.0.1:1") -> None:
        self.peer_id, self.address, self.reads = peer, address, 0

    def auth_context(self) -> dict[str, list[bytes]]:
        self.reads += 1
        return {} if self.peer_id is None else {"peer_spiffe_id": [self.peer_id]}

    def peer(self) -> str:
        return self.address

    def peer_identity_key(self) -> str | None:
        return None if self.peer_id is None else "x509_subject_alternative_name"

    def peer_identities(self) -> list[bytes] | None:
        return None if self.peer_id is None else [self.peer_id]


@pytest.mark.parametrize("memo", [True, False], ids=["memo", "per-call"])
async def test_the_peer_identity_is_read_once_per_call_and_only_for_it(
    memo: bool, fastpath: None
) -> None:
    _fastpath.use_fastpath(memo)

    async def call(context: _Context) -> list[str | None]:
        return [peer_identity(context), peer_identity(context)]  # type: ignore[arg-type]

    a = _Context(b"spiffe://d/svc/a", "ipv4:127.0.0.1:1")
    b = _Context(b"spiffe://d/svc/b", "ipv4:127.0.0.1:2")
    none = _Context(None, "ipv4:127.0.0.1:3")
    assert await call(a) == ["spiffe://d/svc/a"] * 2 and a.reads == 1
    # Another call in the same task (a test's, or one a handler awaits) reads its own.
    assert await call(b) == ["spiffe://d/svc/b"] * 2 and b.reads == 1
    assert await call(none) == [None, None] and none.reads == 1
    # Each call runs in its own task: one call's reading is not another's.
    c = _Context(b"spiffe://d/svc/c", "ipv4:127.0.0.1:4")
    results = await asyncio.gather(*(asyncio.create_task(call(x)) for x in (a, c)))
    assert results == [["spiffe://d/svc/a"] * 2, ["spiffe://d/svc/c"] * 2]
    # Memo: a's connection was read once (its second call hit); per call: read again.
    assert a.reads == (1 if memo else 2)
    assert peer_identity(b) == "spiffe://d/svc/b" and b.reads == (1 if memo else 2)  # type: ignore[arg-type]
    # Without identities (no certificate) nothing tells connections apart: read every time.
    assert await call(none) == [None, None] and none.reads == 2


# -- once per connection, on real handshakes ---------------------------------------------


@pytest.fixture
def fastpath() -> Iterator[None]:
    """Each test starts with the fast paths on and no kept connection; the selection the
    run started with (MESH_FASTPATH) is put back."""
    selected = _fastpath.MEMO_CALLER
    _fastpath.use_fastpath(True)
    policy_module.forget_connections()
    yield
    _fastpath.use_fastpath(selected)
    policy_module.forget_connections()


def _leaf(common_name: str, sans: list[x509.GeneralName]) -> KeyPair:
    """A client certificate signed by the test CA with exactly these names (unlike
    `mesh.security.pki.issue`, which always writes one URI SAN and one DNS SAN)."""
    ca = pki.store().load_ca()
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class _Recorder(PingServicer):
    """Answers Ping with the SPIFFE id `peer_identity` gave the call (after the policy)."""

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        self.calls += 1
        return ping_pb2.PingResponse(value=peer_identity(context) or "-", server=context.peer())


@dataclass
class _UdsServer:
    """A policy-guarded mTLS server on a unix socket: every client's peer address is the
    same (`unix:`), as a reused TCP address would be, while its connections are open."""

    server: grpc.aio.Server
    servicer: _Recorder
    address: str
    interceptor: CallerPolicyServerInterceptor
    denials: list[tuple[str, str, grpc.StatusCode]]


@contextlib.asynccontextmanager
async def _uds_server(tmp_path: Path) -> AsyncIterator[_UdsServer]:
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    interceptor = CallerPolicyServerInterceptor(
        POLICY.get,
        lambda peer: service_of(peer, "mesh.local"),
        on_denied=lambda m, c, code: denials.append((m, c, code)),
    )
    registrar = chained_server([interceptor], registered=True)
    servicer = _Recorder("p")
    ping_pb2_grpc.add_PingServiceServicer_to_server(servicer, registrar)
    address = f"unix:{tmp_path / 'policy.sock'}"
    registrar.server.add_secure_port(address, pki.identity("ping").server_credentials())
    await registrar.server.start()
    try:
        yield _UdsServer(registrar.server, servicer, address, interceptor, denials)
    finally:
        await registrar.server.stop(None)


async def _as(
    channel: grpc.aio.Channel,
) -> tuple[grpc.StatusCode, str]:
    """(status, the SPIFFE id the server saw, or "") of one Ping."""
    try:
        reply = await ping_pb2_grpc.PingServiceStub(channel).Ping(
            ping_pb2.PingRequest(value="x"), timeout=5
        )
    except grpc.aio.AioRpcError as err:
        return err.code(), ""
    return grpc.StatusCode.OK, reply.value


ORDERS = "spiffe://mesh.local/svc/orders"


async def test_calls_on_one_connection_read_the_identity_once_and_decide_the_same(
    fastpath: None, tmp_path: Path
) -> None:
    async with _uds_server(tmp_path) as srv:
        async with pki.mtls_channel(srv.address, "ping", caller="orders") as ch:
            results = [await _as(ch) for _ in range(5)]
        assert results == [(grpc.StatusCode.OK, ORDERS)] * 5
        assert srv.servicer.calls == 5
        # One connection kept, under the peer address every call reported.
        assert list(policy_module._connections) == ["unix:"]
        key, identities, kept = policy_module._connections["unix:"]
        assert (key, kept) == ("x509_subject_alternative_name", ORDERS)
        assert list(identities) == [ORDERS.encode(), b"orders.mesh.local"]
        assert srv.interceptor._kept[PING] == {ORDERS: None}  # admitted, kept


@pytest.mark.parametrize("order", ["one after the other", "both open"])
async def test_another_certificate_on_the_same_peer_address_is_read_as_itself(
    fastpath: None, tmp_path: Path, order: str
) -> None:
    """Negative: an attacker's certificate on an address a trusted caller used is not
    given the trusted caller's identity (refused as itself), and the trusted caller's
    next call is its own again."""
    async with _uds_server(tmp_path) as srv:
        foreign = issue(pki.store().load_ca(), "orders", "evil.local", dt.timedelta(hours=1))
        attackers = [
            (pki.pair("inventory"), grpc.StatusCode.PERMISSION_DENIED, "inventory"),
            (foreign, grpc.StatusCode.UNAUTHENTICATED, "unknown"),
        ]
        for attacker, code, label in attackers:
            srv.denials.clear()
            trusted = pki.mtls_channel(srv.address, "ping", caller="orders")
            assert await _as(trusted) == (grpc.StatusCode.OK, ORDERS)
            if order == "one after the other":
                await trusted.close(None)
            async with pki.mtls_channel(srv.address, "ping", pair_=attacker) as evil:
                for _ in range(2):  # and not on its second call either
                    assert await _as(evil) == (code, "")
                if order == "both open":  # interleaved on the one address
                    assert await _as(trusted) == (grpc.StatusCode.OK, ORDERS)
                    assert await _as(evil) == (code, "")
            assert srv.denials and set(srv.denials) == {(PING, label, code)}
            await trusted.close(None)
        assert srv.servicer.calls == (2 if order == "one after the other" else 4)


async def test_same_san_values_from_the_common_name_are_not_the_same_identity(
    fastpath: None, tmp_path: Path
) -> None:
    """Negative: a certificate whose common name spells a SPIFFE id (no SAN, so no
    `peer_spiffe_id`) presents the same identity values as one whose only SAN is that
    URI; the property they come from tells them apart."""
    uri_only = _leaf("orders", [x509.UniformResourceIdentifier(ORDERS)])
    cn_only = _leaf(ORDERS, [])
    async with _uds_server(tmp_path) as srv:
        async with pki.mtls_channel(srv.address, "ping", pair_=uri_only) as ch:
            assert await _as(ch) == (grpc.StatusCode.OK, ORDERS)
        async with pki.mtls_channel(srv.address, "ping", pair_=cn_only) as ch:
            assert await _as(ch) == (grpc.StatusCode.UNAUTHENTICATED, "")
        assert srv.denials == [(PING, "-", grpc.StatusCode.UNAUTHENTICATED)]
        assert policy_module._connections["unix:"][0] == "x509_common_name"


async def test_kept_connections_and_verdicts_are_capped_oldest_first(
    fastpath: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(policy_module, "MEMO_CONNECTIONS", 2)
    monkeypatch.setattr(policy_module, "MEMO_VERDICTS", 2)
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    interceptor = CallerPolicyServerInterceptor(
        POLICY.get,
        lambda peer: service_of(peer, "mesh.local"),
        on_denied=lambda m, c, code: denials.append((m, c, code)),
    )
    server = await start_ping_server(
        "p", interceptors=[interceptor], identity=pki.identity("ping"), registered=True
    )
    try:
        callers = ["orders", "edge", "inventory", "orders", "users"]
        codes = [await _ping(server, caller) for caller in callers]  # a connection each
        assert codes == [
            grpc.StatusCode.OK,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.OK,
            grpc.StatusCode.PERMISSION_DENIED,
        ]
        assert len(policy_module._connections) == 2  # the last two connections
        kept = [entry[2] for entry in policy_module._connections.values()]
        assert kept == [ORDERS, "spiffe://mesh.local/svc/users"]
        verdicts = interceptor._kept[PING]
        assert list(verdicts) == [ORDERS, "spiffe://mesh.local/svc/users"]
        assert verdicts[ORDERS] is None
        assert verdicts["spiffe://mesh.local/svc/users"] == (
            "users",
            grpc.StatusCode.PERMISSION_DENIED,
            f"users may not call {PING}",
        )
        assert [d[1] for d in denials] == ["edge", "inventory", "users"]
    finally:
        await server.stop(None)


async def test_every_denied_call_is_logged_counted_and_refused_when_the_verdict_is_kept(
    fastpath: None, caplog: pytest.LogCaptureFixture
) -> None:
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    server = await _server(denials)
    try:
        with caplog.at_level(logging.WARNING, logger="interceptors.policy"):
            async with pki.mtls_channel(server.address, "ping", caller="inventory") as ch:
                stub = ping_pb2_grpc.PingServiceStub(ch)
                for _ in range(3):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Ping(ping_pb2.PingRequest(), timeout=3)
                    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                    assert err.value.details() == f"inventory may not call {PING}"
        assert server.servicer.calls == 0
        assert denials == [(PING, "inventory", grpc.StatusCode.PERMISSION_DENIED)] * 3
        assert caplog.text.count("denied caller=inventory") == 3
    finally:
        await server.stop(None)


async def _decisions(fast: bool) -> list[tuple[str, grpc.StatusCode, int, str]]:
    _fastpath.use_fastpath(fast)
    policy_module.forget_connections()
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    server = await _server(denials)
    seen: list[tuple[str, grpc.StatusCode, int, str]] = []
    foreign = issue(pki.store().load_ca(), "orders", "evil.local", dt.timedelta(hours=1))
    try:
        for who in ("orders", "inventory", "edge", "foreign"):
            pair_ = foreign if who == "foreign" else pki.pair(who)
            async with pki.mtls_channel(server.address, "ping", pair_=pair_) as ch:
                stub = ping_pb2_grpc.PingServiceStub(ch)
                for _ in range(2):
                    try:
                        await stub.Ping(ping_pb2.PingRequest(), timeout=3)
                        seen.append((who, grpc.StatusCode.OK, server.servicer.calls, ""))
                    except grpc.aio.AioRpcError as err:
                        details = err.details() or ""
                        seen.append((who, err.code(), server.servicer.calls, details))
                    call = stub.PingList(ping_pb2.PingRequest(count=1), timeout=3)
                    try:
                        assert len([r async for r in call]) == 1
                        seen.append((who, grpc.StatusCode.OK, server.servicer.calls, "list"))
                    except grpc.aio.AioRpcError as err:
                        seen.append((who, err.code(), server.servicer.calls, "list"))
        seen.extend(("denied", code, 0, f"{m} {c}") for m, c, code in denials)
    finally:
        await server.stop(None)
    return seen


async def test_the_fast_path_forced_off_decides_exactly_the_same(fastpath: None) -> None:
    fast = await _decisions(True)
    assert policy_module._connections  # the memo was used
    slow = await _decisions(False)
    assert not policy_module._connections  # and was not
    assert fast == slow
    assert {(who, code) for who, code, *_ in fast} == {
        ("orders", grpc.StatusCode.OK),
        ("inventory", grpc.StatusCode.PERMISSION_DENIED),
        ("edge", grpc.StatusCode.PERMISSION_DENIED),  # Ping: orders only
        ("edge", grpc.StatusCode.OK),  # PingList: orders and edge
        ("foreign", grpc.StatusCode.UNAUTHENTICATED),
        ("denied", grpc.StatusCode.PERMISSION_DENIED),
        ("denied", grpc.StatusCode.UNAUTHENTICATED),
    }


def test_mesh_fastpath_0_turns_the_memo_off_at_import() -> None:
    code = "from interceptors import _fastpath; print(_fastpath.MEMO_CALLER)"
    for value, expected in (("0", "False"), ("1", "True")):
        env = {**os.environ, _fastpath.ENV_VAR: value}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == expected, value
