"""The traffic policy over real calls: real ping servers on two tracks, registered in a
real embedded registry, called through a proxyless mesh client (full chain, mTLS).

Shares are counted from what the servers answered (`server` = the instance's track);
bounds are ±3 points, as the issue asks, with enough calls that a correct split
stays inside them with overwhelming probability (≥ 3.4 standard deviations).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from mesh.client.channel import MeshChannel
from mesh.client.runtime import MeshRuntime
from mesh.settings import Settings
from mesh.traffic.file_store import FilePolicyStore
from mesh.traffic.policy import TrafficPolicy
from tests.support.pki import session_pki
from tests.support.poll import eventually

Fleet = Callable[..., Awaitable[Any]]
CALLS = 2000
CONCURRENCY = 40


async def shares(stub: Any, calls: int = CALLS, **kwargs: Any) -> dict[str, float]:
    """Percent of `calls` Ping calls each track answered."""
    counts: Counter[str] = Counter()
    queue = iter(range(calls))

    async def worker() -> None:
        for _ in queue:
            reply = await stub.Ping(ping_pb2.PingRequest(value="x"), timeout=10, **kwargs)
            counts[reply.server] += 1

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return {k: 100 * v / calls for k, v in counts.items()}


async def steady_shares(
    stub: Any, channel: MeshChannel, weights: dict[str, int]
) -> dict[str, float]:
    """`shares(stub)` over a run in which the pool drew by `weights` all along.

    A subset leaves the draw while none of its instances is usable (the pool's
    documented behaviour: its health check flipped, it was ejected, its connection
    dropped), which on a starved box can happen for a moment and shifts a run by
    points. Such a run is measured again (up to three times in all, each one said in
    the failure); a run during which the table stayed whole must hold the bounds.
    """
    wanted = {track: w / sum(weights.values()) for track, w in weights.items()}
    disturbed: list[dict[str, float]] = []
    for _ in range(3):
        changes = 0

        async def watch() -> None:
            nonlocal changes
            while True:
                if channel.pool.subset_shares != wanted:
                    changes += 1
                await asyncio.sleep(0.005)  # poll: sampling the pool's table

        watcher = asyncio.create_task(watch())
        try:
            got = await shares(stub)
        finally:
            watcher.cancel()
        if not changes:
            return got
        disturbed.append(got)
    raise AssertionError(f"the pool's subsets changed during every run: {disturbed}")


async def connected(client: MeshRuntime, ready: int) -> tuple[Any, MeshChannel]:
    channel = client.channel("ping")
    await eventually(
        lambda: (
            sum(ep.state is grpc.ChannelConnectivity.READY for ep in channel.pool.endpoints())
            >= ready
        ),
        30,
        f"{ready} connected instances",
    )
    return ping_pb2_grpc.PingServiceStub(channel), channel


async def test_weights_hold_over_real_calls_and_change_live(
    fleet: Fleet, client: MeshRuntime, store: FilePolicyStore
) -> None:
    for track in ("blue", "blue", "green"):
        await fleet(track)
    stub, channel = await connected(client, 3)
    stored = await store.put(TrafficPolicy("ping", {"blue": 90, "green": 10}), 0)
    await eventually(lambda: channel.pool.policy == stored, 10, "the client to follow")
    got = await steady_shares(stub, channel, {"blue": 90, "green": 10})
    assert abs(got["blue"] - 90) <= 3 and abs(got["green"] - 10) <= 3, got

    # A change applies without a restart, within about a second (file store: 0.2 s polls).
    changed = await store.put(TrafficPolicy("ping", {"blue": 20, "green": 80}), 1)
    started = time.monotonic()
    await eventually(lambda: channel.pool.policy == changed, 10, "the change to apply")
    applied_s = time.monotonic() - started
    got = await steady_shares(stub, channel, {"blue": 20, "green": 80})
    assert abs(got["blue"] - 20) <= 3 and abs(got["green"] - 80) <= 3, got
    assert applied_s < 3.0, f"the change took {applied_s:.2f} s to apply"

    # No policy: one pool again (round-robin or p2c over the three instances).
    await store.delete("ping", 2)
    await eventually(lambda: channel.pool.policy is None, 10, "the removal to apply")
    got = await shares(stub, 600)
    assert abs(got["blue"] - 66.7) <= 10, got


async def test_header_override_reaches_only_its_subset(
    fleet: Fleet, client: MeshRuntime, store: FilePolicyStore
) -> None:
    blue, green = await fleet("blue"), await fleet("green")
    stub, channel = await connected(client, 2)
    stored = await store.put(TrafficPolicy("ping", {"blue": 100, "green": 0}), 0)
    await eventually(lambda: channel.pool.policy == stored, 10, "the client to follow")
    got = await shares(stub, 200, metadata=(("x-mesh-track", "green"),))
    assert got == {"green": 100.0}
    assert green.servicer.calls == 200
    # Without the header, the policy sends nothing to green.
    before = green.servicer.calls
    assert await shares(stub, 100) == {"blue": 100.0}
    assert green.servicer.calls == before and blue.servicer.calls >= 100
    # A subset the service does not have: UNAVAILABLE at once, naming it.
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Ping(ping_pb2.PingRequest(), metadata=(("x-mesh-track", "red"),), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "none in subset 'red'" in (info.value.details() or "")
    assert time.monotonic() - started < 2.0  # not a wait for the deadline


async def test_track_propagates_from_the_incoming_call(fleet: Fleet, client: MeshRuntime) -> None:
    """A handler's outgoing calls carry and prefer the incoming call's track; a service
    without that track is still reachable (the override is strict only where it is set)."""
    from interceptors.traffic import incoming_track

    await fleet("blue")
    green = await fleet("green")
    stub, _ = await connected(client, 2)
    token = incoming_track.set("green")  # as the server chain does for a handler
    try:
        got = await shares(stub, 50)
        assert got == {"green": 100.0}
        assert ("x-mesh-track", "green") in green.servicer.metadata_seen[-1]
        incoming_track.set("purple")  # a track this service lacks: the usual pick
        assert set(await shares(stub, 50)) <= {"blue", "green"}
    finally:
        incoming_track.reset(token)


async def test_fault_abort_share_and_subset(
    fleet: Fleet, client: MeshRuntime, store: FilePolicyStore
) -> None:
    await fleet("blue")
    green = await fleet("green")
    raw = client.channel("ping", interceptors=())  # no retries: every abort is seen
    await eventually(lambda: len(raw.pool.endpoints()) == 2, 30, "both instances")
    stub = ping_pb2_grpc.PingServiceStub(raw)
    policy = TrafficPolicy.from_json(
        {
            "service": "ping",
            "faults": [{"subset": "green", "abort_percent": 20, "abort_status": "UNAVAILABLE"}],
        }
    )
    await store.put(policy, 0)
    await eventually(
        lambda: (
            green.service.definition is not None
            and client.traffic.current("ping") is not None
            and bool(green.runtime.traffic.current("ping"))
        ),
        10,
        "the green instance to follow the policy",
    )
    codes: Counter[str] = Counter()
    n = 1000
    for _ in range(n):
        try:
            await stub.Ping(ping_pb2.PingRequest(), metadata=(("x-mesh-track", "green"),))
            codes["OK"] += 1
        except grpc.aio.AioRpcError as exc:
            codes[exc.code().name] += 1
            assert exc.details() == "fault injected: UNAVAILABLE"
    # Binomial(1000, 0.2): mean 200, sd 12.6; ±4 sd.
    assert 150 <= codes["UNAVAILABLE"] <= 250, codes
    assert set(codes) == {"OK", "UNAVAILABLE"}
    # Blue has no fault.
    for _ in range(100):
        await stub.Ping(ping_pb2.PingRequest(), metadata=(("x-mesh-track", "blue"),))


async def test_fault_delay_per_method(
    fleet: Fleet, client: MeshRuntime, store: FilePolicyStore
) -> None:
    member = await fleet("blue")
    stub, _ = await connected(client, 1)
    policy = TrafficPolicy.from_json(
        {
            "service": "ping",
            "faults": [
                {
                    "method": "/shop.testing.v1.PingService/Ping",
                    "delay_percent": 50,
                    "delay_ms": 300,
                }
            ],
        }
    )
    await store.put(policy, 0)
    await eventually(lambda: member.runtime.traffic.current("ping") is not None, 10, "policy")
    slow = 0
    n = 60
    for _ in range(n):
        started = time.monotonic()
        await stub.Ping(ping_pb2.PingRequest())
        slow += time.monotonic() - started >= 0.3
    # Binomial(60, 0.5): mean 30, sd 3.9; ±4 sd.
    assert 14 <= slow <= 46, slow
    # Another method of the service is not delayed.
    started = time.monotonic()
    replies = [r async for r in stub.PingList(ping_pb2.PingRequest(count=2))]
    assert len(replies) == 2 and time.monotonic() - started < 0.3


async def test_the_edges_calls_skip_the_fault_the_edge_applies(
    fleet: Fleet, client: MeshRuntime, store: FilePolicyStore, registry_dir: Path
) -> None:
    """The service-wide fault is drawn by the Envoy edge, so an instance skips it for a
    caller holding the edge's identity (mTLS) and applies it to any other caller; a
    subset's fault still hits the edge's calls (the edge does not apply those)."""
    green = await fleet("green")
    env = {"MESH_REGISTRY": "embedded", "MESH_REGISTRY_DIR": str(registry_dir)}
    settings = dataclasses.replace(Settings.from_env("edge", env), security=session_pki())
    edge = await MeshRuntime.create(settings)
    try:
        stubs = {}
        for name, runtime in (("edge", edge), ("caller", client)):
            raw = runtime.channel("ping", interceptors=())  # no retries
            pool = raw.pool
            await eventually(lambda: len(pool.endpoints()) == 1, 30, "the instance")  # noqa: B023
            stubs[name] = ping_pb2_grpc.PingServiceStub(raw)

        async def aborted(stub: Any) -> int:
            n = 0
            for _ in range(20):
                try:
                    await stub.Ping(ping_pb2.PingRequest(), timeout=10)
                except grpc.aio.AioRpcError as exc:
                    assert exc.details() == "fault injected: ABORTED", exc
                    n += 1
            return n

        def follows(subset: str) -> bool:
            policy = green.runtime.traffic.current("ping")
            return policy is not None and policy.faults[0].subset == subset

        for revision, subset in enumerate(("*", "green")):
            fault = {"subset": subset, "abort_percent": 100, "abort_status": "ABORTED"}
            doc = {"service": "ping", "faults": [fault]}
            await store.put(TrafficPolicy.from_json(doc), revision)
            await eventually(lambda: follows(subset), 10, "the policy followed")  # noqa: B023
            assert await aborted(stubs["caller"]) == 20
            assert await aborted(stubs["edge"]) == (20 if subset == "green" else 0)
    finally:
        await edge.close()
