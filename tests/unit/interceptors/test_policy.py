"""The caller-policy interceptor on real TLS handshakes, with an injected policy."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.policy import CallerPolicyServerInterceptor, peer_identity
from mesh.security.pki import issue, service_of
from tests.support import pki
from tests.support.ping import PingServer, start_ping_server

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
    """A servicer context stand-in counting its auth-context reads."""

    def __init__(self, peer: bytes | None) -> None:
        self.peer, self.reads = peer, 0

    def auth_context(self) -> dict[str, list[bytes]]:
        self.reads += 1
        return {} if self.peer is None else {"peer_spiffe_id": [self.peer]}


async def test_the_peer_identity_is_read_once_per_call_and_only_for_it() -> None:
    async def call(context: _Context) -> list[str | None]:
        return [peer_identity(context), peer_identity(context)]  # type: ignore[arg-type]

    a, b, none = _Context(b"spiffe://d/svc/a"), _Context(b"spiffe://d/svc/b"), _Context(None)
    assert await call(a) == ["spiffe://d/svc/a"] * 2 and a.reads == 1
    # Another call in the same task (a test's, or one a handler awaits) reads its own.
    assert await call(b) == ["spiffe://d/svc/b"] * 2 and b.reads == 1
    assert await call(none) == [None, None] and none.reads == 1
    # Each call runs in its own task: one call's reading is not another's.
    c = _Context(b"spiffe://d/svc/c")
    results = await asyncio.gather(*(asyncio.create_task(call(x)) for x in (a, c)))
    assert results == [["spiffe://d/svc/a"] * 2, ["spiffe://d/svc/c"] * 2]
    assert peer_identity(b) == "spiffe://d/svc/b" and b.reads == 2  # type: ignore[arg-type]
