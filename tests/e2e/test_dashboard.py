"""The dashboard in a real browser (Debian's headless chromium) on the running mesh.

Playwright drives the system browser (`executable_path`); no browser is
downloaded. A request through the edge carries a `traceparent` the test
chose, so the trace it starts can be found on the page; screenshots of the
dashboard and of that trace's waterfall are saved under `.run/artifacts/`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from mesh.local.traces.store import DB_NAME, connect, trace_spans
from tests.support.poll import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = Path(".run/artifacts")


@pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="no /usr/bin/chromium (Debian's `apt-get install chromium`; .ci/run installs it)",
)
async def test_dashboard_shows_instances_and_a_trace_with_its_waterfall(stack: Any) -> None:
    from playwright.async_api import async_playwright

    dashboard = stack.mesh.observe.dashboard
    assert dashboard is not None
    trace_id = secrets.token_hex(16)
    parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    # An unknown user: NOT_FOUND from users, through the edge, traced end to end.
    # -rpc-header: on the call only (grpcurl's reflection requests would share the trace).
    res = await stack.grpcurl(
        "-rpc-header", f"traceparent: {parent}",
        "-d", json.dumps({"user_id": str(uuid.uuid4())}),
        stack.edge.address, "shop.users.v1.UserService/GetUser",
    )  # fmt: skip
    assert res.returncode != 0 and "NotFound" in res.stderr, res.stderr

    conn = connect(stack.base / DB_NAME, readonly=True)

    def stored() -> set[str] | None:
        services = {s.service for s in trace_spans(conn, trace_id)}
        return services if {"edge", "users"} <= services else None

    await eventually(stored, 20, "the edge's and users' spans of the trace")
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            started = time.perf_counter()
            await page.goto(dashboard.url, wait_until="load")
            load_ms = (time.perf_counter() - started) * 1000
            rows = page.locator("tr[data-instance]")
            ids = sorted(await rows.evaluate_all("rs => rs.map(r => r.dataset.instance)"))
            expected = sorted(i.id for group in stack.instances.values() for i in group)
            assert ids == expected and len(ids) == 6
            row = page.locator(f'tr[data-trace="{trace_id}"]')
            await row.wait_for(timeout=10_000)  # there at once, or after a live refresh
            assert "/shop.users.v1.UserService/GetUser" in await row.inner_text()
            shot = ARTIFACTS / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"\ndashboard loaded in {load_ms:.0f} ms; screenshot: {shot.resolve()}")

            await row.locator("a").click()
            await page.wait_for_url(f"**/traces/{trace_id}")
            text = await page.inner_text("main")
            assert "ingress" in text and "shop.users.v1.UserService/GetUser" in text
            assert await page.locator(".waterfall .span.svc-users").count() >= 1
            shot = ARTIFACTS / "trace.png"
            await page.screenshot(path=str(shot), full_page=True)
            print(f"waterfall screenshot: {shot.resolve()}")
        finally:
            await browser.close()
