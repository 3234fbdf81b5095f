"""Health checks with mTLS on: every prober holds an identity.

The embedded registry's owner-side probe presents the registering process's
identity; Consul's gRPC check (GRPCUseTLS + TLSServerName) presents the agent's
(`consul`, from its `tls.defaults`). A prober without a mesh certificate is
refused like any other client, so the instance goes critical (the negative test).
"""

from __future__ import annotations

from pathlib import Path

from mesh.discovery.consul import ConsulRegistry
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance
from tests.support import pki
from tests.support.consul_agent import AgentTls, consul_test_agent
from tests.support.health_server import start_health_server
from tests.support.poll import eventually


def _instance(port: int) -> Instance:
    return Instance(id="svc-1", service="svc", host="127.0.0.1", port=port)


async def test_the_embedded_registry_probes_with_the_owners_identity(tmp_path: Path) -> None:
    server = await start_health_server(identity=pki.identity("svc"))
    with_identity = EmbeddedRegistry(tmp_path / "a", identity=pki.identity("svc"))
    without = EmbeddedRegistry(tmp_path / "b")
    try:
        await with_identity.register(_instance(server.port))
        assert [i.id for i in await with_identity.healthy("svc")] == ["svc-1"]
        await without.register(_instance(server.port))
        assert await without.healthy("svc") == []  # the plaintext probe is refused
        await server.set_serving(False)
        await eventually(lambda: _empty(with_identity))  # and the probe really reads health
    finally:
        await with_identity.close()
        await without.close()
        await server.stop(None)


async def _empty(registry: EmbeddedRegistry) -> bool:
    return await registry.healthy("svc") == []


async def test_consuls_grpc_check_uses_tls_with_the_agents_identity() -> None:
    server = await start_health_server(identity=pki.identity("svc"))
    consul = pki.pair("consul")
    tls = AgentTls(pki.ca_pem(), consul.cert_pem, consul.key_pem)
    try:
        async with consul_test_agent(tls=tls) as agent:
            registry = ConsulRegistry(
                agent.address, check_interval_s=0.1, identity=pki.identity("svc")
            )
            try:
                await registry.register(_instance(server.port))
                (check,) = agent._checks.values()
                assert check.grpc_use_tls is True
                assert check.tls_server_name == "svc.mesh.local"
                await eventually(lambda: _checked(agent, "passing"))
                await server.set_serving(False)
                await eventually(lambda: _checked(agent, "critical"))
            finally:
                await registry.close()
        async with consul_test_agent() as agent:  # an agent without a mesh identity
            registry = ConsulRegistry(
                agent.address, check_interval_s=0.1, identity=pki.identity("svc")
            )
            try:
                await server.set_serving(True)
                await registry.register(_instance(server.port))
                await eventually(lambda: _checked(agent, "critical", "UNAVAILABLE"))
            finally:
                await registry.close()
    finally:
        await server.stop(None)


def _checked(agent: object, status: str, output: str = "") -> bool:
    checks = list(agent._checks.values())  # type: ignore[attr-defined]
    return bool(checks) and all(
        c.status == status and c.runs > 0 and output in c.output for c in checks
    )
