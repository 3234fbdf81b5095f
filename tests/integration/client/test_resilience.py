"""Failures: killed and sick instances, no instances at all, an unreachable registry."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from shop.testing.v1 import ping_pb2, ping_pb2_grpc

from interceptors.deadline import DeadlineClientInterceptor
from interceptors.retry import RetryBudget, RetryClientInterceptor, RetryPolicy
from mesh.api.options import IdempotentMethods
from mesh.balancer.pool import EndpointStatus
from mesh.discovery.registry import Instance, RegistryUnavailable
from mesh.discovery.static import StaticRegistry
from tests.support.mesh_client import (
    UnavailableInterceptor,
    instance,
    ready_count,
)
from tests.support.poll import eventually


def resilient_chain() -> list[object]:
    return [
        DeadlineClientInterceptor(2.0),
        RetryClientInterceptor(
            RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05),
            RetryBudget(ratio=0.5, min_retries_per_s=50),
            IdempotentMethods(),
        ),
    ]


async def test_killed_instance_is_dropped_and_idempotent_calls_never_fail(
    registry, servers, child_servers, channels
) -> None:
    victim = child_servers("victim")
    others = [await servers(f"s{i}") for i in range(2)]
    await registry.register(instance("victim", victim.port))
    for i, b in enumerate(others):
        await registry.register(instance(f"s{i}", b.port))
    ch = channels(registry, resilient_chain(), lb_policy="round_robin")
    await eventually(lambda: ready_count(ch) == 3, what="3 connected instances")
    stub = ping_pb2_grpc.PingServiceStub(ch)

    answered: collections.Counter[str] = collections.Counter()
    failures: list[grpc.StatusCode] = []
    killed = asyncio.Event()
    after_kill = 0

    async def worker() -> None:
        nonlocal after_kill
        while after_kill < 400:
            try:
                reply = await stub.Ping(ping_pb2.PingRequest(sleep_ms=2))
            except grpc.aio.AioRpcError as err:
                failures.append(err.code())
                continue
            answered[reply.server] += 1
            if killed.is_set():
                after_kill += 1

    workers = [asyncio.ensure_future(worker()) for _ in range(8)]
    await eventually(lambda: answered["victim"] >= 30, what="traffic on the victim")
    victim.kill()  # SIGKILL: calls in flight on it break, the connection resets
    killed.set()
    victim_before = answered["victim"]
    await asyncio.gather(*workers)

    assert failures == []
    assert answered["victim"] - victim_before <= 8  # at most what was in flight at the kill
    status = {s.id: s for s in ch.pool.status()}
    assert status["victim"].state != "READY" or status["victim"].ejected
    assert {"s0", "s1"} <= {s.id for s in status.values() if s.state == "READY"}


async def test_sick_instance_is_ejected_then_probed_and_ejected_for_longer(
    registry, servers, channels
) -> None:
    sick = await servers("sick", interceptors=[UnavailableInterceptor()])
    healthy = [await servers(f"ok{i}") for i in range(2)]
    await registry.register(instance("sick", sick.port))
    for i, b in enumerate(healthy):
        await registry.register(instance(f"ok{i}", b.port))
    ch = channels(
        registry,
        lb_policy="round_robin",
        outlier_consecutive_failures=3,
        outlier_base_ejection_s=0.3,
    )
    await eventually(lambda: ready_count(ch) == 3, what="3 connected instances")
    stub = ping_pb2_grpc.PingServiceStub(ch)

    def sick_status() -> EndpointStatus:
        found: EndpointStatus = next(s for s in ch.pool.status() if s.id == "sick")
        return found

    failures = 0

    async def call() -> None:
        nonlocal failures
        try:
            await stub.Ping(ping_pb2.PingRequest(), timeout=5)
        except grpc.aio.AioRpcError as err:
            assert err.code() is grpc.StatusCode.UNAVAILABLE
            failures += 1

    for _ in range(9):  # round-robin: every third call lands on the sick one
        await call()
    assert failures == 3
    assert sick_status().ejected and sick_status().ejections == 1

    async def call_while(condition: Callable[[], bool]) -> None:
        """Keep calling while `condition` holds (the pool's state, not a time window)."""
        async with asyncio.timeout(10):  # a pool that never moves on fails here
            while condition():
                await call()

    # Ejected (for 0.3 s): nothing reaches it however many calls are made.
    await call_while(lambda: sick_status().ejected)
    assert failures == 3
    # Back on probation: the first call that reaches it fails and ejects it again,
    # for twice as long.
    await call_while(lambda: sick_status().ejections == 1)
    assert failures == 4
    assert sick_status().ejected and sick_status().ejections == 2
    assert sick.servicer.calls == 0  # the interceptor refused them all before the servicer


async def test_no_instance_fails_unavailable_within_the_deadline(registry, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async with asyncio.timeout(10):  # never hangs
            await stub.Ping(ping_pb2.PingRequest(), timeout=0.3)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no healthy instance of ping" in (info.value.details() or "")
    # It waited for an instance until the deadline (a lower bound: load only adds time).
    assert time.monotonic() - start >= 0.25


async def test_no_deadline_waits_the_configured_time_then_fails(registry, channels) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry, no_instance_wait_s=0.2))
    start = time.monotonic()
    call = stub.Ping(ping_pb2.PingRequest())
    with pytest.raises(grpc.aio.AioRpcError):
        async with asyncio.timeout(10):  # never hangs
            await call
    assert time.monotonic() - start >= 0.15  # waited the configured time (a lower bound)
    assert await call.code() is grpc.StatusCode.UNAVAILABLE
    assert "no healthy instance" in await call.details()


