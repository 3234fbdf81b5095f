"""Ping instances for the mesh client tests: registry entries, sick and slow server
interceptors, readiness counts (fixtures: tests/integration/client/conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from mesh.client.channel import MeshChannel
from mesh.discovery.registry import Instance

SERVICE = "ping"


def instance(name: str, port: int) -> Instance:
    return Instance(id=name, service=SERVICE, host="127.0.0.1", port=port)


class UnavailableInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Makes a server answer every call with UNAVAILABLE (a sick instance)."""

    def __init__(self) -> None:
        self.enabled = True

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if not self.enabled:
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "sick instance")

        return grpc.unary_unary_rpc_method_handler(
            refuse,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class SlowInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Delays every call by `delay_s` before handling it (a loaded instance)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        await asyncio.sleep(self.delay_s)  # poll: the delay is the loaded instance it stands for
        return await continuation(details)


def ready_count(ch: MeshChannel) -> int:
    return sum(1 for s in ch.pool.status() if s.state == "READY" and not s.draining)
