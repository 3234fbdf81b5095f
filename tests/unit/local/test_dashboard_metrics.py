"""Per-method figures from real prometheus_client expositions of the mesh's metrics."""

from __future__ import annotations

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from interceptors.metrics import RpcMetrics
from mesh.local.dashboard.metrics import method_stats, parse_scrape, quantile

M = "/shop.orders.v1.OrderService/GetOrder"


def exposition(metrics: RpcMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def serve(metrics: RpcMetrics, n: int, seconds: float, code: grpc.StatusCode) -> None:
    """n calls as the server interceptor records them."""
    series = metrics.server_series(M)
    for _ in range(n):
        series.observe(code, seconds)


def test_rates_errors_and_quantiles_over_the_interval() -> None:
    m = RpcMetrics(CollectorRegistry())
    serve(m, 10, 0.004, grpc.StatusCode.OK)
    m.breaker_state.labels("inventory", "ReserveItems").set(2)
    m.record_ejection("inventory", "inventory-2")
    before = parse_scrape(exposition(m), at=100.0)
    assert before.breakers == [("inventory", "ReserveItems", "open")]
    assert before.ejections == {"inventory-2": 1.0}

    serve(m, 18, 0.004, grpc.StatusCode.OK)
    serve(m, 2, 0.8, grpc.StatusCode.UNAVAILABLE)
    serve(m, 5, 0.004, grpc.StatusCode.NOT_FOUND)  # the caller's fault: not an error
    after = parse_scrape(exposition(m), at=102.0)

    [s] = method_stats("orders", [(after, before)])
    assert (s.grpc_service, s.method, s.calls) == ("shop.orders.v1.OrderService", "GetOrder", 35)
    assert s.rate == pytest.approx(25 / 2)
    assert s.error_rate == pytest.approx(2 / 25)
    assert s.p50_ms is not None and s.p50_ms <= 5.0
    assert s.p99_ms is not None and s.p99_ms > 500
    assert not s.lifetime_quantiles


def test_first_scrape_has_no_rate_and_lifetime_quantiles() -> None:
    m = RpcMetrics(CollectorRegistry())
    serve(m, 3, 0.02, grpc.StatusCode.OK)
    [s] = method_stats("orders", [(parse_scrape(exposition(m), at=1.0), None)])
    assert s.rate is None and s.error_rate is None and s.lifetime_quantiles
    assert s.p50_ms is not None and 10 < s.p50_ms <= 25


def test_a_restarted_instance_counts_from_zero() -> None:
    old = RpcMetrics(CollectorRegistry())
    serve(old, 50, 0.004, grpc.StatusCode.OK)
    new = RpcMetrics(CollectorRegistry())
    serve(new, 4, 0.004, grpc.StatusCode.OK)
    [s] = method_stats(
        "orders", [(parse_scrape(exposition(new), 11.0), parse_scrape(exposition(old), 10.0))]
    )
    assert s.rate == pytest.approx(4.0)


def test_quantile_interpolates_inside_a_bucket() -> None:
    buckets = {0.01: 0.0, 0.1: 10.0, float("inf"): 10.0}
    assert quantile(0.5, buckets) == pytest.approx(0.055)
    assert quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert quantile(0.99, {0.1: 1.0, float("inf"): 100.0}) == pytest.approx(0.1)
