"""Both policy stores (file beside the embedded registry, Consul KV) behave the same way.

Consul runs as the test agent (tests/support/consul_agent.py), which implements
the KV endpoints as strictly as Consul documents them (CAS, blocking queries,
key_prefix ACLs).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.discovery.consul import ConsulAclError
from mesh.traffic.consul_store import ConsulPolicyStore
from mesh.traffic.file_store import FilePolicyStore
from mesh.traffic.policy import Fault, PolicyConflict, PolicyStore, TrafficPolicy
from tests.support.consul_agent import AclPolicy, consul_test_agent
from tests.support.poll import eventually

BLUE = TrafficPolicy("orders", {"blue": 100})
SPLIT = TrafficPolicy(
    "orders", {"blue": 90, "green": 10}, (Fault(subset="green", abort_percent=20),)
)


@pytest.fixture(params=["file", "consul"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[PolicyStore]:
    if request.param == "file":
        directory = tmp_path / "registry"
        directory.mkdir(mode=0o700)
        file_store = FilePolicyStore(directory, poll_s=0.05)
        yield file_store
        await file_store.close()
        return
    async with consul_test_agent() as agent:
        consul_store = ConsulPolicyStore(agent.address, blocking_wait_s=2.0)
        yield consul_store
        await consul_store.close()


async def test_revisions_and_compare_and_set(store: PolicyStore) -> None:
    assert await store.get("orders") is None
    first = await store.put(BLUE, 0)
    assert first.revision == 1 and first.same_rules(BLUE)
    with pytest.raises(PolicyConflict) as info:
        await store.put(SPLIT, 0)
    assert info.value.current == 1
    assert await store.get("orders") == first  # the refused write changed nothing
    second = await store.put(SPLIT, 1)
    assert second.revision == 2
    assert await store.get("orders") == second
    third = await store.put(BLUE, None)  # unconditional: still a new revision
    assert third.revision == 3
    with pytest.raises(PolicyConflict):
        await store.delete("orders", 2)
    await store.delete("orders", 3)
    assert await store.get("orders") is None


async def test_concurrent_writers_one_wins(store: PolicyStore) -> None:
    await store.put(BLUE, 0)
    results = await asyncio.gather(
        *(store.put(SPLIT.with_revision(0), 1) for _ in range(5)), return_exceptions=True
    )
    stored = [r for r in results if isinstance(r, TrafficPolicy)]
    assert len(stored) == 1 and stored[0].revision == 2
    assert all(isinstance(r, PolicyConflict) for r in results if r is not stored[0])


async def test_watch_follows_changes(store: PolicyStore) -> None:
    seen: list[TrafficPolicy | None] = []

    async def follow() -> None:
        async for policy in store.watch("orders"):
            seen.append(policy)

    task = asyncio.create_task(follow())
    try:
        await eventually(lambda: seen == [None], 10, "the initial 'no policy'")
        first = await store.put(BLUE, 0)
        await eventually(lambda: seen[-1] == first, 10, "the first policy")
        second = await store.put(SPLIT, 1)
        await eventually(lambda: seen[-1] == second, 10, "the second policy")
        await store.delete("orders", 2)
        await eventually(lambda: seen[-1] is None, 10, "the deletion")
        assert seen == [None, first, second, None]
    finally:
        await store.close()
        await asyncio.wait_for(task, 10)


async def test_consul_kv_acl_and_malformed_value() -> None:
    acl = {
        "reader": AclPolicy(key_read=("shop-mesh/traffic/",)),
        "writer": AclPolicy(key_write=("shop-mesh/traffic/",)),
        "other": AclPolicy(key_write=("elsewhere/",)),
    }
    async with consul_test_agent(acl=acl) as agent:
        writer = ConsulPolicyStore(agent.address, "writer")
        reader = ConsulPolicyStore(agent.address, "reader")
        other = ConsulPolicyStore(agent.address, "other")
        try:
            stored = await writer.put(BLUE, 0)
            assert await reader.get("orders") == stored
            with pytest.raises(ConsulAclError, match="key_prefix"):
                await reader.put(SPLIT, 1)
            with pytest.raises(ConsulAclError, match="key_prefix"):
                await other.get("orders")
            assert TrafficPolicy.loads(agent.kv_value("shop-mesh/traffic/orders") or b"") == stored
        finally:
            for s in (writer, reader, other):
                await s.close()


async def test_registry_finds_its_store_and_watchers_follow_it(tmp_path: Path) -> None:
    """policy_store_for: the file store beside an embedded registry, Consul KV (same agent,
    same token) beside a Consul registry; a PolicyWatcher delivers changes to subscribers."""
    from mesh.discovery.consul import ConsulRegistry
    from mesh.discovery.embedded import EmbeddedRegistry
    from mesh.traffic.stores import policy_store_for
    from mesh.traffic.watcher import PolicyWatcher

    directory = tmp_path / "registry"
    embedded = policy_store_for(EmbeddedRegistry(directory))
    assert isinstance(embedded, FilePolicyStore) and embedded.registry_dir == directory
    acl = {"svc": AclPolicy(key_write=("shop-mesh/traffic/",))}
    async with consul_test_agent(acl=acl) as agent:
        registry = ConsulRegistry(agent.address, "svc")
        store = policy_store_for(registry)
        assert isinstance(store, ConsulPolicyStore)
        watcher = PolicyWatcher(store)
        seen: list[TrafficPolicy | None] = []
        try:
            watcher.subscribe("orders", seen.append)
            await eventually(lambda: seen == [None], 10, "the initial 'no policy'")
            writer = ConsulPolicyStore(agent.address, "svc")
            stored = await writer.put(SPLIT, 0)
            await writer.close()
            await eventually(lambda: seen[-1] == stored, 10, "the change")
            assert watcher.current("orders") == stored
            late: list[TrafficPolicy | None] = []
            watcher.subscribe("orders", late.append)
            assert late == [stored]  # a new subscriber gets the current policy at once
        finally:
            await watcher.close()
            await registry.close()
