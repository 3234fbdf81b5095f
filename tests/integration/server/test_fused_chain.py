"""The fused server chain (interceptors/fused.py) gives the separate chain's results.

The same calls run against a real server with `mesh.server.server_interceptors(...,
fused=True)` and with `fused=False` (the six interceptors, what MESH_FASTPATH=0
runs), each both as grpc.aio interceptors and wrapped once at registration (as
`mesh.server.start_service` runs it, interceptors/registered.py): statuses, details
and error details, metric values, recorded spans and access-log lines must be
identical, for every arity, a domain error, a bug, an abort, a deadline, an
undecodable body, and sampled and unsampled callers. Then
the access-log sampling rules (every failure, slow and traced call logged; one
line in N of the rest, marked `sample=N`), for both chains.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from base.errors import FieldViolation, InvalidArgument, NotFound
from interceptors.fused import FusedServerInterceptor
from interceptors.registered import chained_server, split_chain
from mesh.server import server_interceptors
from tests.support.ping import PingServicer
from tests.support.poll import eventually
from tests.support.server_runtime import StubRuntime

SPAN = "b7ad6b7169203331"
PING = "/shop.testing.v1.PingService/Ping"


class RaisingPing(PingServicer):
    """Ping raising what `value` asks for; the other arities as the shared servicer."""

    async def Ping(self, request: ping_pb2.PingRequest, context: Any) -> ping_pb2.PingResponse:
        if request.value == "not-found":
            raise NotFound("no such thing", reason="THING_NOT_FOUND")
        if request.value == "invalid":
            raise InvalidArgument([FieldViolation("value", "must not be 'invalid'")])
        if request.value == "bug":
            raise RuntimeError("a bug with a secret=hunter2")
        return await super().Ping(request, context)

    async def PingList(
        self, request: ping_pb2.PingRequest, context: Any
    ) -> AsyncIterator[ping_pb2.PingResponse]:
        if request.value == "not-found":
            raise NotFound("no such list")
        async for response in super().PingList(request, context):
            yield response


class _Records(logging.Handler):
    """The records logged; with `trace_id`, none of another trace (a scenario's calls
    have their own: a late access line of an earlier scenario's call, or of another
    test's server still finishing, must not count as this one's). Records without a
    trace id (the error interceptor's) are kept."""

    def __init__(self, trace_id: str | None = None) -> None:
        super().__init__(logging.DEBUG)
        self.trace_id = trace_id
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "trace_id", self.trace_id) == self.trace_id or self.trace_id is None:
            self.records.append(record)


async def _requests(n: int) -> AsyncIterator[ping_pb2.PingRequest]:
    for i in range(n):
        yield ping_pb2.PingRequest(value=f"s{i}")


def _timed_out(code: str) -> bool:
    return code in ("DEADLINE_EXCEEDED", "CANCELLED")


def _race(code: str) -> str:
    """The server side of a call whose client deadline passed ends DEADLINE_EXCEEDED when
    the server's own timer fires first, CANCELLED when the client's cancellation arrives
    first (a race either chain can lose): compared as one outcome."""
    return "DEADLINE_EXCEEDED" if code == "CANCELLED" else code


def _span_timed_out(span: Any) -> bool:
    return (span.attributes or {}).get("rpc.grpc.status_code") in (1, 4)


def _md(traceparent: str) -> tuple[tuple[str, str], ...]:
    return (("traceparent", traceparent),)


async def _outcome(call: Any) -> tuple[Any, ...]:
    try:
        if hasattr(call, "__aiter__"):
            result: Any = [r.value async for r in call]
        else:
            response = await call
            result = response if isinstance(response, bytes) else response.value
    except grpc.aio.AioRpcError as err:
        details = err.details() or ""
        if "internal error (id " in details:  # a random error id per call
            details = details.split("(id ")[0]
        metadata: Any = err.trailing_metadata() or ()
        trailing = {k: v for k, v in metadata if k == "grpc-status-details-bin"}
        return err.code().name, details, bool(trailing)
    return "OK", result


