"""Envoy's OpenTelemetry tracer, rendered only when a collector is configured."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from mesh.edge.envoy_config import OTLP_CLUSTER, render
from mesh.edge.jwt_authn import JWKS_CLUSTER
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import write_endpoints
from mesh.local.traces.receiver import serve
from mesh.local.traces.store import SpanRow, SpanWriter, connect, trace_spans
from tests.support import pki
from tests.support.envoy import start_envoy, validate
from tests.support.poll import eventually
from tests.support.ports import free_port

MODEL = build_model(load_descriptor_set(DESCRIPTORS).file)


def test_no_tracer_without_a_collector(tmp_path: Path) -> None:
    config = render(MODEL, local_options(tmp_path, **pki.edge_options()))
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    assert "tracing" not in hcm["typed_config"]
    assert OTLP_CLUSTER not in {c["name"] for c in config["static_resources"]["clusters"]}


def _edge_files(tmp_path: Path, **overrides: object) -> tuple[Path, int, str]:
    listen = free_port()
    options = local_options(
        tmp_path,
        listen_port=listen,
        **pki.edge_options(tls_listen_port=free_port()),
        **overrides,
    )
    config, _ = render_files(tmp_path, options)
    for cluster in [*MODEL.clusters, JWKS_CLUSTER]:  # Envoy checks the EDS files exist
        write_endpoints(Path(options.eds_dir), cluster, [])
    return config, listen, options.admin_socket


def test_config_with_tracer_validates(tmp_path: Path) -> None:
    config, _, _ = _edge_files(tmp_path, otlp_port=free_port())
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


class _CountingWriter(SpanWriter):
    """The sink's writer, counting the export calls that reach it (one `add` each)."""

    exports = 0

    def add(self, rows: Sequence[SpanRow]) -> None:
        self.exports += 1
        super().add(rows)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[int, Path, _CountingWriter]]:
    port = free_port()
    writer = _CountingWriter(tmp_path / "traces.db")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(writer, port, stop))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await asyncio.wait_for(ch.channel_ready(), 10)
    try:
        yield port, tmp_path / "traces.db", writer
    finally:
        stop.set()
        await task
        writer.close()


def _get(listen: int) -> int:
    """A request Envoy answers itself (no healthy orders instance), traced all the same."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listen}/api/v1/orders/x") as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_envoy_exports_a_span_per_request_to_the_sink(
    receiver: tuple[int, Path, _CountingWriter], tmp_path: Path
) -> None:
    port, db, _ = receiver
    config, listen, admin = _edge_files(tmp_path / "edge", otlp_port=port)
    envoy = await asyncio.to_thread(start_envoy, config, admin, tmp_path / "envoy.log")
    try:
        assert await asyncio.to_thread(_get, listen) >= 400
        conn = connect(db, readonly=True)

        def edge_spans() -> list[tuple[str, str]]:
            ids = [t for (t,) in conn.execute("SELECT trace_id FROM traces")]
            return [(s.service, s.name) for t in ids for s in trace_spans(conn, t)]

        spans = await eventually(edge_spans, 15, "Envoy's span in the sink")
        assert ("edge", "ingress") in spans
    finally:
        await asyncio.to_thread(envoy.stop)


async def test_envoy_sends_its_spans_in_batches_on_the_flush_interval(
    receiver: tuple[int, Path, _CountingWriter], tmp_path: Path
) -> None:
    """Envoy's default sends an export call every 5 spans (24 requests: 4 calls at once);
    the rendered runtime holds them for `trace_flush_ms` or 512 spans, as `meshctl up`'s
    services' batch processors do."""
    port, db, writer = receiver
    config, listen, admin = _edge_files(tmp_path / "edge", otlp_port=port, trace_flush_ms=3000)
    envoy = await asyncio.to_thread(start_envoy, config, admin, tmp_path / "envoy.log")
    try:
        requests = 24
        for _ in range(requests):
            assert await asyncio.to_thread(_get, listen) >= 400
        conn = connect(db, readonly=True)

        def stored() -> int | None:
            (n,) = conn.execute("SELECT count(*) FROM spans").fetchone()
            return int(n) if n >= requests else None

        assert await eventually(stored, 15, "the edge's spans in the sink") == requests
        assert writer.exports <= 2  # one per interval the requests spanned
    finally:
        await asyncio.to_thread(envoy.stop)
