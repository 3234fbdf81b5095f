"""Shared helpers: real loopback ping servers, plain grpc.aio channels, the four arities."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2_grpc

from tests.support.ping import PingServer, PingServicer

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
