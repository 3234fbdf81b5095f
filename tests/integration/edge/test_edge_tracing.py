"""Envoy's OpenTelemetry tracer, rendered only when a collector is configured."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mesh.edge.envoy_config import OTLP_CLUSTER, render
from mesh.edge.jwt_authn import JWKS_CLUSTER
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS, local_options, render_files
from mesh.edge.sync import write_endpoints
from mesh.local.traces.receiver import serve
from mesh.local.traces.store import SpanWriter, connect, trace_spans
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


def _edge_files(tmp_path: Path, **overrides: object) -> tuple[Path, int, int]:
    listen, admin = free_port(), free_port()
    options = local_options(
        tmp_path,
        listen_port=listen,
        admin_port=admin,
        **pki.edge_options(tls_listen_port=free_port()),
        **overrides,
    )
    config, _ = render_files(tmp_path, options)
    for cluster in [*MODEL.clusters, JWKS_CLUSTER]:  # Envoy checks the EDS files exist
        write_endpoints(Path(options.eds_dir), cluster, [])
    return config, listen, admin


def test_config_with_tracer_validates(tmp_path: Path) -> None:
    config, _, _ = _edge_files(tmp_path, otlp_port=free_port())
    result = validate(config)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    port = free_port()
    writer = SpanWriter(tmp_path / "traces.db")
    stop = asyncio.Event()
    task = asyncio.create_task(serve(writer, port, stop))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        await asyncio.wait_for(ch.channel_ready(), 10)
    try:
        yield port, tmp_path / "traces.db"
    finally:
        stop.set()
        await task
        writer.close()


async def test_envoy_exports_a_span_per_request_to_the_sink(
    receiver: tuple[int, Path], tmp_path: Path
) -> None:
    port, db = receiver
    config, listen, admin = _edge_files(tmp_path / "edge", otlp_port=port)
    envoy = await asyncio.to_thread(start_envoy, config, admin, tmp_path / "envoy.log")
    try:
        # No healthy orders instance: Envoy answers itself, and still traces the request.
        def get() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{listen}/api/v1/orders/x") as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(get) >= 400
        conn = connect(db, readonly=True)

        def edge_spans() -> list[tuple[str, str]]:
            ids = [t for (t,) in conn.execute("SELECT trace_id FROM traces")]
            return [(s.service, s.name) for t in ids for s in trace_spans(conn, t)]

        spans = await eventually(edge_spans, 15, "Envoy's span in the sink")
        assert ("edge", "ingress") in spans
    finally:
        await asyncio.to_thread(envoy.stop)
