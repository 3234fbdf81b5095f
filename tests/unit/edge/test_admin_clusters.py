"""What the edge does with each host, read from Envoy's `/clusters?format=json`: one
reading for `meshctl up`'s readiness, the release controller and the dashboard."""

from __future__ import annotations

from typing import Any

from mesh.edge.admin import ROUTED, host_states, routable_hosts, routed_hosts


def _host(port: int, **status: Any) -> dict[str, Any]:
    return {
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "health_status": {"eds_health_status": "HEALTHY", **status},
    }


DOC = {
    "cluster_statuses": [
        {
            "name": "orders",
            "host_statuses": [
                _host(1),
                _host(2, pending_active_hc=True),
                _host(3, failed_active_health_check=True),
                _host(4, failed_outlier_check=True),
                _host(5, eds_health_status="DRAINING"),
            ],
        },
        {"name": "users"},
    ]
}


def test_only_a_healthy_checked_host_that_is_not_ejected_is_routed() -> None:
    assert host_states(DOC) == {
        "orders": {
            "127.0.0.1:1": ROUTED,
            "127.0.0.1:2": "pending health check",
            "127.0.0.1:3": "failing health checks",
            "127.0.0.1:4": "ejected",
            "127.0.0.1:5": "draining",
        },
        "users": {},
    }
    assert routed_hosts(DOC) == {"orders": {"127.0.0.1:1"}, "users": set()}
    assert routable_hosts(DOC) == {"orders": 1, "users": 0}


def test_an_empty_answer_names_no_cluster() -> None:
    assert host_states({}) == {} and routable_hosts({}) == {}
