"""The fenced private-API reads (interceptors/_fastpath.py) change costs, never results.

The same calls run through the mesh client chain and the mesh server chain,
once with the private reads and once forced onto the public fallbacks; the
statuses, responses, metric values, recorded spans and propagated trace
flags must be identical. A capability check failing on the pinned libraries
fails here too (an upgrade moved an internal: look at the fence).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors import _fastpath
from interceptors._call import _PENDING_REPORTS
from interceptors._spans import SpanShortcut
from mesh.client.channel import _metadata
from mesh.client.runtime import MeshRuntime
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.server import server_interceptors
from mesh.settings import SecuritySettings, Settings
from tests.support.ping import start_ping_server
from tests.support.poll import eventually

PARENT = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
)
Outcome = tuple[str, str, Any]


@pytest.fixture
def restore_selection() -> Iterator[None]:
    before = any(_fastpath.selected().values())
    yield
    _fastpath.use_fastpath(before)


def test_every_private_read_is_capable_on_the_pinned_libraries() -> None:
    assert _fastpath.CAPABLE == {
        "grpc_status": True,
        "grpc_call_types": True,
        "grpc_registered_method": True,
        "prometheus": True,
        "otel_sampler": True,
        "otel_lean_span": True,
    }


def test_forcing_the_public_path_switches_every_use(restore_selection: None) -> None:
    tracer = TracerProvider(sampler=sampling.ALWAYS_OFF).get_tracer("t")
    _fastpath.use_fastpath(False)
    assert not any(_fastpath.selected().values())
    assert not SpanShortcut(tracer).active
    _fastpath.use_fastpath(True)
    assert all(_fastpath.selected().values())
    assert SpanShortcut(tracer).active


@pytest.mark.parametrize("compression", [None, *grpc.Compression])
def test_compression_header_is_grpcs_own(compression: grpc.Compression | None) -> None:
    # The mesh channel writes the header itself (public core constant); grpc.aio's
    # private helper is the reference it must match.
    from grpc import _compression  # type: ignore[attr-defined]

    md = grpc.aio.Metadata(("k", "v"))
    expected = _compression.augment_metadata(md, compression)
    assert tuple(_metadata(md, compression)) == tuple(expected)


async def _requests(n: int) -> AsyncIterator[ping_pb2.PingRequest]:
    for i in range(n):
        yield ping_pb2.PingRequest(value=f"s{i}")


async def _outcome(label: str, call: Any) -> Outcome:
    try:
        if hasattr(call, "__aiter__"):
            result: Any = [r.value async for r in call]
        else:
            result = (await call).value
    except grpc.aio.AioRpcError as err:
        return label, err.code().name, err.details()
    return label, (await call.code()).name, result


def _metric_samples(registry: CollectorRegistry) -> list[tuple[str, list[tuple[str, str]], float]]:
    """Every sample but creation times and latency values (they depend on timing)."""
    return sorted(
        (s.name, sorted(s.labels.items()), s.value)
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith(("_created", "_sum", "_bucket"))
    )


def _span_shapes(exporter: InMemorySpanExporter) -> list[tuple[Any, ...]]:
    shapes = []
    for span in exporter.get_finished_spans():
        attributes = {
            k: v for k, v in (span.attributes or {}).items() if "peer" not in k and "port" not in k
        }
        parent = span.parent
        shapes.append(
            (
                span.name,
                span.kind.name,
                span.status.status_code.name,
                sorted(attributes.items()),
                parent is not None and parent.trace_id == PARENT.trace_id,
                span.context.trace_flags.sampled,
            )
        )
    return sorted(shapes, key=repr)


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampling.ParentBased(sampling.ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def _run(fast: bool) -> dict[str, Any]:
    _fastpath.use_fastpath(fast)
    assert all(_fastpath.selected().values()) is fast
    server_provider, server_spans = _provider()
    server_rt = await MeshRuntime.create(
        # Plaintext: the comparison is of the chains, not of TLS.
        Settings(service="ping", registry="none", security=SecuritySettings(tls=False)),
        registry=StaticRegistry([]),
        tracer_provider=server_provider,
    )
    server = await start_ping_server("p", interceptors=server_interceptors(server_rt))
    client_provider, client_spans = _provider()
    client_rt = await MeshRuntime.create(
        Settings(service="caller", registry="none", security=SecuritySettings(tls=False)),
        registry=StaticRegistry([Instance("p-0", "ping", "127.0.0.1", server.port)]),
        tracer_provider=client_provider,
    )
    try:
        channel = client_rt.channel("ping")
        # Fast: the standard chain of unary calls fused (mesh/client/fused.py); public:
        # the six interceptors it must match.
        assert (channel._fused is not None) is fast
        stub = ping_pb2_grpc.PingServiceStub(channel)
        outcomes = [await _outcome("root ok", stub.Ping(ping_pb2.PingRequest(value="a")))]
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(PARENT)))
        try:
            outcomes += [
                await _outcome("ok", stub.Ping(ping_pb2.PingRequest(value="b"))),
                await _outcome("not found", stub.Ping(ping_pb2.PingRequest(error_code=5))),
                await _outcome("refused", stub.Ping(ping_pb2.PingRequest(error_code=7))),
                # Retried twice (Ping is idempotent): retry metrics, a span per attempt.
                await _outcome("unavailable", stub.Ping(ping_pb2.PingRequest(error_code=14))),
                await _outcome(
                    "deadline", stub.Ping(ping_pb2.PingRequest(sleep_ms=2000), timeout=0.2)
                ),
                await _outcome("list", stub.PingList(ping_pb2.PingRequest(value="l", count=3))),
                await _outcome("stream", stub.PingStream(_requests(3))),
                await _outcome("bidi", stub.PingBidi(_requests(2))),
                await _outcome(
                    "gzip",
                    stub.Ping(ping_pb2.PingRequest(value="z"), compression=grpc.Compression.Gzip),
                ),
            ]
        finally:
            otel_context.detach(token)
        # On the public path a call's status reaches its observers through a task.
        await eventually(lambda: not _PENDING_REPORTS, 5, "status reports delivered")
        flags = [dict(md).get("traceparent", "")[-2:] for md in server.servicer.metadata_seen]
        return {
            "outcomes": outcomes,
            "client metrics": _metric_samples(client_rt.prometheus),
            "server metrics": _metric_samples(server_rt.prometheus),
            "client spans": _span_shapes(client_spans),
            "server spans": _span_shapes(server_spans),
            "trace flags": flags,
        }
    finally:
        await client_rt.close()
        await server.stop(None)
        await server_rt.close()


async def test_the_chain_gives_the_same_results_on_both_paths(restore_selection: None) -> None:
    fast = await _run(True)
    public = await _run(False)
    for key in fast:
        assert fast[key] == public[key], key
    # The scenario exercised what the fast paths skip: dropped and recorded spans,
    # errors, every arity, metrics per code.
    assert fast["trace flags"][0] == "00" and "01" in fast["trace flags"]
    assert {o[1] for o in fast["outcomes"]} >= {
        "OK",
        "NOT_FOUND",
        "DEADLINE_EXCEEDED",
        "UNAVAILABLE",
    }
    assert any(s[0] == "mesh_client_retries_total" for s in fast["client metrics"])
    assert fast["client spans"] and fast["server spans"]
    assert any(s[0].endswith("grpc_client_handled_total") for s in fast["client metrics"])
