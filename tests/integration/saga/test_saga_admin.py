"""Parked sagas on the admin port: listed by GET, retried only with the admin token,
also from the dashboard's retry button (CSRF-checked, forwarded with the token)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from base.errors import FailedPrecondition, Unavailable
from mesh.admin import AdminIdentity, AdminServer
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.health import HealthReport
from mesh.local.dashboard.collect import Collector
from mesh.local.dashboard.server import Dashboard
from mesh.saga import SagaDefinition, SagaRunner, SagaStatus, StepRetry
from mesh.saga.admin import saga_admin_routes
from tests.support.other_account import as_nobody, needs_other_account
from tests.support.ports import free_port
from tests.support.saga_scenario import COMPENSATE, Script

FAST = StepRetry(max_attempts=2, initial_backoff_s=0.001, max_backoff_s=0.002)
TOKEN = "s3cret-admin-token"

Serve = Callable[[SagaRunner, str], Any]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[AdminServer] = []

    async def start(runner: SagaRunner, token: str) -> str:
        admin = AdminServer(
            report=lambda: HealthReport("healthy"),
            prometheus=CollectorRegistry(),
            identity=AdminIdentity("orders", "orders-1", "1"),
            routes=saga_admin_routes(runner, token),
        )
        servers.append(admin)
        return f"http://127.0.0.1:{await admin.start('127.0.0.1', 0)}"

    yield start
    for s in servers:
        await s.stop()


async def _parked(runners: Any, script: Script) -> SagaRunner:
    definition = SagaDefinition("demo", [script.step(n, retry=FAST) for n in ("a", "b")])
    runner: SagaRunner = runners(definition)
    script.fail_always("b", FailedPrecondition("card declined"))
    script.fail_always("a", Unavailable("inventory down"), phase=COMPENSATE)
    with pytest.raises(FailedPrecondition):
        await runner.run("demo", "s1", {})
    return runner


async def test_parked_saga_listed_and_retried_with_the_token(runners: Any, serve: Serve) -> None:
    script = Script()
    runner = await _parked(runners, script)
    url = await serve(runner, TOKEN)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{url}/sagas") as r:
            doc = await r.json()
        assert (doc["running"], doc["compensating"]) == (0, 0)
        [parked] = doc["parked"]
        assert (parked["saga_id"], parked["name"]) == ("s1", "demo")
        assert "inventory down" in parked["last_error"]
        assert "data" not in parked  # may hold personal or payment details

        script.heal("a", phase=COMPENSATE)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with s.post(f"{url}/sagas/retry", json={"saga_id": "nope"}, headers=auth) as r:
            assert r.status == 404
        async with s.post(f"{url}/sagas/retry", json={"saga_id": "s1"}, headers=auth) as r:
            assert (r.status, await r.json()) == (200, {"resumed": 1})
        async with s.post(f"{url}/sagas/retry", json={"saga_id": "s1"}, headers=auth) as r:
            assert r.status == 409  # no longer parked
    row = await runner.store.get("s1")
    assert row is not None and row.status is SagaStatus.COMPENSATED


@pytest.mark.parametrize(
    ("configured", "sent"),
    [
        (TOKEN, None),  # no credentials
        (TOKEN, "Bearer wrong-token"),
        (TOKEN, f"Basic {TOKEN}"),
        ("", "Bearer "),  # no token configured: actions are off
    ],
)
async def test_retry_without_the_right_token_is_refused(
    runners: Any, serve: Serve, configured: str, sent: str | None
) -> None:
    script = Script()
    runner = await _parked(runners, script)
    script.heal("a", phase=COMPENSATE)
    url = await serve(runner, configured)
    headers = {"Authorization": sent} if sent is not None else {}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{url}/sagas/retry", json={"saga_id": "s1"}, headers=headers) as r,
    ):
        assert r.status == 403
    row = await runner.store.get("s1")
    assert row is not None and row.status is SagaStatus.PARKED


async def _dashboard_over_a_parked_saga(
    runners: Any, serve: Serve, tmp_path: Path, dashboard_token: str
) -> tuple[SagaRunner, Dashboard]:
    """Saga `s1` parked (its compensation now healed) on an orders admin port, and a
    started dashboard (CSRF token `page-token`) that knows that instance."""
    script = Script()
    runner = await _parked(runners, script)
    script.heal("a", phase=COMPENSATE)
    admin = urlsplit(await serve(runner, TOKEN))
    registry = StaticRegistry(
        [Instance("orders-1", "orders", "127.0.0.1", 1, meta={"admin_port": str(admin.port)})]
    )
    collector = Collector(
        registry,
        ["orders"],
        nats_url=f"nats://127.0.0.1:{free_port()}",
        edge_admin=None,
        traces_db=tmp_path / "traces.db",
    )
    board = Dashboard(collector, admin_token=dashboard_token, csrf_token="page-token")
    await board.start(0)
    return runner, board


@pytest.mark.parametrize(("dashboard_token", "retried"), [(TOKEN, True), ("a-stale-token", False)])
async def test_dashboard_retries_a_parked_saga_through_the_admin_port(
    runners: Any, serve: Serve, tmp_path: Path, dashboard_token: str, retried: bool
) -> None:
    runner, board = await _dashboard_over_a_parked_saga(runners, serve, tmp_path, dashboard_token)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.get(board.url) as r:
                page = await r.text()
            assert 'action="/sagas/retry"' in page and 'value="s1"' in page
            form = {"csrf": "page-token", "service": "orders", "saga_id": "s1"}
            async with s.post(f"{board.url}/sagas/retry", data=form, allow_redirects=False) as r:
                assert r.status == (303 if retried else 502)
    finally:
        await board.stop()
    row = await runner.store.get("s1")
    assert row is not None
    assert row.status is (SagaStatus.COMPENSATED if retried else SagaStatus.PARKED)


@needs_other_account
async def test_another_account_can_neither_see_the_dashboard_nor_retry_through_it(
    runners: Any, serve: Serve, tmp_path: Path
) -> None:
    """The attacker: another account on the machine, which reaches 127.0.0.1 too and
    knows the page's CSRF token (say it read it over the user's shoulder). The
    dashboard would spend the mesh's admin token for it; it is refused before that,
    and the saga stays parked. The control: the same POST from the mesh's account."""
    runner, board = await _dashboard_over_a_parked_saga(runners, serve, tmp_path, TOKEN)
    retry = (
        "curl", "-sS", "-o", "/dev/stdout", "-w", " HTTP %{http_code}", "--max-time", "10",
        "-d", "csrf=page-token", "-d", "service=orders", "-d", "saga_id=s1",
        f"{board.url}/sagas/retry",
    )  # fmt: skip
    try:
        page = await asyncio.to_thread(as_nobody, "curl", "-sS", board.url)
        assert "account that runs the mesh only" in page.stdout, page
        assert "s1" not in page.stdout
        refused = await asyncio.to_thread(as_nobody, *retry)
        assert refused.stdout.endswith("HTTP 403"), refused
        row = await runner.store.get("s1")
        assert row is not None and row.status is SagaStatus.PARKED

        done = await asyncio.to_thread(
            subprocess.run, retry, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.stdout.endswith("HTTP 303"), done
    finally:
        await board.stop()
    row = await runner.store.get("s1")
    assert row is not None and row.status is SagaStatus.COMPENSATED
