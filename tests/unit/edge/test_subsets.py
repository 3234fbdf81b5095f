"""The Envoy rendering of a traffic policy: endpoint weights, track metadata, fault runtime."""

from __future__ import annotations

from mesh.edge.subsets import (
    WEIGHT_SCALE,
    TrackedEndpoint,
    eds_document,
    endpoint_weights,
    fault_runtime,
)
from mesh.traffic.policy import Fault, TrafficPolicy

BLUE = [TrackedEndpoint("10.0.0.1", 1, "blue"), TrackedEndpoint("10.0.0.2", 1, "blue")]
GREEN = [TrackedEndpoint("10.0.0.3", 1, "green")]


def share(weights: dict[TrackedEndpoint, int], track: str) -> float:
    return sum(w for e, w in weights.items() if e.track == track) / sum(weights.values())


def test_no_policy_is_one_pool_of_equal_weights() -> None:
    assert set(endpoint_weights(BLUE + GREEN, None).values()) == {1}
    assert set(endpoint_weights(BLUE + GREEN, TrafficPolicy("inventory")).values()) == {1}


def test_subsets_share_by_the_policy_whatever_their_sizes() -> None:
    policy = TrafficPolicy("inventory", {"blue": 90, "green": 10})
    weights = endpoint_weights(BLUE + GREEN, policy)
    assert abs(share(weights, "green") - 0.10) < 1e-3
    assert abs(share(weights, "blue") - 0.90) < 1e-3


def test_a_subset_at_zero_keeps_its_endpoints_with_almost_no_weight() -> None:
    policy = TrafficPolicy("inventory", {"blue": 100, "green": 0})
    weights = endpoint_weights(BLUE + GREEN, policy)
    assert weights[GREEN[0]] == 1  # still there, for the x-mesh-track header
    assert share(weights, "green") < 1 / (WEIGHT_SCALE * 50)


def test_eds_endpoints_carry_their_track_for_the_subset_selector() -> None:
    doc = eds_document(
        "inventory", GREEN + BLUE, TrafficPolicy("inventory", {"blue": 50, "green": 50})
    )
    endpoints = doc["resources"][0]["endpoints"][0]["lb_endpoints"]
    assert [e["metadata"]["filter_metadata"]["envoy.lb"]["track"] for e in endpoints] == [
        "blue",
        "blue",
        "green",
    ]
    assert [e["load_balancing_weight"] for e in endpoints] == [25000, 25000, 50000]


def test_the_edge_applies_service_wide_faults_only() -> None:
    policy = TrafficPolicy(
        "inventory",
        faults=(
            Fault(
                abort_percent=20, abort_status="RESOURCE_EXHAUSTED", delay_percent=50, delay_ms=300
            ),
            # Never the first match (server chain): the edge leaves it out too.
            Fault(delay_percent=10, delay_ms=900),
            Fault(subset="green", abort_percent=100),  # the green instances apply this one
            Fault(method="/shop.inventory.v1.InventoryService/*", abort_percent=100),
        ),
    )
    assert fault_runtime({"inventory": policy, "users": None}) == {
        "mesh.fault.inventory.abort_percent": 20,
        "mesh.fault.inventory.abort_grpc_status": 8,
        "mesh.fault.inventory.abort_http_status": 429,
        "mesh.fault.inventory.delay_percent": 50,
        "mesh.fault.inventory.delay_ms": 300,
    }
