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
from tests.support.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium
from tests.support.edge_tokens import admin, sign_up
from tests.support.poll import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

ARTIFACTS = Path(".run/artifacts")


@needs_chromium
async def test_dashboard_shows_instances_and_a_trace_with_its_waterfall(stack: Any) -> None:
    from playwright.async_api import async_playwright

    dashboard = stack.mesh.observe.dashboard
    assert dashboard is not None
    trace_id = secrets.token_hex(16)
    parent = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    # An unknown user asked by an admin: NOT_FOUND from users, through the edge, traced
    # end to end. -rpc-header: on the call only (grpcurl's reflection requests would
    # share the trace).
    operator = await admin(stack)
    res = await stack.grpcurl(
        "-rpc-header", f"traceparent: {parent}", "-rpc-header", operator.grpcurl,
        "-d", json.dumps({"user_id": str(uuid.uuid4())}),
        stack.edge.address, "shop.users.v1.UserService/GetUser",
    )  # fmt: skip
    assert res.returncode != 0 and "NotFound" in res.stderr, res.stderr

    conn = connect(stack.base / DB_NAME, readonly=True)

    def stored() -> set[str] | None:
        # Envoy exports its spans in batches: the ingress span (the trace's root,
        # which the dashboard's row shows with the path) ends last and may be
        # exported after the router's egress span. Wait for both.
        spans = trace_spans(conn, trace_id)
        services = {s.service for s in spans}
        edge_spans = [s for s in spans if s.service == "edge"]
        return services if "users" in services and len(edge_spans) >= 2 else None

    await eventually(stored, 20, "the edge's two spans and users' span of the trace")
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
            # The mesh's own processes, as the supervisor sees them (up's own NATS here).
            own = page.locator("tr[data-process]")
            names = await own.evaluate_all("rs => rs.map(r => r.dataset.process)")
            assert sorted(names) == ["envoy", "nats", "traces"], names
            for text in await own.all_inner_texts():
                assert "running" in text, text
            # The streams from `up`'s authenticated NATS, read as the dashboard's monitor
            # identity (it was refused, "Authorization Violation", before it had one).
            streams = await page.inner_text("#streams")
            assert "USER" in streams and "ORDER" in streams, streams
            assert "Authorization Violation" not in await page.inner_text("main")
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


async def _grpc(stack: Any, method: str, request: dict[str, Any], *headers: str) -> Any:
    args = [a for h in headers for a in ("-rpc-header", h)]
    res = await stack.grpcurl(*args, "-d", json.dumps(request), stack.edge.address, method)
    assert res.returncode == 0, f"{method}: {res.stderr}"
    return json.loads(res.stdout)


async def test_an_order_is_one_trace_from_the_edge_through_the_nats_hop(stack: Any) -> None:
    tag = secrets.token_hex(4)
    buyer = await sign_up(stack, f"trace.{tag}@example.com")
    seller = await admin(stack)
    product = await _grpc(stack, "shop.inventory.v1.InventoryService/CreateProduct", {
        "sku": f"TRACE-{tag}", "name": "Teapot",
        "price": {"currency_code": "USD", "amount_minor": 1999}, "initial_stock": 5,
    }, seller.grpcurl)  # fmt: skip
    trace_id = secrets.token_hex(16)
    await _grpc(
        stack,
        "shop.orders.v1.OrderService/CreateOrder",
        {
            "user_id": buyer.user_id,
            "items": [{"product_id": product["productId"], "quantity": 1}],
            "card_number": "4242424242424242",
        },
        buyer.grpcurl,
        f"traceparent: 00-{trace_id}-{secrets.token_hex(8)}-01",
    )
    conn = connect(stack.base / DB_NAME, readonly=True)

    def ancestry(spans: list[Any], span: Any) -> list[tuple[str, str]]:
        by_id = {s.span_id: s for s in spans}
        chain = []
        node = span
        while node.parent_id in by_id:
            node = by_id[node.parent_id]
            chain.append((node.service, node.name))
        return chain

    def complete() -> list[tuple[str, str]] | None:
        """The NATS hop: inventory's consumer span, with its ancestry up to the edge's
        root. Each process exports its spans in batches, so the producer's span may
        arrive after the consumer's: wait for the whole chain, not just for the spans."""
        spans = trace_spans(conn, trace_id)
        services = {s.service for s in spans}
        wanted = {"edge", "orders", "users", "inventory", "payments"}
        for consumer in (s for s in spans if s.kind == 5 and s.service == "inventory"):
            chain = ancestry(spans, consumer)
            if wanted <= services and chain and chain[-1][0] == "edge":
                return chain
        return None

    chain = await eventually(complete, 30, "the order's trace from the edge through NATS")
    assert ("orders", "shop.orders.v1.OrderService/CreateOrder") in chain