async def test_call_waiting_for_an_instance_takes_one_that_appears(
    registry, servers, channels
) -> None:
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    waiting = asyncio.ensure_future(stub.Ping(ping_pb2.PingRequest(value="late"), timeout=5))
    await asyncio.sleep(0.1)  # poll: a deliberate wait; the call must still be pending
    assert not waiting.done()
    late = await servers("late")
    await registry.register(instance("late", late.port))
    reply = await asyncio.wait_for(waiting, 2)
    assert reply.server == "late"


async def test_only_a_dead_instance_fails_unavailable_never_hangs(registry, channels) -> None:
    await registry.register(instance("dead", 1))  # nothing listens on port 1
    stub = ping_pb2_grpc.PingServiceStub(channels(registry))
    async with asyncio.timeout(10):  # never hangs: each call ends by its own deadline
        for _ in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Ping(ping_pb2.PingRequest(), timeout=0.3)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE


class FlakyRegistry:
    """A registry whose watch breaks (RegistryUnavailable) while `down` is set."""

    def __init__(self, inner: StaticRegistry) -> None:
        self.inner = inner
        self.down = asyncio.Event()
        self.watches = 0

    async def register(self, inst: Instance) -> None:
        await self.inner.register(inst)

    async def deregister(self, instance_id: str) -> None:
        await self.inner.deregister(instance_id)

    async def healthy(self, service: str) -> list[Instance]:
        if self.down.is_set():
            raise RegistryUnavailable("registry down")
        return await self.inner.healthy(service)

    async def watch(self, service: str) -> AsyncIterator[list[Instance]]:
        self.watches += 1
        if self.down.is_set():
            raise RegistryUnavailable("registry down")
        async for snapshot in self.inner.watch(service):
            if self.down.is_set():
                break  # the change that woke us cannot be read: the registry is down
            yield snapshot
        if self.down.is_set():
            raise RegistryUnavailable("registry down")

    async def close(self) -> None:
        await self.inner.close()


async def test_unreachable_registry_keeps_last_instances_and_logs_once(
    servers, channels, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="mesh.balancer.pool")
    backends = [await servers(f"s{i}") for i in range(2)]
    flaky = FlakyRegistry(StaticRegistry())
    for i, b in enumerate(backends):
        await flaky.register(instance(f"s{i}", b.port))
    ch = channels(flaky, lb_policy="round_robin")
    stub = ping_pb2_grpc.PingServiceStub(ch)
    await eventually(lambda: ready_count(ch) == 2, what="2 connected instances")

    flaky.down.set()
    await flaky.inner.register(instance("ghost", 1))  # wakes the watch, which then fails
    await eventually(lambda: flaky.watches >= 3, what="the pool retrying its watch")

    seen: collections.Counter[str] = collections.Counter()
    for _ in range(20):
        seen[(await stub.Ping(ping_pb2.PingRequest(), timeout=2)).server] += 1
    assert seen == {"s0": 10, "s1": 10}
    assert not ch.pool.registry_reachable
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the 2 last known instances" in warnings[0].message

    flaky.down.clear()
    await eventually(lambda: ch.pool.registry_reachable, what="the registry back")
    # now the registry's truth applies again (the ghost on port 1 is known)
    await eventually(lambda: any(s.id == "ghost" for s in ch.pool.status()), what="ghost")
    assert any("reachable again" in r.message for r in caplog.records)
