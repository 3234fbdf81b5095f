"""The dashboard's HTTP rules on a real server: loopback, Host pinned, CSRF on every POST;
and the mesh's own processes as the supervisor sees them."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mesh.discovery.embedded import EmbeddedRegistry
from mesh.local.dashboard.collect import Collector
from mesh.local.dashboard.server import Dashboard
from mesh.local.supervisor import ProcessView
from mesh.local.traces.store import SpanRow, SpanWriter
from tests.support.ports import free_port

CSRF = "the-page-token"
TRACE = "c" * 32


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[Dashboard]:
    writer = SpanWriter(tmp_path / "traces.db")
    t0 = 1_700_000_000_000_000_000
    writer.add([
        SpanRow(TRACE, "r1", "", "edge", "ingress", 2, t0, t0 + 9_000_000, True, "503", {}),
        SpanRow(TRACE, "c1", "r1", "orders", "shop.orders.v2.OrderService/GetOrder", 2,
                t0 + 1_000_000, t0 + 5_000_000, False, "", {}),
    ])  # fmt: skip
    writer.close()
    registry = EmbeddedRegistry(tmp_path / "registry")
    collector = Collector(
        registry,
        ["orders"],
        nats_url=f"nats://127.0.0.1:{free_port()}",  # nothing there: a note, not a failure
        edge_admin=None,
        traces_db=tmp_path / "traces.db",
    )
    board = Dashboard(collector, admin_token="admin-secret", csrf_token=CSRF)
    await board.start(0)
    try:
        yield board
    finally:
        await board.stop()
        await registry.close()


async def test_page_renders_with_security_headers_and_notes(dashboard: Dashboard) -> None:
    async with aiohttp.ClientSession() as s, s.get(dashboard.url) as r:
        body = await r.text()
        assert r.status == 200
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert "NATS at nats://127.0.0.1:" in body  # the unreachable source is named
    assert f'href="/traces/{TRACE}"' in body and 'class="error"' in body
    assert "admin-secret" not in body


async def test_waterfall_of_a_stored_trace_and_404_for_an_unknown_one(
    dashboard: Dashboard,
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{dashboard.url}/traces/{TRACE[:8]}") as r:
            body = await r.text()
            assert r.status == 200
        assert body.index("ingress") < body.index("GetOrder")
        assert "span svc-edge err" in body
        async with s.get(f"{dashboard.url}/traces/{'d' * 32}") as r:
            assert r.status == 404


@pytest.mark.parametrize("form", [{}, {"csrf": "guessed"}, {"csrf": ""}])
async def test_post_without_the_csrf_token_is_refused(
    dashboard: Dashboard, form: dict[str, str]
) -> None:
    data = {"service": "orders", "saga_id": "s1", **form}
    async with aiohttp.ClientSession() as s, s.post(f"{dashboard.url}/sagas/retry", data=data) as r:
        assert r.status == 403
        assert "CSRF" in await r.text()


async def test_post_with_the_token_passes_the_check(dashboard: Dashboard) -> None:
    # Past the CSRF check: no orders instance with sagas here, so a 400 (not 403).
    data = {"csrf": CSRF, "service": "orders", "saga_id": "s1"}
    async with aiohttp.ClientSession() as s, s.post(f"{dashboard.url}/sagas/retry", data=data) as r:
        assert r.status == 400


async def test_foreign_host_header_is_refused(dashboard: Dashboard) -> None:
    # A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding).
    headers = {"Host": f"evil.example:{dashboard.port}"}
    async with aiohttp.ClientSession() as s, s.get(dashboard.url, headers=headers) as r:
        assert r.status == 403


async def test_listens_on_loopback_only(dashboard: Dashboard) -> None:
    assert dashboard.url.startswith("http://127.0.0.1:")
    runner = dashboard._runner
    assert runner is not None
    assert all(addr[0] == "127.0.0.1" for addr in runner.addresses)


async def test_the_mesh_s_own_processes_with_their_restarts(tmp_path: Path) -> None:
    """The supervisor's view: the edge, nats-server and the trace sink in their own
    table (a restart and how the last run ended; one given up on, marked bad); a service
    instance that is down shows in the topology instead."""
    views = [
        ProcessView("nats", "", "gave up", 5, 1),  # no pid: not running
        ProcessView("traces", "", "running", 0, None, 4320),
        ProcessView("envoy", "", "running", 2, -9, 4321),
        ProcessView("orders-1", "orders", "restarting", 1, -9),
    ]
    registry = EmbeddedRegistry(tmp_path / "registry")
    collector = Collector(
        registry, ["orders"], nats_url=f"nats://127.0.0.1:{free_port()}", edge_admin=None,
        traces_db=tmp_path / "traces.db", processes=lambda: views,
    )  # fmt: skip
    board = Dashboard(collector, admin_token="admin-secret", csrf_token=CSRF)
    await board.start(0)
    try:
        async with aiohttp.ClientSession() as s, s.get(board.url) as r:
            body = await r.text()
    finally:
        await board.stop()
        await registry.close()
    section = body.split('<section id="processes">', 1)[1].split("</section>", 1)[0]
    rows = re.findall(r'<tr data-process="([^"]+)">(.*?)</tr>', section)
    assert [name for name, _ in rows] == ["nats", "traces", "envoy"]
    cells = {name: re.findall(r"<td[^>]*>(.*?)</td>", row) for name, row in rows}
    assert cells["envoy"][3:] == ["2", "SIGKILL"] and "pill ok" in cells["envoy"][2]
    assert cells["envoy"][1] == "4321" and cells["traces"][1] == "4320"
    assert "pill bad" in cells["nats"][2] and cells["nats"][4] == "exit 1"
    assert cells["nats"][1] == "\u2013"  # not running: no pid (an en dash)
    assert 'data-instance="orders-1"' in body and "down" in body
