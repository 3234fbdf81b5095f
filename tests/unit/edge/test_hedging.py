"""Which edge routes hedge: idempotent reads only, never an idempotent write."""

from __future__ import annotations

from typing import Any

from mesh.edge.envoy_config import EdgeOptions, render
from mesh.edge.model import build_model, load_descriptor_set
from mesh.edge.render import DESCRIPTORS

MODEL = build_model(load_descriptor_set(DESCRIPTORS).file)


def _route(path: str) -> dict[str, Any]:
    config = render(MODEL, EdgeOptions())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    for vhost in hcm["typed_config"]["route_config"]["virtual_hosts"]:
        for route in vhost["routes"]:
            if route["match"].get("path") == path and "headers" not in route["match"]:
                return route["route"]  # type: ignore[no-any-return]
    raise AssertionError(f"no route for {path}")


def test_an_idempotent_read_is_hedged_after_the_try_timeout() -> None:
    action = _route("/shop.orders.v2.OrderService/GetOrder")
    assert action["hedge_policy"] == {"hedge_on_per_try_timeout": True}
    assert action["retry_policy"]["per_try_timeout"] == "0.5s"


def test_an_idempotent_write_is_retried_on_failure_but_never_hedged() -> None:
    action = _route("/shop.orders.v2.OrderService/CreateOrder")
    assert "hedge_policy" not in action
    assert "per_try_timeout" not in action["retry_policy"]
    assert "unavailable" in action["retry_policy"]["retry_on"]
    # The unversioned twin follows the same rule.
    assert "hedge_policy" not in _route("/shop.orders.OrderService/CreateOrder")


def test_a_non_idempotent_write_is_retried_only_when_never_sent() -> None:
    action = _route("/shop.orders.v1.OrderService/CreateOrder")
    assert "hedge_policy" not in action
    assert action["retry_policy"]["retry_on"] == "connect-failure,refused-stream"
