"""The file store beside the embedded registry: CAS on the revision, atomic files, watch."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from mesh.traffic.file_store import FilePolicyStore
from mesh.traffic.policy import PolicyConflict, TrafficPolicy
from tests.support.poll import eventually


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    d = tmp_path / "registry"
    d.mkdir(mode=0o700)
    return d


async def test_put_get_with_revisions(registry_dir: Path) -> None:
    store = FilePolicyStore(registry_dir)
    assert await store.get("orders") is None
    first = await store.put(TrafficPolicy("orders", {"blue": 100}), 0)
    assert first.revision == 1
    assert await store.get("orders") == first
    with pytest.raises(PolicyConflict, match="revision 1, not 0"):
        await store.put(TrafficPolicy("orders", {"blue": 50, "green": 50}), 0)
    assert await store.get("orders") == first
    second = await store.put(TrafficPolicy("orders", {"blue": 50, "green": 50}), 1)
    assert second.revision == 2
    path = registry_dir / "traffic" / "orders.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    await store.delete("orders", 2)
    assert await store.get("orders") is None


async def test_watch_sees_changes_and_skips_broken_files(registry_dir: Path) -> None:
    store = FilePolicyStore(registry_dir, poll_s=0.05)
    seen: list[TrafficPolicy | None] = []

    async def follow() -> None:
        async for policy in store.watch("orders"):
            seen.append(policy)

    task = asyncio.create_task(follow())
    try:
        await eventually(lambda: seen == [None], 5)
        stored = await store.put(TrafficPolicy("orders", {"blue": 100}), 0)
        await eventually(lambda: seen[-1] == stored, 5)
        (registry_dir / "traffic" / "orders.json").write_text("{not json")
        # The broken file must not replace the policy over several of the store's polls.
        await asyncio.sleep(0.3)  # poll
        assert seen[-1] == stored
    finally:
        await store.close()
        await asyncio.wait_for(task, 5)


def test_the_traffic_directory_is_not_a_service() -> None:
    from mesh.discovery.embedded import check_name

    with pytest.raises(ValueError, match="reserved"):
        check_name("service", "traffic")
    check_name("instance id", "traffic")  # only service names are directories
