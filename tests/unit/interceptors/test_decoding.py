"""Undecodable request bodies answer INVALID_ARGUMENT (grpc.aio alone says UNKNOWN)."""

from __future__ import annotations

import grpc
import pytest
from shop.testing.v1 import ping_pb2

from interceptors.decoding import MalformedRequestInterceptor
from interceptors.errors import ErrorServerInterceptor, details_of
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
