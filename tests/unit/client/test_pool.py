"""The pool with fake channels: candidates by connectivity and ejection, panic, draining."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from mesh.balancer.outlier import OutlierConfig
from mesh.balancer.pool import EndpointPool
from mesh.discovery.registry import Instance
from mesh.discovery.static import StaticRegistry
from tests.support.poll import eventually

READY = grpc.ChannelConnectivity.READY
CONNECTING = grpc.ChannelConnectivity.CONNECTING
FAILURE = grpc.ChannelConnectivity.TRANSIENT_FAILURE
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


class FakeChannel:
    """Connectivity set by the test; wait_for_state_change wakes on each change."""

    def __init__(self, state: grpc.ChannelConnectivity) -> None:
        self.state = state
        self.closed = False
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
        self.closed = True


class Done:
    """A call that finishes with a status when told to (grpc.aio's public call surface)."""

    def __init__(self, code: int) -> None:
        self._code = next(c for c in grpc.StatusCode if c.value[0] == code)
        self._callbacks: list[Any] = []
        self._done = False

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, cb: Any) -> None:
        self._callbacks.append(cb)

    async def code(self) -> grpc.StatusCode:
        return self._code

    async def details(self) -> str:
        return ""

    def finish(self) -> None:
        self._done = True
        for cb in self._callbacks:
            cb(self)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # poll: loop turns (no time passes) for the fakes' callbacks


@pytest.fixture
async def pool_of() -> AsyncIterator[Any]:
    pools: list[EndpointPool] = []

    async def make(
        *states: grpc.ChannelConnectivity, **kwargs: Any
    ) -> tuple[EndpointPool, dict[str, FakeChannel]]:
        channels: dict[str, FakeChannel] = {}
        registry = StaticRegistry(
            [Instance(f"i{n}", "svc", "127.0.0.1", 1000 + n) for n in range(len(states))]
        )

        def factory(inst: Instance) -> Any:
            channels[inst.id] = FakeChannel(states[int(inst.id[1:])])
            return channels[inst.id]

        kwargs.setdefault("lb_policy", "round_robin")
        pool = EndpointPool("svc", registry, factory, **kwargs)
        pools.append(pool)
        pool.start()
        await settle()
        return pool, channels

    yield make
    for p in pools:
        await p.close()


def picks(pool: EndpointPool, n: int = 6) -> set[str]:
    return {ep.instance.id for ep in (pool.pick() for _ in range(n)) if ep is not None}


async def test_only_connected_instances_are_picked_while_any_is(pool_of) -> None:
    pool, ch = await pool_of(READY, CONNECTING, FAILURE)
    assert picks(pool) == {"i0"}
    ch["i0"].set(FAILURE)
    await settle()
    assert picks(pool) == {"i1"}  # nothing connected: the one connecting
    ch["i2"].set(READY)
    await settle()
    assert picks(pool) == {"i2"}


async def test_ejection_takes_an_instance_out_then_lets_it_back(pool_of) -> None:
    pool, _ = await pool_of(READY, READY, outlier=OutlierConfig(2, base_ejection_s=0.05))
    sick = next(ep for ep in pool.endpoints() if ep.instance.id == "i0")
    for _ in range(2):
        call = Done(UNAVAILABLE)
        sick.track(call)
        call.finish()
    assert sick.outlier.ejected and sick.inflight == 0
    assert picks(pool) == {"i1"}
    await eventually(lambda: not sick.outlier.ejected, what="the release after 0.05 s")
    assert sick.outlier.probing
    assert picks(pool) == {"i0", "i1"}


async def test_when_all_are_ejected_they_are_used_anyway(pool_of) -> None:
    pool, _ = await pool_of(READY, outlier=OutlierConfig(1, base_ejection_s=10))
    (only,) = pool.endpoints()
    call = Done(UNAVAILABLE)
    only.track(call)
    call.finish()
    assert only.outlier.ejected
    assert pool.pick() is only  # panic: better a suspect instance than none


async def test_no_candidate_waits_then_fails_unavailable(pool_of) -> None:
    pool, ch = await pool_of(FAILURE)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await pool.wait_for_endpoint(0.05)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no healthy instance of svc (1 known, none reachable" in (info.value.details() or "")
    waiting = asyncio.ensure_future(pool.wait_for_endpoint(5))
    await settle()
    ch["i0"].set(READY)
    assert (await asyncio.wait_for(waiting, 1)).instance.id == "i0"


async def test_removed_instance_closes_when_its_last_call_ends(pool_of) -> None:
    pool, ch = await pool_of(READY, READY)
    leaving = next(ep for ep in pool.endpoints() if ep.instance.id == "i0")
    call = Done(0)
    leaving.track(call)
    pool.apply([Instance("i1", "svc", "127.0.0.1", 1001)])
    assert picks(pool) == {"i1"}
    await settle()
    assert not ch["i0"].closed  # a call is still in flight
    call.finish()
    await settle()
    assert ch["i0"].closed and not ch["i1"].closed
    assert [s.id for s in pool.status()] == ["i1"]


async def test_close_cuts_an_earlier_drain_at_its_grace(pool_of) -> None:
    # An instance removed before the close still drains on its own timer (30 s here);
    # close(grace) waits for every drain, so without a bound it waited for that one too.
    pool, ch = await pool_of(READY, READY, drain_timeout_s=30.0)
    leaving = next(ep for ep in pool.endpoints() if ep.instance.id == "i0")
    leaving.track(Done(0))  # never finishes
    pool.apply([Instance("i1", "svc", "127.0.0.1", 1001)])
    assert [s.id for s in pool.status() if s.draining] == ["i0"]
    async with asyncio.timeout(5):  # the grace is 0.2 s; the old drain had 30 s left
        await pool.close(grace_s=0.2)
    assert ch["i0"].closed and ch["i1"].closed
