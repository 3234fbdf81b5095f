"""Release analysis from instances' /metrics text: counts, windows, the regression verdict."""

from __future__ import annotations

from mesh.release.analysis import Counts, Thresholds, parse_metrics, regression, window

APP = 'grpc_service="shop.inventory.v1.InventoryService",grpc_method="ListProducts"'
HEALTH = 'grpc_service="grpc.health.v1.Health",grpc_method="Check"'
METRICS = f"""
# TYPE grpc_server_handled_total counter
grpc_server_handled_total{{{APP},grpc_code="OK"}} 90.0
grpc_server_handled_total{{{APP},grpc_code="UNAVAILABLE"}} 8.0
grpc_server_handled_total{{{APP},grpc_code="NOT_FOUND"}} 2.0
grpc_server_handled_total{{{HEALTH},grpc_code="OK"}} 500.0
# TYPE grpc_server_handling_seconds histogram
grpc_server_handling_seconds_bucket{{{APP},le="0.01"}} 50.0
grpc_server_handling_seconds_bucket{{{APP},le="0.1"}} 97.0
grpc_server_handling_seconds_bucket{{{APP},le="+Inf"}} 98.0
grpc_server_handling_seconds_bucket{{{HEALTH},le="+Inf"}} 500.0
"""


def test_application_calls_and_server_errors_only() -> None:
    counts = parse_metrics(METRICS)
    assert counts.calls == 100  # health checks left out
    assert counts.errors == 8  # NOT_FOUND is the caller's, not a server error
    assert counts.quantile(0.5) == 0.01
    assert counts.quantile(0.95) == 0.1


def test_a_window_is_the_difference_per_track() -> None:
    before = {"blue": {"b1": Counts(10, 0, {1.0: 10})}}
    after = {
        "blue": {"b1": Counts(30, 1, {1.0: 30})},
        "green": {"g1": Counts(5, 0, {1.0: 5})},
    }
    got = window(before, after)
    assert (got["blue"].calls, got["blue"].errors, got["green"].calls) == (20, 1, 5)


def test_regression_needs_enough_calls_and_a_clear_margin() -> None:
    t = Thresholds()
    old = Counts(200, 0, {0.05: 200})
    assert regression(old, Counts(5, 5, {0.05: 5}), t) is None  # too few calls to say
    assert regression(old, Counts(20, 1, {0.05: 20}), t) is None  # 5 %: within the margin
    assert "error rate" in (regression(old, Counts(20, 4, {0.05: 20}), t) or "")
    slow = Counts(100, 0, {0.05: 0, 1.0: 100})
    assert "p99" in (regression(old, slow, t) or "")
    assert regression(old, Counts(20, 0, {0.05: 0, 1.0: 20}), t) is None  # p99 of 20 calls
