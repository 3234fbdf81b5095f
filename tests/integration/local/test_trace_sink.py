"""The local trace sink as `meshctl up` runs it: a real process, the real OTLP exporter."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from interceptors.tracing import make_tracer_provider
from mesh.local.traces.store import DB_NAME, connect, recent_traces, trace_spans
from tests.support.other_account import as_nobody, needs_other_account
from tests.support.poll import eventually
from tests.support.ports import free_port
from tests.support.span_export import span_export


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[int]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.local.traces", "--db", str(tmp_path / DB_NAME),
        "--port", str(port), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert b"trace sink listening" in line, line
    try:
        yield port
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_exported_spans_are_stored_and_shown_by_meshctl_traces(
    sink: int, tmp_path: Path
) -> None:
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"http://127.0.0.1:{sink}",
        "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    provider = make_tracer_provider("orders", env)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("shop.orders.v2.OrderService/CreateOrder",
                                      kind=SpanKind.SERVER) as root:  # fmt: skip
        with tracer.start_as_current_span("charge", kind=SpanKind.CLIENT) as child:
            child.set_status(StatusCode.ERROR, "card declined")
        trace_id = f"{root.get_span_context().trace_id:032x}"
    # A health check as its own trace: a probe, dropped by the sink.
    with tracer.start_as_current_span("grpc.health.v1.Health/Check", kind=SpanKind.SERVER):
        pass
    assert provider.force_flush(10_000)
    provider.shutdown()

    db = tmp_path / DB_NAME
    conn = connect(db, readonly=True)
    [t] = await eventually(lambda: recent_traces(conn), 10, "the trace to be stored")
    assert (t.trace_id, t.root, t.service, t.spans, t.errors) == (
        trace_id, "shop.orders.v2.OrderService/CreateOrder", "orders", 2, 1
    )  # fmt: skip
    spans = {s.name: s for s in trace_spans(conn, trace_id)}
    assert spans["charge"].parent_id == spans[t.root].span_id
    assert spans["charge"].status == "card declined"

    meshctl = [sys.executable, "-m", "mesh.cli", "--run-dir", str(tmp_path), "traces"]
    listing = await asyncio.to_thread(_run, meshctl)
    assert listing.returncode == 0
    assert trace_id in listing.stdout and "CreateOrder" in listing.stdout
    tree = await asyncio.to_thread(_run, [*meshctl, trace_id[:10]])
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}")
    create = next(i for i, line in enumerate(lines) if "CreateOrder (server)" in line)
    assert "  orders: charge (client)  ERROR card declined" in lines[create + 1]
    unknown = await asyncio.to_thread(_run, [*meshctl, "ffff"])
    assert unknown.returncode == 1 and "no trace matching 'ffff'" in unknown.stdout


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def test_meshctl_traces_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mesh.cli", "--run-dir", str(tmp_path), "traces"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 1
    assert str(tmp_path / DB_NAME) in r.stdout


@needs_other_account
async def test_another_account_cannot_write_spans_into_the_sink(sink: int, tmp_path: Path) -> None:
    """The attacker: another account (`nobody`) exporting a span to the sink on
    127.0.0.1, which the dashboard would show as the mesh's own, is refused
    PERMISSION_DENIED and nothing is stored. The control: the same request from the
    mesh's account is stored."""
    with span_export() as export:
        refused = await asyncio.to_thread(as_nobody, *export.argv(sink, "forged"))
        assert refused.returncode != 0, refused
        assert "PermissionDenied" in refused.stderr and "account that runs" in refused.stderr
        stored = await asyncio.to_thread(_run, list(export.argv(sink, "ours")))
        assert stored.returncode == 0, stored.stderr
    db = connect(tmp_path / DB_NAME, readonly=True)
    names = await eventually(
        lambda: {s.root for s in recent_traces(db)} or None, 10, "the control's span stored"
    )
    assert names == {"ours"}
