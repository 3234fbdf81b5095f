"""Which of a policy's faults an instance leaves to the edge (mesh/traffic/server.py)."""

from __future__ import annotations

from mesh.traffic.policy import Fault, TrafficPolicy
from mesh.traffic.server import fault_rules

EDGE = "spiffe://mesh.local/svc/edge"


def test_only_the_edges_fault_exempts_the_edge() -> None:
    policy = TrafficPolicy(
        "orders",
        faults=(
            Fault(subset="green", abort_percent=50),  # the edge cannot apply it
            Fault(abort_percent=20),  # the edge's fault: first of subset * and method *
            Fault(method="/shop.orders.v1.Orders/*", abort_percent=10),
            Fault(delay_percent=10, delay_ms=5),  # never a first match, not the edge's
        ),
    )
    rules = fault_rules(policy, "green", EDGE)
    assert [r.exempt for r in rules] == [frozenset(), frozenset({EDGE}), frozenset(), frozenset()]
    assert [r.abort_fraction for r in rules][:3] == [0.5, 0.2, 0.1]


def test_without_mtls_nothing_is_exempt() -> None:
    policy = TrafficPolicy("orders", faults=(Fault(abort_percent=20),))
    assert [r.exempt for r in fault_rules(policy, "blue")] == [frozenset()]
    assert fault_rules(None, "blue", EDGE) == []
