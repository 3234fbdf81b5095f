"""The standard client chain of unary-unary calls, fused (mesh/client/fused.py).

Its outcomes are compared with the six separate interceptors in
test_fastpath.py; here: when it is chosen, that interceptors after it run
inside it, and the cancellation paths it handles itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from mesh.client.runtime import MeshRuntime
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.settings import SecuritySettings, Settings
from tests.support.ping import PingServer, start_ping_server
from tests.support.poll import eventually

PING = "/shop.testing.v1.PingService/Ping"


@pytest.fixture
def restore_selection() -> Iterator[None]:
    before = any(_fastpath.selected().values())
    yield
    _fastpath.use_fastpath(before)


@pytest.fixture
async def server() -> AsyncIterator[PingServer]:
    server = await start_ping_server("p")
    yield server
    await server.server.stop(None)


@pytest.fixture
async def runtime(server: PingServer) -> AsyncIterator[MeshRuntime]:
    rt = await MeshRuntime.create(
        # Plaintext: these tests are about the chain, not TLS.
        Settings(service="caller", registry="none", security=SecuritySettings(tls=False)),
        registry=StaticRegistry([Instance("p-0", "ping", "127.0.0.1", server.port)]),
        tracer_provider=None,
        env={"OTEL_TRACES_EXPORTER": "none"},
    )
    yield rt
    await rt.close()


def _handled(registry: CollectorRegistry, code: str) -> float:
    value = registry.get_sample_value(
        "grpc_client_handled_total",
        {
            "service": "ping",
            "grpc_service": "shop.testing.v1.PingService",
            "grpc_method": "Ping",
            "grpc_code": code,
        },
    )
    return value or 0.0


class _Seen(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Notes the timeout and headers each unary call reaches it with."""

    def __init__(self) -> None:
        self.seen: list[tuple[float | None, dict[str, Any]]] = []

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        self.seen.append((details.timeout, dict(details.metadata or ())))
        return await continuation(details, request)


async def test_the_standard_chain_runs_fused(runtime: MeshRuntime) -> None:
    channel = runtime.channel("ping")
    assert channel._fused is not None and channel._uu == []
    reply = await ping_pb2_grpc.PingServiceStub(channel).Ping(ping_pb2.PingRequest(value="f"))
    assert reply.value == "f"


async def test_a_custom_chain_or_the_public_path_runs_the_interceptors(
    runtime: MeshRuntime, restore_selection: None
) -> None:
    assert runtime.channel("ping", interceptors=[_Seen()])._fused is None
    _fastpath.use_fastpath(False)
    channel = runtime.channel("ping", lb_policy="round_robin")  # a new channel, not the shared
    assert channel._fused is None and len(channel._uu) == 6


async def test_interceptors_after_the_chain_run_inside_it(
    runtime: MeshRuntime, server: PingServer
) -> None:
    seen = _Seen()
    channel = runtime.channel("ping", extra_interceptors=[seen])
    assert channel._fused is not None
    stub = ping_pb2_grpc.PingServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ping(ping_pb2.PingRequest(error_code=14))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    # Retried (Ping is idempotent): every attempt passed through it, after the deadline
    # and the trace headers were set, attempts after the first numbered.
    assert len(seen.seen) == server.servicer.calls == 3
    assert all(timeout is not None and timeout <= 5 for timeout, _ in seen.seen)
    assert all("traceparent" in headers for _, headers in seen.seen)
    assert [headers.get("mesh-attempt") for _, headers in seen.seen] == [None, "2", "3"]
    assert _handled(runtime.prometheus, "UNAVAILABLE") == 3


async def test_a_call_cut_by_closing_the_channel_fails_cancelled(
    runtime: MeshRuntime, server: PingServer
) -> None:
    channel = runtime.channel("ping")
    stub = ping_pb2_grpc.PingServiceStub(channel)
    slow = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=3000)))
    await eventually(lambda: server.servicer.calls == 1)
    await channel.close()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await slow
    assert info.value.code() is grpc.StatusCode.CANCELLED
    assert _handled(runtime.prometheus, "CANCELLED") == 1


async def test_cancelling_the_caller_cancels_the_rpc(
    runtime: MeshRuntime, server: PingServer
) -> None:
    stub = ping_pb2_grpc.PingServiceStub(runtime.channel("ping"))
    task = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(sleep_ms=3000)))
    await eventually(lambda: server.servicer.calls == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The RPC itself was cancelled (as awaiting a bare grpc.aio call does): its status
    # reaches the observers now, not when the server would have answered.
    await eventually(lambda: _handled(runtime.prometheus, "CANCELLED") == 1, 2)
    breaker = runtime.breakers.get("ping", PING)
    assert breaker.failure_rate() == (0, 0)  # CANCELLED counts as neither
