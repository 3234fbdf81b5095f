"""StaticRegistry (tests, tools, MESH_REGISTRY=none) and the static instance spec."""

from __future__ import annotations

import asyncio

import pytest

from mesh.discovery.registry import Instance, Registry
from mesh.discovery.static import StaticRegistry, parse_static_instances

A = Instance("a-1", "a", "127.0.0.1", 5001)
A2 = Instance("a-2", "a", "127.0.0.1", 5002)
B = Instance("b-1", "b", "127.0.0.1", 6001)


async def test_register_deregister_and_health() -> None:
    r = StaticRegistry([B])
    assert isinstance(r, Registry)
    await r.register(A2)
    await r.register(A)
    assert await r.healthy("a") == [A, A2]  # sorted by id
    await r.set_healthy("a-1", False)
    assert await r.healthy("a") == [A2]
    await r.set_healthy("a-1", True)
    await r.deregister("a-2")
    await r.deregister("unknown")
    assert await r.healthy("a") == [A]
    assert await r.healthy("b") == [B]


async def test_watch_yields_at_once_then_each_change_and_ends_on_close() -> None:
    r = StaticRegistry()
    snapshots: asyncio.Queue[list[str]] = asyncio.Queue()

    async def follow() -> None:
        async for snapshot in r.watch("a"):
            snapshots.put_nowait([i.id for i in snapshot])

    task = asyncio.create_task(follow())
    assert await asyncio.wait_for(snapshots.get(), 1) == []
    await r.register(A)
    assert await asyncio.wait_for(snapshots.get(), 1) == ["a-1"]
    await r.register(B)  # another service: no new snapshot for "a"
    await r.set_healthy("a-1", False)
    assert await asyncio.wait_for(snapshots.get(), 1) == []
    await r.set_healthy("a-1", False)  # no change: no snapshot
    await r.close()
    await asyncio.wait_for(task, 1)
    assert snapshots.empty()


def test_parse_static_instances() -> None:
    got = parse_static_instances("users=127.0.0.1:50051, orders=localhost:50052,,db=[::1]:5432")
    assert [(i.id, i.service, i.address) for i in got] == [
        ("users-127.0.0.1-50051", "users", "127.0.0.1:50051"),
        ("orders-localhost-50052", "orders", "localhost:50052"),
        ("db-[::1]-5432", "db", "[::1]:5432"),
    ]
    assert parse_static_instances("") == []


@pytest.mark.parametrize("spec", ["users", "users=host", "=h:1", "users=h:x", "users=h:0", "u=:1"])
def test_parse_static_instances_rejects_bad_items(spec: str) -> None:
    with pytest.raises(ValueError, match=r"expected|port"):
        parse_static_instances(spec)
