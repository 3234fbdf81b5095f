"""bench/side_by_side.py's own logic: settings, instance counts, per-service sums, ratios.

The stacks themselves run in tests/e2e/test_bench_smoke_side_by_side.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench.side_by_side import (
    Side,
    by_service,
    check_tree,
    parse_instances,
    parse_setting,
    summarise,
)

KNOWN = ["users", "orders", "inventory", "payments"]


def test_a_setting_is_key_equals_value_and_the_value_may_hold_anything() -> None:
    assert parse_setting("OTEL_TRACES_SAMPLER=always_off") == ("OTEL_TRACES_SAMPLER", "always_off")
    assert parse_setting("GRPC_EXPERIMENTS=-a,-b=c") == ("GRPC_EXPERIMENTS", "-a,-b=c")
    assert parse_setting("MESH_X=") == ("MESH_X", "")


@pytest.mark.parametrize("bad", ["MESH_FASTPATH", "=1", "1X=1", "A B=1", "MESH-X=1"])
def test_a_setting_that_is_not_an_environment_variable_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_setting(bad)


def test_instance_counts_name_known_services() -> None:
    assert parse_instances("orders=1, inventory=3", KNOWN) == {"orders": 1, "inventory": 3}
    assert parse_instances("", KNOWN) == {}
    with pytest.raises(ValueError, match="no service 'order'"):
        parse_instances("order=1", KNOWN)
    for bad in ("orders=0", "orders=x", "orders"):
        with pytest.raises(ValueError, match="whole number"):
            parse_instances(bad, KNOWN)


def test_instances_are_summed_per_service_so_topologies_compare() -> None:
    per_process = {"orders-1": 2.5, "orders-2": 2.75, "edge": 0.9, "inventory-1": 1.5,
                   "traces": 0.3}  # fmt: skip
    assert by_service(per_process) == {"orders": 5.25, "edge": 0.9, "inventory": 1.5,
                                       "traces": 0.3}  # fmt: skip


def _row(rate: float, cpu: float, n: int = 1, **per_service: float) -> dict[str, object]:
    return {"orders_per_s": rate, "cpu_ms_per_order_total": cpu, "p50_ms": 100.0,
            "p99_ms": 200.0, "errors": {}, "cpu_ms_per_service": per_service,
            "pass": n}  # fmt: skip


def test_the_summary_is_the_median_of_the_rounds_ratios_with_their_spread() -> None:
    a, b = Side("a"), Side("b")
    a.rows = [_row(50, 20.0, orders=8.0), _row(40, 25.0, orders=10.0), _row(60, 16.0, orders=6.0)]
    b.rows = [_row(55, 18.0, orders=7.0), _row(44, 22.5, orders=9.0), _row(60, 16.0)]
    s = summarise(a, b)
    assert s["cpu_ratio_rounds"] == [0.9, 0.9, 1.0]
    assert s["cpu_ratio"] == 0.9  # one pass: its median
    assert s["start_order_effect"] == 1.0
    assert s["orders_ratio_rounds"] == [1.1, 1.1, 1.0]
    assert s["orders_ratio"] == 1.1
    assert s["a"]["cpu_ms_per_order_total"] == 20.0
    # A service a round did not report counts as 0 there (B's third round).
    assert s["b_cpu_ms_per_service"] == {"orders": 7.0}
    assert s["errors"] == {"a": 0, "b": 0}


def test_two_passes_cancel_the_start_order_factor() -> None:
    # True ratio 1.0; the stack started first costs 2 % more: pass 1 (A first) sees
    # B cheaper, pass 2 (B first) B dearer.
    a, b = Side("a"), Side("b")
    a.rows = [_row(50, 10.2, 1), _row(50, 10.2, 1), _row(50, 10.0, 2), _row(50, 10.0, 2)]
    b.rows = [_row(50, 10.0, 1), _row(50, 10.0, 1), _row(50, 10.2, 2), _row(50, 10.2, 2)]
    s = summarise(a, b)
    assert s["cpu_ratio_passes"] == [0.98, 1.02]
    assert s["cpu_ratio"] == 1.0
    assert s["start_order_effect"] == 1.02
    # A real difference survives it: B 10 % cheaper under the same start-order factor.
    for row in b.rows:
        row["cpu_ms_per_order_total"] = round(float(row["cpu_ms_per_order_total"]) * 0.9, 4)
    assert summarise(a, b)["cpu_ratio"] == 0.9


def test_a_tree_the_interpreter_cannot_run_the_shop_from_is_refused(tmp_path: Path) -> None:
    check_tree(sys.executable, Path(__file__).resolve().parents[2])  # this checkout runs
    # A tree without the shop's code: the venv's install would supply this checkout's.
    with pytest.raises(ValueError, match=f"{tmp_path}: .* cannot import its code"):
        check_tree(sys.executable, tmp_path)


def test_a_side_says_which_code_it_ran() -> None:
    assert Side("a").describe()["code"] == "the current tree"
    assert Side("b", ref="main~2", commit="0123abc").describe()["code"] == "main~2 (0123abc)"
    assert Side("b", source=Path("/t/copy")).describe()["code"] == "/t/copy"
