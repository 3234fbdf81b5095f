"""grpc/grpc#31442 against the installed grpcio: is `interceptors.arity` still needed?

grpc.aio files a client interceptor under the first arity class it inherits
(an if/elif chain in grpc/aio/_channel.py), so one class implementing all
four arities is skipped for every streaming call. The first test pins that
behaviour: when it fails, grpcio has fixed the bug and `for_channel` can go.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.arity import for_channel
from tests.support.ping import start_ping_server


class Recording(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.StreamStreamClientInterceptor,  # type: ignore[type-arg]
):
    """One class, four arities: records which arities it was asked to intercept."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append("unary_unary")
        return await continuation(details, request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append("unary_stream")
        return await continuation(details, request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.seen.append("stream_unary")
        return await continuation(details, requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        self.seen.append("stream_stream")
        return await continuation(details, requests)


async def _requests() -> AsyncIterator[ping_pb2.PingRequest]:
    yield ping_pb2.PingRequest(value="x")


async def _call_every_arity(address: str, interceptors: Any) -> None:
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        await stub.Ping(ping_pb2.PingRequest())
        assert [r async for r in stub.PingList(ping_pb2.PingRequest(count=1))]
        await stub.PingStream(_requests())
        assert [r async for r in stub.PingBidi(_requests())]


async def test_grpc_aio_still_registers_a_multi_arity_interceptor_for_its_first_arity_only():
    server = await start_ping_server()
    try:
        recording = Recording()
        await _call_every_arity(server.address, [recording])
        # grpc/grpc#31442 still present in this grpcio: the streaming calls skipped it.
        assert recording.seen == ["unary_unary"], (
            f"grpcio {grpc.__version__} intercepts every arity: #31442 is fixed,"
            " interceptors/arity.py is no longer needed"
        )
    finally:
        await server.stop(None)


async def test_for_channel_gets_every_arity_intercepted():
    server = await start_ping_server()
    try:
        recording = Recording()
        await _call_every_arity(server.address, for_channel(recording))
        assert recording.seen == ["unary_unary", "unary_stream", "stream_unary", "stream_stream"]
    finally:
        await server.stop(None)