async def _scenario(
    fused: bool, access_every: int = 1, registered: bool = False
) -> tuple[dict[str, Any], list[str]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ParentBased(sampling.ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    runtime = StubRuntime(provider)
    chain = server_interceptors(runtime, fused=fused)  # type: ignore[arg-type]
    assert isinstance(chain[0], FusedServerInterceptor) is fused
    if access_every != 1:
        for interceptor in chain[0].observers if fused else chain:  # type: ignore[attr-defined]
            if hasattr(interceptor, "sample_every"):
                interceptor.sample_every = access_every
    trace_id = secrets.token_hex(16)  # this scenario's calls' trace
    records = _Records(trace_id)
    access = logging.getLogger("interceptors.logging")
    errors = logging.getLogger("interceptors.errors")
    for logger in (access, errors):
        logger.addHandler(records)
    old_level = access.level
    access.setLevel(logging.INFO)
    registrar = chained_server(chain, registered=registered, options=[("grpc.so_reuseport", 0)])
    # Registered: the whole chain runs without a grpc.aio interceptor.
    assert (split_chain(chain)[0] == []) if registered else True
    server = registrar.server
    ping_pb2_grpc.add_PingServiceServicer_to_server(RaisingPing("p"), registrar)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = ping_pb2_grpc.PingServiceStub(channel)
        # bytes in, bytes out: an undecodable body
        raw = channel.unary_unary(PING, None, None)  # type: ignore[arg-type]
        outcomes = []
        for tp in (f"00-{trace_id}-{SPAN}-00", f"00-{trace_id}-{SPAN}-01"):
            md = _md(tp)
            outcomes += [
                await _outcome(stub.Ping(ping_pb2.PingRequest(value="a"), metadata=md)),
                await _outcome(stub.Ping(ping_pb2.PingRequest(value="not-found"), metadata=md)),
                await _outcome(stub.Ping(ping_pb2.PingRequest(value="invalid"), metadata=md)),
                await _outcome(stub.Ping(ping_pb2.PingRequest(value="bug"), metadata=md)),
                await _outcome(stub.Ping(ping_pb2.PingRequest(error_code=7), metadata=md)),
                await _outcome(
                    stub.Ping(ping_pb2.PingRequest(sleep_ms=2000), metadata=md, timeout=0.2)
                ),
                await _outcome(raw(b"\xff\xff\xff", metadata=md)),
                await _outcome(
                    stub.PingList(ping_pb2.PingRequest(value="l", count=3), metadata=md)
                ),
                await _outcome(stub.PingList(ping_pb2.PingRequest(value="not-found"), metadata=md)),
                await _outcome(stub.PingStream(_requests(3), metadata=md)),
                await _outcome(stub.PingBidi(_requests(2), metadata=md)),
            ]
        # The deadline-exceeded handlers finish on the server after the client gave up.
        await eventually(
            lambda: sum(_timed_out(getattr(r, "rpc_code", "")) for r in records.records) == 2,
            10,
            "the server side of the timed-out calls logged",
        )
        await asyncio.sleep(0)  # poll: one loop turn for the handlers' finally blocks
    finally:
        await channel.close(None)
        await server.stop(None)
        for logger in (access, errors):
            logger.removeHandler(records)
        access.setLevel(old_level)
    totals: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in runtime.prometheus.collect():
        for sample in family.samples:
            if sample.name.endswith(("_created", "_sum", "_bucket")):
                continue
            labels = {k: _race(v) if k == "grpc_code" else v for k, v in sample.labels.items()}
            key = (sample.name, tuple(sorted(labels.items())))
            totals[key] = totals.get(key, 0.0) + sample.value
    samples = sorted(totals.items())
    spans = sorted(
        (
            s.name,
            s.kind.name,
            "-" if _span_timed_out(s) else s.status.status_code.name,
            sorted(
                (k, 4 if k == "rpc.grpc.status_code" and _span_timed_out(s) else v)
                for k, v in (s.attributes or {}).items()
            ),
            [e.name for e in s.events],
        )
        for s in exporter.get_finished_spans()
    )
    lines = sorted(
        (
            r.name,
            "-" if _timed_out(getattr(r, "rpc_code", "")) else r.levelname,
            getattr(r, "rpc_method", ""),
            _race(getattr(r, "rpc_code", "")),
            getattr(r, "trace_id", "") == trace_id,
            getattr(r, "sample_every", 1),
            r.exc_info is not None,
        )
        for r in records.records
    )
    # Not compared: what a failure prints, each line as logged (duration, peer, trace).
    messages = sorted(f"{r.levelname} {r.getMessage()}" for r in records.records)
    return {"outcomes": outcomes, "metrics": samples, "spans": spans, "log": lines}, messages


async def test_fused_and_separate_chains_give_the_same_results() -> None:
    separate, separate_lines = await _scenario(False)  # the reference: six grpc.aio interceptors
    fused, fused_lines = await _scenario(True)
    fused_registered, fused_registered_lines = await _scenario(True, registered=True)
    separate_registered, separate_registered_lines = await _scenario(False, registered=True)
    for other, lines in (
        (fused, fused_lines),
        (fused_registered, fused_registered_lines),
        (separate_registered, separate_registered_lines),
    ):
        for key in separate:
            # On a difference, every line of both as logged (seen once in CI: one
            # access line more on one side, with outcomes, metrics and spans equal).
            assert other[key] == separate[key], (key, separate_lines, lines)
    codes = {o[0] for o in fused["outcomes"]}
    assert codes >= {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "INTERNAL", "PERMISSION_DENIED"}
    assert "DEADLINE_EXCEEDED" in codes
    # Domain errors carry google.rpc.Status details; the bug's message never leaves.
    assert ("NOT_FOUND", "no such thing", True) in fused["outcomes"]
    assert ("INTERNAL", "internal error ", True) in fused["outcomes"]
    assert fused["spans"], "the sampled calls recorded spans"
    assert any(line[0] == "interceptors.errors" and line[-1] for line in fused["log"])


@pytest.mark.parametrize("registered", [False, True])
@pytest.mark.parametrize("fused", [True, False])
async def test_sampled_access_log_keeps_every_failure(fused: bool, registered: bool) -> None:
    every = 4
    result, _ = await _scenario(fused, access_every=every, registered=registered)
    access = [line for line in result["log"] if line[0] == "interceptors.logging"]
    # Every failure has its line, traced or not.
    failures = [line for line in access if line[3] != "OK"]
    assert len(failures) == 2 * 7
    # The 8 successful calls (4 per trace): two lines, each standing for 4.
    ok = [line for line in access if line[3] == "OK"]
    assert [line[5] for line in ok] == [every, every]


async def test_slow_calls_always_get_their_line() -> None:
    from interceptors.logging import LoggingServerInterceptor

    logger = logging.getLogger("test.fused.slow")
    records = _Records()
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    chain = [
        FusedServerInterceptor([LoggingServerInterceptor(logger, sample_every=1000, slow_ms=50)])
    ]
    server = grpc.aio.server(interceptors=chain, options=[("grpc.so_reuseport", 0)])
    ping_pb2_grpc.add_PingServiceServicer_to_server(PingServicer("p"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ping_pb2_grpc.PingServiceStub(channel)
            for _ in range(5):
                await stub.Ping(ping_pb2.PingRequest(value="fast"))
            await stub.Ping(ping_pb2.PingRequest(value="slow", sleep_ms=80))
    finally:
        await server.stop(None)
        logger.removeHandler(records)
    [line] = [r for r in records.records]
    assert "code=OK" in line.getMessage() and "sample=" not in line.getMessage()
    assert line.duration_ms >= 50  # type: ignore[attr-defined]
