"""How an Instance maps to Consul's registration and back, without an agent."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.discovery.consul import (
    ConsulRegistry,
    grpc_check_target,
    instance_from_entry,
    parse_address,
    service_meta,
    service_tags,
)
from mesh.discovery.consul_watch import go_duration
from mesh.discovery.registry import Instance

ORDERS = Instance(
    "orders-1",
    "orders",
    "10.0.0.5",
    50052,
    "0.2.0",
    ("blue", "v0.2.0"),
    {
        "proto_packages": "shop.orders.v1, shop.orders.v2",
        "health_service": "shop.orders.v2.OrderService",
    },
)


def test_go_durations() -> None:
    assert [go_duration(s) for s in (1, 60, 0.25, 1.5)] == ["1s", "60s", "250ms", "1500ms"]
    with pytest.raises(ValueError):
        go_duration(0)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:8500", ("http", "127.0.0.1", 8500)),
        ("consul", ("http", "consul", 8500)),
        ("http://consul:8500", ("http", "consul", 8500)),
        ("https://consul.example", ("https", "consul.example", 8501)),
        ("[::1]:8500", ("http", "::1", 8500)),
    ],
)
def test_consul_addresses(address: str, expected: tuple[str, str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["", "ftp://x:1", "host:port", "http://"])
def test_bad_consul_addresses(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


def test_tags_meta_and_check_target() -> None:
    assert service_tags(ORDERS) == ["blue", "v0.2.0", "shop.orders.v1", "shop.orders.v2"]
    assert service_meta(ORDERS)["version"] == "0.2.0"
    assert grpc_check_target(ORDERS) == "10.0.0.5:50052/shop.orders.v2.OrderService"
    assert grpc_check_target(Instance("x", "x", "h", 1)) == "h:1"
    assert service_tags(Instance("x", "x", "h", 1)) == []


def test_check_definition() -> None:
    registry = ConsulRegistry(
        "127.0.0.1:8500", check_interval_s=2, check_timeout_s=0.5, deregister_critical_after_s=90
    )
    assert registry.check_definition(ORDERS, "passing") == {
        "CheckID": "service:orders-1",
        "Name": "gRPC health of orders",
        "GRPC": "10.0.0.5:50052/shop.orders.v2.OrderService",
        "GRPCUseTLS": False,
        "Interval": "2s",
        "Timeout": "500ms",
        "DeregisterCriticalServiceAfter": "90s",
        "Status": "passing",
    }


def test_a_health_entry_gives_back_the_registered_instance() -> None:
    entry: dict[str, Any] = {
        "Node": {"Node": "n1", "Address": "10.0.0.9"},
        "Service": {
            "ID": "orders-1",
            "Service": "orders",
            "Address": "10.0.0.5",
            "Port": 50052,
            "Tags": service_tags(ORDERS),
            "Meta": service_meta(ORDERS),
        },
        "Checks": [],
    }
    back = instance_from_entry(entry)
    assert back.version == "0.2.0" and back.tags == ("blue",)  # derived tags stripped
    assert dict(back.meta) == dict(ORDERS.meta)
    assert (back.id, back.service, back.address) == ("orders-1", "orders", "10.0.0.5:50052")
    # No service address: Consul means "the node's address".
    entry["Service"] = {**entry["Service"], "Address": ""}
    assert instance_from_entry(entry).host == "10.0.0.9"
