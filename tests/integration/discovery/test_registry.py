"""The Registry contract, one behaviour at a time, against every backend.

Each test runs against `embedded`, `consul-test-agent` and (with
CONSUL_HTTP_ADDR) `consul-real-agent`, with real grpc.aio health servers on
loopback and, for "another process", a real subprocess. Short intervals come
from the constructor options in conftest.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from mesh.discovery.consul import ConsulAclError, ConsulRegistry
from mesh.discovery.registry import Instance, Registry, RegistryUnavailable
from tests.support.consul_agent import consul_test_agent
from tests.support.discovery import (
    Backend,
    WatchRecorder,
    instance_for,
    registering_process,
)
from tests.support.health_server import HealthServer
from tests.support.poll import eventually as wait_until

Servers = Callable[[], Awaitable[HealthServer]]
Recorders = Callable[[Any], WatchRecorder]


async def test_registered_instance_is_healthy_and_watched_within_a_second(
    backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    server = await health_servers()
    registry = backend.make()
    service = backend.service()
    watch = recorders(registry.watch(service))
    await watch.wait_ids(set(), within_s=2)  # a watch yields at once, even when empty

    instance = instance_for(server, service)
    start = time.monotonic()
    await registry.register(instance)
    [seen] = await watch.wait_ids({instance.id}, within_s=1.0)
    assert time.monotonic() - start < 1.0
    [found] = await registry.healthy(service)

    for got in (seen, found):  # what was registered comes back, field by field
        assert got == instance
        assert (got.host, got.port) == ("127.0.0.1", server.port)
        assert (got.version, got.tags) == ("0.1.0", ("blue",))
        assert dict(got.meta) == dict(instance.meta)
    assert await registry.healthy(backend.service()) == []  # other services are not mixed in


async def test_deregistered_instance_is_gone_within_a_second(
    backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    server = await health_servers()
    registry = backend.make()
    service = backend.service()
    keep, leave = instance_for(server, service, 1), instance_for(server, service, 2)
    await registry.register(keep)
    await registry.register(leave)
    watch = recorders(registry.watch(service))
    await watch.wait_ids({keep.id, leave.id}, within_s=1.0)

    await registry.deregister(leave.id)
    await watch.wait_ids({keep.id}, within_s=1.0)
    assert [i.id for i in await registry.healthy(service)] == [keep.id]
    assert await backend.registered_ids(service) == {keep.id}
    await registry.deregister(leave.id)  # unknown ids are ignored
    await registry.deregister("never-registered")


async def test_not_serving_instance_leaves_healthy_and_comes_back(
    backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    draining, steady = await health_servers(), await health_servers()
    registry = backend.make()
    service = backend.service()
    a, b = instance_for(draining, service, 1), instance_for(steady, service, 2)
    await registry.register(a)
    await registry.register(b)
    watch = recorders(registry.watch(service))
    await watch.wait_ids({a.id, b.id}, within_s=1.0)

    await draining.set_serving(False)  # what the server bootstrap does on drain
    await watch.wait_ids({b.id}, within_s=backend.check_latency_s)
    assert [i.id for i in await registry.healthy(service)] == [b.id]
    assert a.id in await backend.registered_ids(service)  # unhealthy, still registered

    await draining.set_serving(True)
    await watch.wait_ids({a.id, b.id}, within_s=backend.check_latency_s)
    assert {i.id for i in await registry.healthy(service)} == {a.id, b.id}


async def test_process_that_dies_without_deregistering_expires(
    backend: Backend, recorders: Recorders
) -> None:
    """Another OS process registers (cross-process visibility), then is SIGKILLed."""
    registry = backend.make()
    service = backend.service()
    watch = recorders(registry.watch(service))
    instance_id = f"{service}-child"
    async with registering_process(backend, service, instance_id) as child:
        await watch.wait_ids({instance_id}, within_s=1.0)
        assert [i.id for i in await registry.healthy(service)] == [instance_id]
        child.kill()  # no deregistration, no cleanup: a crash
        await child.wait()

    await watch.wait_ids(set(), within_s=backend.expiry_s)
    assert await registry.healthy(service) == []
    if backend.reap_s is None:
        pytest.skip(f"{backend.name}: reaping takes >= 1 min (checked critical only)")
    await wait_until(
        lambda: _not_registered(backend, service, instance_id),
        backend.reap_s,
        f"{instance_id} removed from the registry",
    )


async def _not_registered(backend: Backend, service: str, instance_id: str) -> bool:
    return instance_id not in await backend.registered_ids(service)


async def test_unreachable_registry_keeps_last_snapshot_logs_once_and_recovers(
    backend: Backend,
    health_servers: Servers,
    recorders: Recorders,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if backend.break_registry is None or backend.repair_registry is None:
        pytest.skip(f"{backend.name}: cannot take a real agent away")
    caplog.set_level(logging.INFO, logger="mesh.discovery")
    server = await health_servers()
    owner, client = backend.make(), backend.make()  # a server process and a client process
    service = backend.service()
    first = instance_for(server, service, 1)
    await owner.register(first)
    watch = recorders(client.watch(service))
    await watch.wait_ids({first.id}, within_s=1.0)
    yielded = len(watch.snapshots)

    def outage_lines() -> list[str]:
        messages = [r.getMessage() for r in caplog.records]
        return [m for m in messages if m.startswith(backend.outage_prefix)]

    def recovery_lines() -> list[str]:
        again = backend.outage_prefix.replace(" unreachable", " reachable again")
        return [r.getMessage() for r in caplog.records if r.getMessage() == again]

    await backend.break_registry()
    for _ in range(3):
        with pytest.raises(RegistryUnavailable):
            await client.healthy(service)

    async def logged_outage() -> bool:
        return bool(outage_lines())

    await wait_until(logged_outage, 2.0, "the outage was logged")
    # Many retries happen in this window (backoff capped at 0.2 s): still one line.
    await asyncio.sleep(1.0)  # poll: an observation window, not synchronisation
    assert len(outage_lines()) == 1, outage_lines()
    assert len(watch.snapshots) == yielded, "a watch must keep its last snapshot during an outage"
    assert not watch.ended.is_set()

    await backend.repair_registry()

    async def logged_recovery() -> bool:
        return bool(recovery_lines())

    await wait_until(logged_recovery, 3.0, "the recovery was logged")

    async def first_is_healthy() -> bool:
        return [i.id for i in await client.healthy(service)] == [first.id]

    # Embedded: an outage longer than the lease leaves the owner's file stale until
    # its next heartbeat (0.2 s here); Consul kept the check's status.
    await wait_until(first_is_healthy, 1.0, "the instance is healthy after the outage")
    second = instance_for(server, service, 2)
    await owner.register(second)  # the watch is live again
    await watch.wait_ids({first.id, second.id}, within_s=1.0)
    assert len(outage_lines()) == 1 and len(recovery_lines()) == 1


async def test_two_registry_objects_see_each_other(
    backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    server_a, server_b = await health_servers(), await health_servers()
    reg_a, reg_b = backend.make(), backend.make()
    service = backend.service()
    a, b = instance_for(server_a, service, 1), instance_for(server_b, service, 2)
    watch_a, watch_b = recorders(reg_a.watch(service)), recorders(reg_b.watch(service))

    await reg_a.register(a)
    await watch_b.wait_ids({a.id}, within_s=1.0)
    await reg_b.register(b)
    await watch_a.wait_ids({a.id, b.id}, within_s=1.0)
    await watch_b.wait_ids({a.id, b.id}, within_s=1.0)
    for registry in (reg_a, reg_b):
        assert {i.id for i in await registry.healthy(service)} == {a.id, b.id}

    await reg_b.deregister(b.id)
    await watch_a.wait_ids({a.id}, within_s=1.0)


async def test_close_ends_watches(backend: Backend, recorders: Recorders) -> None:
    registry: Registry = backend.make()
    watch = recorders(registry.watch(backend.service()))
    await watch.wait_ids(set(), within_s=2.0)
    await registry.close()
    await asyncio.wait_for(watch.ended.wait(), 2.0)


# -- Consul specifics ------------------------------------------------


async def test_consul_registration_has_grpc_check_version_and_package_tags(
    consul_backend: Backend, health_servers: Servers
) -> None:
    server = await health_servers()
    registry = consul_backend.make()
    assert isinstance(registry, ConsulRegistry)
    service = consul_backend.service()
    instance = instance_for(server, service)
    await registry.register(instance)

    address = registry.address
    async with aiohttp.ClientSession() as session:
        headers = {"X-Consul-Token": consul_backend.token} if consul_backend.token else {}
        async with session.get(f"http://{address}/v1/agent/services", headers=headers) as r:
            svc = (await r.json())[instance.id]
        async with session.get(f"http://{address}/v1/agent/checks", headers=headers) as r:
            checks = [c for c in (await r.json()).values() if c["ServiceID"] == instance.id]
    assert svc["Service"] == service and svc["Port"] == server.port
    assert svc["Address"] == "127.0.0.1"
    assert {"blue", "v0.1.0", "shop.disc.v1", "shop.disc.v2"} <= set(svc["Tags"])
    assert svc["Meta"]["admin_port"] == "9100" and svc["Meta"]["version"] == "0.1.0"
    [check] = checks
    assert check["Type"] == "grpc"
    assert check["Status"] == "passing"  # probed before registering: no wait for the agent
    if consul_backend.agent is not None:  # the exact payload, as the test agent received it
        [sent] = consul_backend.agent.registrations[-1]["checks"]
        assert sent["GRPC"] == f"127.0.0.1:{server.port}/shop.disc.v1.Disc"
        assert (sent["Interval"], sent["Timeout"]) == ("200ms", "500ms")
        assert sent["DeregisterCriticalServiceAfter"] == "1s"


async def test_consul_watch_uses_blocking_queries(
    agent_backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    agent = agent_backend.agent
    assert agent is not None
    server = await health_servers()
    registry = agent_backend.make()
    service = agent_backend.service()
    watch = recorders(registry.watch(service))
    await watch.wait_ids(set(), within_s=1.0)
    await registry.register(instance_for(server, service))
    await watch.wait_ids({f"{service}-1"}, within_s=1.0)
    before = agent.calls["GET /v1/health/service/{name}"]
    await asyncio.sleep(1.0)  # poll: an idle second measured; a poller would query ~every interval
    assert agent.calls["GET /v1/health/service/{name}"] - before <= 1


async def test_consul_reregisters_lost_instances_and_follows_an_index_reset(
    agent_backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    """The agent forgets everything and its index starts over (cluster rebuilt, or a
    dev agent restarted): the owner puts its instance back, and a watch holding an
    index the agent never reached again resets to 0 and keeps going."""
    agent = agent_backend.agent
    assert agent is not None
    server = await health_servers()
    registry = agent_backend.make()
    service = agent_backend.service()
    instance = instance_for(server, service)
    await registry.register(instance)
    for n in range(2, 8):  # move the index well past what the wiped agent will reach
        churn = instance_for(server, service, n)
        await registry.register(churn)
        await registry.deregister(churn.id)
    watch = recorders(registry.watch(service))
    await watch.wait_ids({instance.id}, within_s=1.0)

    agent.wipe()
    await wait_until(lambda: _registered(agent_backend, service, instance.id), 3.0, "re-registered")
    assert [r["id"] for r in agent.registrations].count(instance.id) == 2
    newcomer = instance_for(server, service, 9)
    await agent_backend.make().register(newcomer)
    # The held query waits out `wait` (2 s) on the old index, then the watch resets...
    await watch.wait_ids({instance.id, newcomer.id}, within_s=3.5)
    # ...and from then on blocks on the agent's new index: changes are prompt again.
    await registry.deregister(newcomer.id)
    await watch.wait_ids({instance.id}, within_s=1.0)


async def test_consul_watch_recovers_from_an_agent_restart_without_state(
    agent_backend: Backend, health_servers: Servers, recorders: Recorders
) -> None:
    agent = agent_backend.agent
    assert agent is not None
    server = await health_servers()
    registry = agent_backend.make()
    service = agent_backend.service()
    instance = instance_for(server, service)
    await registry.register(instance)
    watch = recorders(registry.watch(service))
    await watch.wait_ids({instance.id}, within_s=1.0)

    await agent.restart(keep_state=False)
    await wait_until(lambda: _registered(agent_backend, service, instance.id), 3.0, "re-registered")
    newcomer = instance_for(server, service, 2)
    await agent_backend.make().register(newcomer)
    await watch.wait_ids({instance.id, newcomer.id}, within_s=1.0)


async def _registered(agent_backend: Backend, service: str, instance_id: str) -> bool:
    return instance_id in await agent_backend.registered_ids(service)


async def test_consul_token_is_sent(health_servers: Servers) -> None:
    server = await health_servers()
    async with consul_test_agent(token="s3cret") as agent:
        good = ConsulRegistry(agent.address, "s3cret", check_interval_s=0.2)
        bad = ConsulRegistry(agent.address, "wrong", check_interval_s=0.2)
        try:
            instance = Instance("tok-1", "tok", "127.0.0.1", server.port)
            # A refused token is a configuration error naming the setting, not an outage.
            with pytest.raises(ConsulAclError, match="CONSUL_HTTP_TOKEN"):
                await bad.register(instance)
            with pytest.raises(ConsulAclError, match="CONSUL_HTTP_TOKEN"):
                await bad.healthy("tok")
            await good.register(instance)
            assert [i.id for i in await good.healthy("tok")] == ["tok-1"]
        finally:
            await good.close()
            await bad.close()
