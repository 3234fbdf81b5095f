"""Undecodable request bodies answer INVALID_ARGUMENT (grpc.aio alone says UNKNOWN)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.errors import details_of
from interceptors.decoding import MalformedRequestInterceptor
from interceptors.errors import ErrorServerInterceptor
from interceptors.metrics import MetricsServerInterceptor, RpcMetrics
from tests.support.ping import start_ping_server

TRUNCATED = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow


def _identity(b: bytes) -> bytes:
    return b


async def test_truncated_bodies_are_invalid_argument_on_unary_and_stream() -> None:
    server = await start_ping_server(
        interceptors=[ErrorServerInterceptor(), MalformedRequestInterceptor()]
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            unary = ch.unary_unary(
                "/shop.testing.v1.PingService/Ping",
                request_serializer=_identity,
                response_deserializer=ping_pb2.PingResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary(TRUNCATED)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            _, info = details_of(err.value)
            assert info is not None and info.reason == "MALFORMED_REQUEST"
            listed = ch.unary_stream(
                "/shop.testing.v1.PingService/PingList",
                request_serializer=_identity,
                response_deserializer=ping_pb2.PingResponse.FromString,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in listed(TRUNCATED):
                    pass
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            # Well-formed requests are untouched.
            ok = await unary(ping_pb2.PingRequest(value="hi").SerializeToString())
            assert ok.value == "hi"
            got = [
                r.counter async for r in listed(ping_pb2.PingRequest(count=3).SerializeToString())
            ]
            assert got == [0, 1, 2]
    finally:
        await server.stop()
    assert server.servicer.calls == 2  # the malformed calls never reached the servicer


async def test_one_handler_per_method_so_outer_interceptors_keep_their_cache() -> None:
    # A new handler per call would make every interceptor outside re-wrap every call.
    metrics = RpcMetrics(CollectorRegistry())
    outer = MetricsServerInterceptor(metrics)
    prepared: list[str] = []
    real_prepare = outer.prepare

    def prepare(method: str) -> Any:
        prepared.append(method)
        return real_prepare(method)

    outer.prepare = prepare  # type: ignore[method-assign]
    server = await start_ping_server(interceptors=[outer, MalformedRequestInterceptor()])
    try:
        async with grpc.aio.insecure_channel(server.address) as ch:
            stub = ping_pb2_grpc.PingServiceStub(ch)
            for _ in range(3):
                assert (await stub.Ping(ping_pb2.PingRequest(value="v"))).value == "v"
    finally:
        await server.stop()
    assert prepared == ["/shop.testing.v1.PingService/Ping"]
    handled = metrics.server_handled.labels("shop.testing.v1.PingService", "Ping", "OK")
    assert handled._value.get() == 3
