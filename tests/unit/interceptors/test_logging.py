"""One structured access-log line per server call, never bodies or secrets."""

from __future__ import annotations

import logging

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.logging import LoggingServerInterceptor
from interceptors.tracing import TracingClientInterceptor, TracingServerInterceptor
from tests.support.ping_calls import (
    ARITIES,
    METHODS,
    UNAVAILABLE,
    channel,
    invoke,
    invoke_error,
)
from tests.support.poll import eventually

LOGGER = "test.rpc"


def rpc_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


@pytest.mark.parametrize("arity", ARITIES)
async def test_one_line_per_call_with_trace_id_and_no_body(start_server, caplog, arity):
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    logger = logging.getLogger(LOGGER)
    srv = await start_server(
        interceptors=[TracingServerInterceptor(tp), LoggingServerInterceptor(logger)]
    )
    secret = ping_pb2.PingRequest(value="card=4111111111111111")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with channel(srv.address, TracingClientInterceptor(tp)) as ch:
            await invoke(ping_pb2_grpc.PingServiceStub(ch), arity, request=secret)
        await eventually(lambda: len(rpc_records(caplog)) == 1)
    [record] = rpc_records(caplog)
    [client_span] = [s for s in exporter.get_finished_spans() if s.parent is None]
    trace_id = format(client_span.context.trace_id, "032x")
    message = record.getMessage()
    assert message.startswith(f"rpc method={METHODS[arity]} code=OK duration_ms=")
    assert f"trace_id={trace_id} peer=ipv4:127.0.0.1:" in message
    assert record.levelno == logging.INFO
    assert record.rpc_method == METHODS[arity]  # type: ignore[attr-defined]
    assert record.rpc_code == "OK"  # type: ignore[attr-defined]
    assert record.trace_id == trace_id  # type: ignore[attr-defined]
    assert 0 <= record.duration_ms < 5000  # type: ignore[attr-defined]
    # The whole number: "4111" alone can be part of the peer's port (peer=...:41112).
    assert "4111111111111111" not in caplog.text and "card=" not in caplog.text


async def test_server_faults_log_at_warning_without_the_error_message(start_server, caplog):
    logger = logging.getLogger(LOGGER)
    srv = await start_server(interceptors=[LoggingServerInterceptor(logger)])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with channel(srv.address) as ch:
            failing = ping_pb2.PingRequest(value="pw=hunter2", error_code=UNAVAILABLE)
            err = await invoke_error(
                ping_pb2_grpc.PingServiceStub(ch), "unary_unary", request=failing
            )
        await eventually(lambda: len(rpc_records(caplog)) == 1)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    [record] = rpc_records(caplog)
    assert record.levelno == logging.WARNING
    assert "code=UNAVAILABLE" in record.getMessage() and "trace_id=-" in record.getMessage()
    assert "hunter2" not in caplog.text


async def test_ignored_methods_are_not_logged(start_server, caplog):
    logger = logging.getLogger(LOGGER)
    interceptor = LoggingServerInterceptor(logger, ignore_methods=[METHODS["unary_unary"]])
    srv = await start_server(interceptors=[interceptor])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        async with channel(srv.address) as ch:
            stub = ping_pb2_grpc.PingServiceStub(ch)
            await invoke(stub, "unary_unary")
            await invoke(stub, "unary_stream")
        await eventually(lambda: len(rpc_records(caplog)) == 1)
    assert [r.rpc_method for r in rpc_records(caplog)] == [METHODS["unary_stream"]]  # type: ignore[attr-defined]
