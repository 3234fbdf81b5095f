"""Consul ACL tokens per service, against the test agent enforcing them as Consul does
(default deny): a token registers only its own service, reads are filtered, and a
refusal is a configuration error naming the token setting, never a retried outage."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from mesh.discovery import create_registry
from mesh.discovery.consul import ConsulAclError, ConsulRegistry
from mesh.discovery.registry import Instance, Registry
from mesh.settings import Settings
from tests.support.consul_agent import AclPolicy, ConsulTestAgent, consul_test_agent
from tests.support.health_server import HealthServer
from tests.support.poll import eventually

# The README's minimal policies ("Consul ACL"): write on its own name, read on callees.
POLICIES = {
    "orders-token": AclPolicy(
        service_write=("orders",),
        service_read=("users", "inventory", "payments"),
        key_read=("mesh/traffic/",),
    ),
    "payments-token": AclPolicy(service_write=("payments",), key_read=("mesh/traffic/",)),
}


@pytest.fixture
async def agent() -> AsyncIterator[ConsulTestAgent]:
    async with consul_test_agent(acl=POLICIES) as a:
        yield a


@pytest.fixture
async def registries() -> AsyncIterator[Callable[[str, str], ConsulRegistry]]:
    made: list[ConsulRegistry] = []

    def make(address: str, token: str) -> ConsulRegistry:
        r = ConsulRegistry(address, token, check_interval_s=0.2)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.close()


Make = Callable[[str, str], ConsulRegistry]
Servers = Callable[[], Awaitable[HealthServer]]


def _ids(registry: Registry, service: str) -> Callable[[], Awaitable[list[str]]]:
    async def ids() -> list[str]:
        return [i.id for i in await registry.healthy(service)]

    return ids


async def test_a_token_registers_its_own_service(
    agent: ConsulTestAgent, registries: Make, health_servers: Servers
) -> None:
    server = await health_servers()
    orders = registries(agent.address, "orders-token")
    await orders.register(Instance("orders-1", "orders", "127.0.0.1", server.port))
    assert await eventually(_ids(orders, "orders"), what="orders-1 healthy") == ["orders-1"]


async def test_registering_another_services_name_is_refused(
    agent: ConsulTestAgent, registries: Make, health_servers: Servers
) -> None:
    server = await health_servers()
    orders = registries(agent.address, "orders-token")
    rogue = Instance("payments-rogue", "payments", "127.0.0.1", server.port)
    with pytest.raises(ConsulAclError, match="CONSUL_HTTP_TOKEN") as refused:
        await orders.register(rogue)
    assert "Permission denied" in str(refused.value)
    assert agent.calls["PUT /v1/agent/service/register"] == 1  # refused once, not retried
    payments = registries(agent.address, "payments-token")
    assert await payments.healthy("payments") == []  # nothing was registered


async def test_deregistering_another_services_instance_is_refused(
    agent: ConsulTestAgent, registries: Make, health_servers: Servers
) -> None:
    server = await health_servers()
    orders = registries(agent.address, "orders-token")
    await orders.register(Instance("orders-1", "orders", "127.0.0.1", server.port))
    payments = registries(agent.address, "payments-token")
    with pytest.raises(ConsulAclError, match="Permission denied"):
        await payments.deregister("orders-1")
    assert await eventually(_ids(orders, "orders"), what="orders-1 kept") == ["orders-1"]


async def test_reads_are_filtered_by_the_token(
    agent: ConsulTestAgent, registries: Make, health_servers: Servers
) -> None:
    server = await health_servers()
    orders = registries(agent.address, "orders-token")
    payments = registries(agent.address, "payments-token")
    await orders.register(Instance("orders-1", "orders", "127.0.0.1", server.port))
    await payments.register(Instance("payments-1", "payments", "127.0.0.1", server.port))
    # orders may read payments (it calls it); payments has no read on orders: filtered,
    # as Consul does, so it looks like no healthy instance rather than an error.
    assert await eventually(_ids(orders, "payments"), what="payments seen") == ["payments-1"]
    assert await eventually(_ids(orders, "orders"), what="orders seen") == ["orders-1"]
    assert await payments.healthy("orders") == []
    anonymous = registries(agent.address, "")
    assert await anonymous.healthy("payments") == []


async def test_no_token_or_an_unknown_token_cannot_register(
    agent: ConsulTestAgent, registries: Make, health_servers: Servers
) -> None:
    server = await health_servers()
    instance = Instance("orders-1", "orders", "127.0.0.1", server.port)
    with pytest.raises(ConsulAclError, match="Permission denied"):
        await registries(agent.address, "").register(instance)
    with pytest.raises(ConsulAclError, match="ACL not found"):
        await registries(agent.address, "forged-token").register(instance)


async def test_the_token_can_come_from_a_file(
    agent: ConsulTestAgent, health_servers: Servers, tmp_path: Path
) -> None:
    server = await health_servers()
    token_file = tmp_path / "orders.token"
    token_file.write_text("orders-token\n")
    os.chmod(token_file, 0o600)
    base = Settings.from_env("orders", {"CONSUL_HTTP_ADDR": agent.address})
    settings = replace(base, consul_token_file=str(token_file))
    registry = create_registry(settings)
    try:
        await registry.register(Instance("orders-1", "orders", "127.0.0.1", server.port))
        assert await eventually(_ids(registry, "orders"), what="registered") == ["orders-1"]
    finally:
        await registry.close()
    with pytest.raises(ConsulAclError, match="not both"):
        create_registry(replace(settings, consul_token="orders-token"))
