"""The shared test ping service (all four arities) and a real server for it.

Used by interceptor, client, discovery and bootstrap tests and by the
benchmarks, like go-grpc-middleware's testpb.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.registered import chained_server
from mesh.security.identity import MeshIdentity


class PingServicer(ping_pb2_grpc.PingServiceServicer):
    """Echoes; fails with `error_code`, waits `sleep_ms`; names itself in `server`."""

    def __init__(self, name: str = "ping") -> None:
        self.name = name
        self.calls = 0
        self.metadata_seen: list[tuple[tuple[str, Any], ...]] = []
        self.time_remaining_seen: list[float | None] = []

    async def _prepare(self, request: ping_pb2.PingRequest, context: Any) -> None:
        self.calls += 1
        self.metadata_seen.append(tuple(context.invocation_metadata() or ()))
        self.time_remaining_seen.append(context.time_remaining())
        if request.sleep_ms:
            await asyncio.sleep(request.sleep_ms / 1000)  # poll: the delay the caller asked for
        if request.error_code:
            await context.abort(
                grpc.StatusCode(_code(request.error_code)), f"asked to fail ({request.value})"
            )

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        await self._prepare(request, context)
        return ping_pb2.PingResponse(value=request.value, counter=1, server=self.name)

    async def PingList(
        self, request: ping_pb2.PingRequest, context: Any
    ) -> AsyncIterator[ping_pb2.PingResponse]:
        await self._prepare(request, context)
        for i in range(request.count):
            yield ping_pb2.PingResponse(value=request.value, counter=i, server=self.name)

    async def PingStream(
        self, request_iterator: AsyncIterator[ping_pb2.PingRequest], context: Any
    ) -> ping_pb2.PingResponse:
        count = 0
        last = ping_pb2.PingRequest()
        async for req in request_iterator:
            count += 1
            last = req
        await self._prepare(last, context)
        return ping_pb2.PingResponse(value=last.value, counter=count, server=self.name)

    async def PingBidi(
        self, request_iterator: AsyncIterator[ping_pb2.PingRequest], context: Any
    ) -> AsyncIterator[ping_pb2.PingResponse]:
        i = 0
        async for req in request_iterator:
            await self._prepare(req, context)
            yield ping_pb2.PingResponse(value=req.value, counter=i, server=self.name)
            i += 1


def _code(value: int) -> tuple[int, str]:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code.value  # type: ignore[no-any-return]
    raise ValueError(f"no gRPC status code {value}")


@dataclass
class PingServer:
    server: grpc.aio.Server
    servicer: PingServicer
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


async def start_ping_server(
    name: str = "ping",
    interceptors: Sequence[grpc.aio.ServerInterceptor[Any, Any]] = (),
    port: int = 0,
    identity: MeshIdentity | None = None,
    *,
    registered: bool = False,
) -> PingServer:
    """A real grpc.aio server on loopback (a free port unless given); mTLS with `identity`.

    `registered`: the interceptors wrap the handlers once, at registration, as
    `mesh.server.start_service` runs its chain (interceptors/registered.py)."""
    registrar = chained_server(
        interceptors, registered=registered, options=[("grpc.so_reuseport", 0)]
    )
    server = registrar.server
    servicer = PingServicer(name)
    ping_pb2_grpc.add_PingServiceServicer_to_server(servicer, registrar)
    target = f"127.0.0.1:{port}"
    if identity is None:
        bound = server.add_insecure_port(target)
    else:
        bound = server.add_secure_port(target, identity.server_credentials())
    await server.start()
    return PingServer(server, servicer, bound)
