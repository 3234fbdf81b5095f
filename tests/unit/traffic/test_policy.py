"""The traffic policy model: shape checks, JSON round trip, validation against the registry."""

from __future__ import annotations

import pytest

from mesh.discovery.registry import Instance
from mesh.traffic.policy import (
    Fault,
    InvalidPolicy,
    TrafficPolicy,
    parse_weights,
    subset_counts,
    track_of,
    validate,
)

DOC = {
    "service": "orders",
    "revision": 3,
    "weights": {"blue": 90, "green": 10},
    "faults": [
        {
            "method": "*",
            "subset": "green",
            "abort_percent": 20,
            "abort_status": "UNAVAILABLE",
            "delay_percent": 0,
            "delay_ms": 0,
        }
    ],
}


def test_json_round_trip_keeps_the_documented_form() -> None:
    policy = TrafficPolicy.from_json(DOC)
    assert policy.revision == 3
    assert dict(policy.weights) == {"blue": 90, "green": 10}
    assert policy.faults == (Fault(subset="green", abort_percent=20),)
    assert policy.to_json() == DOC
    assert TrafficPolicy.loads(policy.dumps()) == policy


def test_policy_is_frozen_and_hashable() -> None:
    policy = TrafficPolicy.from_json(DOC)
    with pytest.raises(AttributeError):
        policy.revision = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        policy.weights["blue"] = 1  # type: ignore[index]
    assert hash(policy) == hash(TrafficPolicy.from_json(DOC))
    assert policy.same_rules(policy.with_revision(9))
    assert not policy.same_rules(TrafficPolicy("orders", {"blue": 100}))


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"blue": 90, "green": 20}, "must sum to 100, got 110"),
        ({"blue": 50}, "must sum to 100, got 50"),
        ({"blue": 101, "green": -1}, "whole percent 0-100"),
        ({"blue": 50.5, "green": 49.5}, "whole percent"),
        ({"blue": True}, "whole percent"),
        ({"bad name": 100}, "subset 'bad name'"),
        ({"blue\n": 100}, "subset 'blue\\\\n'"),  # `$` matched before a final newline
    ],
)
def test_malformed_weights_are_refused(weights: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidPolicy, match=message):
        TrafficPolicy("orders", weights)  # type: ignore[arg-type]


def test_no_weights_means_one_pool() -> None:
    policy = TrafficPolicy("orders", faults=(Fault(abort_percent=5),))
    assert not policy.split
    assert policy.faults_for("blue") == policy.faults


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"abort_percent": 120}, "between 0 and 100"),
        ({"abort_percent": 10, "abort_status": "OK"}, "not a gRPC status"),
        ({"abort_percent": 10, "abort_status": "NOPE"}, "not a gRPC status"),
        ({"delay_percent": 10}, "needs delay_ms > 0"),
        ({"delay_percent": 10, "delay_ms": 10**7}, "delay_ms must be"),
        ({}, "must abort or delay something"),
        ({"abort_percent": 10, "method": "Orders"}, "fault method"),
        ({"abort_percent": 10, "subset": "a/b"}, "fault subset"),
        ({"abort_percent": 10, "method": "/a.B/C\n"}, "fault method"),
    ],
)
def test_malformed_faults_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidPolicy, match=message):
        Fault(**fields)  # type: ignore[arg-type]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(InvalidPolicy, match="unknown policy field"):
        TrafficPolicy.from_json({**DOC, "wieghts": {}})
    with pytest.raises(InvalidPolicy, match="unknown fault field"):
        TrafficPolicy.from_json({**DOC, "faults": [{"abort_percent": 1, "x": 1}]})
    with pytest.raises(InvalidPolicy, match="must be JSON"):
        TrafficPolicy.loads(b"{")


def test_fault_matching_by_method_and_subset() -> None:
    fault = Fault(method="/shop.orders.v1.Orders/*", subset="green", abort_percent=1)
    assert fault.applies_to("/shop.orders.v1.Orders/PlaceOrder", "green")
    assert not fault.applies_to("/shop.orders.v1.Orders/PlaceOrder", "blue")
    assert not fault.applies_to("/shop.orders.v2.Orders/PlaceOrder", "green")
    assert not Fault(abort_percent=1).applies_to("/grpc.health.v1.Health/Check", "any")
    assert Fault(method="/grpc.health.v1.Health/*", abort_percent=1).applies_to(
        "/grpc.health.v1.Health/Check", "any"
    )
    exact = Fault(method="/a.B/C", abort_percent=1)
    assert exact.applies_to("/a.B/C", "any") and not exact.applies_to("/a.B/D", "any")


def test_cli_forms() -> None:
    assert parse_weights(["blue=90", "green=10"]) == {"blue": 90, "green": 10}
    with pytest.raises(InvalidPolicy, match="subset=percent"):
        parse_weights(["blue"])
    with pytest.raises(InvalidPolicy, match="given twice"):
        parse_weights(["blue=50", "blue=50"])
    fault = Fault.parse("subset=green,abort_percent=20,abort_status=unavailable")
    assert fault == Fault(subset="green", abort_percent=20, abort_status="UNAVAILABLE")
    assert Fault.parse("delay_percent=50,delay_ms=200").delay_ms == 200
    with pytest.raises(InvalidPolicy, match="key=value"):
        Fault.parse("green")


def test_track_defaults_to_the_version() -> None:
    blue = Instance("o-1", "orders", "h", 1, "1.0", meta={"track": "blue"})
    v2 = Instance("o-2", "orders", "h", 2, "2.0")
    assert track_of(blue) == "blue" and track_of(v2) == "2.0"
    assert subset_counts([blue, blue, v2]) == {"blue": 2, "2.0": 1}


def test_validate_against_the_registry() -> None:
    policy = TrafficPolicy("orders", {"blue": 90, "green": 10})
    assert validate(policy, {"blue", "green"}) is policy
    with pytest.raises(InvalidPolicy, match=r"unknown subset 'green'.*registered tracks: blue"):
        validate(policy, {"blue"})
    with pytest.raises(InvalidPolicy, match="'green' of 'orders' has no healthy instance"):
        validate(policy, {"blue"}, known_subsets={"blue", "green"})
    # A weight of 0 for a registered but unhealthy subset is a rollback: accepted.
    validate(TrafficPolicy("orders", {"blue": 100, "green": 0}), {"blue"}, {"blue", "green"})
    validate(TrafficPolicy("orders", {"blue": 100, "green": 0}), {"blue"})  # green gone
    with pytest.raises(InvalidPolicy, match="fault names unknown subset 'red'"):
        validate(TrafficPolicy("orders", faults=(Fault(subset="red", abort_percent=1),)), {"b"})
