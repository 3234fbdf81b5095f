"""Weighted subsets in the pool: shares, fallback, header override, ejection per instance."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mesh.balancer.outlier import OutlierConfig
from mesh.balancer.picker import RoundRobinPicker
from mesh.balancer.pool import EndpointPool
from mesh.balancer.subsets import SubsetPicker
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from mesh.traffic.policy import TrafficPolicy

READY = grpc.ChannelConnectivity.READY
FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
PICKS = 2000


class Ep:
    def __init__(self, name: str) -> None:
        self.name = name
        self.inflight = 0


class FakeChannel:
    def __init__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state
        self._changed = asyncio.Event()

    def set(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state
        self._changed.set()
        self._changed = asyncio.Event()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.state

    async def wait_for_state_change(self, last: grpc.ChannelConnectivity) -> None:
        while self.state == last:
            await self._changed.wait()

    async def close(self, grace: float | None = None) -> None:
        pass


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # poll: loop turns (no time passes) for the fakes' callbacks


def subset_picker(weights: dict[str, int], seed: int = 7) -> SubsetPicker[Ep]:
    fallback: RoundRobinPicker[Ep] = RoundRobinPicker()
    picker: SubsetPicker[Ep] = SubsetPicker(fallback, random.Random(seed))
    groups = []
    for name, weight in weights.items():
        inner: RoundRobinPicker[Ep] = RoundRobinPicker()
        inner.update([Ep(f"{name}-{i}") for i in range(3)])
        groups.append((weight, inner))
    picker.update(groups)
    return picker


def shares(names: list[str]) -> dict[str, float]:
    counts = Counter(n.split("-")[0] for n in names)
    return {k: 100 * v / len(names) for k, v in counts.items()}


@pytest.mark.parametrize("weights", [{"blue": 90, "green": 10}, {"blue": 50, "green": 50}])
def test_weighted_share_within_three_points(weights: dict[str, int]) -> None:
    picker = subset_picker(weights)
    picked = [ep.name for ep in (picker.pick() for _ in range(PICKS)) if ep is not None]
    got = shares(picked)
    for name, weight in weights.items():
        assert abs(got[name] - weight) <= 3, got


def test_zero_weight_and_absent_subsets_take_nothing() -> None:
    picker = subset_picker({"blue": 100, "green": 0})
    assert {ep.name.split("-")[0] for ep in (picker.pick() for _ in range(200)) if ep} == {"blue"}
    empty: SubsetPicker[Ep] = SubsetPicker(RoundRobinPicker(), random.Random(1))
    empty.update([])
    assert empty.pick() is None  # no subset, no fallback candidates


@pytest.fixture
async def pool_of() -> AsyncIterator[Any]:
    pools: list[EndpointPool] = []

    async def make(
        tracks: list[str], *, states: list[grpc.ChannelConnectivity] | None = None, **kw: Any
    ) -> tuple[EndpointPool, dict[str, FakeChannel]]:
        channels: dict[str, FakeChannel] = {}
        instances = [
            Instance(f"{t}-{n}", "svc", "127.0.0.1", 1000 + n, "1.0", meta={"track": t})
            for n, t in enumerate(tracks)
        ]
        state_of = dict(
            zip((i.id for i in instances), states or [READY] * len(tracks), strict=True)
        )

        def factory(inst: Instance) -> Any:
            channels[inst.id] = FakeChannel(state_of[inst.id])
            return channels[inst.id]

        kw.setdefault("lb_policy", "round_robin")
        pool = EndpointPool("svc", StaticRegistry(instances), factory, rng=random.Random(3), **kw)
        pools.append(pool)
        pool.start()
        await settle()
        return pool, channels

    yield make
    for p in pools:
        await p.close()


def pool_shares(pool: EndpointPool, n: int = PICKS) -> dict[str, float]:
    names = [ep.instance.id for ep in (pool.pick() for _ in range(n)) if ep is not None]
    assert len(names) == n
    return shares(names)


async def test_pool_follows_the_policy_live(pool_of: Any) -> None:
    pool, _ = await pool_of(["blue", "blue", "green"])
    assert abs(pool_shares(pool)["blue"] - 66.7) <= 3  # no policy: one pool, per instance
    pool.set_policy(TrafficPolicy("svc", {"blue": 90, "green": 10}))
    got = pool_shares(pool)
    assert abs(got["blue"] - 90) <= 3 and abs(got["green"] - 10) <= 3
    assert pool.subset_shares == {"blue": 0.9, "green": 0.1}
    pool.set_policy(TrafficPolicy("svc", {"blue": 0, "green": 100}))
    assert pool_shares(pool, 50) == {"green": 100}
    pool.set_policy(None)
    assert set(pool_shares(pool, 60)) == {"blue", "green"}


async def test_a_subset_without_usable_instances_gives_its_share_away(pool_of: Any) -> None:
    outlier = OutlierConfig(1, base_ejection_s=10, max_ejected_fraction=1.0)
    pool, ch = await pool_of(["blue", "green", "green"], outlier=outlier)
    pool.set_policy(TrafficPolicy("svc", {"blue": 10, "green": 90}))
    # Every green instance ejected: green's 90 % goes to blue (not to ejected greens).
    for ep in pool.endpoints():
        if ep.instance.id.startswith("green"):
            pool.endpoint_failed(ep)
    assert all(ep.outlier.ejected for ep in pool.endpoints() if ep.instance.id[0] == "g")
    assert pool_shares(pool, 100) == {"blue": 100}
    # Blue disconnected too: nothing weighted is usable, so the whole pool's rule
    # applies (panic: the ejected greens, connected, rather than failing).
    ch["blue-0"].set(FAILURE)
    await settle()
    assert set(pool_shares(pool, 50)) == {"green"}


async def test_weights_naming_absent_subsets_fall_back_to_the_pool(pool_of: Any) -> None:
    pool, _ = await pool_of(["blue", "blue"])
    pool.set_policy(TrafficPolicy("svc", {"blue": 50, "green": 50}))
    assert pool_shares(pool, 100) == {"blue": 100}


async def test_header_override_picks_only_its_track(pool_of: Any) -> None:
    pool, ch = await pool_of(["blue", "green", "green"])
    pool.set_policy(TrafficPolicy("svc", {"blue": 100, "green": 0}))
    got = {pool.pick_track("green").instance.id for _ in range(10)}  # type: ignore[union-attr]
    assert got == {"green-1", "green-2"}
    assert pool.has_track("green") and not pool.has_track("red")
    assert pool.pick_track("red") is None
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pool.wait_for_endpoint(5, "red")  # fails at once: no such track here
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "none in subset 'red'" in (info.value.details() or "")
    # One track only (no policy): the override still knows it.
    single, _ = await pool_of(["blue"])
    assert single.pick_track("blue") is not None and single.pick_track("green") is None
    ch["green-1"].set(FAILURE)
    await settle()
    assert {pool.pick_track("green").instance.id for _ in range(4)} == {"green-2"}  # type: ignore[union-attr]
