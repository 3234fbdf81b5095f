"""The full chains, as the mesh runs them: every interceptor, all four arities.

Twice on the client side: through grpc.aio's own interceptor machinery, and
through a minimal chain runner like the mesh's (interceptors called directly,
the innermost continuation making a plain call), which hands the interceptors
bare call objects.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.breaker import BreakerClientInterceptor, BreakerConfig, BreakerSet
from interceptors.deadline import DeadlineClientInterceptor, DeadlineServerInterceptor
from interceptors.errors import ErrorServerInterceptor
from interceptors.logging import LoggingServerInterceptor
from interceptors.metrics import MetricsClientInterceptor, MetricsServerInterceptor, RpcMetrics
from interceptors.retry import RetryBudget, RetryClientInterceptor, RetryPolicy
from interceptors.tracing import TracingClientInterceptor, TracingServerInterceptor
from mesh.api.options import IdempotentMethods
from tests.support.poll import eventually
from tests.unit.interceptors.conftest import (
    ARITIES,
    METHODS,
    NOT_FOUND,
    channel,
    invoke,
    invoke_error,
)
from tests.unit.interceptors.test_retry import Flaky


class Mesh:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tp = TracerProvider()
        self.tp.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.metrics = RpcMetrics(CollectorRegistry())
        self.breakers = BreakerSet(BreakerConfig(), on_change=self.metrics.on_breaker_change)

    def client_chain(self) -> list[Any]:
        return [
            DeadlineClientInterceptor(5.0, stream_timeout_s=5.0),
            RetryClientInterceptor(
                RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.002),
                RetryBudget(),
                IdempotentMethods(),
                self.metrics,
                service="ping",
                rng=random.Random(3),
            ),
            BreakerClientInterceptor(self.breakers, "ping"),
            TracingClientInterceptor(self.tp),
            MetricsClientInterceptor(self.metrics, "ping"),
        ]

    def server_chain(self) -> list[Any]:
        return [
            TracingServerInterceptor(self.tp),
            MetricsServerInterceptor(self.metrics),
            LoggingServerInterceptor(logging.getLogger("test.chain")),
            DeadlineServerInterceptor(),
            ErrorServerInterceptor(),
        ]

    def handled(self, side: str, arity: str, code: str) -> float:
        grpc_service, grpc_method = METHODS[arity].lstrip("/").split("/")
        labels = {"grpc_service": grpc_service, "grpc_method": grpc_method, "grpc_code": code}
        if side == "client":
            labels["service"] = "ping"
        value = self.metrics.registry.get_sample_value(f"grpc_{side}_handled_total", labels)
        return value or 0.0


@pytest.mark.parametrize("arity", ARITIES)
async def test_full_chain_on_grpc_aio_channels(start_server, arity):
    mesh = Mesh()
    srv = await start_server(Flaky(failures=1), interceptors=mesh.server_chain())
    async with channel(srv.address, *mesh.client_chain()) as ch:
        stub = ping_pb2_grpc.PingServiceStub(ch)
        if arity in ("unary_unary", "unary_stream"):
            assert await invoke(stub, arity)  # first attempt UNAVAILABLE, retried
            expected_attempts = 2
        else:
            err = await invoke_error(stub, arity)  # never retried
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            expected_attempts = 1
        assert await invoke(stub, arity, n=1)
    assert srv.servicer.calls == expected_attempts + 1
    # Unary-request arities: UNAVAILABLE, retried OK, OK; the others: UNAVAILABLE, OK.
    await eventually(lambda: mesh.handled("server", arity, "OK") == expected_attempts)
    assert mesh.handled("client", arity, "OK") == expected_attempts
    assert mesh.handled("client", arity, "UNAVAILABLE") == 1
    assert mesh.handled("server", arity, "UNAVAILABLE") == 1
    spans = mesh.exporter.get_finished_spans()
    assert len(spans) == 2 * (expected_attempts + 1)  # a client and a server span per attempt


# --- a lean chain runner, as mesh/ has ----------------------------------------------


def _terminal(ch: grpc.aio.Channel, arity: str) -> Any:
    factory = getattr(ch, arity)(
        METHODS[arity],
        request_serializer=ping_pb2.PingRequest.SerializeToString,
        response_deserializer=ping_pb2.PingResponse.FromString,
    )

    async def call(details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        return factory(request, timeout=details.timeout, metadata=details.metadata)

    return call


async def run_chain(
    interceptors: Sequence[Any], terminal: Any, arity: str, request: Any, timeout_s: float | None
) -> Any:
    name = f"intercept_{arity}"

    async def step(i: int, details: grpc.aio.ClientCallDetails, req: Any) -> Any:
        if i == len(interceptors):
            return await terminal(details, req)
        return await getattr(interceptors[i], name)(functools.partial(step, i + 1), details, req)

    details = grpc.aio.ClientCallDetails(
        METHODS[arity].encode(),  # type: ignore[arg-type]  # bytes, as grpc.aio passes it
        timeout_s,
        grpc.aio.Metadata(),
        None,
        None,
    )
    return await step(0, details, request)


async def _requests(req: ping_pb2.PingRequest, n: int) -> Any:
    for _ in range(n):
        yield req


async def lean_call(
    interceptors: Sequence[Any], ch: grpc.aio.Channel, arity: str, **kw: Any
) -> list[Any]:
    req = ping_pb2.PingRequest(value="lean", count=2, **kw)
    request = req if arity.startswith("unary") else _requests(req, 1 if kw else 2)
    call = await run_chain(interceptors, _terminal(ch, arity), arity, request, None)
    if arity.endswith("unary"):
        return [await call]
    return [m async for m in call]


@pytest.mark.parametrize("arity", ARITIES)
async def test_full_chain_through_a_lean_runner(start_server, arity):
    mesh = Mesh()
    srv = await start_server(interceptors=mesh.server_chain())
    async with grpc.aio.insecure_channel(srv.address) as ch:  # no grpc-level interceptors
        chain = mesh.client_chain()
        got = await lean_call(chain, ch, arity)
        assert got and all(m.value == "lean" for m in got)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lean_call(chain, ch, arity, error_code=NOT_FOUND)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # The default deadline reached the server; the outcome reached metrics and traces.
    assert all(t is not None and t <= 5.1 for t in srv.servicer.time_remaining_seen)
    await eventually(lambda: mesh.handled("server", arity, "NOT_FOUND") == 1)
    assert mesh.handled("client", arity, "OK") == 1
    assert mesh.handled("client", arity, "NOT_FOUND") == 1
    assert len(mesh.exporter.get_finished_spans()) == 4


async def test_lean_runner_retries_a_unary_stream_before_its_first_message(start_server):
    mesh = Mesh()
    srv = await start_server(Flaky(failures=2), interceptors=mesh.server_chain())
    async with grpc.aio.insecure_channel(srv.address) as ch:
        got = await lean_call(mesh.client_chain(), ch, "unary_stream")
    assert [m.counter for m in got] == [0, 1]
    assert srv.servicer.calls == 3
