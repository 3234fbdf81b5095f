"""EndpointSync turns registered host names into the IP literals file-based EDS accepts."""

from __future__ import annotations

import json
from pathlib import Path

from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.edge.sync import EndpointSync, resolve_host
from tests.support.poll import eventually


def _hosts(eds_dir: Path, cluster: str) -> list[tuple[str, int]]:
    doc = json.loads((eds_dir / f"{cluster}.json").read_text())
    endpoints = doc["resources"][0]["endpoints"][0]["lb_endpoints"]
    return [
        (
            e["endpoint"]["address"]["socket_address"]["address"],
            e["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for e in endpoints
    ]


async def test_literals_pass_and_localhost_resolves() -> None:
    assert await resolve_host("10.1.2.3") == ["10.1.2.3"]
    assert await resolve_host("::1") == ["::1"]
    assert "127.0.0.1" in await resolve_host("localhost")


async def test_names_become_ips_and_unresolvable_ones_are_left_out(tmp_path: Path) -> None:
    table = {"orders-1": ["172.18.0.5"], "orders-2": ["172.18.0.6", "172.18.0.7"]}

    async def resolver(host: str) -> list[str]:
        if host not in table:
            raise OSError(f"[Errno -2] Name or service not known: {host}")
        return table[host]

    registry = StaticRegistry(
        [
            Instance(id="o1", service="orders", host="orders-1", port=50052),
            Instance(id="o2", service="orders", host="orders-2", port=50052),
            Instance(id="o3", service="orders", host="gone", port=50052),
        ]
    )
    sync = EndpointSync(registry, ["orders"], tmp_path, resolver=resolver)
    await sync.start()
    try:
        await eventually(lambda: sync.snapshots.get("orders"), 5, "first snapshot")
        assert _hosts(tmp_path, "orders") == [
            ("172.18.0.5", 50052),
            ("172.18.0.6", 50052),
            ("172.18.0.7", 50052),
        ]
    finally:
        await registry.close()
        await sync.stop()


async def test_a_name_that_moves_is_followed_without_a_registry_change(tmp_path: Path) -> None:
    table = {"users": ["172.18.0.9"]}

    async def resolver(host: str) -> list[str]:
        return table[host]

    registry = StaticRegistry([Instance(id="u1", service="users", host="users", port=50051)])
    sync = EndpointSync(
        registry,
        ["users"],
        tmp_path,
        resolver=resolver,
        resolve_interval_s=0.05,
    )
    await sync.start()
    try:
        await eventually(lambda: sync.snapshots.get("users"), 5, "first snapshot")
        table["users"] = ["172.18.0.12"]  # the container was re-created with a new address
        await eventually(
            lambda: _hosts(tmp_path, "users") == [("172.18.0.12", 50051)], 5, "re-resolved"
        )
    finally:
        await registry.close()
        await sync.stop()


async def test_a_port_cluster_uses_the_port_in_the_registry_meta(tmp_path: Path) -> None:
    registry = StaticRegistry(
        [
            Instance(id="u1", service="users", host="127.0.0.1", port=50051,
                     meta={"admin_port": "9101"}),
            Instance(id="u2", service="users", host="127.0.0.2", port=50051),  # no meta
            Instance(id="u3", service="users", host="127.0.0.3", port=50051,
                     meta={"admin_port": "x"}),
        ]
    )  # fmt: skip
    sync = EndpointSync(
        registry, ["users"], tmp_path, port_clusters={"jwks": ("users", "admin_port")}
    )
    await sync.start()
    try:
        await eventually(lambda: sync.snapshots.get("jwks"), 5, "the jwks snapshot")
        assert _hosts(tmp_path, "jwks") == [("127.0.0.1", 9101)]
        await eventually(lambda: sync.snapshots.get("users"), 5, "the users snapshot")
        assert len(_hosts(tmp_path, "users")) == 3  # the gRPC cluster is unchanged
    finally:
        await registry.close()
        await sync.stop()
