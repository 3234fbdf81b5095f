"""Shared helpers: real loopback ping servers, plain grpc.aio channels, the four arities."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.arity import for_channel
from tests.support.ping import PingServer, PingServicer

ARITIES = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
METHODS = {
    "unary_unary": "/shop.testing.v1.PingService/Ping",
    "unary_stream": "/shop.testing.v1.PingService/PingList",
    "stream_unary": "/shop.testing.v1.PingService/PingStream",
    "stream_stream": "/shop.testing.v1.PingService/PingBidi",
}
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


async def _repeat(request: ping_pb2.PingRequest, n: int) -> AsyncIterator[ping_pb2.PingRequest]:
    for _ in range(n):
        yield request


async def invoke(
    stub: Any,
    arity: str,
    request: ping_pb2.PingRequest | None = None,
    *,
    timeout: float | None = None,  # noqa: ASYNC109 - the gRPC call's own timeout
    metadata: Sequence[tuple[str, str]] | None = None,
    n: int = 2,
) -> list[ping_pb2.PingResponse]:
    """Call the ping method of `arity`; `n` messages each way where streaming."""
    req = request if request is not None else ping_pb2.PingRequest(value="hi")
    if arity == "unary_unary":
        return [await stub.Ping(req, timeout=timeout, metadata=metadata)]
    if arity == "unary_stream":
        req2 = ping_pb2.PingRequest()
        req2.CopyFrom(req)
        req2.count = req2.count or n
        return [m async for m in stub.PingList(req2, timeout=timeout, metadata=metadata)]
    if arity == "stream_unary":
        return [await stub.PingStream(_repeat(req, n), timeout=timeout, metadata=metadata)]
    return [m async for m in stub.PingBidi(_repeat(req, n), timeout=timeout, metadata=metadata)]


async def invoke_error(stub: Any, arity: str, **kw: Any) -> grpc.aio.AioRpcError:
    """The error of a call expected to fail. One message each way by default: a server
    failing a bidi call while the client still writes may end it with a racy status."""
    kw.setdefault("n", 1)
    try:
        await invoke(stub, arity, **kw)
    except grpc.aio.AioRpcError as err:
        return err
    raise AssertionError(f"{arity}: expected the call to fail")


def channel(address: str, *interceptors: Any) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, interceptors=for_channel(*interceptors))


StartServer = Callable[..., Awaitable[PingServer]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Start real loopback servers (any PingService servicer); all stopped at the end."""
    started: list[PingServer] = []

    async def start(servicer: Any = None, interceptors: Sequence[Any] = ()) -> PingServer:
        servicer = servicer if servicer is not None else PingServicer()
        server = grpc.aio.server(
            interceptors=list(interceptors), options=[("grpc.so_reuseport", 0)]
        )
        ping_pb2_grpc.add_PingServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        srv = PingServer(server, servicer, port)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.stop(None)
