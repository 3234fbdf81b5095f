"""mesh.instrument / mesh.instrumentation: OpenTelemetry's grpc instrumentation on plain
grpc.aio channels and servers (no mesh runtime), spans captured in memory."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

import mesh
from mesh.instrumentation import client_interceptors, server_interceptor
from tests.support.ping import start_ping_server
from tests.support.poll import eventually

PING = "/shop.testing.v1.PingService/Ping"


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def by_kind(finished: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in finished if s.kind == kind]


async def test_interceptors_trace_a_plain_channel_and_server_in_one_trace(spans) -> None:
    provider, exporter = spans
    ping = await start_ping_server(interceptors=[server_interceptor(provider)])
    try:
        async with grpc.aio.insecure_channel(
            ping.address, interceptors=client_interceptors(provider)
        ) as ch:
            stub = ping_pb2_grpc.PingServiceStub(ch)
            assert (await stub.Ping(ping_pb2.PingRequest(value="x"))).value == "x"
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Ping(ping_pb2.PingRequest(value="bad", error_code=5))
    finally:
        await ping.stop()

    # grpc.aio's `abort` sends the status before it raises, so the client can see the error
    # before the aborted handler's server span ends (seen under load): wait for both spans.
    def both_server_spans() -> list[ReadableSpan] | None:
        found = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
        return found if len(found) == 2 else None

    servers = await eventually(both_server_spans, what="both server spans ended")
    clients = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert [s.name for s in clients] == [PING, PING]
    # The server span continues the client's trace: context crossed the wire.
    for client, server in zip(clients, servers, strict=True):
        assert server.context.trace_id == client.context.trace_id
        assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert clients[0].status.status_code != StatusCode.ERROR
    assert clients[1].status.status_code == StatusCode.ERROR
    assert clients[1].attributes is not None
    assert clients[1].attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]


async def test_instrument_traces_channels_and_servers_built_after_it(spans) -> None:
    provider, exporter = spans
    uninstrument = mesh.instrument(provider)
    try:
        ping = await start_ping_server()  # plain grpc.aio.server, no interceptors given
        async with grpc.aio.insecure_channel(ping.address) as ch:
            await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(value="y"))
        await ping.stop()
    finally:
        uninstrument()
    finished = exporter.get_finished_spans()
    assert len(by_kind(finished, SpanKind.CLIENT)) == 1
    assert len(by_kind(finished, SpanKind.SERVER)) == 1

    # Undone: what is built afterwards is not traced.
    exporter.clear()
    ping = await start_ping_server()
    async with grpc.aio.insecure_channel(ping.address) as ch:
        await ping_pb2_grpc.PingServiceStub(ch).Ping(ping_pb2.PingRequest(value="z"))
    await ping.stop()
    assert exporter.get_finished_spans() == ()
