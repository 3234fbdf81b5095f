"""Backends for the discovery tests, and helpers to watch and to spawn processes.

`backend` is parametrised: `embedded` (a temp directory), `consul-test-agent`
(tests/support/consul_agent.py) and `consul-real-agent` (only when
CONSUL_HTTP_ADDR names a running agent on this machine, which must reach the
test's loopback gRPC servers). The test ids say which one ran.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from mesh.discovery.consul import ConsulRegistry
from mesh.discovery.embedded import EmbeddedRegistry
from mesh.discovery.registry import Instance, Registry
from tests.support.consul_agent import ConsulTestAgent, consul_test_agent
from tests.support.discovery import HEALTH_SERVICE, REAL_CONSUL, Backend, WatchRecorder
from tests.support.health_server import HealthServer, start_health_server


async def _consul_ids(address: str, token: str, service: str) -> set[str]:
    headers = {"X-Consul-Token": token} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{address}/v1/agent/services", headers=headers) as resp,
    ):
        resp.raise_for_status()
        services = await resp.json()
    return {sid for sid, s in services.items() if s["Service"] == service}


async def _consul_deregister(address: str, token: str, service_id: str) -> None:
    headers = {"X-Consul-Token": token} if token else {}
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"http://{address}/v1/agent/service/deregister/{service_id}", headers=headers
        ) as resp,
    ):
        await resp.read()


def _swap(directory: Path, away: Path, *, make_file: bool) -> None:
    if make_file:
        os.rename(directory, away)
        with open(directory, "w") as f:
            f.write("not a directory")
    else:
        os.unlink(directory)
        os.rename(away, directory)


def _embedded(directory: Path) -> Backend:
    def factory() -> Registry:
        return EmbeddedRegistry(
            directory,
            ttl_s=1.0,
            heartbeat_s=0.2,
            poll_s=0.05,
            check_timeout_s=0.5,
            retry_initial_s=0.05,
            retry_max_s=0.2,
        )

    async def registered_ids(service: str) -> set[str]:
        d = directory / service
        return {p.stem for p in d.glob("*.json")} if d.is_dir() else set()

    away = directory.with_name(directory.name + ".away")

    async def break_registry() -> None:
        # The directory is replaced by a file: reads and writes fail with ENOTDIR.
        _swap(directory, away, make_file=True)

    async def repair_registry() -> None:
        _swap(directory, away, make_file=False)

    return Backend(
        name="embedded",
        factory=factory,
        process_args=["--embedded", str(directory), "--ttl", "1.0", "--heartbeat", "0.2"],
        registered_ids=registered_ids,
        outage_prefix=f"embedded registry {directory} unreachable",
        check_latency_s=1.5,
        expiry_s=2.5,
        reap_s=4.5,  # 3 * ttl after the last heartbeat, collected by the next scan
        break_registry=break_registry,
        repair_registry=repair_registry,
    )


def _consul_test_agent(agent: ConsulTestAgent) -> Backend:
    def factory() -> Registry:
        return ConsulRegistry(
            agent.address,
            check_interval_s=0.2,
            check_timeout_s=0.5,
            deregister_critical_after_s=1.0,
            blocking_wait_s=2.0,
            retry_initial_s=0.05,
            retry_max_s=0.2,
            resync_interval_s=0.3,
        )

    async def registered_ids(service: str) -> set[str]:
        return await _consul_ids(agent.address, "", service)

    return Backend(
        name="consul-test-agent",
        factory=factory,
        process_args=["--consul", agent.address, "--interval", "0.2", "--deregister-after", "1"],
        registered_ids=registered_ids,
        outage_prefix=f"consul agent {agent.address} unreachable",
        check_latency_s=1.5,
        expiry_s=1.5,
        reap_s=3.0,
        break_registry=agent.stop,
        repair_registry=agent.start,
        agent=agent,
    )


def _consul_real_agent(address: str, token: str) -> Backend:
    def factory() -> Registry:
        # A real agent clamps intervals to 1 s and reaps after >= 1 min.
        return ConsulRegistry(
            address,
            token,
            check_interval_s=1.0,
            check_timeout_s=1.0,
            deregister_critical_after_s=60.0,
            blocking_wait_s=5.0,
            retry_initial_s=0.05,
            retry_max_s=0.5,
        )

    async def registered_ids(service: str) -> set[str]:
        return await _consul_ids(address, token, service)

    return Backend(
        name="consul-real-agent",
        factory=factory,
        process_args=[
            *("--consul", address, "--token", token),
            *("--interval", "1", "--deregister-after", "60"),
        ],
        registered_ids=registered_ids,
        outage_prefix=f"consul agent {address} unreachable",
        check_latency_s=3.0,
        expiry_s=3.0,
        reap_s=None,
        token=token,
    )


_REAL = pytest.param(
    "consul-real-agent",
    marks=pytest.mark.skipif(
        not REAL_CONSUL, reason="CONSUL_HTTP_ADDR not set: no real Consul agent here"
    ),
)


@contextlib.asynccontextmanager
async def _backend(kind: str, tmp_path: Path) -> AsyncIterator[Backend]:
    async with contextlib.AsyncExitStack() as stack:
        if kind == "embedded":
            b = _embedded(tmp_path / "registry")
        elif kind == "consul-test-agent":
            b = _consul_test_agent(await stack.enter_async_context(consul_test_agent()))
        else:
            b = _consul_real_agent(REAL_CONSUL, os.environ.get("CONSUL_HTTP_TOKEN", ""))
        try:
            yield b
        finally:
            for registry in b.made:
                await registry.close()
            if b.name == "consul-real-agent":  # leave the real agent as we found it
                for service in b.services:
                    for sid in await b.registered_ids(service):
                        await _consul_deregister(REAL_CONSUL, b.token, sid)


@pytest.fixture(params=["embedded", "consul-test-agent", _REAL])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Every backend: the Registry contract must hold for each."""
    async with _backend(request.param, tmp_path) as b:
        yield b


@pytest.fixture(params=["consul-test-agent", _REAL])
async def consul_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """The Consul backends only, for what is specific to Consul."""
    async with _backend(request.param, tmp_path) as b:
        yield b


@pytest.fixture
async def agent_backend(tmp_path: Path) -> AsyncIterator[Backend]:
    """Consul on the test agent only: for tests that count requests or wipe the agent."""
    async with _backend("consul-test-agent", tmp_path) as b:
        yield b


@pytest.fixture
async def health_servers() -> AsyncIterator[Callable[[], Awaitable[HealthServer]]]:
    started: list[HealthServer] = []

    async def start() -> HealthServer:
        server = await start_health_server([HEALTH_SERVICE])
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(None)


@pytest.fixture
async def recorders() -> AsyncIterator[Callable[[AsyncIterator[list[Instance]]], WatchRecorder]]:
    made: list[WatchRecorder] = []

    def record(stream: AsyncIterator[list[Instance]]) -> WatchRecorder:
        recorder = WatchRecorder(stream)
        made.append(recorder)
        return recorder

    yield record
    for recorder in made:
        await recorder.close()
