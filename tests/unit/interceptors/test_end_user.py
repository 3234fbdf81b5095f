"""The end-user interceptors on real TLS handshakes: whose metadata is believed, what each
method needs, all four arities, and the end user travelling on to the next call."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.arity import for_channel
from interceptors.end_user import (
    EndUser,
    EndUserClientInterceptor,
    EndUserServerInterceptor,
    Requirement,
    acting_as,
    calling_service,
    current_end_user,
    parse_end_user,
)
from mesh.security.pki import service_of
from tests.support import pki
from tests.support.end_user import as_user
from tests.support.ping import PingServer, start_ping_server
from tests.support.ping_calls import ARITIES, METHODS, invoke

USER = Requirement()
ADMIN = Requirement(frozenset({"admin"}))
TRUSTED = frozenset({"edge", "mesh-client", "orders"})
SERVICES = frozenset({"orders"})
ALICE = "alice"

Seen = list[tuple[EndUser | None, str | None]]


async def _server(
    requirements: dict[str, Requirement | None],
    denials: list[tuple[str, str, grpc.StatusCode]] | None = None,
) -> tuple[PingServer, Seen]:
    interceptor = EndUserServerInterceptor(
        requirements.get,
        lambda peer: service_of(peer, "mesh.local"),
        trusted=TRUSTED,
        on_own_authority=SERVICES,
        on_denied=None if denials is None else (lambda m, c, code: denials.append((m, c, code))),
    )
    server = await start_ping_server("p", interceptors=[interceptor], identity=pki.identity("ping"))
    seen: Seen = []
    prepare = server.servicer._prepare

    async def recording(request: Any, context: Any) -> None:
        seen.append((current_end_user.get(), calling_service.get()))
        await prepare(request, context)

    server.servicer._prepare = recording  # type: ignore[method-assign]
    return server, seen


async def _call(
    server: PingServer, caller: str, arity: str, metadata: Any = None, *, n: int = 2
) -> grpc.StatusCode:
    ch = pki.mtls_channel(server.address, "ping", caller=caller, end_user=None)
    async with ch:
        try:
            stub = ping_pb2_grpc.PingServiceStub(ch)
            await invoke(stub, arity, metadata=metadata, timeout=5, n=n)
        except grpc.aio.AioRpcError as err:
            return err.code()
    return grpc.StatusCode.OK


async def _refused(
    server: PingServer, caller: str, arity: str, metadata: Any = None
) -> grpc.StatusCode:
    """The status of a call expected to be refused, sent with no request messages: a client
    still writing when the server has answered may see INTERNAL instead of the server's
    status (grpc/grpc#36066, open), which would say nothing about the server."""
    return await _call(server, caller, arity, metadata, n=0)


@pytest.mark.parametrize("arity", ARITIES)
async def test_a_user_method_needs_an_end_user_from_a_trusted_caller(arity: str) -> None:
    denials: list[tuple[str, str, grpc.StatusCode]] = []
    server, seen = await _server(dict.fromkeys(METHODS.values(), USER), denials)
    try:
        assert await _call(server, "edge", arity, as_user(ALICE, "buyer")) == grpc.StatusCode.OK
        assert seen and all(s == (EndUser(ALICE, frozenset({"buyer"})), None) for s in seen)
        seen.clear()
        assert await _refused(server, "edge", arity) == grpc.StatusCode.UNAUTHENTICATED
        assert await _refused(server, "mesh-client", arity) == grpc.StatusCode.UNAUTHENTICATED
        # An identity outside the trusted set: its metadata is ignored, as if absent.
        assert (
            await _refused(server, "intruder", arity, as_user(ALICE))
            == grpc.StatusCode.UNAUTHENTICATED
        )
        assert seen == []  # the handler never ran
        assert [d[1:] for d in denials] == [
            ("edge", grpc.StatusCode.UNAUTHENTICATED),
            ("mesh-client", grpc.StatusCode.UNAUTHENTICATED),
            ("intruder", grpc.StatusCode.UNAUTHENTICATED),
        ]
    finally:
        await server.stop(None)


@pytest.mark.parametrize("arity", ARITIES)
async def test_a_roles_method_needs_one_of_the_roles(arity: str) -> None:
    server, seen = await _server(dict.fromkeys(METHODS.values(), ADMIN))
    try:
        assert (
            await _refused(server, "edge", arity, as_user(ALICE))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            await _refused(server, "edge", arity, as_user(ALICE, "buyer"))
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert seen == []
        assert await _call(server, "edge", arity, as_user(ALICE, "admin")) == grpc.StatusCode.OK
        assert seen and seen[0][0] == EndUser(ALICE, frozenset({"admin"}))
    finally:
        await server.stop(None)


@pytest.mark.parametrize("arity", ARITIES)
async def test_a_service_acts_on_its_own_authority(arity: str) -> None:
    server, seen = await _server(dict.fromkeys(METHODS.values(), ADMIN))
    try:
        # No end user (a saga resumed after a restart): allowed, marked as the service's.
        assert await _call(server, "orders", arity) == grpc.StatusCode.OK
        assert seen and all(s == (None, "orders") for s in seen)
        seen.clear()
        # An end user without the role, carried by the service: still the service's call.
        assert await _call(server, "orders", arity, as_user(ALICE)) == grpc.StatusCode.OK
        assert seen and all(s == (EndUser(ALICE), "orders") for s in seen)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("arity", ARITIES)
async def test_public_methods_take_an_end_user_when_there_is_one(arity: str) -> None:
    server, seen = await _server({})
    try:
        assert await _call(server, "edge", arity) == grpc.StatusCode.OK
        assert await _call(server, "edge", arity, as_user(ALICE)) == grpc.StatusCode.OK
        assert await _call(server, "intruder", arity, as_user(ALICE)) == grpc.StatusCode.OK
        users = [s[0] for s in seen]
        assert EndUser(ALICE) in users and users[0] is None and users[-1] is None
    finally:
        await server.stop(None)


@pytest.mark.parametrize("arity", ARITIES)
async def test_the_end_user_travels_with_the_calls_a_handler_makes(arity: str) -> None:
    """front (end-user server interceptor) → its handler calls back (end-user client
    interceptor) → back sees the same end user, from the front's service identity."""
    back, back_seen = await _server(dict.fromkeys(METHODS.values(), USER))
    front, _ = await _server(dict.fromkeys(METHODS.values(), USER))
    downstream = pki.mtls_channel(back.address, "ping", caller="edge", end_user=None)
    # Re-made with the client interceptor (an mTLS channel as `edge`, the trusted caller).
    await downstream.close(None)
    downstream = grpc.aio.secure_channel(
        back.address,
        pki.credentials(pki.pair("edge")),
        options=[("grpc.ssl_target_name_override", "ping.mesh.local")],
        interceptors=for_channel(EndUserClientInterceptor()),
    )
    prepare = front.servicer._prepare

    async def relay(request: Any, context: Any) -> None:
        await prepare(request, context)
        await ping_pb2_grpc.PingServiceStub(downstream).Ping(ping_pb2.PingRequest(), timeout=5)

    front.servicer._prepare = relay  # type: ignore[method-assign]
    try:
        bob = as_user("bob", "admin")
        assert await _call(front, "edge", arity, bob) == grpc.StatusCode.OK
        assert back_seen and all(
            s == (EndUser("bob", frozenset({"admin"})), None) for s in back_seen
        )
    finally:
        await downstream.close(None)
        await front.stop(None)
        await back.stop(None)


@pytest.mark.parametrize("arity", ARITIES)
async def test_acting_as_adds_the_metadata_to_every_arity(arity: str) -> None:
    server, seen = await _server(dict.fromkeys(METHODS.values(), USER))
    ch = grpc.aio.secure_channel(
        server.address,
        pki.credentials(pki.pair("mesh-client")),
        options=[("grpc.ssl_target_name_override", "ping.mesh.local")],
        interceptors=for_channel(EndUserClientInterceptor()),
    )
    try:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await invoke(stub, arity, timeout=5, n=0)  # no messages: see `_refused`
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with acting_as(EndUser("carol", frozenset({"admin"}))):
            await invoke(stub, arity, timeout=5)
            # Metadata set on the call itself wins over the context's.
            await invoke(stub, arity, timeout=5, metadata=as_user("dave"))
        assert {s[0] for s in seen} == {
            EndUser("carol", frozenset({"admin"})),
            EndUser("dave"),
        }
    finally:
        await ch.close(None)
        await server.stop(None)


def test_parsing_the_metadata() -> None:
    assert parse_end_user([("x-mesh-user-id", "u1"), ("x-mesh-roles", "admin, buyer,,")]) == (
        EndUser("u1", frozenset({"admin", "buyer"}))
    )
    assert parse_end_user([("x-mesh-user-id", "u1")]) == EndUser("u1")
    assert parse_end_user([]) is None
    assert parse_end_user([("x-mesh-roles", "admin")]) is None
    assert parse_end_user([("x-mesh-user-id", "")]) is None
    assert parse_end_user([("x-mesh-user-id", "a"), ("x-mesh-user-id", "b")]) is None
    assert (
        parse_end_user([("x-mesh-user-id", "a"), ("x-mesh-roles", "x"), ("x-mesh-roles", "y")])
        is None
    )
    assert parse_end_user([("x-mesh-user-id", "u" * 257)]) is None
    assert parse_end_user([("x-mesh-user-id", "a\u202eb")]) is None
