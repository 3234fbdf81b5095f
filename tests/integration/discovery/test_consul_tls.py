"""The Consul backend over TLS: the agent verified by the CA file, the client by its certificate.

The Consul-API test agent serves HTTPS with a throwaway CA (trustme); real TLS
handshakes, both directions. Each positive case has its negative beside it: an
agent whose CA the client was not given is refused, and so is a client without a
certificate when the agent verifies clients.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from mesh.discovery import create_registry
from mesh.discovery.consul import ConsulRegistry
from mesh.discovery.registry import Instance, RegistryUnavailable
from mesh.settings import Settings
from tests.support.consul_agent import consul_test_agent

INSTANCE = Instance(id="tls-1", service="tls", host="127.0.0.1", port=7)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def files(ca: trustme.CA, tmp_path: Path) -> Iterator[dict[str, str]]:
    client = ca.issue_cert("edge.mesh.local")
    paths = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.pem", "key": tmp_path / "key"}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    client.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    client.private_key_pem.write_to_path(str(paths["key"]))
    yield {k: str(v) for k, v in paths.items()}


def _server_context(ca: trustme.CA, *, verify_clients: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    if verify_clients:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(ctx)
    return ctx


async def _round_trip(registry: ConsulRegistry) -> list[Instance]:
    try:
        await registry.register(INSTANCE)
        return await registry.healthy("tls")
    finally:
        await registry.close()


async def test_agent_verified_with_the_ca_file(ca: trustme.CA, files: dict[str, str]) -> None:
    async with consul_test_agent(ssl_context=_server_context(ca, verify_clients=False)) as agent:
        settings = Settings.from_env(
            "tls", {"CONSUL_HTTP_ADDR": agent.address, "CONSUL_CACERT": files["ca"]}
        )
        registry = create_registry(settings)
        assert isinstance(registry, ConsulRegistry)
        registry._probe_before_register = False  # nothing listens on port 7
        await _round_trip(registry)
        assert agent.registrations, "the registration reached the agent over TLS"


async def test_agent_with_an_unknown_ca_is_refused(ca: trustme.CA) -> None:
    async with consul_test_agent(ssl_context=_server_context(ca, verify_clients=False)) as agent:
        registry = ConsulRegistry(agent.address, probe_before_register=False)
        with pytest.raises(RegistryUnavailable):
            await _round_trip(registry)
        assert not agent.registrations


async def test_client_certificate_when_the_agent_verifies_clients(
    ca: trustme.CA, files: dict[str, str]
) -> None:
    ctx = _server_context(ca, verify_clients=True)
    async with consul_test_agent(ssl_context=ctx) as agent:
        with_cert = ConsulRegistry(
            agent.address,
            ca_file=files["ca"],
            client_cert=files["cert"],
            client_key=files["key"],
            probe_before_register=False,
        )
        await _round_trip(with_cert)
        assert len(agent.registrations) == 1
        without = ConsulRegistry(agent.address, ca_file=files["ca"], probe_before_register=False)
        with pytest.raises(RegistryUnavailable):
            await _round_trip(without)
        assert len(agent.registrations) == 1
