"""One short run of `bench events` and `bench orders`, to keep them working (not timed).

Figures are not asserted (the machine is shared and its load varies): only that
each benchmark runs end to end and that what it checks holds (every event handled
exactly once; every order placed completes, with a token sent as the edge will
require).
"""

from __future__ import annotations

import pytest

from bench.events import headline_events
from bench.orders import headline_orders
from tests.support.postgres import pg_available

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


async def test_bench_events_smoke() -> None:
    r = await headline_events(0.5)
    assert r["events_per_s"] > 0
    assert r["exactly_once"] is True


async def test_bench_orders_smoke() -> None:
    r = await headline_orders(1.5)
    assert r["orders_per_s"] > 0
    assert r["orders_errors"] == 0
    spread = r["orders_latency_ms"]
    assert list(spread) == ["p10", "p25", "p50", "p75", "p90", "p95", "p99", "p99.9", "max"]
    assert list(spread.values()) == sorted(spread.values()) and spread["p10"] > 0
    assert spread["p50"] == r["orders_p50_ms"] and spread["p99"] == r["orders_p99_ms"]


async def test_bench_orders_smoke_on_postgresql() -> None:
    if not await pg_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    r = await headline_orders(1.5, database="postgresql")
    assert r["orders_per_s"] > 0
    assert r["orders_errors"] == 0
