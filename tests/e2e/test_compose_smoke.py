"""docker-compose.yml as it will run, without Docker: a smoke test through the edge.

`tests/support/compose_smoke.py` starts the services with the commands and
environment it reads from docker-compose.yml, in private namespaces where the
container names resolve (see its docstring for what differs from a container),
with the Consul-API test agent in Consul's place, a real nats-server and the
real Envoy on the checked-in config. Through the edge: grpcurl lists the public
services, an anonymous order is refused (401), a user logs in and orders by REST
(the product added by an admin made with `create-admin`), its `order.completed`
reaches inventory over NATS with each service's own nkey (`nats-init`) while an
anonymous NATS client is refused, and payments cannot be reached. Skipped,
with the reason, where the namespaces cannot be made (not root).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.compose_smoke import namespaces_available, run_in_namespace

pytestmark = pytest.mark.slow


def test_compose_topology_serves_through_the_edge(tmp_path: Path) -> None:
    why = namespaces_available()
    if why:
        pytest.skip(why)
    report = run_in_namespace(tmp_path / "compose")
    assert "error" not in report, f"{report['error']}\n{report.get('logs', '')}"
    listed = set(report["grpcurl_list"])
    assert {
        "shop.users.v1.UserService",
        "shop.orders.v1.OrderService",
        "shop.orders.v2.OrderService",
        "shop.inventory.v1.InventoryService",
    } <= listed, listed
    assert not any("Payment" in s or "Reservation" in s for s in listed), listed
    assert report["create_user"] == 200
    assert report["create_product"] == 200
    assert report["anonymous_order"] == 401, report  # the edge verifies end-user tokens
    assert report["create_order"] == 200, report
    assert report["order_status"] in ("ORDER_STATUS_COMPLETED", "COMPLETED"), report
    assert int(report["product_after_order"]["available"]) == 3, report
    # Events flow with every service's own nkey, and an anonymous client is refused.
    assert report["reserved_after_event"] == 0, report
    assert "authorization" in report["nats_anonymous"].lower(), report["nats_anonymous"]
    assert report["payments_grpc"]["exit"] != 0, report["payments_grpc"]
    assert report["payments_rest"] == 404
